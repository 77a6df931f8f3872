"""Integrity of committed results: nothing is served that the content hash does not vouch for.

The content hash in a group path is the only thing a reader trusts. Before a result is
served, its commit record (the ``cpr_zarr`` attributes of the group's ``zarr.json``) is
checked against it, and the stored array metadata against the record, without reading a
chunk:

* arrays: ``shape``, ``dtype``, ``chunks`` and ``chunk_digests`` must hash to the content
  hash (:func:`~cpr_zarr.model.hashing.combine_digests`); tables: the schema (column names,
  dtypes, index) and the per-array digests (:func:`~cpr_zarr.model.hashing.table_hash`);
* pyramid levels are bound to the base: level ``n``'s path starts with ``n``, its shape
  and chunks follow from the base and its step, and the ``ome`` multiscales must be
  exactly what the record implies (so swapping two level records is detected);
* records written by this version also carry ``record_digest``, a digest of the whole
  record and its ``ome`` attributes (level digests, image metadata); older records have
  none and are checked by the rules above;
* every stored array's ``zarr.json`` must agree with the record: ``data_type``, ``shape``,
  chunk grid, chunk key encoding, little-endian bytes codec and zero fill value.

A group is a *leftover* (never committed, removable by gc) only when neither its marker
``zarr.json`` nor the record copy written just before it (:data:`RECORD_COPY`) exists:
damage changes what a file says, never whether it exists, so a damaged marker is never
mistaken for a leftover. :func:`repair` rebuilds a damaged marker from the copy, or from the
base array's chunks when they hash to the content hash in the path.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import math
import re
import shlex
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
from zarr.core.buffer import default_buffer_prototype
from zarr.core.metadata.v3 import ArrayV3Metadata
from zarr.core.sync import sync

from cpr_zarr.errors import IntegrityError, UnsupportedResultError
from cpr_zarr.model.hashing import (
    ALGORITHM,
    TABLE_ALGORITHM,
    TABLE_DTYPE,
    combine_digests,
    table_hash,
)
from cpr_zarr.model.layout import HASH_HEX_LENGTH, LAYOUT_VERSION, canonical_dtype, parse_group_path

if TYPE_CHECKING:
    from collections.abc import Sequence

    from cpr_zarr.store import ResultStore

__all__ = [
    "RECORD_COPY",
    "Damage",
    "VerifyReport",
    "array_record",
    "check_array_doc",
    "check_arrays",
    "check_record",
    "load_commit",
    "read_doc",
    "record_digest",
    "remove_command",
    "repair",
    "seal",
    "verify_store",
    "write_marker",
]

# the copy is a zarr group of its own, holding the marker document as one attribute: plain zarr
# lists it as a subgroup (a loose file would warn "not recognized as a component"), and OME
# readers do not mistake it for an image (no top-level "ome")
RECORD_COPY = "cpr_zarr_record/zarr.json"
_COPY_ATTR = "cpr_zarr_record"


def _wrap_copy(doc: dict[str, Any]) -> dict[str, Any]:
    return {"zarr_format": 3, "node_type": "group", "attributes": {_COPY_ATTR: doc}}


def _read_copy(store: ResultStore, path: str) -> Any:
    """The marker document kept in the record copy (as stored, if not wrapped: damage)."""
    copy = read_doc(store, f"{path}/{RECORD_COPY}")
    if isinstance(copy, dict) and isinstance(copy.get("attributes"), dict):
        inner = copy["attributes"].get(_COPY_ATTR)
        if isinstance(inner, dict):
            return inner
    return copy


DIGEST_FIELD = "record_digest"
ARRAY_PATH = "0"
_HEX_RE = re.compile(rf"[0-9a-f]{{{HASH_HEX_LENGTH}}}")
_LEVEL_PATH_RE = re.compile(r"(?P<n>[1-9][0-9]*)(?:-(?P<factors>[1-9][0-9]*(?:x[1-9][0-9]*)*))?")
_CHUNK_KEY_ENCODING = {"name": "default", "configuration": {"separator": "/"}}
_ABSENT = object()


@dataclass(frozen=True, slots=True)
class Damage:
    """One damaged document found by a scan: where, which field, and the full message."""

    group_path: str
    field: str
    message: str

    @classmethod
    def from_error(cls, exc: IntegrityError) -> Damage:
        return cls(exc.group_path, exc.field, str(exc))


# -- reading documents -------------------------------------------------------------------


def read_doc(store: ResultStore, key: str) -> Any:
    """The JSON document at ``key``; :data:`_ABSENT` if there is none.

    Raises ``ValueError`` if the key exists but does not hold JSON (never treated as absent).
    """
    raw = read_raw(store, key)
    return _ABSENT if raw is None else json.loads(raw)


def read_raw(store: ResultStore, key: str) -> bytes | None:
    """The bytes at ``key``, or None if there is no such key."""
    if store._local_path is not None:  # a plain file read: no round trip to zarr's loop
        try:
            return (store._local_path / key).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None
    buf = sync(store._zstore.get(key, default_buffer_prototype()))
    return None if buf is None else bytes(buf.to_bytes())


def is_absent(doc: Any) -> bool:
    return doc is _ABSENT


# -- the record digest -------------------------------------------------------------------


def record_digest(attributes: dict[str, Any]) -> str:
    """Digest of a group's ``cpr_zarr`` record (without the digest itself) and ``ome``."""
    record = {k: v for k, v in attributes.get("cpr_zarr", {}).items() if k != DIGEST_FIELD}
    canonical = json.dumps(
        {"cpr_zarr": record, "ome": attributes.get("ome")},
        sort_keys=True,
        separators=(",", ":"),
        allow_nan=False,
    )
    return hashlib.blake2b(canonical.encode(), digest_size=16).hexdigest()


