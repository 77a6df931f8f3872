"""A fully cached re-run of the example flow: cpr_zarr tasks against plain Prefect tasks.

The flow is the pipeline of ``examples/nuclei_flow.py`` (load TIFF -> denoise -> Otsu
threshold -> label), its task bodies copied below (see there why), wrapped two ways:

* ``cpr_zarr``  ``cpr_zarr.task(fn, store=...)``: results in one Zarr store, JSON pointer
                records, ``CONTENT_INPUTS + TASK_SOURCE`` cache keys (the decorator's defaults).
* ``plain``     ``prefect.task(fn, cache_policy=INPUTS + TASK_SOURCE, persist_result=True)``:
                Prefect's default pickle result records; array inputs pickled to hash keys.

Both write their records to their own folder (``result_storage=<folder>``). ``setup_cache``
runs each flow once (everything Completed); every timed call is a second run in which all
four tasks are ``Cached``: what is measured is the cost of looking up and loading cached
results (cache keys, records, and for plain Prefect un-pickling the arrays) plus Prefect's
own per-run overhead, which both sides pay.

Unlike the example, the flows run in a single process with Prefect's default thread-pool
task runner (no ``DaskTaskRunner``): a local Dask cluster would add seconds of start-up
noise to every sample without changing what a cached run does. Each benchmark process
starts its own temporary Prefect server (``prefect_test_harness``, SQLite in a temp folder)
in ``setup`` and stops it in ``teardown``; cache hits do not depend on the server (Prefect
finds cached results by looking for the record file), so records from ``setup_cache``'s
server are hits for every later server.

Data: ``nuclei`` is the example's real 60 x 256 x 256 uint16 stack; ``synthetic`` is the
suite's "small" volume (128 x 512 x 512 = 64 MiB in full size) written as a TIFF file.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import prefect
import prefect.cache_policies
import scipy.ndimage as ndi
import tifffile

import cpr_zarr
from benchmarks import common  # first: sets Prefect's environment before prefect is imported
from examples.nuclei_flow import (  # the example's own helpers
    label_objects,
    otsu_threshold,
    sample_path,
)

# tiny (CI smoke test): one small data set, to keep the server start-ups few
DATA = ["synthetic"] if common.size_mode() == "tiny" else ["nuclei", "synthetic"]
TASKS = ("load_nuclei", "denoise", "threshold", "label")


# -- the example's pipeline ------------------------------------------------------------------
# The task bodies of examples/nuclei_flow.py (as of commit 4e44290), copied here so that the
# same plain functions can be wrapped both ways: the example itself now returns cpr_zarr
# types (Image, Labels, tables) that a plain Prefect task could not pass on unchanged, and
# it keeps changing. What is compared is the caching machinery, not the image analysis.


def load_nuclei(path: Path) -> np.ndarray:
    return tifffile.imread(path)


def denoise(image: np.ndarray, sigma: float) -> np.ndarray:
    return ndi.gaussian_filter(image.astype(np.float32), sigma)


def threshold(image):  # a lazy dask array (cpr_zarr) or a numpy array (plain)
    level = otsu_threshold(np.asarray(image[::2, ::4, ::4]))
    return image > level


def label(mask: np.ndarray) -> tuple[np.ndarray, int]:
    return label_objects(mask)


FUNCTIONS = {"load_nuclei": load_nuclei, "denoise": denoise, "threshold": threshold, "label": label}


def make_flow(kind: str, folder: Path):
    """The example's flow over the pipeline's functions, as cpr_zarr or as plain tasks."""
    records = folder / f"records-{kind}"
    if kind == "cpr_zarr":
        tasks = {
            name: cpr_zarr.task(fn, store=folder / "results.zarr", result_storage=records)
            for name, fn in FUNCTIONS.items()
        }
    elif kind == "plain":
        policy = prefect.cache_policies.INPUTS + prefect.cache_policies.TASK_SOURCE
        tasks = {
            name: prefect.task(fn, cache_policy=policy, persist_result=True, result_storage=records)
            for name, fn in FUNCTIONS.items()
        }
    else:
        raise ValueError(kind)

    @prefect.flow(name=f"nuclei-{kind}")
    def nuclei_flow(path: Path, sigma: float = 2.0) -> dict[str, object]:
        # the example's flow body, plus the task states
        raw = tasks["load_nuclei"].submit(path)
        smooth = tasks["denoise"].submit(raw, sigma)
        mask = tasks["threshold"].submit(smooth)
        labels_and_count = tasks["label"].submit(mask)
        labels, count = labels_and_count.result()
        return {
            "raw": raw.result(),
            "denoised": smooth.result(),
            "mask": mask.result(),
            "labels": labels,
            "count": count,
            "states": [f.state.name for f in (raw, smooth, mask, labels_and_count)],
        }

    return nuclei_flow


@contextlib.contextmanager
def prefect_server():
    """A temporary Prefect server for this process (started and stopped here)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def input_path(data: str, folder: Path) -> Path:
    if data == "nuclei":
        return sample_path()
    path = folder / f"synthetic-{common.size_mode()}.tif"
    if not path.exists():
        tifffile.imwrite(path, common.microscopy_volume(common.shape_of("small")))
    return path


