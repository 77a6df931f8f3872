"""``CONTENT_INPUTS``: a Prefect cache policy that hashes array inputs by content, cheaply.

Prefect's ``INPUTS`` policy pickles every input to hash it (2.4 s and +1.1 GiB of memory
per GiB of array). This policy hashes

* ``ZarrTarget`` by its content hash (free: it is in the pointer),
* numpy arrays with xxh3-128 over their bytes (tens of GB/s, no copy for C-contiguous input),
* Dask arrays by their name (which dask derives from the graph; for results read from the
  store it is the content hash),
* ``pathlib.Path`` inputs naming an existing file by path, size and modification time
  (a changed file is a new key; the file is not read),

and everything else the way ``INPUTS`` does. For a ``cpr_zarr.task`` the key also holds the
URL of the store the task writes to: the same inputs with another store are another result
(a cached pointer into the old store would hand back results from a store the task no
longer writes to, or from one that is gone). It is a plain ``CachePolicy`` (Prefect's
``CompoundCachePolicy`` silently replaces subclasses of ``Inputs`` with ``Inputs()``), so
``CONTENT_INPUTS + TASK_SOURCE`` composes as expected.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any

import dask.array as da
import numpy as np
from prefect.cache_policies import CachePolicy
from prefect.utilities.hashing import hash_objects

from cpr_zarr.model.hashing import array_fingerprint
from cpr_zarr.target import ZarrTarget

if TYPE_CHECKING:
    from prefect.context import TaskRunContext

__all__ = ["CONTENT_INPUTS", "ContentInputs", "content_token"]


def content_token(value: Any) -> Any:
    """A small, JSON-able stand-in for ``value`` that changes exactly when its content does."""
    if isinstance(value, ZarrTarget):
        return {"cpr_zarr.target": value.content_hash}
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "OVUSMm":
            return value  # no cheap canonical bytes: leave it to Prefect's hashing
        return {"numpy": array_fingerprint(value)}
    if isinstance(value, da.Array):
        return {"dask": value.name, "shape": list(value.shape), "dtype": value.dtype.str}
    if hasattr(value, "fingerprint") and callable(value.fingerprint):  # TiffSource, ZarrSource
        return {type(value).__name__: value.fingerprint()}
    if isinstance(value, PurePath) and Path(value).is_dir():
        # a folder (a zarr store, a TIFF series): every file's path, size and time, no reads
        entries = sorted(
            (str(p.relative_to(value)), p.stat().st_size, p.stat().st_mtime_ns)
            for p in Path(value).rglob("*")
            if p.is_file()
        )
        return {"folder": str(Path(value).resolve()), "files": entries}
    if isinstance(value, PurePath) and Path(value).is_file():
        stat = Path(value).stat()
        return {
            "file": str(Path(value).resolve()),
            "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
        }
    if isinstance(value, dict):
        return {k: content_token(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [type(value).__name__, [content_token(v) for v in value]]
    return value


def _json_key(tokens: dict[str, Any]) -> str:
    """``hash_objects(tokens)`` for JSON-native tokens, computed without Prefect's serializer.

    The same bytes and the same digest (``md5`` of the sorted-keys JSON of ``((tokens,), {})``),
    so keys do not change. Prefect's ``JSONSerializer`` resolves its encoder's dotted name on
    every call, which takes the interpreter's import lock: with hundreds of small tasks
    computing keys at once, tasks queued on that lock. Raises ``TypeError``/``ValueError``
    where ``json`` cannot encode a token without an encoder.
    """
    data = json.dumps(((tokens,), {}), sort_keys=True).encode()
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


@dataclass
class ContentInputs(CachePolicy):
    """Cache key from task inputs, with arrays and targets hashed by content.

    Parameters
    ----------
    exclude
        Parameter names left out of the key (also ``CONTENT_INPUTS - "name"``).
    """

    exclude: list[str] = field(default_factory=list)

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any] | None,
        flow_parameters: dict[str, Any] | None,
        **kwargs: Any,
    ) -> str | None:
        # a cpr_zarr.task's store (task_ctx is None when called outside a task run)
        store_url = getattr(getattr(task_ctx, "task", None), "store_url", None)
        if not inputs and store_url is None:
            return None
        tokens = {k: content_token(v) for k, v in (inputs or {}).items() if k not in self.exclude}
        if store_url is not None:
            # not a parameter name: "cpr_zarr.store" cannot be one
            tokens["cpr_zarr.store"] = store_url
        try:
            return _json_key(tokens)
        except (TypeError, ValueError):
            pass  # not JSON-native (a user's object): Prefect's hashing, pickles included
        try:
            return hash_objects(tokens, raise_on_failure=True)
        except Exception as exc:
            unhashable = sorted(
                k for k, v in tokens.items() if hash_objects(v, raise_on_failure=False) is None
            )
            first = unhashable[0] if unhashable else "<parameter name>"
            raise ValueError(
                f"CONTENT_INPUTS cannot hash the task input(s) {unhashable}: {exc}\n\n"
                "To resolve this, you can:\n"
                "  1. Pass arrays, ZarrTargets or JSON-able values instead\n"
                f"  2. Exclude them from the key: cache_policy=CONTENT_INPUTS - {first!r}"
                " + TASK_SOURCE\n"
                "  3. Disable caching with cache_policy=NO_CACHE"
            ) from exc

    def __sub__(self, other: str) -> ContentInputs:
        if not isinstance(other, str):
            raise TypeError("Can only subtract parameter names (str) from CONTENT_INPUTS.")
        return replace(self, exclude=[*self.exclude, other])


CONTENT_INPUTS = ContentInputs()
