"""Provenance: who made a result, from what, when; one record per save, never overwritten.

Each save (a dedup hit included) adds a record as its own small JSON object in the result
group's non-node folder (layout 2), invisible to zarr and OME tools::

    <name>-<hash>/cpr_zarr/provenance/<UTC time>-<uuid>.json     {"created": ..., ...}

Layout 1 stored each record as a zarr group (read, never written)::

    <name>-<hash>/provenance/<UTC time>-<uuid>/zarr.json    attributes.cpr_zarr_provenance = {...}

Writers never touch each other's records, so two runs that produce the same content both
leave theirs.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import logging
import os
import platform
import sys
import uuid
from datetime import UTC, datetime
from importlib import metadata
from pathlib import PurePath
from typing import TYPE_CHECKING, Any

import numpy as np

from cpr_zarr.errors import InvalidArgumentError, RecordError
from cpr_zarr.model.layout import AUX_DIR
from cpr_zarr.model.records import PROVENANCE_ATTR, ProvenanceRecord
from cpr_zarr.redact import REDACTED, is_secret_name, redact_text, redact_value
from cpr_zarr.target import ZarrTarget

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from cpr_zarr.core.integrity import Damage
    from cpr_zarr.storage import Storage

__all__ = [
    "PROVENANCE",
    "PROVENANCE_DIRS",
    "PROVENANCE_V1",
    "read_provenance",
    "read_records",
    "record_for_task",
    "write_record",
]

logger = logging.getLogger("cpr_zarr")

#: where a result's provenance records are (layout 2: plain JSON objects)
PROVENANCE = f"{AUX_DIR}/provenance"
#: where layout 1 kept them (one zarr group per record)
PROVENANCE_V1 = "provenance"
PROVENANCE_DIRS = (PROVENANCE, PROVENANCE_V1)
ATTR = PROVENANCE_ATTR
_PACKAGES = ("cpr_zarr", "zarr", "numcodecs", "numpy", "dask", "prefect")


@functools.cache  # reading package metadata took 17 ms a save; what is imported stays
def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:  # pragma: no cover
            continue
    return out


def render(value: Any, depth: int = 0) -> Any:
    """A JSON-safe, small rendering of a parameter value (arrays are described, not copied)."""
    if isinstance(value, ZarrTarget):
        return {"cpr_zarr_target": value.group_path, "content_hash": value.content_hash}
    if isinstance(value, str):
        value = redact_text(value)
        return value if len(value) <= 500 else value[:500] + "..."
    if isinstance(value, (int, float, bool, type(None))):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return f"numpy.ndarray(shape={value.shape}, dtype={value.dtype})"
    if hasattr(value, "dask") and hasattr(value, "name") and hasattr(value, "shape"):
        return f"dask.array(name={value.name!r}, shape={value.shape}, dtype={value.dtype})"
    if isinstance(value, PurePath):
        return str(value)
    if depth < 4 and isinstance(value, (list, tuple)):
        return [render(v, depth + 1) for v in list(value)[:100]]
    if depth < 4 and isinstance(value, dict):
        return {
            str(k): REDACTED if is_secret_name(k) else render(v, depth + 1)
            for k, v in list(value.items())[:100]
        }
    return redact_text(repr(value))[:200]


def dask_worker_address() -> str | None:
    """The address of the Dask worker this code runs on, or None outside a Dask worker task.

    Never imports distributed: a process that has not imported it runs no Dask worker.
    """
    worker_module = sys.modules.get("distributed.worker")
    if worker_module is None:
        return None
    try:
        return str(worker_module.get_worker().address)
    except (ValueError, AttributeError):  # not inside a worker's task
        return None


def input_hashes(value: Any) -> list[str]:
    """Content hashes of every ``ZarrTarget`` inside a parameter value."""
    if isinstance(value, ZarrTarget):
        return [value.content_hash]
    if isinstance(value, (list, tuple)):
        return [h for v in value for h in input_hashes(v)]
    if isinstance(value, dict):
        return [h for v in value.values() for h in input_hashes(v)]
    return []


def source_hash(fn: Callable[..., Any]) -> str | None:
    try:
        source = inspect.getsource(fn)
    except (OSError, TypeError):
        return None
    return hashlib.blake2b(source.encode(), digest_size=16).hexdigest()


def record_for_task(fn: Callable[..., Any], parameters: Mapping[str, Any]) -> dict[str, Any]:
    """Provenance of a save made inside a Prefect task run (task/flow fields None outside one)."""
    from prefect.context import FlowRunContext, TaskRunContext

    record: dict[str, Any] = {
        "task_name": None,
        "task_run_id": None,
        "task_run_name": None,
        "flow_run_id": None,
        "flow_run_name": None,
        "flow_name": None,
    }
    task_ctx = TaskRunContext.get()
    if task_ctx is not None:
        record["task_name"] = task_ctx.task.name
        record["task_run_id"] = str(task_ctx.task_run.id)
        record["task_run_name"] = task_ctx.task_run.name
        if task_ctx.task_run.flow_run_id is not None:
            record["flow_run_id"] = str(task_ctx.task_run.flow_run_id)
    flow_ctx = FlowRunContext.get()
    if flow_ctx is not None and flow_ctx.flow_run is not None:
        record["flow_run_id"] = str(flow_ctx.flow_run.id)
        record["flow_run_name"] = flow_ctx.flow_run.name
        record["flow_name"] = flow_ctx.flow.name if flow_ctx.flow else None
    record["function"] = f"{fn.__module__}.{fn.__qualname__}"
    record["source_hash"] = source_hash(fn)
    # parameter names are checked like nested keys: a `token=` argument is never stored
    record["parameters"] = {
        str(k): REDACTED if is_secret_name(k) else render(v) for k, v in parameters.items()
    }
    record["inputs"] = sorted({h for v in parameters.values() for h in input_hashes(v)})
    return record


def write_record(
    storage: Storage, target: ZarrTarget, record: Mapping[str, Any] | None, output: str
) -> ProvenanceRecord:
    """Add one provenance record to a committed result (additive; no read-modify-write);
    the record written."""
    now = datetime.now(UTC)
    full = {
        "created": now.isoformat(timespec="milliseconds"),
        "output": output,
        # the process that wrote it: on a cluster, which job and worker made the result
        "host": platform.node(),
        "pid": os.getpid(),
        "worker": dask_worker_address(),
        "versions": dict(_versions()),  # a copy: the cached one is shared
        "argv": sys.argv[:1],
        **(record or {}),
    }
    # a record given to save(provenance=...) is stored as redacted as a task's
    try:
        stored = ProvenanceRecord.from_dict(redact_value(full))
    except RecordError as exc:
        raise InvalidArgumentError(
            f"Cannot write the provenance record of result {target.group_path!r} in store "
            f"{storage.url!r}: {exc}. Fields given to save(provenance=...) must not reuse the "
            "names of cpr_zarr's own provenance fields with other types; rename them."
        ) from exc
    name = f"{now.strftime('%Y%m%dT%H%M%S.%fZ')}-{uuid.uuid4().hex[:8]}"
    storage.set_json(f"{target.group_path}/{PROVENANCE}/{name}.json", stored.to_dict())
    return stored


def read_records(
    storage: Storage, group_path: str, *, damaged: list[Damage] | None = None
) -> list[dict[str, Any]]:
    """All provenance records of a result as stored (plain dicts), oldest first; see
    :func:`read_provenance`."""
    return [r.to_dict() for r in read_provenance(storage, group_path, damaged=damaged)]


def read_provenance(
    storage: Storage, group_path: str, *, damaged: list[Damage] | None = None
) -> list[ProvenanceRecord]:
    """All provenance records of a result, typed, oldest first.

    A damaged record (unreadable, without a valid ``created`` time, or with a field of the
    wrong type) is skipped, logged, and appended to ``damaged`` if given: one bad record
    never hides the others.
    """
    from cpr_zarr.core.integrity import Damage, is_absent, read_doc

    found: list[tuple[str, str, bool]] = []  # (sort name, key, layout-1 group document)
    base = f"{group_path}/{PROVENANCE}"
    found += [
        (entry, f"{base}/{entry}", False)
        for entry in storage.list_dir(base)
        if entry.endswith(".json")
    ]
    old = f"{group_path}/{PROVENANCE_V1}"
    found += [
        (entry, f"{old}/{entry}/zarr.json", True)
        for entry in storage.list_dir(old)
        if entry != "zarr.json"
    ]
    records = []
    for _, key, grouped in sorted(found):
        try:
            doc = read_doc(storage, key)
        except ValueError:
            doc = None
        if is_absent(doc):  # an empty folder (a writer stopped before writing the record)
            continue
        try:
            if grouped:
                attributes = doc.get("attributes") if isinstance(doc, dict) else None
                if not isinstance(attributes, dict):
                    raise RecordError("the document has no attributes", field="attributes")
                doc = attributes.get(ATTR)
            records.append(ProvenanceRecord.from_dict(doc))
            continue
        except RecordError as exc:
            problem = str(exc)
        message = (
            f"Provenance record {key!r} of result {group_path!r} in store {storage.url!r} is "
            f"damaged ({problem}; a record is a JSON object with a 'created' ISO time); it is "
            "skipped. The result itself is unaffected: delete the record to silence this."
        )
        logger.warning(message)
        if damaged is not None:
            damaged.append(Damage(group_path, key, message))
    return records
