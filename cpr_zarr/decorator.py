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

import functools
import inspect
import os
import re
import typing
from typing import TYPE_CHECKING, Any, TypeVar, overload

import dask.array as da
import numpy as np
import pandas as pd
import prefect
from prefect.cache_policies import TASK_SOURCE

from cpr_zarr import ngff, table
from cpr_zarr.cache import CONTENT_INPUTS
from cpr_zarr.compute import install_safe_scheduler
from cpr_zarr.errors import UnsupportedResultError
from cpr_zarr.layout import canonical_dtype, parse_name
from cpr_zarr.provenance import record_for_task
from cpr_zarr.serializer import pointer_serializer
from cpr_zarr.source import TiffSource, ZarrSource, to_array
from cpr_zarr.store import ResultStore, normalize_url, open_store
from cpr_zarr.target import PILTarget, ZarrTarget
from cpr_zarr.writer import check_ndim

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["DEFAULT_STORE_ENV", "task"]

R = TypeVar("R")
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
    inputs: ngff.InputImages | None = None,
) -> Any:
    """Check (``store=None``) or save (``store`` given) a task's return value.

    The check runs over the whole value first, so a bad part leaves the store untouched.
    Arrays inherit the metadata of a same-shaped input (``inputs``).
    """
    if isinstance(value, (np.ndarray, da.Array, ngff.Image, ngff.Labels)):
        if store is None:
            parse_name(name)
            array = value if isinstance(value, (np.ndarray, da.Array)) else value.data
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
    if isinstance(value, pd.DataFrame):
        if store is None:
            parse_name(name)
            return value
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
) -> Callable[[], ResultStore]:
    if isinstance(store, ResultStore):
        given = store
        return lambda: given
    if store is None:
        store = os.environ.get(DEFAULT_STORE_ENV, "results.zarr")
    # resolve relative paths now (no I/O at import time); open on first use
    url = normalize_url(store)[0]
    return lambda: open_store(url, mode="a")


@overload
def task(fn: Callable[..., R], /) -> prefect.Task[..., Any]: ...


@overload
def task(
    *, store: str | os.PathLike[str] | ResultStore | None = None, **task_kwargs: Any
) -> Callable[[Callable[..., R]], prefect.Task[..., Any]]: ...


def task(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    store: str | os.PathLike[str] | ResultStore | None = None,
    **task_kwargs: Any,
) -> Any:
    """Make a Prefect task whose array results are stored in a :class:`ResultStore`.

    Parameters
    ----------
    store
        The result store (path, URL or ``ResultStore``); default ``$CPR_ZARR_STORE`` or
        ``results.zarr`` in the working directory.
    **task_kwargs
        Any option of :func:`prefect.task` (``retries``, ``name``, ``cache_policy``...).

    Examples
    --------
    >>> @cpr_zarr.task(store="results.zarr")
    ... def denoise(image, sigma: float):
    ...     return scipy.ndimage.gaussian_filter(image, sigma)
    """
    if fn is None:
        return functools.partial(task, store=store, **task_kwargs)
    if inspect.iscoroutinefunction(fn) or inspect.isgeneratorfunction(fn):
        raise TypeError(
            f"cpr_zarr.task supports plain (sync, non-generator) functions; {fn.__qualname__} "
            "is not. Use @prefect.task and save arrays with ResultStore.save yourself."
        )
    get_store = _store_getter(store)
    numpy_params = _numpy_params(fn)
    signature = inspect.signature(fn)
    result_name = task_kwargs.get("name") or fn.__name__
    result_name = "".join(c if c.isalnum() or c in "_.-" else "_" for c in result_name)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        install_safe_scheduler()
        bound = signature.bind(*args, **kwargs)
        record = record_for_task(fn, bound.arguments)
        inputs = ngff.InputImages()
        for pname, value in bound.arguments.items():
            bound.arguments[pname] = _load(value, pname in numpy_params)
            inputs.add(value, bound.arguments[pname])
        result = fn(*bound.args, **bound.kwargs)
        where = f"The return value of {fn.__qualname__}"
        _walk(result, result_name, where, None)
        return _walk(result, result_name, where, _Saver(get_store(), record), inputs)

    task_kwargs.setdefault("cache_policy", CONTENT_INPUTS + TASK_SOURCE)
    task_kwargs.setdefault("persist_result", True)
    task_kwargs.setdefault("result_serializer", pointer_serializer())
    return prefect.task(wrapper, **task_kwargs)
