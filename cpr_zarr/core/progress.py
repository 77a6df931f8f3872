"""Progress of long operations (saves, verifies, store listings), silent for short ones.

Nothing is shown for an operation that ends within ``$CPR_ZARR_PROGRESS_SECONDS`` (5 s;
0 turns progress off). After that, where it goes depends on where the code runs:

* inside a Prefect flow or task run: a line on the run logger every interval (so it reaches
  the Prefect UI), plus whatever the Prefect layer attached with :func:`reporting_to` (the
  ``cpr_zarr.task`` wrapper attaches a Prefect progress artifact);
* in a Jupyter kernel: a tqdm bar (a widget if ``ipywidgets`` is installed, else a text bar,
  which Jupyter redraws in place);
* in a terminal (stderr is a TTY): a tqdm bar on stderr;
* elsewhere (nohup, CI logs, a pipe): plain lines every interval, through the ``cpr_zarr``
  logger if logging is configured for it, else on stderr, never carriage returns.

Saves are counted by a daemon thread listing the chunk keys written under the array being
saved: that works whatever writes them (this process, Dask threads, distributed workers).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from cpr_zarr.logs import LOGGER_NAME, in_prefect_run, run_logger

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator
    from types import TracebackType

    from cpr_zarr.storage import Storage

__all__ = [
    "PROGRESS_SECONDS_ENV",
    "Progress",
    "ProgressSink",
    "SaveProgress",
    "count_keys",
    "reporting_to",
    "track",
]

PROGRESS_SECONDS_ENV = "CPR_ZARR_PROGRESS_SECONDS"
_DEFAULT_SECONDS = 5.0
T = TypeVar("T")


class ProgressSink(Protocol):
    """Something told about one long operation (e.g. a Prefect progress artifact)."""

    def update(self, fraction: float, message: str) -> None: ...

    def close(self, ok: bool, message: str) -> None: ...


# factories of sinks for operations started in this context (set by the Prefect layer)
_SINKS: ContextVar[tuple[Callable[[str], ProgressSink | None], ...]] = ContextVar(
    "cpr_zarr_progress_sinks", default=()
)


@contextlib.contextmanager
def reporting_to(factory: Callable[[str], ProgressSink | None]) -> Iterator[None]:
    """Also report long operations started inside this block to ``factory(what)``'s sink.

    The factory is called (in the reporting thread, with this context) once an operation
    turns out to be long, never for short ones; it may return None to decline.
    """
    token = _SINKS.set((*_SINKS.get(), factory))
    try:
        yield
    finally:
        _SINKS.reset(token)


def interval_seconds() -> float:
    """Seconds before the first report and between plain-line reports (0: off)."""
    try:
        return max(0.0, float(os.environ.get(PROGRESS_SECONDS_ENV, _DEFAULT_SECONDS)))
    except ValueError:
        return _DEFAULT_SECONDS


def _in_notebook() -> bool:
    if "ipykernel.zmqshell" not in sys.modules:
        return False
    try:
        shell = sys.modules["IPython"].get_ipython()
    except Exception:
        return False
    return shell is not None and "zmq" in type(shell).__name__.lower()


def _bar_class() -> Any:
    """tqdm's notebook widget in a Jupyter kernel with ipywidgets, else its text bar."""
    from tqdm import std

    if _in_notebook():
        try:
            from tqdm import notebook

            if notebook.IProgress is not None:
                return notebook.tqdm
        except ImportError:  # pragma: no cover - tqdm without its notebook module
            pass
    return std.tqdm


def _stderr_columns() -> int:
    try:
        return os.get_terminal_size(sys.stderr.fileno()).columns
    except (OSError, ValueError, AttributeError):  # not a terminal, or no file descriptor
        return 0


def _line_logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger] | None:
    """Where plain lines go: the run logger in a run, the ``cpr_zarr`` logger if logging is
    configured to show its INFO records, else None (stderr)."""
    found: logging.LoggerAdapter[logging.Logger] | None = run_logger()
    if found is not None:
        return found
    log = logging.getLogger(LOGGER_NAME)
    if log.isEnabledFor(logging.INFO) and log.hasHandlers():
        return log
    return None


