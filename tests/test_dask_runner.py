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
