"""Prefect UI artifacts of cpr_zarr tasks, read back through the Prefect API (real server)."""

from __future__ import annotations

import base64
import io
import json
import re
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from prefect import flow, get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from prefect.task_runners import ThreadPoolTaskRunner

import cpr_zarr
from cpr_zarr.artifacts import ARTIFACTS_ENV, flow_table_key
from tests.conftest import microscopy_volume

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.usefixtures("prefect_server")

N_IMAGES = 8


def run_artifacts(flow_run_id: object) -> list[Any]:
    """Every artifact of a flow run, as the UI's flow run page lists them."""
    with get_client(sync_client=True) as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )


def flow_table(artifacts: list[Any], flow_run_id: object) -> list[dict[str, str]]:
    tables = [a for a in artifacts if a.key == flow_table_key(flow_run_id)]
    assert len(tables) == 1, [(a.key, a.id) for a in tables]
    assert tables[0].type == "table"
    return json.loads(tables[0].data)


def previews(artifacts: list[Any]) -> dict[str, np.ndarray]:
    """The PNG of each preview markdown, decoded, by the result name in its title."""
    out = {}
    for artifact in artifacts:
        if artifact.type != "markdown":
            continue
        blocks = artifact.data.split("### ")[1:]
        assert blocks, artifact.data[:300]
        for block in blocks:
            title = re.match(r"(\S+) `([0-9a-f]{12})`", block)
            uri = re.search(r"\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", block)
            assert title, block[:300]
            assert uri, block[:300]
            png = Image.open(io.BytesIO(base64.b64decode(uri.group(1))))
            assert png.format == "PNG"
            out[f"{title.group(1)}-{title.group(2)}"] = np.asarray(png.convert("RGB"))
    return out


