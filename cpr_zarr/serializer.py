"""The Prefect result serializer: JSON records that hold pointers, never array data.

It is Prefect's built-in ``JSONSerializer`` (type ``"json"``) with dotted-path hooks into
this module. Prefect imports those hooks by name whenever it reads a record, so a fresh
process loads records without importing cpr_zarr first: there is no custom ``Serializer``
subclass to be missing (which would load as ``UnknownSerializer`` and silently miss the cache).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from prefect.serializers import (
    JSONSerializer,
    prefect_json_object_decoder,
    prefect_json_object_encoder,
)

from cpr_zarr.errors import IntegrityError, ResultNotFoundError, StoreError
from cpr_zarr.target import PILTarget, ZarrTarget

__all__ = ["decode_object", "dumps", "encode_object", "loads", "pointer_serializer"]

logger = logging.getLogger("cpr_zarr")

TARGET_KEY = "__cpr_zarr_target__"
TUPLE_KEY = "__cpr_zarr_tuple__"


def pointer_serializer() -> JSONSerializer[Any]:
    """The serializer ``cpr_zarr.task`` uses for its result records."""
    # No ``object_encoder``: :func:`dumps` applies :func:`encode_object` itself. Prefect
    # resolves a hook's dotted name on every call, and a name that is not a module takes
    # the interpreter's import lock and searches the package folder each time: with many
    # tasks finishing at once that lock was the most contended one in the process. The
    # decoder stays in the record (it is read only on cache hits) so that any release
    # reading a record decodes its targets.
    return JSONSerializer(
        jsonlib="cpr_zarr.serializer",
        object_encoder=None,
        object_decoder="cpr_zarr.serializer.decode_object",
    )


def _mark_tuples(obj: Any) -> Any:
    # json turns tuples into lists; a cached run must return what the first run returned
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return {TUPLE_KEY: [_mark_tuples(v) for v in obj]}
    if isinstance(obj, list):
        return [_mark_tuples(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _mark_tuples(v) for k, v in obj.items()}
    return obj


def dumps(obj: Any, **kwargs: Any) -> str:
    """``json.dumps`` that keeps tuples and encodes targets (the ``jsonlib`` Prefect calls)."""
    kwargs.setdefault("default", encode_object)
    return json.dumps(_mark_tuples(obj), **kwargs)


def loads(s: str, **kwargs: Any) -> Any:
    """``json.loads`` counterpart of :func:`dumps`."""
    return json.loads(s, **kwargs)


def encode_object(obj: Any) -> Any:
    """JSON form of objects json cannot encode: targets as pointers, the rest as Prefect does."""
    if isinstance(obj, PILTarget):
        return {TARGET_KEY: obj.to_dict(), "pil_mode": obj.pil_mode}
    if isinstance(obj, ZarrTarget):
        return {TARGET_KEY: obj.to_dict()}
    return prefect_json_object_encoder(obj)


def decode_object(data: dict[str, Any]) -> Any:
    """Inverse of :func:`encode_object`, applied to every JSON object in a record.

    A target whose group is gone (removed by gc) raises, which Prefect treats as "no cached
    result": the task runs again. That is logged, never silent.
    """
    if TARGET_KEY in data:
        target = ZarrTarget.from_dict(data[TARGET_KEY])
        if "pil_mode" in data:
            target = PILTarget(**target.to_dict() | {"shape": target.shape, "chunks": target.chunks},
                               pil_mode=data["pil_mode"])  # fmt: skip
        try:
            # a fresh look (not the reader cache): gc in another process may have removed it,
            # and the record must still hash to the content hash the pointer names
            target.store.check(target)
        except (ResultNotFoundError, StoreError, IntegrityError) as exc:
            logger.warning(
                "Cached result %s in store %s cannot be loaded (%s); the task will run again.",
                target.group_path,
                target.store_url,
                exc,
            )
            raise
        return target
    if TUPLE_KEY in data and len(data) == 1:
        return tuple(data[TUPLE_KEY])
    return prefect_json_object_decoder(data)
