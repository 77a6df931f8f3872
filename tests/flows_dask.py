"""Flows for the DaskTaskRunner tests (importable by worker processes)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from prefect import flow
from prefect_dask import DaskTaskRunner

import cpr_zarr

if TYPE_CHECKING:
    from pathlib import Path


def two_worker_processes() -> DaskTaskRunner:
    """A local cluster of 2 single-threaded worker processes, no dashboard port."""
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": 2,
            "threads_per_worker": 1,
            "processes": True,
            "dashboard_address": None,
        }
    )


def make_compute_flow(store_url: str, records: Path, n_chains: int = 3):  # type: ignore[no-untyped-def]
    """Chains of tasks whose bodies compute Dask graphs (implicitly) on the workers."""

    @cpr_zarr.task(store=store_url, result_storage=records)
    def make(seed: int) -> np.ndarray:
        return np.random.default_rng(seed).integers(0, 1000, size=(32, 64, 64), dtype=np.uint16)

    @cpr_zarr.task(store=store_url, result_storage=records)
    def smooth(image):  # lazy input
        # np.asarray and .compute() both compute on the worker, and secede
        total = float(image.sum().compute())
        return (np.asarray(image) * 0.5 + total * 0).astype(np.float32)

    @cpr_zarr.task(store=store_url, result_storage=records)
    def stats(image) -> float:
        return float(cpr_zarr.compute(image.mean())[0])

    @flow(task_runner=two_worker_processes())
    def compute_flow() -> list[float]:
        futures = []
        for seed in range(n_chains):
            raw = make.submit(seed)
            smoothed = smooth.submit(raw)
            futures.append(stats.submit(smoothed))
        return [f.result() for f in futures]

    return compute_flow


def make_region_flow(store_url: str, records: Path):  # type: ignore[no-untyped-def]
    """Task A returns a 64 MiB volume (8 stored chunks); task B reduces one chunk's region."""
    import cloudpickle

    @cpr_zarr.task(store=store_url, result_storage=records)
    def make_volume() -> np.ndarray:
        rng = np.random.default_rng(0)
        return rng.integers(0, 4000, size=(128, 512, 512), dtype=np.uint16)

    @cpr_zarr.task(store=store_url, result_storage=records)
    def region_sum(volume) -> int:  # lazy
        return int(volume[70:90, 10:200, 300:500].sum().compute())

    @flow(task_runner=two_worker_processes())
    def region_flow() -> dict[str, object]:
        volume = make_volume.submit()
        total = region_sum.submit(volume)
        return {
            "volume": volume.result(),
            "sum": total.result(),
            # what Dask holds and ships for each task: the pickled Prefect state
            "carried_bytes": [
                len(cloudpickle.dumps(f._wrapped_future.result())) for f in (volume, total)
            ],
        }

    return region_flow
