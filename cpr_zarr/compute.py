"""Computing Dask collections safely inside Prefect tasks that run on Dask workers.

On a distributed worker, ``.compute()`` and ``worker_client()`` *secede* the task's thread.
``secede`` schedules a callback on the worker's event loop, and that callback captures the
current ``contextvars`` context, Prefect's open transaction included. The next task the
worker starts inherits that transaction as its parent, so its result record is never
committed: the task shows Completed but nothing is persisted and its cache never hits.

:func:`compute` runs the compute in a fresh ``contextvars.Context`` that holds only
distributed's worker variable. :func:`install_safe_scheduler` makes every implicit compute
(``x.compute()``, ``numpy.asarray(x)``) on a worker thread do the same; ``cpr_zarr.task``
calls it, so user code in a task needs no helper.
"""

from __future__ import annotations

import contextvars
import threading
from typing import Any

import dask
import dask.base

__all__ = ["clean_context", "compute", "install_safe_scheduler"]

_INSTALL_LOCK = threading.Lock()


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

        client = get_client()
        return clean_context().run(client.get, dsk, keys, **kwargs)
    from dask.threaded import get

    return get(dsk, keys, **kwargs)


def install_safe_scheduler() -> bool:
    """On a Dask worker thread, route implicit computes through :func:`_safe_get`.

    Process-wide and idempotent; does nothing off workers or when the user configured a
    scheduler. Returns whether the safe scheduler is active.
    """
    if not _on_worker_thread():
        return False
    with _INSTALL_LOCK:
        current = dask.config.get("scheduler", None)
        if current is None:
            # not a `with` block: concurrent tasks on this worker would undo each other's
            # settings on exit; on worker threads this is what dask does anyway, made safe
            dask.config.set(scheduler=_safe_get)
            current = _safe_get
    return current is _safe_get