def make_flow(store_url: str, records: Path, task_runner: Any, n_images: int = N_IMAGES) -> Any:
    @cpr_zarr.task(store=store_url, result_storage=records)
    def image(seed: int) -> cpr_zarr.Image:
        volume = microscopy_volume((12, 64, 48), seed=seed)
        return cpr_zarr.Image(volume, axes="zyx", scale=(2.0, 0.5, 0.5), units="micrometer")

    @cpr_zarr.task(store=store_url, result_storage=records)
    def segment(volume: np.ndarray, raw: cpr_zarr.ZarrTarget) -> cpr_zarr.Labels:
        mask = volume > np.percentile(volume, 90)
        labels = (mask * (1 + np.arange(volume.shape[2]) // 12)).astype(np.uint16)
        return cpr_zarr.Labels(labels, image=raw)

    @cpr_zarr.task(store=store_url, result_storage=records)
    def measure(volume: np.ndarray) -> pd.DataFrame:
        return pd.DataFrame({"mean": [float(volume.mean())], "max": [int(volume.max())]})

    @cpr_zarr.task(store=store_url, result_storage=records, artifacts=False)
    def quiet(volume: np.ndarray) -> np.ndarray:
        return volume[:1]

    @flow(task_runner=task_runner)
    def pipeline() -> None:
        images = image.map(range(n_images))
        first = images[0].result()
        futures = [segment.submit(first, first), measure.submit(first), quiet.submit(first)]
        for f in futures:
            f.result()
        for f in images:
            f.result()

    return pipeline


def check_run(state: Any, *, cached: bool, n_images: int = N_IMAGES) -> list[dict[str, str]]:
    flow_run_id = state.state_details.flow_run_id
    artifacts = run_artifacts(flow_run_id)
    rows = flow_table(artifacts, flow_run_id)
    # every result of every task (not quiet's), each once, whatever order tasks finished in
    names = sorted(row["result"] for row in rows)
    assert names == sorted(["image"] * n_images + ["segment", "measure"]), names
    assert len({row["group"] for row in rows}) == len(rows)
    assert {row["cache hit"] for row in rows} == {"yes" if cached else "no"}
    by_name = {row["result"]: row for row in rows}
    assert by_name["image"]["kind"] == "image"
    assert by_name["image"]["shape"] == "12x64x48"
    assert by_name["image"]["dtype"] == "uint16"
    assert by_name["image"]["physical size"] == "z 24 µm, y 32 µm, x 24 µm"
    assert float(by_name["image"]["ratio"]) > 1
    assert by_name["image"]["stored"].endswith(("KiB", "B"))
    assert by_name["segment"]["kind"] == "labels"
    assert by_name["measure"]["kind"] == "table"
    store = cpr_zarr.ResultStore(rows[0]["store"], mode="r")
    for row in rows:
        assert store.open(row["group"]).content_hash.startswith(row["hash"])
    # one table per task run with results, holding that run's rows
    task_tables = [a for a in artifacts if a.type == "table" and a.key is None]
    assert len(task_tables) == n_images + 2
    assert all(a.task_run_id is not None for a in task_tables)
    assert sorted(r["group"] for a in task_tables for r in json.loads(a.data)) == sorted(
        r["group"] for r in rows
    )
    # a preview per array result (not the table), decodable and not blank
    pictures = previews(artifacts)
    images = {row["group"] for row in rows if row["kind"] == "image"}
    assert len([k for k in pictures if k.startswith("image-")]) == len(images)
    assert set(pictures) == {
        f"{row['result']}-{row['hash']}" for row in rows if row["kind"] != "table"
    }
    for key, rgb in pictures.items():
        assert rgb.std() > 5, key
        assert max(rgb.shape[:2]) == 256
    labels = pictures[f"segment-{by_name['segment']['hash']}"]
    assert (labels[..., 0] != labels[..., 1]).any()  # coloured, not grey
    # the image preview keeps the physical aspect: 64 x 48 pixels of 0.5 um
    assert pictures[f"image-{by_name['image']['hash']}"].shape[:2] == (256, 192)
    return rows


def test_each_flow_run_gets_a_results_table_and_previews(
    tmp_path: Path, result_storage: Path
) -> None:
    # created before the flow: 8 tasks creating a new store at once race (a store.py issue)
    cpr_zarr.ResultStore(tmp_path / "s.zarr")
    pipeline = make_flow(str(tmp_path / "s.zarr"), result_storage, ThreadPoolTaskRunner(8))
    first = pipeline(return_state=True)
    check_run(first, cached=False)
    again = pipeline(return_state=True)
    check_run(again, cached=True)


def test_results_table_is_complete_with_dask_worker_processes(
    tmp_path: Path, result_storage: Path
) -> None:
    from tests.flows_dask import two_worker_processes

    runner = two_worker_processes()
    pipeline = make_flow(str(tmp_path / "s.zarr"), result_storage, runner, n_images=4)
    check_run(pipeline(return_state=True), cached=False, n_images=4)


def test_artifacts_off_by_environment(
    tmp_path: Path, result_storage: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ARTIFACTS_ENV, "0")
    pipeline = make_flow(str(tmp_path / "s.zarr"), result_storage, ThreadPoolTaskRunner(4))
    state = pipeline(return_state=True)
    assert run_artifacts(state.state_details.flow_run_id) == []


def test_long_saves_update_a_progress_artifact(
    tmp_path: Path, result_storage: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dask.array as da

    monkeypatch.setenv("CPR_ZARR_PROGRESS_SECONDS", "0.2")

    def slow(block: np.ndarray) -> np.ndarray:
        import time

        time.sleep(0.3)
        return block

    @cpr_zarr.task(store=str(tmp_path / "s.zarr"), result_storage=result_storage)
    def big() -> da.Array:
        volume = microscopy_volume((40, 300, 280))
        return da.from_array(volume, chunks=(10, 150, 140)).map_blocks(slow)

    @flow
    def one() -> None:
        big()

    state = one(return_state=True)
    everything = run_artifacts(state.state_details.flow_run_id)
    progress = [a for a in everything if a.type == "progress"]
    assert len(progress) == 1
    assert progress[0].data == 100.0
    assert re.match(r"saved big \(streaming\): \d+ chunks, ", progress[0].description)
    assert progress[0].task_run_id is not None


def test_runs_whose_result_holds_no_array_run_no_artifacts_hook(
    tmp_path: Path, result_storage: Path
) -> None:
    """Prefect logs two lines per hook it runs (5 ms a task run): a run that computed a
    number leaves the artifacts hook out; array results and cache hits keep it, and a
    user's own completion hook always runs."""
    import logging

    store = cpr_zarr.ResultStore(tmp_path / "s.zarr")
    user_hook_runs: list[str] = []

    def user_hook(task: Any, task_run: Any, state: Any) -> None:
        user_hook_runs.append(task_run.name)

    @cpr_zarr.task(store=store, result_storage=result_storage, on_completion=[user_hook])
    def mean_of(i: int) -> float:
        return i / 2

    @cpr_zarr.task(store=store, result_storage=result_storage)
    def ramp(i: int) -> np.ndarray:
        return np.arange(4, dtype=np.float32) + i

    @flow(task_runner=ThreadPoolTaskRunner(4))
    def pipeline() -> None:
        mean_of.map(range(3)).wait()
        ramp.map(range(2)).wait()
        mean_of.with_options(name="renamed").map(range(3, 5)).wait()

    class Lines(logging.Handler):
        def __init__(self) -> None:
            super().__init__()
            self.lines: list[tuple[str, str]] = []

        def emit(self, record: logging.LogRecord) -> None:
            run = getattr(record, "task_run_name", "") or ""
            self.lines.append((run, record.getMessage()))

    lines = Lines()
    logger = logging.getLogger("prefect.task_runs")
    level = logger.level
    logger.setLevel(logging.INFO)  # the tests run Prefect at WARNING
    logger.addHandler(lines)
    try:
        state = pipeline(return_state=True)
        cached = pipeline(return_state=True)
    finally:
        logger.removeHandler(lines)
        logger.setLevel(level)
    assert state.is_completed()
    assert cached.is_completed()
    hooked = [run for run, message in lines.lines if "'cpr_zarr_artifacts'" in message]
    # computed: only the two array runs; cached re-run: every run (the body did not run)
    computed = hooked[: len(hooked) - 2 * 7]
    assert sorted({r.split("-")[0] for r in computed}) == ["ramp"], hooked
    assert len(hooked) == 2 * 2 + 2 * 7, hooked  # two lines per hook run
    assert len(user_hook_runs) == 2 * 5
    tables = [a for a in run_artifacts(state.state_details.flow_run_id) if a.type == "table"]
    assert sum((a.metadata_ or {}).get("cpr_zarr") == "task-results" for a in tables) == 2