class CachedFlowRerun:
    params = DATA
    param_names = ["data"]
    number = 1
    repeat = (1, 3, 60.0)
    rounds = 1
    warmup_time = 0.0
    timeout = 900

    def setup_cache(self):
        folder = Path(os.getcwd()) / "flow"
        folder.mkdir(exist_ok=True)
        inputs = {data: str(input_path(data, folder)) for data in DATA}
        with prefect_server():
            for kind in ("cpr_zarr", "plain"):
                for data in DATA:
                    states = make_flow(kind, folder)(Path(inputs[data]))["states"]
                    if states != ["Completed"] * len(TASKS):
                        raise RuntimeError(f"first {kind} run on {data}: task states {states}")
        return {"folder": str(folder), "inputs": inputs}

    def setup(self, cache, data):
        self.path = Path(cache["inputs"][data])
        folder = Path(cache["folder"])
        self.flows = {kind: make_flow(kind, folder) for kind in ("cpr_zarr", "plain")}
        self._server = contextlib.ExitStack()
        self._server.enter_context(prefect_server())
        try:
            for kind, run in self.flows.items():  # warm-up, and check that runs are cached
                states = run(self.path)["states"]
                if states != ["Cached"] * len(TASKS):
                    raise RuntimeError(f"re-run of the {kind} flow on {data}: task states {states}")
        except BaseException:
            self._server.close()
            raise

    def teardown(self, cache, data):
        self._server.close()

    def time_cpr_zarr(self, cache, data):
        self.flows["cpr_zarr"](self.path)

    def time_plain_prefect(self, cache, data):
        self.flows["plain"](self.path)

    def track_cached_tasks_cpr_zarr(self, cache, data):
        return self.flows["cpr_zarr"](self.path)["states"].count("Cached")

    track_cached_tasks_cpr_zarr.unit = "tasks"

    def track_cached_tasks_plain_prefect(self, cache, data):
        return self.flows["plain"](self.path)["states"].count("Cached")

    track_cached_tasks_plain_prefect.unit = "tasks"


# -- the example, end to end -----------------------------------------------------------------


def _run_script(
    args: list[str], cwd: Path, home: Path, extra_env: dict[str, str] | None = None
) -> tuple[float, str]:
    """Wall time and output of ``python ARGS`` in ``cwd``, as a user runs it from a shell."""
    import subprocess
    import sys
    import time

    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PREFECT_API_URL", "PREFECT_LOGGING_LEVEL", "CPR_ZARR_STORE")
    }
    env["PREFECT_HOME"] = str(home)  # one Prefect database for every run
    env["PREFECT_RESULTS_LOCAL_STORAGE_PATH"] = str(cwd / "records")  # records per folder
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    env.update(extra_env or {})
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
    )
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{args} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return seconds, proc.stdout + proc.stderr