def seal(doc: dict[str, Any]) -> dict[str, Any]:
    """Add ``record_digest`` to a group document's ``cpr_zarr`` record (in place)."""
    attributes = doc["attributes"]
    attributes["cpr_zarr"][DIGEST_FIELD] = record_digest(attributes)
    return doc


def array_record(
    content_hash: str,
    name: str,
    shape: Sequence[int],
    dtype: str,
    chunks: Sequence[int],
    digests: list[str],
) -> dict[str, Any]:
    """The ``cpr_zarr`` commit record of an array result (before image metadata and levels)."""
    return {
        "layout": LAYOUT_VERSION,
        "algorithm": ALGORITHM,
        "content_hash": content_hash,
        "name": name,
        "kind": "array",
        "array": ARRAY_PATH,
        "shape": list(shape),
        "dtype": dtype,
        "chunks": list(chunks),
        "chunk_digests": digests,
    }


def write_marker(store: ResultStore, path: str, doc: dict[str, Any]) -> None:
    """Commit a result: seal its record, write the record copy, then the marker.

    The copy lets :func:`repair` rebuild a damaged marker; written before the marker, it
    never makes an uncommitted group look committed (only the marker does).
    """
    seal(doc)
    store._set_json(f"{path}/{RECORD_COPY}", _wrap_copy(doc))
    store._set_json(f"{path}/zarr.json", doc)


def remove_command(store_url: str, group_path: str) -> str:
    """The ``cpr-zarr rm`` command line that removes one result, quoted for a POSIX shell."""
    return f"cpr-zarr rm {shlex.quote(store_url)} {shlex.quote(group_path)} --yes"


# -- checking the record -----------------------------------------------------------------


class _Checker:
    def __init__(self, store_url: str, group_path: str, key: str = "zarr.json") -> None:
        self.store_url = store_url
        self.group_path = group_path
        self.key = key

    def fail(self, field: str, problem: str) -> IntegrityError:
        return IntegrityError(
            f"Result {self.group_path!r} in store {self.store_url!r} is damaged: {field} in "
            f"{self.group_path}/{self.key} {problem}. Nothing of it is served. To resolve: run "
            f"`cpr-zarr verify {shlex.quote(self.store_url)} --repair` (rebuilds a damaged "
            "commit record from its copy or from chunks that still hash to the content hash), "
            f"or remove the result (`{remove_command(self.store_url, self.group_path)}`, or "
            "store.delete(ref)) and re-run the task that produced it.",
            store_url=self.store_url,
            group_path=self.group_path,
            field=field,
        )

    def expect(self, mapping: dict[str, Any], key: str, wanted: Any, field: str) -> None:
        value = mapping.get(key, _ABSENT)
        if value is _ABSENT:
            raise self.fail(field, f"is missing (expected {wanted!r})")
        if type(value) is not type(wanted) or value != wanted:
            raise self.fail(field, f"is {value!r}, expected {wanted!r}")

    def dict_field(self, mapping: dict[str, Any], key: str, field: str) -> dict[str, Any]:
        value = mapping.get(key, _ABSENT)
        if not isinstance(value, dict):
            raise self.fail(field, f"is {_show(value)}, expected a JSON object")
        return value

    def ints(
        self, mapping: dict[str, Any], key: str, field: str, *, minimum: int, length: int | None
    ) -> list[int]:
        value = mapping.get(key, _ABSENT)
        if (
            not isinstance(value, list)
            or not all(type(v) is int and v >= minimum for v in value)
            or (length is not None and len(value) != length)
        ):
            size = f"{length} " if length is not None else ""
            raise self.fail(
                field, f"is {_show(value)}, expected a list of {size}integers >= {minimum}"
            )
        return value

    def digests(self, mapping: dict[str, Any], key: str, field: str, count: int) -> list[str]:
        value = mapping.get(key, _ABSENT)
        if (
            not isinstance(value, list)
            or len(value) != count
            or not all(isinstance(v, str) and _HEX_RE.fullmatch(v) for v in value)
        ):
            raise self.fail(
                field,
                f"is {_show(value)}, expected {count} hex digests of {HASH_HEX_LENGTH} digits",
            )
        return value


def _show(value: Any) -> str:
    if value is _ABSENT:
        return "missing"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _grid_count(shape: list[int], chunks: list[int]) -> int:
    return math.prod(math.ceil(s / c) if s else 0 for s, c in zip(shape, chunks, strict=True))


