"""What ``import cpr_zarr`` and the command line load, each checked in a fresh interpreter.

* ``import cpr_zarr``, ``cpr-zarr --help`` and ``--version`` load none of the heavy
  libraries (their start-up time is measured in ``benchmarks/bench_cli.py``);
* ``cpr-zarr ls`` and ``info`` load zarr, but neither pandas nor Dask;
* saving, reading and exporting results, and every inspection command, never load Prefect
  (only ``cpr_zarr.task`` and the other Prefect-facing names do).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import cpr_zarr

ROOT = Path(__file__).resolve().parents[1]
HEAVY = {"zarr", "numpy", "dask", "pandas", "prefect", "fsspec", "tifffile", "pyarrow", "PIL"}


def run_python(code: str, *args: str) -> list[dict[str, object]]:
    """Run ``code`` in a fresh interpreter; it reports with ``report(step)``, which records
    the step and the top-level packages loaded so far. Returns the reports."""
    prelude = textwrap.dedent(
        """
        import json, sys

        def report(step, **extra):
            loaded = sorted({m.split(".")[0] for m in sys.modules})
            print("REPORT " + json.dumps({"step": step, "loaded": loaded, **extra}), flush=True)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return [
        json.loads(line[len("REPORT ") :])
        for line in proc.stdout.splitlines()
        if line.startswith("REPORT ")
    ]


def test_import_cpr_zarr_loads_no_heavy_library() -> None:
    (report,) = run_python("import cpr_zarr\nreport('import')")
    assert HEAVY.isdisjoint(report["loaded"]), sorted(HEAVY & set(report["loaded"]))  # type: ignore[arg-type]


def test_help_and_version_load_no_heavy_library() -> None:
    reports = run_python(
        """
        import contextlib, io
        from cpr_zarr.cli import main

        for args in (["--version"], ["--help"], ["ls", "--help"], ["rm", "--help"]):
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                try:
                    main(args, prog_name="cpr-zarr")
                except SystemExit:
                    pass
            report(" ".join(args), output=out.getvalue())
        """
    )
    assert [r["step"] for r in reports] == ["--version", "--help", "ls --help", "rm --help"]
    for r in reports:
        assert HEAVY.isdisjoint(r["loaded"]), (r["step"], sorted(HEAVY & set(r["loaded"])))  # type: ignore[arg-type]
    assert reports[0]["output"] == f"cpr-zarr, version {cpr_zarr.__version__}\n"
    assert "Usage: cpr-zarr [OPTIONS] COMMAND" in reports[1]["output"]  # type: ignore[operator]
    assert "Usage: cpr-zarr rm [OPTIONS] STORE REFS..." in reports[3]["output"]  # type: ignore[operator]


def test_version_is_the_installed_distributions() -> None:
    # --version prints the constant (asking importlib.metadata costs more than the rest)
    assert cpr_zarr.__version__ == importlib.metadata.version("cpr_zarr")


def test_every_public_name_loads_on_first_use() -> None:
    names = set(cpr_zarr.__all__)
    assert names <= set(dir(cpr_zarr))
    for name in sorted(names):
        getattr(cpr_zarr, name)
        assert name in vars(cpr_zarr)  # loaded once, then a plain module attribute
    from cpr_zarr.store import ResultStore

    assert cpr_zarr.ResultStore is ResultStore
    with pytest.raises(AttributeError, match="module 'cpr_zarr' has no attribute 'nope'"):
        _ = cpr_zarr.nope  # type: ignore[attr-defined]
    namespace: dict[str, object] = {}
    exec("from cpr_zarr import *", namespace)
    assert names <= set(namespace)


def test_ls_and_info_load_neither_pandas_nor_dask(tmp_path: Path) -> None:
    reports = run_python(
        """
        import sys
        import cpr_zarr
        from cpr_zarr.cli import main

        url = sys.argv[1]
        for args in (["ls", url], ["ls", url, "--json"], ["info", url, "measure"],
                     ["info", url, "mask", "--json"]):
            try:
                main(args)
            except SystemExit as exc:
                assert not exc.code, exc.code
            report(" ".join(args[:1] + args[2:]))
        """,
        _small_store(tmp_path),
    )
    assert len(reports) == 4
    for r in reports:
        loaded = set(r["loaded"])  # type: ignore[arg-type]
        assert "zarr" in loaded
        assert loaded.isdisjoint({"pandas", "dask", "prefect", "pyarrow"}), (r["step"], loaded)


def test_saves_reads_exports_and_the_cli_never_import_prefect(tmp_path: Path) -> None:
    reports = run_python(
        """
        import sys
        import numpy as np
        import pandas as pd
        import cpr_zarr
        from cpr_zarr.cli import main

        out = sys.argv[1]
        store = cpr_zarr.ResultStore(out + "/results.zarr")
        image = store.save(np.arange(64, dtype=np.uint16).reshape(8, 8), "image", levels=2)
        store.save(cpr_zarr.Labels(np.ones((8, 8), np.uint8), image=image), "mask")
        table = store.save(pd.DataFrame({"label": [1, 2], "area": [3.0, 4.5]}), "measure")
        report("save")
        image.to_numpy()
        image.get_data().compute()
        cpr_zarr.read_table(table)
        cpr_zarr.read_level(image, 1)
        report("read")
        cpr_zarr.to_ome_tiff(image, out + "/image.ome.tif")
        cpr_zarr.to_ngff_v04(image, out + "/image.zarr")
        cpr_zarr.to_csv(table, out + "/measure.csv")
        report("export")
        url = store.url
        for args in (
            ["ls", url], ["info", url, "image"], ["info", url, "measure", "--json"],
            ["verify", url], ["export", url, "image", out + "/cli.ome.tif"],
            ["export", url, "measure", out + "/cli.csv"], ["gc", url],
            ["rm", url, "mask", "--dry-run"], ["rm", url, "image", "--yes"],
        ):
            try:
                main(args)
            except SystemExit as exc:
                assert not exc.code, (args, exc.code)
            report(" ".join(args[:1] + args[2:]))
        """,
        str(tmp_path),
    )
    assert [r["step"] for r in reports][:3] == ["save", "read", "export"]
    assert len(reports) == 12
    for r in reports:
        assert "prefect" not in r["loaded"], r["step"]  # type: ignore[operator]
    left = [t.name for t in cpr_zarr.ResultStore(tmp_path / "results.zarr", mode="r").targets()]
    assert left == ["measure"]  # rm --yes removed the image and its label image


def _small_store(tmp_path: Path) -> str:
    import numpy as np
    import pandas as pd

    store = cpr_zarr.ResultStore(tmp_path / "small.zarr")
    image = store.save(np.arange(256, dtype=np.uint16).reshape(16, 16), "image")
    store.save(cpr_zarr.Labels((image.to_numpy() > 100).astype(np.uint8), image=image), "mask")
    store.save(pd.DataFrame({"label": [1], "area": [155.0]}), "measure")
    return store.url
