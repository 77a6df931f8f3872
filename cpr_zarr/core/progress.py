"""Progress of long saves, reported without slowing short ones.

A daemon thread counts the chunk keys written under the array being saved, every few
seconds. That works whatever writes them (this process, Dask threads, distributed workers)
and costs nothing for saves that finish before the first report. Reports go to the Prefect
run logger inside a flow or task run, else to the ``cpr_zarr`` logger; in an interactive
terminal outside Prefect, a one-line status is also redrawn on stderr.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import TYPE_CHECKING

from cpr_zarr.logs import LOGGER_NAME, in_prefect_run, run_logger

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType

    from cpr_zarr.storage import Storage

__all__ = ["PROGRESS_SECONDS_ENV", "SaveProgress"]

PROGRESS_SECONDS_ENV = "CPR_ZARR_PROGRESS_SECONDS"
_DEFAULT_SECONDS = 5.0


def _logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    return run_logger() or logging.getLogger(LOGGER_NAME)


class SaveProgress:
    """Context manager reporting ``count_written()`` out of ``total`` chunks while a save runs."""

    def __init__(
        self, what: str, total_chunks: int, nbytes: int, count_written: Callable[[], int]
    ) -> None:
        self.what = what
        self.total = total_chunks
        self.nbytes = nbytes
        self.count_written = count_written
        self.interval = float(os.environ.get(PROGRESS_SECONDS_ENV, _DEFAULT_SECONDS))
        self.logger = _logger()
        self.interactive = sys.stderr.isatty() and not in_prefect_run()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._reported = False
        self._start = 0.0

    def __enter__(self) -> SaveProgress:
        self._start = time.perf_counter()
        if self.total > 1 and self.interval > 0:
            self._thread = threading.Thread(target=self._run, name="cpr-zarr-progress", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                done = min(self.count_written(), self.total)
            except Exception:  # a listing hiccup must never break the save
                continue
            elapsed = time.perf_counter() - self._start
            self._reported = True
            message = (
                f"saving {self.what}: {done}/{self.total} chunks written "
                f"({100 * done / self.total:.0f}%, {elapsed:.0f} s)"
            )
            self.logger.info(message)
            if self.interactive:
                print(f"\r{message}", end="", file=sys.stderr, flush=True)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._reported and exc_type is None:
            elapsed = time.perf_counter() - self._start
            rate = self.nbytes / 1e6 / max(elapsed, 1e-9)
            message = (
                f"saved {self.what}: {self.total} chunks, {self.nbytes / 2**30:.2f} GiB in "
                f"{elapsed:.1f} s ({rate:.0f} MB/s)"
            )
            self.logger.info(message)
            if self.interactive:
                print(f"\r{message}", file=sys.stderr, flush=True)


def count_keys(storage: Storage, prefix: str) -> Callable[[], int]:
    """A counter of the chunk keys under ``prefix`` (``<array>/c/...``)."""
    return storage.key_counter(f"{prefix}/c")