def check_record(
    store_url: str, group_path: str, doc: Any, *, key: str = "zarr.json"
) -> dict[str, Any]:
    """The ``cpr_zarr`` record of a group document, checked against the path's content hash.

    Raises
    ------
    IntegrityError
        Naming the first field that is damaged or does not hash to the content hash.
    """
    c = _Checker(store_url, group_path, key)
    parsed = parse_group_path(group_path.rsplit("/", 1)[-1])
    if parsed is None:  # pragma: no cover - callers only pass result paths
        raise c.fail("group path", "is not <name>-<content hash>")
    name, content_hash = parsed
    if not isinstance(doc, dict):
        raise c.fail("the document", f"is {_show(doc)}, not a JSON object")
    c.expect(doc, "zarr_format", 3, "zarr_format")
    c.expect(doc, "node_type", "group", "node_type")
    attributes = c.dict_field(doc, "attributes", "attributes")
    attrs = c.dict_field(attributes, "cpr_zarr", "attributes.cpr_zarr")
    c.expect(attrs, "layout", LAYOUT_VERSION, "cpr_zarr.layout")
    c.expect(attrs, "content_hash", content_hash, "cpr_zarr.content_hash")
    c.expect(attrs, "name", name, "cpr_zarr.name")
    kind = attrs.get("kind", _ABSENT)
    if kind == "table":
        _check_table_record(c, attrs, attributes, content_hash)
    elif kind == "array":
        _check_array_record(c, attrs, attributes, content_hash)
    else:
        raise c.fail("cpr_zarr.kind", f"is {_show(kind)}, expected 'array' or 'table'")
    if "/labels/" in group_path:
        c.expect(attrs, "labels_of", group_path.split("/labels/")[0], "cpr_zarr.labels_of")
    elif "labels_of" in attrs:
        raise c.fail("cpr_zarr.labels_of", "is set on a result that is not a label image")
    if DIGEST_FIELD in attrs:
        stored = attrs[DIGEST_FIELD]
        try:
            actual = record_digest(attributes)
        except ValueError as exc:  # NaN or infinity somewhere in the record
            raise c.fail("the record", f"cannot be digested ({exc})") from exc
        if stored != actual:
            raise c.fail(
                "cpr_zarr.record_digest",
                f"is {_show(stored)}, but the record and its ome attributes digest to {actual!r}",
            )
    return attrs


def _check_array_record(
    c: _Checker, attrs: dict[str, Any], attributes: dict[str, Any], content_hash: str
) -> None:
    c.expect(attrs, "algorithm", ALGORITHM, "cpr_zarr.algorithm")
    c.expect(attrs, "array", ARRAY_PATH, "cpr_zarr.array")
    shape = c.ints(attrs, "shape", "cpr_zarr.shape", minimum=0, length=None)
    if not 1 <= len(shape) <= 5:
        raise c.fail("cpr_zarr.shape", f"is {shape!r}, expected 1 to 5 axes")
    dtype = attrs.get("dtype", _ABSENT)
    try:
        ok = isinstance(dtype, str) and canonical_dtype(dtype).name == dtype
    except (TypeError, ValueError, UnsupportedResultError):
        ok = False
    if not ok:
        raise c.fail("cpr_zarr.dtype", f"is {_show(dtype)}, expected a numpy dtype name")
    chunks = c.ints(attrs, "chunks", "cpr_zarr.chunks", minimum=1, length=len(shape))
    count = _grid_count(shape, chunks)
    digests = c.digests(attrs, "chunk_digests", "cpr_zarr.chunk_digests", count)
    actual = combine_digests(tuple(shape), np.dtype(dtype), tuple(chunks), digests)
    if actual != content_hash:
        raise c.fail(
            "cpr_zarr.shape/dtype/chunks/chunk_digests",
            f"hash to {actual}, not to the content hash {content_hash} its group path names",
        )
    for key in ("table", "digests"):
        if key in attrs:
            raise c.fail(f"cpr_zarr.{key}", "is set on an array result")
    levels = _check_levels(c, attrs, shape, chunks)
    _check_ome(c, attrs, attributes, shape, dtype, levels)


