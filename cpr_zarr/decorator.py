"""``cpr_zarr.task``: a Prefect task whose array results live in the shared store.

Plain arrays in, plain arrays out. The wrapper

* turns ``ZarrTarget`` arguments into lazy Dask arrays (numpy arrays for parameters
  annotated ``numpy.ndarray``),
* saves returned numpy/Dask arrays (also inside tuples, lists and dicts) into the store in
  the task body, and returns pointers instead, so Prefect and Dask only ever carry pointers,
* makes ``.compute()`` / ``numpy.asarray`` inside the task safe on Dask workers
  (:mod:`cpr_zarr.compute`),
* defaults to ``cache_policy=CONTENT_INPUTS + TASK_SOURCE``, ``persist_result=True`` and a
  JSON record serializer that holds only pointers.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import os
import re
import threading
import typing
from typing import TYPE_CHECKING, Any, TypeVar, overload

import dask.array as da
import numpy as np
import pandas as pd
import prefect
from prefect.cache_policies import TASK_SOURCE

from cpr_zarr.artifacts import cpr_zarr_artifacts, progress_artifacts
from cpr_zarr.cache import CONTENT_INPUTS
from cpr_zarr.core import table
from cpr_zarr.core.compute import install_safe_scheduler
from cpr_zarr.core.progress import reporting_to
from cpr_zarr.core.provenance import record_for_task
from cpr_zarr.core.source import TiffSource, ZarrSource, to_array
from cpr_zarr.core.writer import check_ndim, unmask
from cpr_zarr.errors import UnsupportedResultError
from cpr_zarr.inputs import InputImages
from cpr_zarr.model import ngff
from cpr_zarr.model.layout import canonical_dtype, parse_name
from cpr_zarr.serializer import pointer_serializer
from cpr_zarr.storage import normalize_url
from cpr_zarr.store import ResultStore, open_store
from cpr_zarr.target import PILTarget, ZarrTarget

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "DEFAULT_STORE_ENV",
    "TARGETS_KEY",
    "ZarrTask",
    "delete_on_rollback",
    "task",
    "written_targets",
]

R = TypeVar("R")
logger = logging.getLogger("cpr_zarr")
DEFAULT_STORE_ENV = "CPR_ZARR_STORE"
_JSON_SCALARS = (str, int, float, bool, type(None))
_NAME_PART = re.compile(r"[A-Za-z0-9_.-]{1,40}")


def _numpy_params(fn: Callable[..., Any]) -> set[str]:
    """Parameters annotated ``numpy.ndarray`` (or ``numpy.typing.NDArray``)."""
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable annotations: treat every input as lazy
        return set()
    names = set()
    for pname, hint in hints.items():
        if hint is np.ndarray or typing.get_origin(hint) is np.ndarray:
            names.add(pname)
    return names


def _load(value: Any, as_numpy: bool) -> Any:
    if isinstance(value, (TiffSource, ZarrSource)):
        return to_array(value, as_numpy)
    if isinstance(value, PILTarget):
        return value.to_pil()
    if isinstance(value, ZarrTarget):
        if table.is_table(value):
            return table.read_table(value)
        return value.to_numpy() if as_numpy else value.get_data()
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(_load(v, as_numpy) for v in value)
    if isinstance(value, list):
        return [_load(v, as_numpy) for v in value]
    if isinstance(value, dict):
        return {k: _load(v, as_numpy) for k, v in value.items()}
    return value


class _Saver:
    """Saves each returned array with the task's provenance record."""

    def __init__(self, store: ResultStore, record: dict[str, Any]) -> None:
        self.store = store
        self.record = record

    def save(self, value: Any, name: str) -> ZarrTarget:
        return self.store.save(value, name, provenance=self.record)


def _is_pil(value: Any) -> bool:
    return type(value).__module__.startswith("PIL.") and hasattr(value, "mode")


