"""The README runs as written: its set-up commands are CI's, and every Python block works.

The Python blocks run in README order in one namespace, like a notebook (a block may use
names an earlier block defined), in a scratch folder, as ``__main__``, against the test
session's Prefect server. Each block is followed by checks that it did what the text
around it says. The one substitution: the S3 block's bucket and endpoint are the test S3
server's. The ``console`` block of ``cpr-zarr`` commands needs the example's results and runs
in ``tests/test_example.py``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pytest
import scipy.ndimage as ndi

import cpr_zarr

if TYPE_CHECKING:
    from tests.s3_server import S3Server

ROOT = Path(__file__).parents[1]
README = (ROOT / "README.md").read_text()


def blocks(language: str) -> list[tuple[str, str]]:
    """(section heading, code) of every fenced block of ``language``, in order."""
    found = []
    heading = ""
    for m in re.finditer(rf"^(#+ [^\n]+)$|^```{language}\n(.*?)\n```$", README, re.M | re.S):
        if m[1]:
            heading = m[1].lstrip("# ").strip()
        else:
            found.append((heading, m[2]))
    return found


def test_ci_runs_the_readme_commands_verbatim() -> None:
    setup = README.split("## Set-up (two commands)")[1].split("\n## ")[0]
    commands = re.findall(r"```bash\n(.+?)\n```", setup)
    assert len(commands) == 2
    assert "[examples]" in commands[0]
    assert "[test]" not in commands[0]
    assert "[test]" in commands[1]
    assert "pytest" in commands[1]
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    for command in commands:
        assert command in ci


# -- checks: what each block's text promises --------------------------------------------


def check_using_it(ns: dict[str, Any], code: str) -> None:
    # the flow hands every task to its task runner (.submit/.map): a task called directly
    # in a flow body runs in the flow's process, and the DaskTaskRunner would go unused
    tasks = {"denoise", "threshold"}
    flow_body = next(
        node
        for node in ast.walk(ast.parse(code))
        if isinstance(node, ast.FunctionDef) and node.name == "pipeline"
    )
    direct = [
        node.func.id
        for node in ast.walk(flow_body)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in tasks
    ]
    assert direct == [], f"tasks called directly in the flow, not submitted: {direct}"
    mask = ns["mask"]
    assert isinstance(mask, cpr_zarr.ZarrTarget)
    raw = np.random.default_rng(0).normal(300.0, 50.0, (16, 128, 128))
    expected = ndi.gaussian_filter(raw.astype(np.float32), 2.0) > 300.0
    np.testing.assert_array_equal(mask.to_numpy(), expected)
    assert mask.store_url == str(Path("results.zarr").resolve())


def check_without_decorator(ns: dict[str, Any], code: str) -> None:
    store, t, array = ns["store"], ns["t"], ns["array"]
    assert t.content_hash not in store  # deleted at the end of the block
    table = cpr_zarr.read_table(ns["m"])
    pd.testing.assert_frame_equal(table, pd.DataFrame({"area": [12, 40]}))
    assert Path("measure.csv").read_text().splitlines()[1:] == ["0,12", "1,40"]
    # the cpr-style task works in a flow
    import prefect

    @prefect.flow
    def cpr_style() -> cpr_zarr.ZarrTarget:
        return ns["smooth"](store.save(array[:4], name="input"))

    halved = cpr_style()
    np.testing.assert_array_equal(halved.to_numpy(), array[:4] // 2)


def check_viewers(ns: dict[str, Any], code: str) -> None:
    import prefect
    import tifffile

    store = ns["store"]
    raw = next(t for t in store.targets() if t.name == "raw")
    ome = store.storage.get_json(f"{raw.group_path}/zarr.json")["attributes"]["ome"]
    axes = ome["multiscales"][0]["axes"]
    assert [(a["name"], a.get("unit")) for a in axes] == [
        ("z", "micrometer"),
        ("y", "micrometer"),
        ("x", "micrometer"),
    ]
    tiff = Path("stack.tif")
    tifffile.imwrite(tiff, ns["volume"][:8])

    @prefect.flow
    def viewers_flow() -> tuple[Any, Any, Any]:
        image = ns["load"](tiff)
        labels = ns["label"](np.asarray(ns["volume"][:8] > 3000), image)
        return image, labels, ns["measure"](labels)

    image, labels, table = viewers_flow()
    assert labels.group_path.startswith(f"{image.group_path}/labels/")
    assert table.group_path.startswith(f"{image.group_path}/tables/measure-")  # a feature table
    frame = cpr_zarr.read_table(table)
    assert list(frame.columns) == ["label", "area"]
    assert int(frame["area"].sum()) == int((ns["volume"][:8] > 3000).sum())


def check_s3(ns: dict[str, Any], code: str) -> None:
    store = ns["store"]
    target = store.save(np.arange(12, dtype=np.uint16).reshape(3, 4), name="s3check")
    np.testing.assert_array_equal(target.to_numpy(), np.arange(12).reshape(3, 4))
    assert "cpr-zarr-test-secret" not in target.to_json()


def check_backends(ns: dict[str, Any], code: str) -> None:
    from cpr_zarr.storage._fsspec import FsspecStorage
    from cpr_zarr.storage._obstore import ObjectStorage

    assert isinstance(ns["s3_default"].storage, ObjectStorage)
    assert isinstance(ns["s3_fsspec"].storage, FsspecStorage)
    assert ns["in_memory"].url.startswith("zarrstore://")
    np.testing.assert_array_equal(ns["tiny"].to_numpy(), np.arange(6))


CHECKS = {
    "Using it": [check_using_it, check_without_decorator],
    "Viewers: OME-NGFF images, pyramids, labels and tables": [check_viewers],
    "Object storage (S3)": [check_s3],
    "Storage backends": [check_backends],
}


def test_every_python_block_has_checks() -> None:
    expected = [(heading, len(checks)) for heading, checks in CHECKS.items()]
    found: dict[str, int] = {}
    for heading, _ in blocks("python"):
        found[heading] = found.get(heading, 0) + 1
    assert list(found.items()) == expected


# long by design (every document, every block, a whole flow): more than the
# suite's 600 s on a busy 2-core machine
@pytest.mark.timeout(1800)
def test_every_python_block_runs_and_does_what_the_readme_says(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    prefect_server: str,
    s3_server: S3Server,
) -> None:
    monkeypatch.chdir(tmp_path)
    bucket = f"s3://cpr-zarr-tests/readme-{tmp_path.name}/"
    ns: dict[str, Any] = {"__name__": "__main__"}
    pending = {heading: list(checks) for heading, checks in CHECKS.items()}
    for heading, code in blocks("python"):
        if heading in ("Object storage (S3)", "Storage backends"):
            code = code.replace("s3://bucket/", bucket).replace(
                "http://127.0.0.1:9000", s3_server.proxy.url
            )
        exec(compile(code, f"README.md ({heading})", "exec"), ns)
        pending[heading].pop(0)(ns, code)
    assert not any(pending.values())