def _check_levels(
    c: _Checker, attrs: dict[str, Any], shape: list[int], chunks: list[int]
) -> list[tuple[str, tuple[int, ...]]]:
    """Each level's record follows from the base and its step; returns (path, factors)."""
    records = attrs.get("levels", [])
    if not isinstance(records, list):
        raise c.fail("cpr_zarr.levels", f"is {_show(records)}, expected a list")
    out: list[tuple[str, tuple[int, ...]]] = []
    prev = shape
    cumulative = [1] * len(shape)
    for number, record in enumerate(records, start=1):
        where = f"cpr_zarr.levels[{number - 1}]"
        if not isinstance(record, dict):
            raise c.fail(where, f"is {_show(record)}, expected a JSON object")
        path = record.get("path", _ABSENT)
        match = _LEVEL_PATH_RE.fullmatch(path) if isinstance(path, str) else None
        step = c.ints(record, "step", f"{where}.step", minimum=1, length=len(shape))
        cumulative = [a * s for a, s in zip(cumulative, step, strict=True)]
        if (
            match is None
            or int(match["n"]) != number
            or (match["factors"] is not None and match["factors"] != "x".join(map(str, cumulative)))
        ):
            raise c.fail(
                f"{where}.path",
                f"is {_show(path)}, expected {str(number)!r} (or '{number}-<factors>') for "
                f"level {number}",
            )
        want_shape = [math.ceil(s / f) for s, f in zip(prev, step, strict=True)]
        got_shape = c.ints(record, "shape", f"{where}.shape", minimum=0, length=len(shape))
        if got_shape != want_shape:
            raise c.fail(
                f"{where}.shape",
                f"is {got_shape!r}, but level {number - 1} of shape {prev} with step {step} "
                f"gives {want_shape}",
            )
        want_chunks = [max(1, min(b, s)) for b, s in zip(chunks, want_shape, strict=True)]
        got_chunks = c.ints(record, "chunks", f"{where}.chunks", minimum=1, length=len(shape))
        if got_chunks != want_chunks:
            raise c.fail(f"{where}.chunks", f"is {got_chunks!r}, expected {want_chunks}")
        c.digests(
            record,
            "chunk_digests",
            f"{where}.chunk_digests",
            _grid_count(want_shape, want_chunks),
        )
        out.append((path, tuple(cumulative)))
        prev = want_shape
    if len({p for p, _ in out}) != len(out):
        raise c.fail("cpr_zarr.levels", "names one path twice")
    return out


def _check_ome(
    c: _Checker,
    attrs: dict[str, Any],
    attributes: dict[str, Any],
    shape: list[int],
    dtype: str,
    levels: list[tuple[str, tuple[int, ...]]],
) -> None:
    """``cpr_zarr.image`` is valid and ``ome`` is exactly what it and the levels imply."""
    from cpr_zarr.model.ngff import ImageMeta, image_label_attrs, multiscales_attrs, parse_meta

    image = attrs.get("image", _ABSENT)
    ome = attributes.get("ome", _ABSENT)
    if image is _ABSENT:
        if ome is not _ABSENT:
            raise c.fail("attributes.ome", "is present but cpr_zarr.image is missing")
        if levels:
            raise c.fail("cpr_zarr.levels", "are present but cpr_zarr.image is missing")
        return
    try:
        if not isinstance(image, dict):
            raise TypeError("not a JSON object")
        meta = ImageMeta.from_dict(image)
        valid = parse_meta(
            len(shape),
            axes=meta.axes,
            scale=meta.scale,
            units=meta.units,
            translation=meta.translation,
        )
        if valid != meta or image != meta.to_dict():
            raise ValueError("not in canonical form")
    except (KeyError, TypeError, ValueError) as exc:
        raise c.fail("cpr_zarr.image", f"is {_show(image)}, not valid image metadata") from exc
    if not isinstance(ome, dict):
        raise c.fail("attributes.ome", f"is {_show(ome)}, expected the OME-NGFF attributes")
    label = "labels_of" in attrs
    centered = not (label or dtype == "bool")
    expected = multiscales_attrs(
        attrs["name"], meta, [(ARRAY_PATH, (1,) * len(shape)), *levels], centered=centered
    )
    if label:
        stored = ome.get("image-label")
        colors = stored.get("colors") if isinstance(stored, dict) else None
        expected["image-label"] = image_label_attrs(None)
        if colors is not None:
            expected["image-label"]["colors"] = colors  # viewer colours: free-form, unchecked
    if ome != expected:
        diff = sorted(k for k in set(ome) | set(expected) if ome.get(k) != expected.get(k))
        raise c.fail(
            "attributes.ome",
            f"does not match cpr_zarr.image and the levels (differs in {diff})",
        )


def _check_table_record(
    c: _Checker, attrs: dict[str, Any], attributes: dict[str, Any], content_hash: str
) -> None:
    c.expect(attrs, "algorithm", TABLE_ALGORITHM, "cpr_zarr.algorithm")
    c.expect(attrs, "dtype", TABLE_DTYPE, "cpr_zarr.dtype")
    schema = c.dict_field(attrs, "table", "cpr_zarr.table")
    digests = c.dict_field(attrs, "digests", "cpr_zarr.digests")
    if not all(isinstance(v, str) and _HEX_RE.fullmatch(v) for v in digests.values()):
        raise c.fail("cpr_zarr.digests", f"is {_show(digests)}, expected hex digests")
    try:
        actual = table_hash(schema, digests)
    except ValueError as exc:
        raise c.fail("cpr_zarr.table", f"cannot be hashed ({exc})") from exc
    if actual != content_hash:
        raise c.fail(
            "cpr_zarr.table/digests",
            f"(schema: column names, dtypes, index; array digests) hash to {actual}, not to "
            f"the content hash {content_hash} its group path names",
        )
    rows, columns = schema.get("rows"), schema.get("columns")
    if type(rows) is not int or rows < 0 or not isinstance(columns, list):
        raise c.fail("cpr_zarr.table", "has no valid 'rows' and 'columns'")
    c.expect(attrs, "shape", [rows, len(columns)], "cpr_zarr.shape")
    c.expect(attrs, "chunks", [max(1, rows), max(1, len(columns))], "cpr_zarr.chunks")
    for key in ("image", "levels", "chunk_digests", "array"):
        if key in attrs:
            raise c.fail(f"cpr_zarr.{key}", "is set on a table result")
    if "ome" in attributes:
        raise c.fail("attributes.ome", "is set on a table result")