class ExampleRun:
    """``examples/nuclei_flow.py`` as a user runs it, against the same flow doing nothing.

    Three kinds of run, each a new process (``python examples/nuclei_flow.py``), with its
    temporary Prefect server and a local Dask cluster of 2 worker processes:

    * ``first``: a fresh folder, every task Completed;
    * ``cached``: again in that folder, every task Cached;
    * ``empty``: ``benchmarks/example_empty_tasks.py``, the same start-up and five submitted
      tasks with empty bodies: the floor that Python, Prefect and Dask set.

    The targets: ``cached`` at most 1.5 x ``empty``, and the first run's time above ``empty``
    spent in the tasks' own work (``task_seconds``, the tasks' run time as Prefect records it,
    which the example prints). The runs happen once in ``setup_cache`` (each 20-90 s; at
    ``full`` size, the empty and cached runs twice, interleaved, keeping the faster), and the
    ``track_`` methods report them.
    """

    number = 1
    repeat = 1
    rounds = 1
    warmup_time = 0.0
    timeout = 3600

    def setup_cache(self):
        import re

        root = Path(os.getcwd()) / "example-runs"
        root.mkdir(exist_ok=True)
        home = root / "prefect-home"
        example = str(Path(__file__).resolve().parents[1] / "examples" / "nuclei_flow.py")
        empty = str(Path(__file__).resolve().parent / "example_empty_tasks.py")
        folder = root / "run"
        folder.mkdir()
        rounds = 1 if common.size_mode() == "tiny" else 2
        times: dict[str, list[float]] = {"first": [], "cached": [], "empty": []}
        times["empty"].append(_run_script([empty], root, home)[0])  # also creates the database
        seconds, out = _run_script([example], folder, home)
        if "5 tasks (5 Completed)" not in out:
            raise RuntimeError(f"first run of the example:\n{out}")
        times["first"].append(seconds)
        task_seconds = float(re.search(r"([0-9.]+) s of it in the tasks", out)[1])  # type: ignore[index]
        for _ in range(rounds):
            seconds, out = _run_script([example], folder, home)
            if "5 tasks (5 Cached)" not in out:
                raise RuntimeError(f"second run of the example:\n{out}")
            times["cached"].append(seconds)
            if len(times["empty"]) < rounds:
                times["empty"].append(_run_script([empty], root, home)[0])
        return {
            "first": min(times["first"]),
            "cached": min(times["cached"]),
            "empty": min(times["empty"]),
            "task_seconds": task_seconds,
        }

    def track_first_run_seconds(self, runs):
        return runs["first"]

    track_first_run_seconds.unit = "seconds"

    def track_first_run_task_seconds(self, runs):
        return runs["task_seconds"]

    track_first_run_task_seconds.unit = "seconds"

    def track_cached_rerun_seconds(self, runs):
        return runs["cached"]

    track_cached_rerun_seconds.unit = "seconds"

    def track_empty_tasks_seconds(self, runs):
        return runs["empty"]

    track_empty_tasks_seconds.unit = "seconds"

    def track_cached_over_empty(self, runs):
        """Target: at most 1.5."""
        return runs["cached"] / runs["empty"]

    track_cached_over_empty.unit = "ratio"

    def track_first_over_empty_plus_tasks(self, runs):
        """Target: about 1 (the first run costs the floor plus the tasks' own work)."""
        return runs["first"] / (runs["empty"] + runs["task_seconds"])

    track_first_over_empty_plus_tasks.unit = "ratio"


class ExampleArtifacts:
    """Cost of the Prefect UI artifacts (``cpr_zarr.artifacts``) on ``examples/nuclei_flow.py``.

    The example as a user runs it (a new process, its temporary Prefect server, 2 Dask worker
    processes), with artifacts on (the default) and off (``CPR_ZARR_ARTIFACTS=0``), each in a
    fresh folder (first run, 5 tasks Completed) and again there (5 tasks Cached); on and off
    interleaved, ``rounds`` times, keeping each one's fastest. The ``track_`` methods report
    the difference per task: the artifacts' overhead that a flow run's wall time shows.
    """

    number = 1
    repeat = 1
    rounds = 1
    warmup_time = 0.0
    timeout = 3600
    smoke_timeout = 1800  # tests/test_benchmarks_smoke.py: four runs of the example
    tasks = 5

    def setup_cache(self):
        root = Path(os.getcwd()) / "example-artifacts"
        root.mkdir(exist_ok=True)
        home = root / "prefect-home"
        example = str(Path(__file__).resolve().parents[1] / "examples" / "nuclei_flow.py")
        rounds = 1 if common.size_mode() == "tiny" else 2
        times: dict[str, list[float]] = {}
        for number in range(rounds):
            for mode in ("1", "0"):
                folder = root / f"run-{mode}-{number}"
                folder.mkdir()
                env = {"CPR_ZARR_ARTIFACTS": mode}
                for run, expect in (("first", "5 Completed"), ("cached", "5 Cached")):
                    seconds, out = _run_script([example], folder, home, env)
                    if f"5 tasks ({expect})" not in out:
                        raise RuntimeError(f"{run} run of the example:\n{out}")
                    times.setdefault(f"{run}-{mode}", []).append(seconds)
        return {key: min(values) for key, values in times.items()}

    def track_first_run_artifacts_seconds_per_task(self, runs):
        return (runs["first-1"] - runs["first-0"]) / self.tasks

    track_first_run_artifacts_seconds_per_task.unit = "seconds"
    track_first_run_artifacts_seconds_per_task.signed = True  # noise can make it negative

    def track_cached_run_artifacts_seconds_per_task(self, runs):
        return (runs["cached-1"] - runs["cached-0"]) / self.tasks

    track_cached_run_artifacts_seconds_per_task.unit = "seconds"
    track_cached_run_artifacts_seconds_per_task.signed = True  # noise can make it negative

    def track_cached_run_seconds_without_artifacts(self, runs):
        return runs["cached-0"]

    track_cached_run_seconds_without_artifacts.unit = "seconds"

    def track_cached_run_seconds_with_artifacts(self, runs):
        return runs["cached-1"]

    track_cached_run_seconds_with_artifacts.unit = "seconds"


