"""The ``cpr-zarr`` command line, run as a subprocess on stores made by real flows."""

from __future__ import annotations

import json
import os
import pty
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from prefect import flow

import cpr_zarr
from tests.conftest import task_run_states

pytestmark = pytest.mark.usefixtures("prefect_server")

CLI = str(Path(sys.executable).with_name("cpr-zarr"))


def cli(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    # no Prefect server: the CLI reads the store alone
    env = {**os.environ, "PREFECT_API_URL": "http://127.0.0.1:9/api", "COLUMNS": "200"}
    env.pop("DISPLAY", None)
    env.pop("WAYLAND_DISPLAY", None)
    proc = subprocess.run(
        [CLI, *args], capture_output=True, text=True, env=env, timeout=120, stdin=subprocess.DEVNULL
    )
    if ok:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def make_flow(store: Path, records: Path, calls: list[str]):  # type: ignore[no-untyped-def]
    @cpr_zarr.task(store=str(store), result_storage=records)
    def raw(seed: int) -> np.ndarray:
        calls.append("raw")
        return np.random.default_rng(seed).integers(0, 1000, size=(20, 64, 64), dtype=np.uint16)

    @cpr_zarr.task(store=str(store), result_storage=records)
    def smooth(image: np.ndarray, width: int) -> np.ndarray:
        calls.append("smooth")
        return (image // width).astype(np.uint16)

    @cpr_zarr.task(store=str(store), result_storage=records)
    def mask(image) -> np.ndarray:  # lazy
        calls.append("mask")
        return image > 100

    @flow(name="cli-flow")
    def pipeline(seed: int = 1) -> dict[str, cpr_zarr.ZarrTarget]:
        r = raw(seed)
        s = smooth(r, 3)
        return {"raw": r, "smooth": s, "mask": mask(s)}

    return pipeline


@pytest.fixture
def made(
    tmp_path: Path, result_storage: Path
) -> tuple[Path, Path, dict[str, cpr_zarr.ZarrTarget], object]:
    store = tmp_path / "results.zarr"
    calls: list[str] = []
    pipeline = make_flow(store, result_storage, calls)
    targets = pipeline()
    assert calls == ["raw", "smooth", "mask"]
    return store, result_storage, targets, (pipeline, calls)


def test_ls_lists_results_with_filters_and_json(made: tuple) -> None:  # type: ignore[type-arg]
    store, _, targets, _ = made
    out = cli("ls", str(store)).stdout
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["NAME", "HASH", "KIND"]
    assert [line.split()[0] for line in lines[1:4]] == ["raw", "smooth", "mask"]
    assert "3 results" in lines[-1]
    assert targets["smooth"].content_hash[:12] in out
    rows = [json.loads(line) for line in cli("ls", str(store), "--json").stdout.splitlines()]
    assert {r["name"] for r in rows} == {"raw", "smooth", "mask"}
    by_name = {r["name"]: r for r in rows}
    assert by_name["smooth"]["hash"] == targets["smooth"].content_hash
    assert by_name["mask"]["dtype"] == "bool"
    assert by_name["raw"]["raw_bytes"] == 20 * 64 * 64 * 2
    assert by_name["raw"]["last_task"] == "raw"
    assert by_name["raw"]["ratio"] > 1
    assert [
        json.loads(x)["name"]
        for x in cli("ls", str(store), "--json", "--name", "sm*").stdout.splitlines()
    ] == ["smooth"]
    assert "3 results" in cli("ls", str(store), "--since", "1h").stdout
    assert "no results match" in cli("ls", str(store), "--since", "2999-01-01").stdout
    newest = cli("ls", str(store), "--last", "2").stdout.splitlines()
    assert [line.split()[0] for line in newest[1:-1]] == ["smooth", "mask"]
    assert "3 results" in newest[-1]
    assert "the newest 2 shown" in newest[-1]
    assert len(cli("ls", str(store), "--json", "--last", "1").stdout.splitlines()) == 1
    assert cli("ls", str(store), "--last", "0", ok=False).returncode == 2
    bad = cli("ls", str(store), "--since", "yesterday-ish", ok=False)
    assert bad.returncode == 2
    assert "neither a date" in bad.stderr


def test_python_listing_and_lineage(made: tuple) -> None:  # type: ignore[type-arg]
    store_path, _, targets, _ = made
    store = cpr_zarr.ResultStore(store_path, mode="r")
    frame = store.list()
    assert list(frame["name"]) == ["raw", "smooth", "mask"]
    assert {"name", "hash", "kind", "shape", "dtype", "chunks", "stored_bytes", "raw_bytes", "ratio",
            "created", "last_task", "last_flow_run"} <= set(frame.columns)  # fmt: skip
    assert frame["last_flow_run"].notna().all()
    lineage = store.lineage(targets["smooth"])
    assert lineage == {"inputs": [targets["raw"]], "outputs": [targets["mask"]]}
    assert store.lineage(targets["mask"])["inputs"] == [targets["smooth"], targets["raw"]]
    (record,) = store.provenance(targets["smooth"])
    assert record["task_name"] == "smooth"
    assert record["flow_name"] == "cli-flow"
    assert record["parameters"]["width"] == 3
    assert record["parameters"]["image"]["content_hash"] == targets["raw"].content_hash
    assert record["inputs"] == [targets["raw"].content_hash]
    assert record["versions"]["zarr"]
    # readable without cpr_zarr: one JSON object per record
    (path,) = (store_path / targets["smooth"].group_path / "cpr_zarr" / "provenance").iterdir()
    assert json.loads(path.read_text())["task_run_id"] == record["task_run_id"]


def test_info_shows_metadata_provenance_lineage_and_ngff(made: tuple) -> None:  # type: ignore[type-arg]
    store, _, targets, _ = made
    out = cli("info", str(store), targets["smooth"].content_hash[:8]).stdout
    assert targets["smooth"].group_path in out
    assert "task smooth run" in out
    assert "flow run" in out
    assert '"width": 3' in out
    assert "OME-NGFF" in out
    assert f"inputs (1): {targets['raw'].group_path}" in out
    assert f"outputs (1): {targets['mask'].group_path}" in out
    doc = json.loads(cli("info", str(store), "mask", "--json").stdout)
    assert doc["target"] == targets["mask"].to_dict()
    assert doc["lineage"]["inputs"] == [targets["smooth"].group_path, targets["raw"].group_path]
    missing = cli("info", str(store), "ffffffffff", ok=False)
    assert missing.returncode == 1
    assert "No committed result named or hashed 'ffffffffff'" in missing.stderr


def test_verify_passes_then_names_a_corrupted_chunk(made: tuple) -> None:  # type: ignore[type-arg]
    store, _, targets, _ = made
    assert "OK: 3 chunks of 3 results verified." in cli("verify", str(store)).stdout
    chunk = store / targets["raw"].group_path / "0" / "c" / "0" / "0" / "0"
    data = bytearray(chunk.read_bytes())
    data[-10] ^= 0xFF
    chunk.write_bytes(bytes(data))
    bad = cli("verify", str(store), ok=False)
    assert bad.returncode == 1
    assert "BAD " in bad.stdout
    assert f"chunk (0, 0, 0) of result '{targets['raw'].group_path}'" in bad.stdout
    assert "1 of 3 chunks failed verification" in bad.stdout
    assert cli("verify", str(store), targets["mask"].content_hash).returncode == 0


def test_gc_dry_run_then_removal_then_rerun_recomputes_exactly_that(made: tuple) -> None:  # type: ignore[type-arg]
    store, records, targets, (pipeline, calls) = made
    # a crashed writer's staging leftover, two hours old
    leftover = store / "_staging" / "raw-deadbeef"
    (leftover / "0").mkdir(parents=True)
    (leftover / "0" / "zarr.json").write_text("{}")
    old = time.time() - 7200
    os.utime(leftover / "0" / "zarr.json", (old, old))
    # forget the record of the "smooth" task: its result is now unreferenced
    smooth_record = [
        p for p in records.iterdir() if targets["smooth"].content_hash in p.read_text()
    ]
    assert len(smooth_record) == 1
    smooth_record[0].unlink()

    before = sorted(p.relative_to(store) for p in store.rglob("*"))
    dry = cli("gc", str(store), "--keep-referenced", str(records), "--grace", "0").stdout
    assert "would remove" in dry
    assert targets["smooth"].group_path in dry
    assert "_staging/raw-deadbeef" in dry
    assert targets["raw"].group_path not in dry
    assert sorted(p.relative_to(store) for p in store.rglob("*")) == before  # dry run

    # results made a minute ago are within the default grace period of an hour
    kept = cli("gc", str(store), "--keep-referenced", str(records)).stdout
    assert targets["smooth"].group_path not in kept
    done = cli("gc", str(store), "--keep-referenced", str(records), "--grace", "0", "--yes").stdout
    assert "removed 2 entries" in done
    assert not leftover.exists()
    assert [t.name for t in cpr_zarr.ResultStore(store, mode="r").targets()] == ["mask", "raw"]

    calls.clear()
    state = pipeline(return_state=True)
    assert calls == ["smooth"]  # exactly the removed result is recomputed
    assert state.result() == targets
    assert task_run_states(state.state_details.flow_run_id) == {
        "raw": ["Cached"], "smooth": ["Completed"], "mask": ["Cached"],
    }  # fmt: skip


def test_gc_size_budget_removes_least_recently_produced(made: tuple) -> None:  # type: ignore[type-arg]
    store, _, targets, (pipeline, calls) = made
    frame = cpr_zarr.ResultStore(store, mode="r").list()
    budget = int(
        frame["stored_bytes"].sum() - frame.loc[frame["name"] == "raw", "stored_bytes"].iloc[0]
    )
    out = cli("gc", str(store), "--max-size", str(budget), "--yes").stdout
    assert targets["raw"].group_path in out
    assert "least recently produced" in out
    assert "removed 1 entry," in out
    calls.clear()
    assert pipeline() == targets
    assert calls == ["raw"]


def test_open_without_a_usable_napari_prints_how_to_view(made: tuple) -> None:  # type: ignore[type-arg]
    store, _, targets, _ = made
    # CI has no display: whether or not napari is installed, the CLI explains how to view
    out = cli("open", str(store), targets["mask"].content_hash).stdout
    assert "To view this result:" in out
    assert f"napari --plugin cpr-zarr {store}/{targets['mask'].group_path}" in out


def test_help_on_every_command() -> None:
    for command in ("ls", "info", "verify", "gc", "open"):
        out = cli(command, "--help").stdout
        assert "Usage: cpr-zarr " + command in out
    assert "Inspect a cpr_zarr result store" in cli("--help").stdout


def test_info_and_ls_on_every_kind_of_result(tmp_path: Path) -> None:
    import pandas as pd
    from PIL import Image

    store = cpr_zarr.ResultStore(tmp_path / "results.zarr")
    image = store.save(np.arange(2 * 8 * 8, dtype=np.uint16).reshape(2, 8, 8), "img")
    labels = store.save(cpr_zarr.Labels(np.ones((2, 8, 8), np.uint8), image=image), "lab")
    table = store.save(pd.DataFrame({"label": [1, 2], "area": [3.0, 4.5]}), "measure")
    pil = store.save(np.asarray(Image.new("RGB", (6, 4))).transpose(2, 0, 1).copy(), "pil")
    for target, kind_line in [
        (image, "array         uint16[2, 8, 8]"),
        (labels, "array         uint8[2, 8, 8]"),
        (table, "table         2 rows x 2 columns"),
        (pil, "array         uint8[3, 4, 6]"),
    ]:
        text = cli("info", str(store.url), target.content_hash[:8]).stdout
        assert kind_line in text, text
        doc = json.loads(cli("info", str(store.url), target.content_hash[:8], "--json").stdout)
        assert doc["target"]["group_path"] == target.group_path
        assert doc["chunk_count"] >= 1
    listing = cli("ls", str(store.url)).stdout
    assert "nan" not in listing
    assert listing.strip().endswith("stored")
    one = cpr_zarr.ResultStore(tmp_path / "one.zarr")
    one.save(np.zeros(3), "only")
    assert "1 result," in cli("ls", str(one.url)).stdout


# -- rm, remedies that run as printed, gc with label images, export errors ----------------


def invoke(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    """The CLI run in this process by click's runner: for tests that call it many times
    (a subprocess costs an interpreter start and the imports). Standard input is not a
    terminal; an exception the CLI does not turn into a clean error fails the test."""
    from click.testing import CliRunner

    from cpr_zarr.cli import main

    result = CliRunner().invoke(main, list(args), prog_name="cpr-zarr", catch_exceptions=False)
    proc = subprocess.CompletedProcess(
        ["cpr-zarr", *args], result.exit_code, result.stdout, result.stderr
    )
    if ok:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def run_printed(command: str) -> subprocess.CompletedProcess[str]:
    """Run a ``cpr-zarr ...`` command line exactly as the CLI printed it (POSIX quoting)."""
    argv = shlex.split(command)
    assert argv[0] == "cpr-zarr", command
    return invoke(*argv[1:])


def image_with_labels(root: Path) -> tuple[cpr_zarr.ResultStore, cpr_zarr.ZarrTarget, list[str]]:
    store = cpr_zarr.ResultStore(root)
    image = store.save(np.arange(2 * 16 * 16, dtype=np.uint16).reshape(2, 16, 16), "image")
    labels = [
        store.save(cpr_zarr.Labels((image.to_numpy() > t).astype(np.uint8), image=image), name)
        for t, name in ((100, "cells"), (300, "nuclei"))
    ]
    return store, image, sorted(t.group_path for t in labels)


def test_rm_shows_labels_and_downstream_then_removes(made: tuple) -> None:  # type: ignore[type-arg]
    store, _, targets, (pipeline, calls) = made
    rs = cpr_zarr.ResultStore(store)
    labels = rs.save(
        cpr_zarr.Labels(np.ones((20, 64, 64), np.uint8), image=targets["raw"]), "cells"
    )
    table = rs.save(cpr_zarr.Table(pd.DataFrame({"label": [1], "area": [9.0]}), labels=labels), "m")
    assert table.group_path.startswith(f"{targets['raw'].group_path}/tables/")
    before = sorted(p.relative_to(store) for p in store.rglob("*"))

    dry = invoke("rm", str(store), "raw", "--dry-run").stdout
    assert "would remove" in dry
    assert targets["raw"].group_path in dry
    assert f"{labels.group_path}  (a label image, goes with its image)" in dry
    assert f"{table.group_path}  (a table, goes with its image)" in dry
    downstream = f"downstream, kept: {targets['smooth'].group_path}, {targets['mask'].group_path}"
    assert downstream in dry
    assert "their provenance will name an input the store no longer holds" in dry
    assert "dry run: would remove 1 result (and 1 label image and 1 table inside it)" in dry
    assert sorted(p.relative_to(store) for p in store.rglob("*")) == before

    # not at a terminal and no --yes: the plan, then a refusal that removes nothing
    refused = invoke("rm", str(store), targets["raw"].content_hash[:8], ok=False)
    assert refused.returncode == 2
    assert targets["raw"].group_path in refused.stdout
    assert "standard input is not a terminal" in refused.stderr
    assert "--yes" in refused.stderr
    assert sorted(p.relative_to(store) for p in store.rglob("*")) == before

    done = invoke("rm", str(store), targets["raw"].group_path, "--yes").stdout
    assert f"removed  {labels.group_path}" in done
    assert f"removed  {table.group_path}  (a table, went with its image)" in done
    assert "removed 1 result (and 1 label image and 1 table inside it)" in done
    names = [t.name for t in cpr_zarr.ResultStore(store, mode="r").targets()]
    assert names == ["mask", "smooth"]  # downstream results stay
    assert invoke("verify", str(store)).returncode == 0
    calls.clear()
    assert pipeline() == targets  # the removed result is a cache miss: computed again
    assert calls == ["raw"]


def test_rm_refuses_unknown_and_ambiguous_refs_and_removes_nothing(tmp_path: Path) -> None:
    store = cpr_zarr.ResultStore(tmp_path / "results.zarr")
    one = store.save(np.zeros((4, 4), np.uint8), "twin")
    store.save(np.ones((4, 4), np.uint8), "twin")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    for refs, problem in [
        (["twin"], "matches 2 results"),
        ([one.group_path, "nothing-here"], "No committed result named or hashed 'nothing-here'"),
        (["../etc"], "is not a result of store"),
    ]:
        bad = invoke("rm", store.url, *refs, "--yes", ok=False)
        assert bad.returncode == 1, bad.stderr
        assert problem in bad.stderr
        assert store.url in bad.stderr
        assert f"Nothing was removed; `cpr-zarr ls {store.url}` lists the results." in bad.stderr
        assert "Traceback" not in bad.stderr
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    missing = invoke("rm", str(tmp_path / "nowhere.zarr"), "twin", "--yes", ok=False)
    assert missing.returncode == 1
    assert "No result store at" in missing.stderr
    assert not (tmp_path / "nowhere.zarr").exists()  # rm never creates a store
    both = invoke("rm", store.url, "twin", "--yes", "--dry-run", ok=False)
    assert both.returncode == 2
    assert "contradict" in both.stderr


def test_rm_asks_at_a_terminal(tmp_path: Path) -> None:
    store, image, labels = image_with_labels(tmp_path / "results.zarr")

    def answer(text: bytes) -> subprocess.CompletedProcess[str]:
        # stdin is a terminal (a pty), stdout a pipe: rm asks, the answer is typed in
        primary, secondary = pty.openpty()
        env = {**os.environ, "PREFECT_API_URL": "http://127.0.0.1:9/api"}
        try:
            proc = subprocess.Popen(
                [CLI, "rm", store.url, "image"],
                stdin=secondary,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
            os.write(primary, text)
            out, err = proc.communicate(timeout=120)
        finally:
            os.close(primary)
            os.close(secondary)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    no = answer(b"n\n")
    assert "Remove 1 result (and 2 label images inside it)? [y/N]" in no.stdout
    assert no.returncode == 1
    assert "Aborted" in no.stderr
    assert [t.group_path for t in store.targets()] == sorted([image.group_path, *labels])
    yes = answer(b"y\n")
    assert yes.returncode == 0, yes.stdout + yes.stderr
    assert "removed 1 result (and 2 label images inside it)" in yes.stdout
    assert list(store.targets()) == []


def test_verify_remedies_run_as_printed(made: tuple) -> None:  # type: ignore[type-arg]
    store, _, targets, _ = made
    # damaged data: a chunk of raw; a damaged record (its copy is intact): smooth's
    chunk = store / targets["raw"].group_path / "0" / "c" / "0" / "0" / "0"
    data = bytearray(chunk.read_bytes())
    data[-10] ^= 0xFF
    chunk.write_bytes(bytes(data))
    marker = store / targets["smooth"].group_path / "zarr.json"
    marker.write_text(marker.read_text().replace('"uint16"', '"int16"', 1))

    bad = invoke("verify", str(store), ok=False)
    assert bad.returncode == 1
    tail = bad.stdout.split("To resolve:\n")[1].splitlines()
    commands = [line.strip() for line in tail if line.strip().startswith("cpr-zarr ")]
    repair = f"cpr-zarr verify {store} --repair"
    remove = f"cpr-zarr rm {store} {targets['raw'].group_path} --yes"
    assert commands == [repair, remove], bad.stdout
    # the error messages name the same commands
    assert f"`{remove}`" in bad.stdout
    assert f"`{repair}`" in bad.stdout

    removed = run_printed(remove)  # raw's data cannot be rebuilt: it goes
    assert f"removed  {targets['raw'].group_path}" in removed.stdout
    fixed = run_printed(repair)  # smooth's record is rebuilt from its intact copy
    assert f"REPAIRED rebuilt the commit record of '{targets['smooth'].group_path}'" in fixed.stdout
    assert "OK: 2 chunks of 2 results verified." in fixed.stdout
    assert "OK: 2 chunks of 2 results verified." in invoke("verify", str(store)).stdout
    assert [t.name for t in cpr_zarr.ResultStore(store, mode="r").targets()] == ["mask", "smooth"]


def test_gc_lists_the_label_images_it_removes(tmp_path: Path) -> None:
    store, image, labels = image_with_labels(tmp_path / "results.zarr")
    seg = store.open(labels[0])
    table = store.save(cpr_zarr.Table(pd.DataFrame({"label": [1], "n": [3]}), labels=seg), "m")
    other = store.save(np.zeros(8, np.uint8), "small")
    budget = cpr_zarr.ResultStore(store.url, mode="r").list()
    keep = int(budget.loc[budget["name"] == "small", "stored_bytes"].iloc[0])
    dry = invoke("gc", store.url, "--max-size", str(keep)).stdout
    assert f"{image.group_path}  (least recently produced" in dry
    for path in labels:
        assert f"would remove{'':14}{path}  (a label image, goes with its image)" in dry
    assert f"would remove{'':14}{table.group_path}  (a table, goes with its image)" in dry
    assert "in 1 entry (and 2 label images and 1 table inside it); run again with --yes" in dry
    done = invoke("gc", store.url, "--max-size", str(keep), "--yes").stdout
    for path in labels:
        assert f"remove{'':14}{path}  (a label image, goes with its image)" in done
    assert f"remove{'':14}{table.group_path}  (a table, goes with its image)" in done
    assert "removed 1 entry (and 2 label images and 1 table inside it)" in done
    assert [t.group_path for t in store.targets()] == [other.group_path]
    bad = invoke("gc", store.url, "--max-size", "12 parsecs", ok=False)
    assert bad.returncode == 2
    assert "Invalid value for '--max-size'" in bad.stderr


def test_export_refuses_wrong_combinations_cleanly(tmp_path: Path, result_storage: Path) -> None:
    import pandas as pd
    from PIL import Image

    rs, _, _ = image_with_labels(tmp_path / "results.zarr")
    store, records = Path(rs.url), result_storage
    table = rs.save(pd.DataFrame({"label": [1, 2], "area": [3.0, 4.5]}), "measure")
    rs.save(np.arange(5.0), "vector")

    @cpr_zarr.task(store=str(store), result_storage=records)
    def snapshot() -> Image.Image:
        return Image.new("RGB", (6, 4), (10, 20, 30))

    pil = snapshot()
    assert isinstance(pil, cpr_zarr.target.PILTarget)
    out = tmp_path / "out"
    out.mkdir()
    cases = [
        (
            table.group_path,
            out / "t.tif",
            [],
            "as OME-TIFF: it is a table (2 rows), which exports to CSV",
        ),
        (table.group_path, out / "t.ome.tif", [], "as OME-TIFF: it is a table"),
        (table.group_path, out / "t.zarr", [], "as NGFF 0.4 (zarr v2): it is a table"),
        (table.group_path, out / "t2.csv", ["--format", "ome-tiff"], "it is a table"),
        ("image", out / "raw.csv", [], "as CSV: it is an array (uint16[2, 16, 16]), not a table"),
        (pil.group_path, out / "pil.csv", [], "as CSV: it is an array (uint8[3, 4, 6])"),
        ("vector", out / "v.ome.tif", [], "it is a 1-D array (float64[5]), neither a table"),
        ("image", out / "raw.xyz", [], "cannot tell the format from"),
        ("image", out / "missing" / "raw.ome.tif", [], "does not exist; create it first"),
    ]
    for ref, dest, options, message in cases:
        bad = invoke("export", str(store), ref, str(dest), *options, ok=False)
        assert bad.returncode == 2, (ref, dest, bad.stdout, bad.stderr)
        assert bad.stderr.startswith("Usage: cpr-zarr export"), bad.stderr
        assert message in bad.stderr, bad.stderr
        assert "Traceback" not in bad.stderr
        assert not dest.exists()
        # the example command the error gives runs as printed
        if "For example: cpr-zarr " in bad.stderr:
            example = bad.stderr.split("For example: ")[1].strip()
            assert "exported" in run_printed(example).stdout
        if "python -c " in bad.stderr:
            argv = shlex.split(bad.stderr.split("Read it in Python instead: ")[1])
            assert argv[0] == "python"  # the interpreter cpr_zarr is installed in
            shown = subprocess.run(
                [sys.executable, *argv[1:]], capture_output=True, text=True, timeout=120, check=True
            )
            assert shown.stdout.strip() == "[0. 1. 2. 3. 4.]"
    assert (out / "t.csv").read_text().splitlines()[0] == ",label,area"
    assert (out / "raw.ome.tif").exists()
    assert (out / "pil.ome.tif").exists()
    taken = invoke("export", str(store), "image", str(out / "raw.zarr")).stdout
    assert "exported" in taken
    again = invoke("export", str(store), "image", str(out / "raw.zarr"), ok=False)
    assert again.returncode == 1
    assert "already exists" in again.stderr
    assert "Traceback" not in again.stderr
    folder = invoke("export", str(store), "measure", str(out), "--format", "csv", ok=False)
    assert folder.returncode == 1
    assert "Cannot write" in folder.stderr
    assert "Traceback" not in folder.stderr


def test_info_and_plural_forms_on_a_pil_result_and_singletons(
    tmp_path: Path, result_storage: Path
) -> None:
    from PIL import Image

    store, records = tmp_path / "results.zarr", result_storage

    @cpr_zarr.task(store=str(store), result_storage=records)
    def gray() -> Image.Image:
        return Image.new("L", (5, 3), 7)

    pil = gray()
    text = invoke("info", str(store), pil.group_path).stdout
    assert "array         uint8[3, 5], chunks [3, 5], 1 chunk" in text
    assert "provenance (1 record):" in text
    assert "task gray run" in text
    doc = json.loads(cli("info", str(store), pil.group_path, "--json").stdout)
    assert doc["target"]["group_path"] == pil.group_path
    assert doc["chunk_count"] == 1
    single = invoke("verify", str(store), pil.group_path).stdout
    assert "OK: 1 chunk of 1 result verified." in single