def _seconds(value: float) -> str:
    value = max(0.0, value)
    if value < 90:
        return f"{value:.0f} s"
    if value < 5400:
        return f"{value / 60:.0f} min"
    return f"{value / 3600:.1f} h"


class Progress:
    """A count of ``total`` steps of one operation, shown per the module doc.

    Use as a context manager; call :meth:`update` (any thread) or :meth:`set`. ``nbytes``
    (the operation's total bytes) adds a rate in MB/s.
    """

    def __init__(
        self,
        what: str,
        total: int,
        *,
        unit: str = "chunk",
        verb: str = "written",
        nbytes: int | None = None,
        done_verb: str = "saved",
        doing_verb: str = "saving",
    ) -> None:
        self.what = what
        self.total = max(int(total), 0)
        self.unit = unit
        self.verb = verb
        self.nbytes = nbytes
        self.doing = doing_verb
        self.done_verb = done_verb
        self.interval = interval_seconds()
        self.enabled = self.interval > 0 and self.total > 1
        self.prefect = in_prefect_run()
        self.lines = self.prefect or not (sys.stderr.isatty() or _in_notebook())
        self.logger = _line_logger() if self.lines else None
        self._factories = _SINKS.get()
        self._sinks: list[ProgressSink] = []
        self._lock = threading.Lock()
        self._done = 0
        self._start = time.perf_counter()
        self._last_line = 0.0
        self._bar: Any = None
        self._reported = False

    # -- counting -------------------------------------------------------------------------

    def __enter__(self) -> Progress:
        self._start = time.perf_counter()
        self._last_line = self._start
        if self.enabled and not self.lines:
            self._bar = _bar_class()(
                total=self.total,
                desc=f"{self.doing} {self.what}",
                unit=self.unit,
                delay=self.interval,
                mininterval=0.5,
                leave=True,
                file=sys.stderr,
                # follow the terminal's size; one of unknown (0 x 0) size gets 80 x 24
                **({"dynamic_ncols": True} if _stderr_columns() else {"ncols": 80, "nrows": 24}),
            )
        return self

    def update(self, n: int = 1) -> None:
        """``n`` more steps done."""
        with self._lock:
            self._done += n
            done = self._done
        self._show(done)

    def set(self, done: int) -> None:
        """``done`` steps done in all (from a count of what is written); reported even if
        unchanged, so a long save that has written nothing yet still says it is running."""
        with self._lock:
            self._done = max(self._done, min(done, self.total))
            done = self._done
        self._show(done)

    def _show(self, done: int) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            with self._lock:
                if done > self._bar.n:
                    self._bar.update(done - self._bar.n)
                elif time.perf_counter() - self._start >= self.interval:
                    self._bar.refresh()  # shown once long, even before a first step
            return
        now = time.perf_counter()
        if now - self._start < self.interval or now - self._last_line < self.interval:
            return
        with self._lock:
            if now - self._last_line < self.interval:
                return
            self._last_line = now
            self._reported = True
        self._line(self.message(done), done)

    # -- messages -------------------------------------------------------------------------

    def message(self, done: int) -> str:
        elapsed = time.perf_counter() - self._start
        pct = 100 * done / self.total if self.total else 100.0
        text = (
            f"{self.doing} {self.what}: {done}/{self.total} {self.unit}s {self.verb} "
            f"({pct:.0f}%, {_seconds(elapsed)}"
        )
        if 0 < done < self.total:
            text += f", about {_seconds(elapsed * (self.total - done) / done)} left"
        return text + ")"

    def summary(self) -> str:
        elapsed = time.perf_counter() - self._start
        text = f"{self.done_verb} {self.what}: {self.total} {self.unit}s"
        if self.nbytes is not None:
            rate = self.nbytes / 1e6 / max(elapsed, 1e-9)
            text += f", {self.nbytes / 2**30:.2f} GiB in {elapsed:.1f} s ({rate:.0f} MB/s)"
        else:
            text += f" in {elapsed:.1f} s"
        return text

    def _line(self, message: str, done: int) -> None:
        if self.logger is not None:
            self.logger.info(message)
        else:
            print(message, file=sys.stderr, flush=True)
        if not self._sinks and self._factories:
            for factory in self._factories:
                try:
                    sink = factory(self.what)
                except Exception as exc:  # a report must never break the operation
                    logging.getLogger(LOGGER_NAME).warning(
                        "Cannot report the progress of %s: %s: %s",
                        self.what,
                        type(exc).__name__,
                        exc,
                    )
                    continue
                if sink is not None:
                    self._sinks.append(sink)
            self._factories = ()  # tried once
        for sink in self._sinks:
            try:
                sink.update(done / self.total if self.total else 1.0, message)
            except Exception as exc:  # a report must never break the operation
                logging.getLogger(LOGGER_NAME).debug("progress sink failed: %s", exc)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        ok = exc_type is None
        if self._bar is not None:
            if ok:
                self._bar.update(self.total - self._bar.n)
            shown = self._bar.last_print_t >= self._bar.start_t + self._bar.delay
            self._bar.close()
            if shown and ok:
                logging.getLogger(LOGGER_NAME).info(self.summary())
            return
        if not self._reported:
            return
        message = self.summary() if ok else f"{self.what}: stopped by {exc_type.__name__}"  # type: ignore[union-attr]
        if ok:
            if self.logger is not None:
                self.logger.info(message)
            else:
                print(message, file=sys.stderr, flush=True)
        for sink in self._sinks:
            try:
                sink.close(ok, message)
            except Exception as exc_:  # a report must never break the operation
                logging.getLogger(LOGGER_NAME).debug("progress sink failed: %s", exc_)