# -- checking stored array metadata ------------------------------------------------------


def _is_zero(value: Any) -> bool:
    if isinstance(value, list):
        return len(value) == 2 and all(_is_zero(v) for v in value)
    return type(value) in (int, float, bool) and value == 0


def check_array_doc(
    c: _Checker,
    doc: Any,
    *,
    dtype: str,
    shape: list[int] | None,
    chunks: list[int] | None,
) -> None:
    """The stored ``zarr.json`` of one array agrees with what the record says it holds."""
    if not isinstance(doc, dict):
        raise c.fail("the document", f"is {_show(doc)}, not zarr array metadata")
    c.expect(doc, "zarr_format", 3, "zarr_format")
    c.expect(doc, "node_type", "array", "node_type")
    c.expect(doc, "data_type", dtype, "data_type")
    if shape is not None:
        c.expect(doc, "shape", shape, "shape")
    else:
        shape = c.ints(doc, "shape", "shape", minimum=0, length=1)
    if chunks is None:
        chunks = [max(1, s) for s in shape]
    c.expect(
        doc,
        "chunk_grid",
        {"name": "regular", "configuration": {"chunk_shape": chunks}},
        "chunk_grid",
    )
    c.expect(doc, "chunk_key_encoding", _CHUNK_KEY_ENCODING, "chunk_key_encoding")
    if doc.get("storage_transformers", []) != []:
        raise c.fail("storage_transformers", f"is {_show(doc['storage_transformers'])}")
    codecs = doc.get("codecs")
    first = codecs[0] if isinstance(codecs, list) and codecs else None
    if dtype == "string":
        ok = isinstance(first, dict) and first.get("name") == "vlen-utf8"
    else:
        config = first.get("configuration") if isinstance(first, dict) else None
        endian = config.get("endian") if isinstance(config, dict) else None
        ok = (
            isinstance(first, dict)
            and first.get("name") == "bytes"
            and (endian == "little" or (endian is None and np.dtype(dtype).itemsize == 1))
        )
    if not ok:
        raise c.fail("codecs", f"start with {_show(first)}, expected a little-endian 'bytes' codec")
    fill = doc.get("fill_value", _ABSENT)
    if not (_is_zero(fill) if dtype != "string" else fill == ""):
        raise c.fail("fill_value", f"is {_show(fill)}, expected zero")
    try:  # everything else (codecs, names, attributes) as zarr itself will read it
        ArrayV3Metadata.from_dict(copy.deepcopy(doc))
    except Exception as exc:
        raise c.fail("the document", f"is not valid zarr array metadata ({exc})") from exc


def check_arrays(store: ResultStore, path: str, attrs: dict[str, Any]) -> None:
    """Every stored array's metadata agrees with the (already checked) record."""
    if attrs.get("kind") == "table":
        _check_table_arrays(store, path, attrs)
        return
    dtype = attrs["dtype"]
    wanted = [(attrs["array"], attrs["shape"], attrs["chunks"])]
    wanted += [(r["path"], r["shape"], r["chunks"]) for r in attrs.get("levels", [])]
    for array, shape, chunks in wanted:
        key = f"{array}/zarr.json"
        raw = read_raw(store, f"{path}/{key}")
        if raw is None:
            raise _Checker(store.url, path, key).fail("the document", "is missing")
        _checked_array(store.url, path, key, raw, dtype, tuple(shape), tuple(chunks))


def _read_checked(store: ResultStore, c: _Checker, key: str) -> Any:
    try:
        doc = read_doc(store, key)
    except ValueError as exc:
        raise c.fail("the document", f"is not valid JSON ({exc})") from exc
    if doc is _ABSENT:
        raise c.fail("the document", "is missing")
    return doc


def _table_array_types(schema: dict[str, Any]) -> dict[str, str | None]:
    """The stored data type of every array a table schema implies (None: not derivable)."""
    out: dict[str, str | None] = {}

    def spec_types(prefix: str, spec: Any) -> None:
        if not isinstance(spec, dict):
            return
        kind, dtype = spec.get("kind"), spec.get("dtype")
        try:
            if kind == "numpy":
                out[f"{prefix}values"] = np.dtype(dtype).name
            elif kind == "datetime":
                out[f"{prefix}values"] = "int64"
            elif kind == "string":
                out[f"{prefix}values"] = "string"
            elif kind == "masked":
                # pandas only here: listing a store checks every table's record, and most
                # tables have no nullable columns (`cpr-zarr ls` then never imports pandas)
                import pandas as pd

                out[f"{prefix}values"] = pd.api.types.pandas_dtype(dtype).numpy_dtype.name
            elif kind == "category":
                out[f"{prefix}values"] = None  # codes: int8..int64 by category count
                spec_types(f"{prefix}cat.", spec.get("categories"))
            elif kind == "object":  # a type code per row, then the values of each type
                out[f"{prefix}codes"] = "uint8"
                out[f"{prefix}values"] = "string"
                out[f"{prefix}floats"] = "float64"
                out[f"{prefix}ints"] = "int64"
        except (TypeError, ValueError, AttributeError):
            out[f"{prefix}values"] = None
        out[f"{prefix}mask"] = "bool"

    for i, spec in enumerate(schema.get("columns", [])):
        spec_types(f"c{i}/", spec)
    index = schema.get("index", {})
    for i, spec in enumerate(index.get("levels", []) if isinstance(index, dict) else []):
        spec_types(f"i{i}/", spec)
    return out


