"""A Prefect flow on a Dask cluster started the way HPC users start one; results in one store.

    .venv/bin/python examples/cluster_flow.py [--workers 2] [--tiles 2] [--store URL]
    .venv/bin/python examples/cluster_flow.py --scheduler tcp://HOST:8786   # your cluster

Without ``--scheduler`` the script starts what dask-jobqueue starts on SLURM: one
``dask scheduler`` process and ``--workers`` ``dask worker`` processes, each a program of its
own with its own working directory and its own empty ``PREFECT_HOME`` (nothing shared with
the flow but the environment variables a job script would export: the Prefect API's URL and
the store's credentials). With ``--scheduler`` it connects to a cluster you started
(``SLURMCluster``, the Dask Helm chart, ``dask scheduler`` by hand); the README's "On a
cluster" section shows both.

For each tile: ``acquire`` makes a 3D uint16 volume on one worker and saves it; ``smooth``,
on another worker, receives it as a pointer (a lazy array over the store, not the data) and
streams its Gaussian-smoothed version into the store; ``measure``, on a third worker (the
first again with two), reads one region of interest of that, and only the chunks it needs.
Tasks are placed round-robin over the workers (``--offset`` shifts the placement), so every
result moves between worker processes, as it would between machines.

Results go to ``$CPR_ZARR_STORE`` or ``--store`` (an ``s3://`` URL, or a folder every worker
sees, e.g. on a shared file system); Prefect's result records (small JSON pointers) go next
to it, to ``<store's parent>/prefect-records``, which every worker reads and writes: a
worker's own ``PREFECT_HOME`` would keep them where no other worker, and no later run, looks.
Credentials never travel with the work: each worker reads them from its own environment
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``...).

Run it twice (``--offset 1`` the second time): every task is Cached, on another worker than
the one that computed it.
"""

from __future__ import annotations

import os
import sys

# Prefect and Dask read these when first imported, and the worker processes started here get
# them too. A value you set yourself wins.
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

import argparse
import contextlib
import json
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dask
import numpy as np
import scipy.ndimage as ndi
from prefect import flow
from prefect_dask import DaskTaskRunner

import cpr_zarr
from cpr_zarr.decorator import DEFAULT_STORE_ENV
from cpr_zarr.storage import normalize_url

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nuclei_flow import prefect_api

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence

STAGES = ("acquire", "smooth", "measure")
SIGMA = 1.0


def synthetic_volume(seed: int, shape: Sequence[int]) -> np.ndarray:
    """Bright blobs ("nuclei") on a noisy background, uint16; the same for the same seed."""
    rng = np.random.default_rng(seed)
    image = rng.normal(100, 5, size=tuple(shape)).astype(np.float32)
    grids = np.ogrid[tuple(slice(0, s) for s in shape)]
    for _ in range(12):
        center = [rng.uniform(0, s) for s in shape]
        dist2 = sum((g - c) ** 2 for g, c in zip(grids, center, strict=True))
        image += (800 * np.exp(-dist2 / (2 * 8.0**2))).astype(np.float32)
    return image.clip(0, 65535).astype(np.uint16)


@cpr_zarr.task
def acquire(seed: int, shape: list[int]) -> np.ndarray:
    """Stands for reading one tile from the microscope's files."""
    return synthetic_volume(seed, shape)


@cpr_zarr.task
def smooth(image):  # type: ignore[no-untyped-def]  # a lazy Dask array over the store
    """Gaussian smoothing block by block (with overlap): streamed into the store, never whole."""
    return image.astype(np.float32).map_overlap(
        ndi.gaussian_filter, depth=4, boundary="nearest", sigma=SIGMA, mode="nearest"
    )


