"""Flows on the DaskTaskRunner with worker processes: every result record must be persisted."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import numpy as np
import pytest

import cpr_zarr
from tests.conftest import task_run_states
from tests.flows_dask import make_compute_flow

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.usefixtures("prefect_server")


def test_tasks_that_compute_on_workers_persist_every_record(
    tmp_path: Path, result_storage: Path
) -> None:
    # On a Dask worker, .compute()/np.asarray secede, and Prefect's transaction context leaked
    # into the next task on that worker, whose record was silently not written.
    n_chains = 3
    flow = make_compute_flow(str(tmp_path / "results.zarr"), result_storage, n_chains)
    state = flow(return_state=True)
    first = state.result()
    records = sorted(p.name for p in result_storage.iterdir())
    assert len(records) == 3 * n_chains, records

    # every record is a small JSON pointer, loadable without cpr_zarr imported first
    for name in records:
        record = json.loads((result_storage / name).read_text())
        assert record["metadata"]["serializer"]["type"] == "json"
        assert len(record["result"]) < 2048

    again = flow(return_state=True)
    assert again.result() == first
    states = task_run_states(again.state_details.flow_run_id)
    assert states == {name: ["Cached"] * n_chains for name in ("make", "smooth", "stats")}
    store = cpr_zarr.ResultStore(tmp_path / "results.zarr", mode="r")
    assert len(list(store.targets())) == 2 * n_chains
    smoothed = [t for t in store.targets() if t.name == "smooth"]
    np.testing.assert_array_equal(smoothed[0].to_numpy(), smoothed[0].to_numpy().astype(np.float32))


def test_region_read_on_a_worker_reads_only_the_needed_chunk(
    tmp_path: Path, result_storage: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dask

    from tests.counting_fs import LOG_ENV, chunk_reads
    from tests.flows_dask import make_region_flow

    log = tmp_path / "reads.log"
    monkeypatch.setenv(LOG_ENV, str(log))
    # the Prefect UI preview of each result reads its smallest level: off, to count only the
    # reads of the tasks themselves (workers inherit the environment)
    monkeypatch.setenv("CPR_ZARR_ARTIFACTS", "0")
    store_url = f"countfile://{tmp_path}/results.zarr"
    with dask.config.set({"distributed.worker.preload": ["tests.counting_fs"]}):
        out = make_region_flow(store_url, result_storage)()
    volume = out["volume"]
    assert isinstance(volume, cpr_zarr.ZarrTarget)
    assert volume.chunks == (64, 256, 256)  # 2 x 2 x 2 chunks of 8 MiB
    expected = np.random.default_rng(0).integers(0, 4000, size=(128, 512, 512), dtype=np.uint16)
    assert out["sum"] == int(expected[70:90, 10:200, 300:500].sum())
    # task B touched one chunk of eight, once; the writer read none
    assert chunk_reads(str(log), volume.group_path) == ["c/1/0/1"]
    # a 64 MiB result crossed Dask and Prefect as a pointer of a few KB
    assert all(n < 16_000 for n in out["carried_bytes"]), out["carried_bytes"]


def test_streamed_hash_is_the_same_on_a_distributed_cluster(tmp_path: Path) -> None:
    import dask.array as da
    from distributed import Client, LocalCluster

    from tests.conftest import microscopy_volume

    data = microscopy_volume((48, 96, 80))
    store = cpr_zarr.ResultStore(tmp_path / "results.zarr")
    expected = store.save(data, name="local", chunks=(10, 48, 40))
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=2, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster),
    ):
        lazy = da.from_array(data, chunks=(7, 30, 80)) + 0  # blocks computed on the workers
        streamed = store.save(lazy, name="cluster", chunks=(10, 48, 40))
    assert streamed.content_hash == expected.content_hash
    assert streamed == expected  # identical content is stored once


@pytest.mark.parametrize("threads_per_worker", [1, 2])
def test_natural_user_code_on_workers_persists_every_record(
    tmp_path: Path, threads_per_worker: int
) -> None:
    # Ordinary task bodies (no cpr_zarr.compute) on 2 worker processes: before the fix,
    # 13-15 of 16 and 8-11 of 12 records were written, every task showing Completed.
    from tests.flows_dask import NATURAL_TASKS, make_natural_flow

    n_images, runs = 4, 2
    counts = []
    for run in range(runs):
        records = tmp_path / f"records-{run}"
        records.mkdir()
        store_url = str(tmp_path / f"results-{run}.zarr")
        flow = make_natural_flow(store_url, records, threads_per_worker, n_images)
        state = flow(return_state=True)
        assert state.is_completed(), state
        counts.append(len(list(records.iterdir())))
    assert counts == [NATURAL_TASKS * n_images] * runs, counts