def _codes_dtype(categories: int) -> str:
    import pandas as pd

    codes = pd.Categorical.from_codes([], categories=pd.RangeIndex(categories)).codes
    return str(codes.dtype.name)


def _check_table_arrays(store: ResultStore, path: str, attrs: dict[str, Any]) -> None:
    schema = attrs["table"]
    types = _table_array_types(schema)
    docs: dict[str, Any] = {}
    for key in attrs["digests"]:
        c = _Checker(store.url, path, f"{key}/zarr.json")
        docs[key] = _read_checked(store, c, f"{path}/{key}/zarr.json")
    for key, doc in docs.items():
        c = _Checker(store.url, path, f"{key}/zarr.json")
        dtype = types.get(key)
        rows: list[int] | None = [schema["rows"]]
        if "/cat." in key or (
            f"{key.rsplit('/', 1)[0]}/codes" in docs and not key.endswith(("/codes", "/mask"))
        ):
            rows = None  # one entry per category; object columns: one per value of its type
        if dtype is None and key.endswith("/values") and isinstance(doc, dict):
            categories = docs.get(key.replace("/values", "/cat.values"))
            if isinstance(categories, dict) and isinstance(categories.get("shape"), list):
                n = categories["shape"][0] if categories["shape"] else 0
                dtype = _codes_dtype(n) if type(n) is int and n >= 0 else None
        if dtype is None:
            raise c.fail("data_type", "cannot be derived from the table schema")
        check_array_doc(c, doc, dtype=dtype, shape=rows, chunks=None)


# -- one result: present, absent, damaged ------------------------------------------------


def load_commit(store: ResultStore, path: str, *, arrays: bool = True) -> dict[str, Any] | None:
    """The checked record of result ``path``; ``None`` if it has no marker (not committed).

    Raises
    ------
    IntegrityError
        If the marker exists but is damaged, or (with ``arrays``) stored array metadata
        disagrees with it.
    """
    raw = read_raw(store, f"{path}/zarr.json")
    if raw is None:
        return None
    attrs = _checked_record(store.url, path, raw)
    if DIGEST_FIELD not in attrs and read_raw(store, f"{path}/{RECORD_COPY}") is not None:
        # record copies came with record digests: a marker without one is not an older
        # record but a damaged one (else removing the digest would disable its checks)
        raise _Checker(store.url, path).fail(
            f"cpr_zarr.{DIGEST_FIELD}", "is missing, but the result has a record copy"
        )
    if arrays:
        check_arrays(store, path, attrs)
    return attrs


