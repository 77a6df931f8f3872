"""Computing Dask collections safely inside Prefect tasks that run on Dask workers.

The hazard. A Prefect task on a distributed worker runs in a thread whose ``contextvars``
hold Prefect's open transaction. Whenever that thread schedules a callback on the worker's
event loop (``secede`` inside ``.compute()``/``worker_client()``, creating the worker's
client on first use, every synchronous ``Client`` call: ``get``, ``gather``, ``persist``),
asyncio's ``call_soon_threadsafe`` captures the *calling thread's* context for the callback.
Work that callback starts (the worker executing its next task) inherits it, so the next task's
transaction gets the earlier task's as parent and is never committed: the task shows
Completed but its record is not written and its cache never hits. Measured before this
module guarded the loop: 22 and 24 of 32 records for a flow of ordinary task bodies.

The fix, at the root: :func:`guard_worker_loop` makes callbacks that other threads schedule
on the worker's event loop run in a clean context (only distributed's worker variable), as
callbacks the loop schedules for itself do. That covers every path at once, user code
calling ``get_client()`` directly included. :func:`compute` and the scheduler installed by
:func:`install_safe_scheduler` also run computes in a clean context, for loops that cannot be
guarded (an event loop implementation whose methods cannot be replaced).
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from typing import TYPE_CHECKING, Any

import dask
import dask.base

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["clean_context", "compute", "guard_worker_loop", "install_safe_scheduler"]

_INSTALL_LOCK = threading.Lock()
_GUARD_ATTR = "_cpr_zarr_context_guard"


def clean_context() -> contextvars.Context:
    """An empty context, except for distributed's current-worker variable."""
    ctx = contextvars.Context()
    try:
        from distributed.worker import _worker_cvar
    except ImportError:  # distributed is optional for local runs
        return ctx
    worker = _worker_cvar.get(None)
    if worker is not None:
        ctx.run(_worker_cvar.set, worker)
    return ctx


def compute(*collections: Any, **kwargs: Any) -> tuple[Any, ...]:
    """Like :func:`dask.compute`, but safe inside Prefect tasks on Dask workers."""
    return clean_context().run(dask.base.compute, *collections, **kwargs)


def _on_worker_thread() -> bool:
    try:
        from distributed.utils import thread_state  # type: ignore[attr-defined]
    except ImportError:
        return False
    return bool(getattr(thread_state, "key", None))


def _safe_get(dsk: Any, keys: Any, **kwargs: Any) -> Any:
    """The scheduler dask would pick by default, run in a clean context on worker threads."""
    if _on_worker_thread():
        from distributed import get_client

        # get_client() creates the worker's client on first use, which schedules its start on
        # the worker loop: it must run in the clean context too, not only client.get
        return clean_context().run(lambda: get_client().get(dsk, keys, **kwargs))  # type: ignore[no-untyped-call]
    from dask.threaded import get

    return get(dsk, keys, **kwargs)


def guard_worker_loop() -> bool:
    """Make callbacks scheduled on this worker's event loop from other threads context-free.

    Process-wide and idempotent; does nothing off Dask workers. Returns whether the guard is
    active (False when the loop's ``call_soon_threadsafe`` cannot be replaced).
    """
    if not _on_worker_thread():
        return False
    from distributed import get_worker

    try:
        loop: Any = get_worker().loop.asyncio_loop  # type: ignore[attr-defined]
    except (ValueError, AttributeError):
        return False
    with _INSTALL_LOCK:
        if getattr(loop, _GUARD_ATTR, False):
            return True
        original: Callable[..., Any] = loop.call_soon_threadsafe

        def call_soon_threadsafe(
            callback: Callable[..., Any], *args: Any, context: contextvars.Context | None = None
        ) -> Any:
            if context is None:
                try:
                    on_loop = asyncio.get_running_loop() is loop
                except RuntimeError:
                    on_loop = False
                if not on_loop:
                    context = clean_context()
            return original(callback, *args, context=context)

        try:
            loop.call_soon_threadsafe = call_soon_threadsafe
            setattr(loop, _GUARD_ATTR, True)
        except (AttributeError, TypeError):  # e.g. uvloop: fall back to the safe scheduler
            return False
    return True


def _ensure_worker_client() -> None:
    """Create this worker's client once, in a clean context, before any task computes.

    distributed creates it lazily with ``set_as_default=True``, which sets the process-wide
    dask scheduler to "dask.distributed" before the client is registered: another task
    thread computing at that moment fails with "Requested dask.distributed scheduler but no
    Client active" (seen with 2 threads per worker). Creating it here, under a lock, closes
    that window, and the clean context keeps its start callbacks free of Prefect's context.
    """
    from distributed import get_client

    clean_context().run(get_client)


def install_safe_scheduler() -> bool:
    """On a Dask worker thread, make computes in this task safe for Prefect's records.

    Process-wide and idempotent; does nothing off workers. Guards the worker loop
    (:func:`guard_worker_loop`) and creates the worker's client; where the loop cannot be
    guarded, implicit computes (``x.compute()``, ``numpy.asarray(x)``) go through
    :func:`_safe_get` instead, unless the user configured another scheduler. Returns whether
    the worker is protected.
    """
    if not _on_worker_thread():
        return False
    guarded = guard_worker_loop()
    with _INSTALL_LOCK:
        _ensure_worker_client()
        if guarded:
            return True
        current = dask.config.get("scheduler", None)
        if current in (None, "dask.distributed", "distributed"):
            # not a `with` block: concurrent tasks on this worker would undo each other's
            # settings on exit; on worker threads this is what dask does anyway, made safe
            dask.config.set(scheduler=_safe_get)
            current = _safe_get
    return current is _safe_get
