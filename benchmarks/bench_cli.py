"""Start-up of the ``cpr-zarr`` command line, beside a bare ``python -c pass``.

Each sample is a new process, as a user types the command: ``python -m cpr_zarr --version``,
``--help``, and ``ls`` of a small store (three results: an image, its label image, a table),
timed wall-clock from ``subprocess.run`` to exit. The baseline is the interpreter's own
start-up (``python -c pass``), which every command pays; ``import cpr_zarr`` alone is
tracked too (the package's names load on first use, so it should cost little more than the
baseline).

Targets (issue 15): ``--help`` and ``--version`` under 0.3 s, ``ls`` of a small store under
1 s. Each ``track_`` is the median of several runs (one at ``tiny`` size, CI's smoke test),
so one slow start on a busy machine does not decide it.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import common  # first: puts this checkout on sys.path

REPO = Path(__file__).resolve().parents[1]

RUNS = 1 if common.size_mode() == "tiny" else 7


def _env() -> dict[str, str]:
    # the subprocess imports this checkout's cpr_zarr, as the benchmark process does
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("PYTHONSTARTUP", None)
    return env


def _wall(args: list[str]) -> float:
    """Median wall time (s) of running ``python *args`` to exit."""
    times = []
    env = _env()
    for _ in range(RUNS):
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, *args], env=env, check=True, capture_output=True, timeout=120
        )
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class CliStartup:
    timeout = 600
    unit = "seconds"  # of every track_ below (asv reads it from the class)

    def setup_cache(self):
        import numpy as np
        import pandas as pd

        import cpr_zarr

        store = cpr_zarr.ResultStore(os.path.join(os.getcwd(), "cli-startup.zarr"))
        image = store.save(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64), "image")
        store.save(cpr_zarr.Labels((image.to_numpy() > 2000).astype(np.uint8), image=image), "mask")
        store.save(pd.DataFrame({"label": [1], "area": [2048.0]}), "measure")
        return store.url

    def track_python_startup(self, url):
        return _wall(["-c", "pass"])

    def track_import_cpr_zarr(self, url):
        return _wall(["-c", "import cpr_zarr"])

    def track_version(self, url):
        return _wall(["-m", "cpr_zarr", "--version"])

    def track_help(self, url):
        return _wall(["-m", "cpr_zarr", "--help"])

    def track_ls_small_store(self, url):
        return _wall(["-m", "cpr_zarr", "ls", url])