# The checks are pure functions of the stored bytes: a listing re-reads every marker but
# re-checks only those that changed. (Failures are not cached: they raise.)
@functools.lru_cache(maxsize=4096)
def _checked_record(store_url: str, path: str, raw: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise _Checker(store_url, path).fail("the document", f"is not valid JSON ({exc})") from exc
    return check_record(store_url, path, doc)


@functools.lru_cache(maxsize=4096)
def _checked_array(
    store_url: str,
    path: str,
    key: str,
    raw: bytes,
    dtype: str,
    shape: tuple[int, ...] | None,
    chunks: tuple[int, ...] | None,
) -> None:
    c = _Checker(store_url, path, key)
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise c.fail("the document", f"is not valid JSON ({exc})") from exc
    check_array_doc(
        c,
        doc,
        dtype=dtype,
        shape=None if shape is None else list(shape),
        chunks=None if chunks is None else list(chunks),
    )


def is_leftover(store: ResultStore, path: str) -> bool:
    """A group that was never committed: no marker and no record copy (damage cannot fake it)."""
    keys = (f"{path}/zarr.json", f"{path}/{RECORD_COPY}")
    if store._local_path is not None:
        return not any((store._local_path / key).exists() for key in keys)
    return not any(sync(store._zstore.exists(key)) for key in keys)


# -- repair -------------------------------------------------------------------------------


def repair(store: ResultStore, path: str) -> str:
    """Rebuild the damaged commit marker of ``path`` if its data still verifies.

    Tries the record copy written before the commit, then (arrays only) a record rebuilt
    from the base array's metadata and chunks, accepted only if the chunks hash to the
    content hash in the path. Every chunk (levels and tables included) is verified before
    the marker is written.

    Returns
    -------
    str
        What was done.

    Raises
    ------
    IntegrityError
        If neither source gives a record that the content hash and the data vouch for.
    """
    c = _Checker(store.url, path)
    reasons: list[str] = []
    doc: dict[str, Any] | None = None
    how = ""
    try:
        copy = _read_copy(store, path)
        if copy is _ABSENT:
            raise ValueError("there is none")
        attrs = check_record(store.url, path, copy, key=RECORD_COPY)
        if DIGEST_FIELD not in attrs:
            raise ValueError("it has no record_digest")
        check_arrays(store, path, attrs)
        doc, how = copy, "from its record copy"
    except (ValueError, IntegrityError) as exc:
        reasons.append(f"record copy unusable ({exc})")
    if doc is None:
        try:
            doc = _rebuild_from_chunks(store, path)
            how = "from its chunks (NGFF metadata and pyramid levels not restored)"
        except (ValueError, IntegrityError, OSError) as exc:
            reasons.append(f"cannot rebuild from chunks ({exc})")
    if doc is None:
        raise c.fail("the commit record", "cannot be repaired: " + "; ".join(reasons))
    attrs = doc["attributes"]["cpr_zarr"]
    problems = _verify_data(store, path, attrs)
    if problems:
        raise c.fail("the data", "does not verify, not repaired: " + problems[0])
    store._set_json(f"{path}/zarr.json", doc)
    store._set_json(f"{path}/{RECORD_COPY}", _wrap_copy(doc))
    if "/labels/" in path:
        from cpr_zarr.core.labels import update_labels_list

        update_labels_list(store, path.split("/labels/")[0])
    store._readers.pop(path, None)
    return f"rebuilt the commit record of {path!r} {how}"


def _rebuild_from_chunks(store: ResultStore, path: str) -> dict[str, Any]:
    import zarr

    from cpr_zarr.core.codec import ChunkCodec
    from cpr_zarr.model.hashing import chunk_digest
    from cpr_zarr.model.layout import chunk_grid

    name, content_hash = parse_group_path(path.rsplit("/", 1)[-1])  # type: ignore[misc]
    c = _Checker(store.url, path, f"{ARRAY_PATH}/zarr.json")
    meta = _read_checked(store, c, f"{path}/{ARRAY_PATH}/zarr.json")
    shape = c.ints(meta, "shape", "shape", minimum=0, length=None)
    grid = meta.get("chunk_grid", {}) if isinstance(meta, dict) else {}
    chunks = c.ints(
        grid.get("configuration", {}), "chunk_shape", "chunk_grid", minimum=1, length=len(shape)
    )
    dtype = canonical_dtype(meta.get("data_type")).name
    check_array_doc(c, meta, dtype=dtype, shape=shape, chunks=chunks)
    codec = ChunkCodec(zarr.open_array(store._zstore, path=f"{path}/{ARRAY_PATH}", mode="r"))
    digests = [
        chunk_digest(codec.read(index)) for index, _ in chunk_grid(tuple(shape), tuple(chunks))
    ]
    actual = combine_digests(tuple(shape), np.dtype(dtype), tuple(chunks), digests)
    if actual != content_hash:
        raise ValueError(f"the chunks hash to {actual}, not {content_hash}")
    attrs = array_record(content_hash, name, shape, dtype, chunks, digests)
    if "/labels/" in path:
        attrs["labels_of"] = path.split("/labels/")[0]
    return seal({"zarr_format": 3, "node_type": "group", "attributes": {"cpr_zarr": attrs}})


# -- verifying a whole store -------------------------------------------------------------


@dataclass
class VerifyReport:
    """What :func:`verify_store` found: counts, problems (one line each) and repairs."""

    results: int = 0
    chunks: int = 0
    tables: int = 0
    failed_chunks: int = 0
    problems: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    # group paths, for the remedy to print: data that fails (only removing the result and
    # re-running its task helps), and records or label indexes that `repair` may rebuild
    damaged_data: list[str] = field(default_factory=list)
    damaged_records: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _level_readers(store: ResultStore, path: str, attrs: dict[str, Any]) -> list[Any]:
    from cpr_zarr.core.reader import ChunkReader, level_attrs

    levels = range(1, len(attrs.get("levels", [])) + 1)
    return [ChunkReader(store, path, attrs)] + [
        ChunkReader(store, path, level_attrs(attrs, number)) for number in levels
    ]


def _verify_data(
    store: ResultStore, path: str, attrs: dict[str, Any], threads: int | None = None
) -> list[str]:
    """Re-hash every stored chunk (every level) or table array of one result."""
    from cpr_zarr.core.codec import thread_map, worker_count
    from cpr_zarr.errors import ChunkVerificationError
    from cpr_zarr.model.layout import chunk_grid

    if attrs.get("kind") == "table":
        from cpr_zarr.core.table import read_checked_table

        try:
            read_checked_table(store, path, attrs)
        except (ChunkVerificationError, IntegrityError) as exc:
            return [str(exc)]
        except Exception as exc:  # a damaged array zarr cannot decode
            return [
                f"Cannot read table {path!r} in store {store.url!r}: {type(exc).__name__}: "
                f"{exc}. A stored array is damaged: remove the result "
                f"(`{remove_command(store.url, path)}`) and re-run its task."
            ]
        return []
    jobs = [
        (reader, index)
        for reader in _level_readers(store, path, attrs)
        for index, _ in chunk_grid(reader.shape, reader.chunks)
    ]
    problems: list[str] = []

    def one(job: tuple[Any, tuple[int, ...]]) -> None:
        reader, index = job
        try:
            reader.read_chunk(index)
        except ChunkVerificationError as exc:
            problems.append(str(exc))

    list(thread_map(one, jobs, threads or worker_count(remote=store._local_path is None)))
    return problems


def verify_store(
    store: ResultStore,
    refs: tuple[str, ...] = (),
    *,
    repair_damaged: bool = False,
    threads: int | None = None,
) -> VerifyReport:
    """Check every result of ``store`` (or ``refs``): records, array metadata, every chunk of
    every level, tables, label indexes and provenance records. Nothing is changed unless
    ``repair_damaged``, which rebuilds damaged commit markers whose data verifies."""
    from cpr_zarr.core.provenance import read_records

    report = VerifyReport()
    if refs:
        paths = []
        for ref in refs:
            try:
                paths.append(store.open(ref).group_path)
            except IntegrityError as exc:
                paths.append(exc.group_path)
    else:
        paths = store._candidate_paths(nested=True)
    for path in paths:
        before = len(report.problems)
        attrs = _load_or_repair(store, path, repair_damaged, report)
        if attrs is None:
            if len(report.problems) > before:
                report.damaged_records.append(path)
            continue
        report.results += 1
        if attrs["kind"] == "table":
            report.tables += 1
        else:
            report.chunks += sum(
                _grid_count(list(r.shape), list(r.chunks))
                for r in _level_readers(store, path, attrs)
            )
        failed = _verify_data(store, path, attrs, threads)
        report.failed_chunks += len(failed) if attrs["kind"] == "array" else 0
        report.problems.extend(failed)
        if failed:
            report.damaged_data.append(path)
        bad_copy = _check_copy(store, path, repair_damaged, report)
        report.problems.extend(bad_copy)
        damaged: list[Damage] = []
        read_records(store, path, damaged=damaged)
        report.problems.extend(d.message for d in damaged)
        index = (
            [] if "/labels/" in path else _check_labels_index(store, path, repair_damaged, report)
        )
        report.problems.extend(index)
        if bad_copy or index:
            report.damaged_records.append(path)
    return report


def _load_or_repair(
    store: ResultStore, path: str, repair_damaged: bool, report: VerifyReport
) -> dict[str, Any] | None:
    """The checked record of ``path`` (repaired first if asked); None if not usable."""
    try:
        attrs = load_commit(store, path)
    except IntegrityError as exc:
        damage: IntegrityError | None = exc
    else:
        if attrs is not None or is_leftover(store, path):
            return attrs
        # a record copy but no marker: the marker was lost after the commit
        c = _Checker(store.url, path)
        damage = c.fail("the commit marker zarr.json", "is missing but its record copy exists")
    if not repair_damaged:
        report.problems.append(str(damage))
        return None
    try:
        report.repaired.append(repair(store, path))
        return load_commit(store, path)
    except IntegrityError as failed:
        report.problems.append(f"{damage} -- {failed}")
        return None


def _check_copy(
    store: ResultStore, path: str, repair_damaged: bool, report: VerifyReport
) -> list[str]:
    """The record copy (what :func:`repair` rebuilds a marker from) is absent or intact."""
    c = _Checker(store.url, path, RECORD_COPY)
    try:
        copy = _read_copy(store, path)
        if copy is _ABSENT:
            return []
        check_record(store.url, path, copy, key=RECORD_COPY)
        return []
    except (ValueError, IntegrityError) as exc:
        if repair_damaged:
            store._set_json(
                f"{path}/{RECORD_COPY}", _wrap_copy(read_doc(store, f"{path}/zarr.json"))
            )
            report.repaired.append(f"rewrote the record copy of {path!r} from its marker")
            return []
        return [str(c.fail("the record copy", f"is damaged ({exc}); --repair rewrites it"))]


def _check_labels_index(
    store: ResultStore, path: str, repair_damaged: bool, report: VerifyReport
) -> list[str]:
    """The image's ``labels/zarr.json`` (a viewer index) lists exactly its committed labels."""
    from cpr_zarr.core.labels import update_labels_list
    from cpr_zarr.model.ngff import labels_group_attrs

    names = [
        entry
        for entry in sorted(store._list_dir(f"{path}/labels"))
        if parse_group_path(entry) is not None and _committed(store, f"{path}/labels/{entry}")
    ]
    key = f"{path}/labels/zarr.json"
    try:
        doc = read_doc(store, key)
    except ValueError:
        doc = None
    if not names and doc is _ABSENT:
        return []
    expected = {
        "zarr_format": 3,
        "node_type": "group",
        "attributes": {"ome": labels_group_attrs(names)},
    }
    if doc == expected:
        return []
    if repair_damaged:
        update_labels_list(store, path)
        report.repaired.append(f"rewrote the label index {key!r}")
        return []
    c = _Checker(store.url, path, "labels/zarr.json")
    return [str(c.fail("the label index", f"does not list the label images {names}"))]


def _committed(store: ResultStore, path: str) -> bool:
    try:
        return load_commit(store, path, arrays=False) is not None
    except IntegrityError:
        return False


def check_created(value: Any) -> bool:
    """Whether a provenance ``created`` field is an ISO timestamp."""
    if not isinstance(value, str):
        return False
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True