# -- many small tasks --------------------------------------------------------------------------


def tiny_scalar(i: int) -> float:
    return i * 0.5


def tiny_array(i: int) -> np.ndarray:
    return np.full(8, i, dtype=np.float32)


TINY = {"scalar": tiny_scalar, "array": tiny_array}


def small_tasks_flow(kind: str, result: str, folder: Path, n: int):
    """A flow mapping one task over ``n`` new integers, every result persisted."""
    fn = TINY[result]
    records = folder / f"records-{kind}"
    if kind == "prefect":
        tiny = prefect.task(fn, persist_result=True, result_storage=records)
    elif kind == "cpr_zarr":
        tiny = cpr_zarr.task(fn, store=folder / "results.zarr", result_storage=records)
    elif kind == "cpr_zarr_no_artifacts":
        tiny = cpr_zarr.task(
            fn, store=folder / "results.zarr", result_storage=records, artifacts=False
        )
    else:
        raise ValueError(kind)

    @prefect.flow(name=f"small-tasks-{kind}")
    def many(offset: int) -> list[str]:
        futures = tiny.map(range(offset, offset + n))
        futures.wait()
        return [f.state.name for f in futures]

    return many


class ManySmallTasks:
    """1,000 mapped tasks with tiny results, each run new inputs (nothing cached): the
    per-task overhead of ``cpr_zarr.task`` (defaults: content-hash cache keys, pointer
    records, artifacts) against ``prefect.task(persist_result=True)`` (pickle records),
    with the same runner (Prefect's default thread pool) and the same temporary server.
    ``cpr_zarr_no_artifacts`` is ``cpr_zarr.task(artifacts=False)``. ``scalar`` tasks
    return a float (a JSON value for cpr_zarr), ``array`` tasks 8 float32 values (a stored
    result group for cpr_zarr). Target: ``cpr_zarr`` at most 1.3x ``prefect``."""

    params = ["scalar", "array"]
    param_names = ["result"]
    number = 1
    repeat = (1, 3, 120.0)
    rounds = 1
    warmup_time = 0.0
    timeout = 3600

    def setup(self, result):
        self.n = 50 if common.size_mode() == "tiny" else 1000
        self.folder = common.scratch_dir("small-tasks")
        self._server = contextlib.ExitStack()
        self._server.enter_context(prefect_server())
        self.offsets = iter(range(0, 10**9, self.n))
        kinds = ("prefect", "cpr_zarr", "cpr_zarr_no_artifacts")
        self.flows = {k: small_tasks_flow(k, result, self.folder, self.n) for k in kinds}

    def teardown(self, result):
        self._server.close()
        common.remove(self.folder)

    def run(self, kind: str) -> None:
        states = self.flows[kind](next(self.offsets))
        if states != ["Completed"] * self.n:
            raise RuntimeError(f"{kind}: task states {sorted(set(states))}")

    def time_prefect(self, result):
        self.run("prefect")

    def time_cpr_zarr(self, result):
        self.run("cpr_zarr")

    def time_cpr_zarr_no_artifacts(self, result):
        self.run("cpr_zarr_no_artifacts")
