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


def make_natural_flow(store_url: str, records: Path, threads_per_worker: int, n_images: int = 4):  # type: ignore[no-untyped-def]
    """Ordinary user code: tasks compute on their lazy inputs the way people write it.

    Nothing here calls ``cpr_zarr.compute``: reductions with ``.compute()``, ``int()``/``float()``
    of lazy values, ``np.asarray``, ``dask.compute`` of several collections, ``.persist()``,
    numpy-annotated inputs, lazy (Dask) results, and a task that fails once and is retried.
    """
    import dask
    import dask.array as da
    from scipy import ndimage

    attempts: dict[int, int] = {}

    @cpr_zarr.task(store=store_url, result_storage=records)
    def load(seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        return rng.integers(0, 1000, size=(16, 48, 48), dtype=np.uint16)

    @cpr_zarr.task(store=store_url, result_storage=records)
    def denoise(image):  # lazy in, lazy out: a Dask result streamed into the store
        return (image.astype(np.float32) * 0.5).rechunk((8, 48, 48))

    @cpr_zarr.task(store=store_url, result_storage=records)
    def level_of(image) -> float:
        return float(image.mean().compute())

    @cpr_zarr.task(store=store_url, result_storage=records)
    def count_above(image, level: float) -> int:
        return int((image > level).sum())

    @cpr_zarr.task(store=store_url, result_storage=records)
    def threshold(image, level: float):
        return np.asarray(image) > level

    @cpr_zarr.task(store=store_url, result_storage=records)
    def label(mask: np.ndarray):
        return ndimage.label(mask)[0].astype(np.uint32)

    @cpr_zarr.task(store=store_url, result_storage=records)
    def describe(labels, image) -> dict[str, float]:
        lo, hi = dask.compute(image.min(), image.max())
        kept = labels.persist()
        return {"lo": float(lo), "hi": float(hi), "objects": int(da.max(kept).compute())}

    @cpr_zarr.task(store=store_url, result_storage=records, retries=1, retry_delay_seconds=0)
    def flaky_sum(image, seed: int) -> float:
        attempts[seed] = attempts.get(seed, 0) + 1
        total = float(image.sum().compute())
        if attempts[seed] == 1:
            raise RuntimeError("first attempt fails")
        return total

    runner = DaskTaskRunner(
        cluster_kwargs={
            "n_workers": 2,
            "threads_per_worker": threads_per_worker,
            "processes": True,
            "dashboard_address": None,
        }
    )

    @flow(task_runner=runner)
    def natural_flow() -> list[object]:
        seeds = list(range(n_images))
        raw = load.map(seeds)
        smooth = denoise.map(raw)
        levels = level_of.map(smooth)
        counts = count_above.map(smooth, levels)
        masks = threshold.map(smooth, levels)
        labels = label.map(masks)
        described = describe.map(labels, smooth)
        sums = flaky_sum.map(smooth, seeds)
        return [f.result() for f in (*counts, *described, *sums)]

    return natural_flow


NATURAL_TASKS = 8  # tasks per image in make_natural_flow
