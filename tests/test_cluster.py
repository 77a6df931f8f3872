"""A flow on a Dask cluster started the HPC way, writing to S3 on loopback.

``dask scheduler`` and two ``dask worker`` programs run as separate processes (what
dask-jobqueue starts on SLURM), each worker in its own working directory with its own empty
``PREFECT_HOME`` and its own S3 access key. The flow (examples/cluster_flow.py, run as a
user runs it, in another process with yet another key) connects with
``DaskTaskRunner(address=...)``. The S3 proxy records which key signed every request, so
the test sees who wrote and who read what.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import scipy.ndimage as ndi

import cpr_zarr

if TYPE_CHECKING:
    from types import ModuleType

    from tests.s3_server import S3Server

ROOT = Path(__file__).parents[1]
EXAMPLE = ROOT / "examples" / "cluster_flow.py"
BUCKET = "cpr-zarr-tests"
SHAPE = (16, 512, 512)  # uint16, 8 MiB; stored as 4 chunks of 16 x 256 x 256
ROI = (0, 8, 0, 200, 0, 200)  # inside the first chunk
TILE = re.compile(
    r"^  tile (\d+): (\S+) \((\S+)\) -> (\S+) \((\S+)\) -> roi mean (\S+) max (\S+) \((\S+)\)$",
    re.M,
)


def _example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("cluster_flow_example", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run_flow(address: str, store_url: str, offset: int, cwd: Path) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path])}
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE), "--scheduler", address, "--store", store_url,
         "--tiles", "2", "--shape", *map(str, SHAPE), "--roi", *map(str, ROI),
         "--offset", str(offset)],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-5000:]
    return proc.stdout


def _transfers(address: str) -> list[tuple[bool, str, int]]:
    """Every value a worker sent to another worker (or a client): (Dask array block?, key,
    bytes). Prefect task runs are submitted under string keys; blocks of array graphs (the
    computations inside tasks) have tuple keys."""
    from distributed import Client

    def sent(dask_worker: Any) -> list[tuple[bool, str, int]]:
        return [
            (isinstance(key, tuple), str(key), int(nbytes))
            for entry in dask_worker.transfer_outgoing_log
            for key, nbytes in entry["keys"].items()
        ]

    with Client(address) as client:
        return [item for items in client.run(sent).values() for item in items]


@pytest.mark.usefixtures("prefect_server")
def test_flow_on_separately_started_scheduler_and_workers_writing_to_s3(
    s3_server: S3Server, tmp_path: Path
) -> None:
    example = _example()
    prefix = uuid.uuid4().hex
    store_url = f"s3://{BUCKET}/{prefix}/results.zarr"
    keys = [f"AKIACPRZARRWORKER{i:03d}" for i in range(2)]  # one per worker "job"
    flow_key = s3_server.ACCESS_KEY  # the flow process's (the test's environment)
    worker_env = [
        {
            "AWS_ACCESS_KEY_ID": key,
            "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path]),
            # the UI previews read each result's smallest level: off, to see only the tasks' reads
            "CPR_ZARR_ARTIFACTS": "0",
        }
        for key in keys
    ]
    with example.hpc_style_cluster(2, tmp_path / "cluster", worker_env) as address:
        workers = example.workers_of(address, 2)  # sorted by name: workers[i] has keys[i]
        key_of = dict(zip(workers, keys, strict=True))
        homes = [tmp_path / "cluster" / f"worker-{i}" / "prefect-home" for i in range(2)]
        s3_server.proxy.reset_counts()
        first = _run_flow(address, store_url, 0, tmp_path)
        writes = {m: s3_server.proxy.signed_by(m, f"/{BUCKET}/{prefix}/") for m in ("PUT", "POST", "DELETE")}  # fmt: skip
        puts = {p: s3_server.proxy.signed_by("PUT", p) for p in s3_server.proxy.keys("PUT", prefix)}
        reads = {
            path: s3_server.proxy.signed_by("GET", path) for path in s3_server.proxy.keys("GET", prefix)
        }  # fmt: skip
        transfers = _transfers(address)

        s3_server.proxy.reset_counts()
        second = _run_flow(address, store_url, 1, tmp_path)  # every task on another worker
        second_chunk_puts = s3_server.proxy.count("PUT", "/0/c/")
        record_reads = s3_server.proxy.signed_by("GET", f"/{BUCKET}/{prefix}/prefect-records/")

    assert "ran 6 tasks (6 Completed) on 2 Dask workers" in first, first
    assert "ran 6 tasks (6 Cached) on 2 Dask workers" in second, second
    tiles = [m.groups() for m in TILE.finditer(first)]
    assert len(tiles) == 2, first
    # the placement shifted by one worker, and the cached results are the same
    again = [m.groups() for m in TILE.finditer(second)]
    for t1, t2 in zip(tiles, again, strict=True):
        assert (t2[1], t2[3], t2[5:7]) == (t1[1], t1[3], t1[5:7])
        assert (t2[2], t2[4], t2[7]) == (t1[4], t1[2], t1[4])

    # 1. Every byte was written by the workers, each with its own credentials
    assert sum(writes["PUT"].values()) > 0
    for method, signers in writes.items():
        assert set(signers) <= set(keys), (method, signers)
    assert all(writes["PUT"][k] > 0 for k in keys), writes  # both workers wrote
    store = cpr_zarr.ResultStore(store_url, mode="r")
    for _, raw_path, raw_worker, smooth_path, smooth_worker, *_ in tiles:
        for path, worker in ((raw_path, raw_worker), (smooth_path, smooth_worker)):
            (record,) = store.provenance(path)  # one save, by the worker it was placed on
            assert record["worker"] == worker, (path, record)
            assert record["pid"] != os.getpid()
            assert record["task_name"] == path.rsplit("-", 1)[0]
            # the result was committed by that worker, with its own key
            group_puts = {p: k for p, k in puts.items() if f"/{path}/" in p}
            assert group_puts, path
            assert all(set(k) <= set(keys) for k in group_puts.values()), group_puts
            commit = f"/{BUCKET}/{prefix}/results.zarr/{path}/zarr.json"
            assert set(group_puts[commit]) == {key_of[worker]}, group_puts[commit]
        # a numpy result is written whole by its task's process; the blocks of a Dask result
        # by whichever workers compute them (the save's graph runs on the cluster)
        raw_puts = {p: k for p, k in puts.items() if f"/{raw_path}/" in p}
        assert all(set(k) == {key_of[raw_worker]} for k in raw_puts.values()), raw_puts

    # 2. Downstream tasks on other workers read lazily, from S3, not through Dask
    for _, raw_path, raw_worker, smooth_path, smooth_worker, *_, measure_worker in tiles:
        assert smooth_worker != raw_worker
        assert measure_worker != smooth_worker
        raw_chunks = {p: s for p, s in reads.items() if f"{raw_path}/0/c/" in p}
        assert len(raw_chunks) == 4  # smooth read every chunk of its input, from S3
        assert all(set(s) <= set(keys) for s in raw_chunks.values()), raw_chunks
        smooth_chunks = {p: s for p, s in reads.items() if f"{smooth_path}/0/c/" in p}
        # measure read the one chunk its region of interest overlaps, once (its dask.compute
        # runs on the cluster: the scheduler picks the worker that does the GET)
        assert [p.rsplit("/0/c/", 1)[1] for p in smooth_chunks] == ["0/0/0"], smooth_chunks
        (signers,) = smooth_chunks.values()
        assert sum(signers.values()) == 1, signers
        assert set(signers) <= set(keys), signers
    assert not any(flow_key in signers for signers in reads.values())  # the flow read nothing
    # results crossed Dask as pointers: each task run's value (its Prefect state) is a few KB,
    # and no value as big as a result (8 or 16 MiB here) moved. Blocks of the smoothing graph
    # (up to 6.7 MB with their overlap) may move when Dask spreads its tasks over the workers.
    task_values = [(key, n) for is_block, key, n in transfers if not is_block]
    assert task_values, transfers
    assert all(n < 64 * 1024 for _, n in task_values), task_values
    assert all(n < 8 * 2**20 for *_, n in transfers), transfers

    # 3. Every Prefect record persisted, in shared storage, as a small pointer; the workers'
    # own Prefect homes hold none (a worker's home is where no other worker looks)
    objects = s3_server.all_objects(BUCKET)
    records = {k: v for k, v in objects.items() if k.startswith(f"{prefix}/prefect-records/")}
    assert len(records) == 6, sorted(records)
    for data in records.values():
        record = json.loads(data)
        assert record["metadata"]["serializer"]["type"] == "json"
        assert len(record["result"]) < 2048
    for home in homes:
        assert not (home / "storage").exists() or not any((home / "storage").iterdir())
    # the second run's cache hits, on the other worker, read the first run's records
    assert all(record_reads[k] > 0 for k in keys), record_reads
    assert second_chunk_puts == 0

    # 4. The values are right
    for tile, raw_path, _, smooth_path, _, mean, maximum, _ in tiles:
        raw = store.open(raw_path).to_numpy()
        np.testing.assert_array_equal(raw, example.synthetic_volume(int(tile), SHAPE))
        smoothed = store.open(smooth_path).to_numpy()
        expected = ndi.gaussian_filter(raw.astype(np.float32), example.SIGMA, mode="nearest")
        np.testing.assert_allclose(smoothed, expected, rtol=1e-5, atol=1e-3)
        region = smoothed[ROI[0] : ROI[1], ROI[2] : ROI[3], ROI[4] : ROI[5]]
        assert float(mean) == pytest.approx(float(region.mean(dtype=np.float64)), rel=1e-5)
        assert float(maximum) == float(region.max())
