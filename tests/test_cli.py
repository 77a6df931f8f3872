"""The ``cpr-zarr`` command line, run as a subprocess on stores made by real flows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
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
    proc = subprocess.run([CLI, *args], capture_output=True, text=True, env=env, timeout=120)
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
    # readable with plain zarr, without cpr_zarr
    import zarr

    group = zarr.open_group(
        str(store_path), path=f"{targets['smooth'].group_path}/provenance", mode="r"
    )
    (child,) = [g for _, g in group.groups()]
    assert child.attrs["cpr_zarr_provenance"]["task_run_id"] == record["task_run_id"]


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
    assert "removed 1 entries" in out
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