def track(
    items: Iterable[T],
    what: str,
    *,
    total: int | None = None,
    unit: str = "result",
    verb: str = "checked",
    doing: str = "checking",
    done: str = "checked",
) -> Iterator[T]:
    """Yield ``items``, showing progress (per the module doc) if it takes long."""
    if total is None:
        items = list(items)
        total = len(items)
    with Progress(what, total, unit=unit, verb=verb, doing_verb=doing, done_verb=done) as bar:
        for item in items:
            yield item
            bar.update()


class SaveProgress(Progress):
    """Progress of a save: ``count_written()`` out of ``total_chunks``, polled by a thread."""

    def __init__(
        self, what: str, total_chunks: int, nbytes: int, count_written: Callable[[], int]
    ) -> None:
        super().__init__(what, total_chunks, unit="chunk", verb="written", nbytes=nbytes)
        self.count_written = count_written
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> SaveProgress:
        super().__enter__()
        if self.enabled:
            import contextvars

            # the poller reports in this context (the run logger, sinks made by the Prefect layer)
            context = contextvars.copy_context()
            self._thread = threading.Thread(
                target=context.run, args=(self._poll,), name="cpr-zarr-progress", daemon=True
            )
            self._thread.start()
        return self

    def _poll(self) -> None:
        # a bar is redrawn about once a second once shown; plain lines only every interval
        wait = self.interval if self.lines else min(1.0, self.interval)
        first = True
        while not self._stop.wait(self.interval if first else wait):
            first = False
            try:
                self.set(min(self.count_written(), self.total))
            except Exception:  # a listing hiccup must never break the save
                continue

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if exc_type is None and (self._reported or self._bar is not None):
            self._done = self.total
        super().__exit__(exc_type, exc, tb)


def count_keys(storage: Storage, *arrays: str) -> Callable[[], int]:
    """A counter of the chunk keys (``<array>/c/...``) of every array in ``arrays`` (a
    result's base and its pyramid levels, written in one pass, count as one save)."""
    counters = [storage.key_counter(f"{array}/c") for array in arrays]
    if len(counters) == 1:
        return counters[0]
    return lambda: sum(counter() for counter in counters)