def _walk(
    value: Any,
    name: str,
    where: str,
    store: _Saver | None,
    inputs: InputImages | None = None,
) -> Any:
    """Check (``store=None``) or save (``store`` given) a task's return value.

    The check runs over the whole value first, so a bad part leaves the store untouched.
    Arrays inherit the metadata of a same-shaped input (``inputs``).
    """
    if isinstance(value, (np.ndarray, da.Array, ngff.Image, ngff.Labels)):
        if store is None:
            parse_name(name)
            array = value if isinstance(value, (np.ndarray, da.Array)) else value.data
            unmask(array, where)
            canonical_dtype(array.dtype, what=where)
            check_ndim(array.shape, where)
            return value
        return store.save(inputs.prepare(value) if inputs is not None else value, name)
    if _is_pil(value):
        array = np.asarray(value)
        if array.ndim == 3:  # bands last in PIL, channels first in OME-NGFF
            array = np.moveaxis(array, -1, 0)
        if store is None:
            parse_name(name)
            canonical_dtype(array.dtype, what=where)
            return value
        array = np.ascontiguousarray(array)
        saved = store.save(ngff.Image(array, axes="cyx") if array.ndim == 3 else array, name)
        fields = saved.to_dict() | {"shape": saved.shape, "chunks": saved.chunks}
        return PILTarget(**fields, pil_mode=value.mode)
    if isinstance(value, (pd.DataFrame, table.Table)):
        if store is None:
            frame = value.data if isinstance(value, table.Table) else value
            table.encode_table(frame, parse_name(name))
            return value
        if isinstance(value, table.Table) and inputs is not None:
            value = inputs.prepare(value)  # labels=<the input array> names its label image
        return store.save(value, name)
    if isinstance(value, (ZarrTarget, *_JSON_SCALARS)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(
            _walk(v, f"{name}.{i}", f"{where}[{i}]", store, inputs) for i, v in enumerate(value)
        )
    if isinstance(value, list):
        return [
            _walk(v, f"{name}.{i}", f"{where}[{i}]", store, inputs) for i, v in enumerate(value)
        ]
    if isinstance(value, dict):
        out = {}
        for i, (k, v) in enumerate(value.items()):
            if not isinstance(k, str):
                raise UnsupportedResultError(
                    f"{where} has key {k!r} of type {type(k).__name__}: cpr_zarr task results "
                    "need str keys in dicts (they become JSON). Use str(key)."
                )
            part = k if _NAME_PART.fullmatch(k) else str(i)
            out[k] = _walk(v, f"{name}.{part}", f"{where}[{k!r}]", store, inputs)
        return out
    raise UnsupportedResultError(
        f"{where} is a {type(value).__module__}.{type(value).__qualname__} ({value!r:.60}), which "
        "a cpr_zarr task cannot record. Return numpy or Dask arrays, ZarrTargets, numbers, "
        "strings, or tuples/lists/dicts of those; or use a plain @prefect.task for other objects."
    )


def _store_getter(
    store: str | os.PathLike[str] | ResultStore | None,
) -> tuple[str, Callable[[], ResultStore]]:
    """The store's URL, and a function that opens it."""
    if isinstance(store, ResultStore):
        given = store
        return given.url, lambda: given
    if store is None:
        store = os.environ.get(DEFAULT_STORE_ENV, "results.zarr")
    # resolve relative paths now (no I/O at import time); open on first use
    url = normalize_url(store)[0]
    return url, lambda: open_store(url, mode="a")


def _result_name(task_name: str) -> str:
    """A result name (``[A-Za-z0-9][A-Za-z0-9_.-]{0,99}``) from any task name: other
    characters become ``_``, leading ones that cannot start a name are dropped (a private
    ``_helper`` task saves as ``helper``), at most 100 characters, ``result`` if none is left."""
    name = "".join(c if (c.isascii() and c.isalnum()) or c in "_.-" else "_" for c in task_name)
    return name.lstrip("_.-")[:100] or "result"


def _running_task(body: Callable[..., Any]) -> ZarrTask | None:
    """The ``ZarrTask`` whose run is executing ``body`` now, or None (a plain ``.fn`` call)."""
    from prefect.context import TaskRunContext

    ctx = TaskRunContext.get()
    if ctx is not None and isinstance(ctx.task, ZarrTask) and ctx.task.fn is body:
        return ctx.task
    return None


def _collect_targets(value: Any) -> list[ZarrTarget]:
    if isinstance(value, ZarrTarget):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _collect_targets(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _collect_targets(v)]
    return []


class _Call:
    """One run of a task body: inputs loaded, outputs checked then saved."""

    def __init__(self, task: ZarrTask, fn: Callable[..., Any], args: Any, kwargs: Any) -> None:
        self.task = task
        self.fn = fn
        self.bound = task.signature.bind(*args, **kwargs)
        self.record = record_for_task(fn, self.bound.arguments)
        self.inputs = InputImages()

    def load(self) -> None:
        install_safe_scheduler()
        _commit_despite_stale_parent()
        for pname, value in self.bound.arguments.items():
            self.bound.arguments[pname] = _load(value, pname in self.task.numpy_params)
            self.inputs.add(value, self.bound.arguments[pname])

    def save(self, result: Any) -> Any:
        name = _result_name(self.task.name)
        where = f"The return value of {self.fn.__qualname__}"
        _walk(result, name, where, None)
        sink = progress_artifacts(self.task)  # long saves update a Prefect progress artifact
        with reporting_to(sink) if sink is not None else contextlib.nullcontext():
            saver = _Saver(self.task.get_store(), self.record)
            out = _walk(result, name, where, saver, self.inputs)
        targets = _collect_targets(out)
        _remember_in_transaction(targets, self.record.get("task_run_id"))
        if self.task.artifacts and not targets:
            _nothing_to_show_in(self.record.get("task_run_id"))
        return out


#: task runs whose computed result holds no stored result (newest last, at most a few
#: thousand): :attr:`ZarrTask.on_completion_hooks` leaves the artifacts hook out for them
_nothing_to_show: dict[str, None] = {}
_NOTHING_TO_SHOW_MAX = 4096
_nothing_to_show_lock = threading.Lock()


def _nothing_to_show_in(task_run_id: Any) -> None:
    if task_run_id is None:
        return
    with _nothing_to_show_lock:  # the oldest is dropped: its run completed long ago
        if len(_nothing_to_show) >= _NOTHING_TO_SHOW_MAX:
            _nothing_to_show.pop(next(iter(_nothing_to_show)))
        _nothing_to_show[str(task_run_id)] = None


def _make_body(fn: Callable[..., Any]) -> Callable[..., Any]:
    """What Prefect runs: the user's function, plus loading and saving inside a task run.

    Called outside a run of its own task (``my_task.fn(...)`` in a unit test, or from
    another task's body), it is exactly the user's function.
    """
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def async_body(*args: Any, **kwargs: Any) -> Any:
            task = _running_task(async_body)
            if task is None:
                return await fn(*args, **kwargs)
            call = _Call(task, fn, args, kwargs)
            install_safe_scheduler()  # on the worker thread itself, before leaving it
            # loading (reads of numpy inputs) and saving do blocking I/O: off the event loop
            await asyncio.to_thread(call.load)
            result = await fn(*call.bound.args, **call.bound.kwargs)
            return await asyncio.to_thread(call.save, result)

        body: Callable[..., Any] = async_body
    else:

        @functools.wraps(fn)
        def sync_body(*args: Any, **kwargs: Any) -> Any:
            task = _running_task(sync_body)
            if task is None:
                return fn(*args, **kwargs)
            call = _Call(task, fn, args, kwargs)
            call.load()
            return call.save(fn(*call.bound.args, **call.bound.kwargs))

        body = sync_body
    body.__cpr_zarr_fn__ = fn  # type: ignore[attr-defined]
    return body


# -- transactions -------------------------------------------------------------------------


def _commit_despite_stale_parent() -> None:
    """Last line of defence against a lost record: a parent transaction that already ended.

    A task's transaction whose parent is finished would hand its record to that parent and
    never be committed (the secede leak of :mod:`cpr_zarr.compute`, by a path the worker-loop
    guard does not cover). A live parent is never finished while its children run, so such a
    parent can only have leaked in: commit this task's record itself, and say so loudly.
    """
    from prefect.transactions import CommitMode, TransactionState, get_transaction

    txn = get_transaction()
    parent = txn.get_parent() if txn is not None else None
    if parent is None or parent.state not in (
        TransactionState.COMMITTED,
        TransactionState.ROLLED_BACK,
    ):
        return
    txn.commit_mode = CommitMode.EAGER  # type: ignore[union-attr]
    logger.warning(
        "This task's Prefect transaction has a parent that already ended (%s, key %r): "
        "Prefect context leaked from an earlier task on this worker, and the result record "
        "would not have been written. cpr_zarr commits it directly; please report this with "
        "the code of the tasks that ran before on this worker.",
        parent.state.value,
        parent.key,
    )


TARGETS_KEY = "cpr_zarr.targets"


def _remember_in_transaction(targets: list[ZarrTarget], task_run_id: str | None) -> None:
    from prefect.transactions import get_transaction

    txn = get_transaction()
    if txn is not None:
        txn.set(TARGETS_KEY, {"task_run_id": task_run_id, "targets": targets})


def written_targets(txn: Any) -> list[ZarrTarget]:
    """The results a ``cpr_zarr.task`` saved in the run of this transaction (for hooks).

    Examples
    --------
    >>> @cpr_zarr.task(on_rollback=[lambda txn: print(cpr_zarr.written_targets(txn))])
    ... def denoise(image): ...
    """
    entry = txn.get(TARGETS_KEY, None)
    return list(entry["targets"]) if entry else []


def delete_on_rollback(txn: Any) -> None:
    """An ``on_rollback`` hook: remove the results this task run saved, unless shared.

    Content is stored once: a result that another run also produced (it has provenance
    records of other task runs) is kept and logged, so a rollback never removes what a
    committed record still points to.
    """
    entry = txn.get(TARGETS_KEY, None)
    if not entry:
        return
    for target in entry["targets"]:
        store = open_store(target.store_url, mode="a")
        try:
            others = {
                r.get("task_run_id")
                for r in store.provenance(target)
                if r.get("task_run_id") != entry["task_run_id"]
            }
        except KeyError:  # already gone
            continue
        if others:
            logger.warning(
                "Rollback kept %s in %s: other task runs produced the same content.",
                target.group_path,
                target.store_url,
            )
            continue
        store.delete(target)
        logger.info("Rollback removed %s from %s.", target.group_path, target.store_url)


# -- the task class -----------------------------------------------------------------------


def _default_options(task_kwargs: dict[str, Any]) -> dict[str, Any]:
    """cpr_zarr's defaults, only where the user (or Prefect's settings) said nothing."""
    from prefect.settings import get_current_settings
    from prefect.utilities.annotations import NotSet

    options = dict(task_kwargs)
    settings = get_current_settings()
    wants_cache = (
        options.get("cache_policy", NotSet) is NotSet
        and options.get("cache_key_fn") is None
        and options.get("persist_result") is not False
        and options.get("result_storage_key") is None
        and not settings.tasks.default_no_cache
    )
    if wants_cache:
        options["cache_policy"] = CONTENT_INPUTS + TASK_SOURCE
    if options.get("persist_result") is None:
        options["persist_result"] = True
    if options.get("result_serializer") is None:
        options["result_serializer"] = pointer_serializer()
    return options


class ZarrTask(prefect.Task):  # type: ignore[type-arg]
    """A Prefect task whose array results are saved in a :class:`ResultStore`.

    Made by :func:`task`. Everything of :class:`prefect.Task` works; ``fn`` is the user's
    function (unchanged when called directly), ``store`` the store results go to, and
    ``with_options`` also takes ``store=``.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        store: str | os.PathLike[str] | ResultStore | None = None,
        artifacts: bool = True,
        **task_kwargs: Any,
    ) -> None:
        user_fn = getattr(fn, "__cpr_zarr_fn__", fn)
        if inspect.isgeneratorfunction(user_fn) or inspect.isasyncgenfunction(user_fn):
            raise TypeError(
                f"cpr_zarr.task does not support generator functions ({user_fn.__qualname__} "
                "yields): a stored result needs the whole value. Return the arrays (a list "
                "works), or use @prefect.task and save with ResultStore.save yourself."
            )
        super().__init__(_make_body(user_fn), **_default_options(task_kwargs))
        self.artifacts = artifacts
        _add_artifacts_hook(self)
        self.user_fn = user_fn
        self.store = store
        #: the URL results go to (part of the cache key: see ``cpr_zarr.cache``)
        self.store_url, self.get_store = _store_getter(store)
        self.numpy_params = _numpy_params(user_fn)
        self.signature = inspect.signature(user_fn)

    @property
    def on_completion_hooks(self) -> list[Any]:
        """The completion hooks Prefect runs: the user's and, unless this run's computed
        result holds no stored result, :func:`cpr_zarr_artifacts` (Prefect logs two lines
        per hook it runs: for a run returning a number that was all the hook did, and it
        cost 5 ms per task run; a cache hit always gets the hook)."""
        hooks: list[Any] = self.__dict__.setdefault("_completion_hooks", [])
        if cpr_zarr_artifacts not in hooks or not _nothing_to_show:
            return hooks
        from prefect.context import TaskRunContext

        ctx = TaskRunContext.get()
        run = getattr(ctx, "task_run", None)
        if run is not None and str(run.id) in _nothing_to_show:
            return [h for h in hooks if h is not cpr_zarr_artifacts]
        return hooks

    @on_completion_hooks.setter
    def on_completion_hooks(self, hooks: list[Any]) -> None:
        self.__dict__["_completion_hooks"] = list(hooks)

    @property
    def saving_fn(self) -> Callable[..., Any]:
        """What a run of this task calls: the user's function with loading and saving."""
        return self.fn

    def with_options(
        self, *, store: Any = None, artifacts: bool | None = None, **options: Any
    ) -> ZarrTask:
        """:meth:`prefect.Task.with_options`, plus ``store=`` and ``artifacts=``; the stored
        name follows ``name``."""
        plain = super().with_options(**options)  # a prefect.Task holding every option
        new = object.__new__(type(self))
        # same options as Prefect computed them, plus ours; fn is this task's body, which
        # reads name and store from the running task, so a renamed copy saves under its name
        new.__dict__.update(plain.__dict__)
        # a prefect.Task keeps its hooks in the instance; ours go through the property
        new.on_completion_hooks = new.__dict__.pop("on_completion_hooks", [])
        for attr in ("user_fn", "numpy_params", "signature"):
            setattr(new, attr, getattr(self, attr))
        new.store = self.store if store is None else store
        if store is None:
            new.store_url, new.get_store = self.store_url, self.get_store
        else:
            new.store_url, new.get_store = _store_getter(store)
        new.artifacts = self.artifacts if artifacts is None else artifacts
        _add_artifacts_hook(new)
        return new

    def apply_async(
        self,
        args: tuple[Any, ...] | None = None,
        kwargs: dict[str, Any] | None = None,
        wait_for: Any = None,
        dependencies: Any = None,
    ) -> Any:
        """:meth:`prefect.Task.apply_async` (and ``.delay``): array arguments go to the store.

        Background task workers receive their parameters through a stored record; arrays
        travel as ``ZarrTarget`` pointers there, like task results, and arrive as arrays.
        """
        if args or kwargs:
            params = self.signature.bind_partial(*(args or ()), **(kwargs or {})).arguments
            store = self.get_store()
            for pname, value in params.items():
                where = f"Argument {pname!r} of {self.name}"
                name = _result_name(f"{self.name}.input.{pname}")
                _walk(value, name, where, None)
                params[pname] = _walk(value, name, where, _Saver(store, {}))
            args, kwargs = (), params
        return super().apply_async(args, kwargs, wait_for, dependencies)


def _add_artifacts_hook(task: ZarrTask) -> None:
    """Prefect UI artifacts of each completed run, computed or cached (cpr_zarr.artifacts)."""
    hooks = [h for h in task.on_completion_hooks if h is not cpr_zarr_artifacts]
    task.on_completion_hooks = [*hooks, cpr_zarr_artifacts] if task.artifacts else hooks


@overload
def task(fn: Callable[..., R], /) -> ZarrTask: ...


@overload
def task(
    *,
    store: str | os.PathLike[str] | ResultStore | None = None,
    artifacts: bool = True,
    **task_kwargs: Any,
) -> Callable[[Callable[..., R]], ZarrTask]: ...


def task(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    store: str | os.PathLike[str] | ResultStore | None = None,
    artifacts: bool = True,
    **task_kwargs: Any,
) -> Any:
    """Make a Prefect task whose array results are stored in a :class:`ResultStore`.

    Parameters
    ----------
    store
        The result store (path, URL or ``ResultStore``); default ``$CPR_ZARR_STORE`` or
        ``results.zarr`` in the working directory.
    artifacts
        Show each run's results in the Prefect UI: a table, a preview per array result, a
        progress artifact for long saves (:mod:`cpr_zarr.artifacts`). ``False`` (or
        ``CPR_ZARR_ARTIFACTS=0``) creates none.
    **task_kwargs
        Any option of :func:`prefect.task` (``retries``, ``name``, ``cache_policy``...).
        Where none of ``cache_policy``, ``cache_key_fn``, ``persist_result=False`` or
        Prefect's no-cache settings is given, the cache policy is
        ``CONTENT_INPUTS + TASK_SOURCE``.

    Examples
    --------
    >>> @cpr_zarr.task(store="results.zarr")
    ... def denoise(image, sigma: float):
    ...     return scipy.ndimage.gaussian_filter(image, sigma)
    """
    if fn is None:
        return functools.partial(task, store=store, artifacts=artifacts, **task_kwargs)
    return ZarrTask(fn, store=store, artifacts=artifacts, **task_kwargs)