@cpr_zarr.task
def measure(image, roi: list[list[int]]) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Statistics of a region of interest: reads only the stored chunks that it overlaps."""
    region = image[tuple(slice(a, b) for a, b in roi)]
    mean, maximum = dask.compute(region.mean(), region.max())  # one pass: each chunk read once
    return {"mean": float(mean), "max": float(maximum), "voxels": int(region.size)}


# -- the cluster ----------------------------------------------------------------------------


def _wait_for(path: Path, proc: subprocess.Popen[bytes], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode}; see {path.parent}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not start within {timeout:.0f} s; see {path.parent}")
        time.sleep(0.1)


@contextlib.contextmanager
def hpc_style_cluster(
    n_workers: int,
    folder: Path,
    worker_env: Sequence[Mapping[str, str]] = (),
    timeout: float = 120,
) -> Iterator[str]:
    """Start ``dask scheduler`` and ``n_workers`` ``dask worker`` programs; yield the address.

    What dask-jobqueue's job scripts do on SLURM, on this machine: each worker is a process of
    its own (with a nanny, as there), started in its own working directory
    (``folder/worker-<i>``) with its own empty ``PREFECT_HOME`` and this process's
    environment plus ``worker_env[i]`` (a job script's ``export`` lines). They meet only
    through the scheduler's address. Logs: ``folder/*.log``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    scheduler_file = folder / "scheduler.json"
    procs: list[subprocess.Popen[bytes]] = []
    logs = []
    try:
        log = open(folder / "scheduler.log", "wb")  # noqa: SIM115  (closed below)
        logs.append(log)
        scheduler = subprocess.Popen(
            [sys.executable, "-m", "dask", "scheduler", "--host", "127.0.0.1", "--port", "0",
             "--no-dashboard", "--dashboard-address", "127.0.0.1:0",
             "--scheduler-file", str(scheduler_file)],
            cwd=folder, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        procs.append(scheduler)
        _wait_for(scheduler_file, scheduler, "dask scheduler", timeout)
        address = json.loads(scheduler_file.read_text())["address"]
        for i in range(n_workers):
            workdir = folder / f"worker-{i}"
            home = workdir / "prefect-home"
            home.mkdir(parents=True, exist_ok=True)
            env = {**os.environ, "PREFECT_HOME": str(home)}
            if i < len(worker_env):
                env.update(worker_env[i])
            log = open(folder / f"worker-{i}.log", "wb")  # noqa: SIM115  (closed below)
            logs.append(log)
            worker = subprocess.Popen(
                [sys.executable, "-m", "dask", "worker", address, "--name", f"worker-{i}",
                 "--nthreads", "1", "--no-dashboard", "--local-directory", str(workdir),
                 "--death-timeout", "60"],
                cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
            procs.append(worker)
        yield address
    finally:
        # the workers first (each nanny stops its worker), then the scheduler they talk to
        for group in (procs[1:], procs[:1]):
            for proc in group:
                proc.terminate()
            for proc in group:
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        for log in logs:
            log.close()


def workers_of(address: str, n_workers: int, timeout: float = 180) -> list[str]:
    """Addresses of the cluster's workers, sorted by name, once ``n_workers`` have joined
    (on SLURM, jobs may wait in the queue)."""
    from distributed import Client

    with Client(address, timeout=timeout) as client:
        client.wait_for_workers(n_workers, timeout=timeout)
        info = client.scheduler_info(n_workers=-1)["workers"]
    return [addr for addr, _ in sorted(info.items(), key=lambda kv: str(kv[1].get("name")))]


# -- the flow -------------------------------------------------------------------------------


def records_location(store_url: str) -> Any:
    """Where Prefect's result records go: ``<store's parent>/prefect-records``, shared.

    A folder path for a local store (on a cluster: a shared file system), else a Prefect
    ``RemoteFileSystem`` block (fsspec; credentials from each process's environment),
    saved to the Prefect API so that every worker can load it.
    """
    parent, _, _ = store_url.rstrip("/").rpartition("/")
    if "://" not in store_url:
        path = Path(parent or ".") / "prefect-records"
        path.mkdir(parents=True, exist_ok=True)
        return path.resolve()
    from prefect.filesystems import RemoteFileSystem

    block = RemoteFileSystem(basepath=f"{parent}/prefect-records")
    block.save("cpr-zarr-cluster-records", overwrite=True)
    return block


def make_flow(address: str, workers: list[str], store_url: str, records: Any, offset: int):  # type: ignore[no-untyped-def]
    options = {"store": store_url, "result_storage": records}
    tasks = {name: task.with_options(**options) for name, task in zip(STAGES, (acquire, smooth, measure), strict=True)}  # fmt: skip

    def on(tile: int, stage: int) -> Any:
        """Run a submit on a chosen worker (round-robin), nowhere else."""
        worker = workers[(tile + stage + offset) % len(workers)]
        return dask.annotate(workers=[worker], allow_other_workers=False)

    @flow(name="cluster-tiles", task_runner=DaskTaskRunner(address=address))
    def tiles_flow(tiles: int, shape: list[int], roi: list[list[int]]) -> list[dict[str, Any]]:
        out = []
        for tile in range(tiles):
            with on(tile, 0):
                raw = tasks["acquire"].submit(tile, shape)
            with on(tile, 1):
                smoothed = tasks["smooth"].submit(raw)
            with on(tile, 2):
                stats = tasks["measure"].submit(smoothed, roi)
            out.append({"futures": (raw, smoothed, stats)})
        for entry in out:
            raw, smoothed, stats = entry.pop("futures")
            entry.update(raw=raw.result(), smoothed=smoothed.result(), stats=stats.result())
            entry["task_run_ids"] = [str(f.task_run_id) for f in (raw, smoothed, stats)]
        return out

    return tiles_flow


def task_run_states(task_run_ids: Sequence[str]) -> list[str]:
    from prefect import get_client

    with get_client(sync_client=True) as client:
        return [client.read_task_run(run_id).state.name for run_id in task_run_ids]  # type: ignore[arg-type,union-attr]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--scheduler", help="address of a running Dask scheduler")
    parser.add_argument("--workers", type=int, default=2, help="workers to start (or wait for)")
    parser.add_argument("--tiles", type=int, default=2)
    parser.add_argument("--shape", type=int, nargs=3, default=[32, 512, 512])
    parser.add_argument("--roi", type=int, nargs=6, default=[0, 16, 0, 200, 0, 200],
                        metavar=("Z0", "Z1", "Y0", "Y1", "X0", "X1"))  # fmt: skip
    parser.add_argument("--offset", type=int, default=0, help="shift the task placement")
    parser.add_argument("--store", default=os.environ.get(DEFAULT_STORE_ENV, "results.zarr"))
    args = parser.parse_args()
    # credential-free, absolute for a folder; the workers create the store with their first save
    store_url = normalize_url(args.store)[0]
    roi = [args.roi[i : i + 2] for i in range(0, 6, 2)]

    with contextlib.ExitStack() as stack:
        api_url, _ = stack.enter_context(prefect_api())  # before the workers: they need its URL
        if args.scheduler:
            address = args.scheduler
        else:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cluster-")))
            address = stack.enter_context(hpc_style_cluster(args.workers, folder))
        workers = workers_of(address, args.workers)
        records = records_location(store_url)
        started = time.perf_counter()
        results = make_flow(address, workers, store_url, records, args.offset)(
            tiles=args.tiles, shape=args.shape, roi=roi
        )
        states = [s for r in results for s in task_run_states(r["task_run_ids"])]
        elapsed = time.perf_counter() - started

    summary = ", ".join(f"{states.count(s)} {s}" for s in dict.fromkeys(states))
    print(
        f"Flow 'cluster-tiles' ran {len(states)} tasks ({summary}) on {len(workers)} Dask "
        f"workers at {address} in {elapsed:.1f} s; Prefect API {api_url}."
    )
    print(f"Results in {store_url}, Prefect records in {records_location_text(records)}:")
    for tile, r in enumerate(results):
        placed = [workers[(tile + s + args.offset) % len(workers)] for s in range(3)]
        stats = r["stats"]
        print(
            f"  tile {tile}: {r['raw'].group_path} ({placed[0]}) -> {r['smoothed'].group_path} "
            f"({placed[1]}) -> roi mean {stats['mean']!r} max {stats['max']!r} ({placed[2]})"
        )
    print("Who wrote each result: cpr-zarr info <store> <group> (provenance: host, pid, worker).")


def records_location_text(records: Any) -> str:
    return str(getattr(records, "basepath", records))


if __name__ == "__main__":
    main()
