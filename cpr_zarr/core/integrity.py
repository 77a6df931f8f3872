"""Integrity of committed results: nothing is served that the content hash does not vouch for.

The content hash in a group path is the only thing a reader trusts. Before a result is
served, its commit record (the ``cpr_zarr`` attributes of the group's ``zarr.json``) is
checked against it, and the stored array metadata against the record, without reading a
chunk:

* arrays: ``shape``, ``dtype``, ``chunks`` and ``chunk_digests`` (layout 1) or the root of
  the stored digest tree, ``digest_root`` (layout 2, :mod:`cpr_zarr.core.digests`), must hash
  to the content hash (:func:`~cpr_zarr.model.hashing.combine_digests`,
  :func:`~cpr_zarr.model.hashing.content_hash_of_root`); tables: the schema (column names,
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
``zarr.json`` nor the record copy written just before it (:data:`RECORD_COPY`, in layout 1
:data:`RECORD_COPY_V1`) exists:
damage changes what a file says, never whether it exists, so a damaged marker is never
mistaken for a leftover. :func:`repair` rebuilds a damaged marker from the copy, or from the
base array's chunks when they hash to the content hash in the path.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import re
import shlex
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
from zarr.core.metadata.v3 import ArrayV3Metadata

from cpr_zarr.core.digests import store_digests
from cpr_zarr.errors import IntegrityError, RecordError, UnsupportedResultError
from cpr_zarr.model.hashing import (
    TABLE_ALGORITHM,
    TABLE_ALGORITHMS,
    TABLE_DTYPE,
    TABLE_PARQUET_ALGORITHM,
    algorithm_for,
    combine_digests,
    content_hash_of_root,
    table_hash,
)
from cpr_zarr.model.layout import (
    AUX_DIR,
    HASH_HEX_LENGTH,
    READ_LAYOUTS,
    canonical_dtype,
    parse_group_path,
)
from cpr_zarr.model.records import (
    ARRAY_PATH,
    DIGEST_FIELD,
    TABLE_FILE,
    TABLES_DIR,
    ArrayRecord,
    ResultDocument,
    TableAttrs,
    TableRecord,
    TableSchema,
    ValueSpec,
    record_digest,
)

if TYPE_CHECKING:
    from cpr_zarr.storage import Storage

__all__ = [
    "RECORD_COPIES",
    "RECORD_COPY",
    "RECORD_COPY_V1",
    "Damage",
    "check_array_doc",
    "check_arrays",
    "check_record",
    "load_commit",
    "load_document",
    "parse_document",
    "read_doc",
    "record_digest",
    "remove_command",
    "write_copy",
    "write_marker",
]

# layout 2: the copy is the marker document as a plain object in the group's non-node folder
# (zarr and OME tools see no extra subgroup; napari's built-in reader descended into one)
RECORD_COPY = f"{AUX_DIR}/record.json"
# layout 1: the copy was a zarr group of its own, holding the marker document as one attribute
RECORD_COPY_V1 = "cpr_zarr_record/zarr.json"
RECORD_COPIES = (RECORD_COPY, RECORD_COPY_V1)
_COPY_ATTR = "cpr_zarr_record"


def wrap_copy(doc: dict[str, Any]) -> dict[str, Any]:
    return {"zarr_format": 3, "node_type": "group", "attributes": {_COPY_ATTR: doc}}


def copy_key(doc: Any) -> str:
    """Where the record copy of marker document ``doc`` lives (by its record layout)."""
    try:
        layout = doc["attributes"]["cpr_zarr"]["layout"]
    except (KeyError, TypeError):
        layout = None
    return RECORD_COPY_V1 if layout == 1 else RECORD_COPY


def write_copy(storage: Storage, path: str, doc: dict[str, Any]) -> None:
    """Write the record copy of marker document ``doc``, in its layout's form."""
    key = copy_key(doc)
    storage.set_json(f"{path}/{key}", wrap_copy(doc) if key == RECORD_COPY_V1 else doc)


def read_copy(storage: Storage, path: str) -> Any:
    """The marker document kept in the record copy (as stored, if not wrapped: damage);
    :data:`ABSENT` if the group has none."""
    copy = read_doc(storage, f"{path}/{RECORD_COPY}")
    if copy is not ABSENT:
        return copy
    copy = read_doc(storage, f"{path}/{RECORD_COPY_V1}")
    if isinstance(copy, dict) and isinstance(copy.get("attributes"), dict):
        inner = copy["attributes"].get(_COPY_ATTR)
        if isinstance(inner, dict):
            return inner
    return copy


_HEX_RE = re.compile(rf"[0-9a-f]{{{HASH_HEX_LENGTH}}}")
_LEVEL_PATH_RE = re.compile(r"(?P<n>[1-9][0-9]*)(?:-(?P<factors>[1-9][0-9]*(?:x[1-9][0-9]*)*))?")
_CHUNK_KEY_ENCODING = {"name": "default", "configuration": {"separator": "/"}}
ABSENT = object()


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


def read_doc(storage: Storage, key: str) -> Any:
    """The JSON document at ``key``; :data:`ABSENT` if there is none.

    Raises ``ValueError`` if the key exists but does not hold JSON (never treated as absent).
    """
    raw = read_raw(storage, key)
    return ABSENT if raw is None else json.loads(raw)


def read_raw(storage: Storage, key: str) -> bytes | None:
    """The bytes at ``key``, or None if there is no such key."""
    return storage.get(key)


def is_absent(doc: Any) -> bool:
    return doc is ABSENT


# -- committing ----------------------------------------------------------------------------


def write_marker(storage: Storage, path: str, document: ResultDocument) -> ResultDocument:
    """Commit a result: store its digest trees, seal its record, write the record copy, then
    the marker.

    An array record built in memory carries its chunk digests; they are stored as digest
    trees (:func:`~cpr_zarr.core.digests.store_digests`) and the record keeps their roots.
    The record digest (:func:`~cpr_zarr.model.records.record_digest`) covers the record
    and its ``ome`` attributes. The copy lets :func:`repair` rebuild a damaged marker;
    written before the marker, it never makes an uncommitted group look committed (only
    the marker does). Returns the sealed document.
    """
    if isinstance(document.record, ArrayRecord):
        document = replace(document, record=store_digests(storage, path, document.record))
    sealed = document.sealed()
    doc = sealed.to_dict()
    write_copy(storage, path, doc)
    storage.set_json(f"{path}/zarr.json", doc)
    return sealed


def remove_command(store_url: str, group_path: str) -> str:
    """The ``cpr-zarr rm`` command line that removes one result, quoted for a POSIX shell."""
    return f"cpr-zarr rm {shlex.quote(store_url)} {shlex.quote(group_path)} --yes"


# -- checking the record -----------------------------------------------------------------


class Checker:
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
        value = mapping.get(key, ABSENT)
        if value is ABSENT:
            raise self.fail(field, f"is missing (expected {wanted!r})")
        if type(value) is not type(wanted) or value != wanted:
            raise self.fail(field, f"is {value!r}, expected {wanted!r}")

    def dict_field(self, mapping: dict[str, Any], key: str, field: str) -> dict[str, Any]:
        value = mapping.get(key, ABSENT)
        if not isinstance(value, dict):
            raise self.fail(field, f"is {_show(value)}, expected a JSON object")
        return value

    def ints(
        self, mapping: dict[str, Any], key: str, field: str, *, minimum: int, length: int | None
    ) -> list[int]:
        value = mapping.get(key, ABSENT)
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
        value = mapping.get(key, ABSENT)
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

    def root(self, mapping: dict[str, Any], key: str, field: str) -> str:
        value = mapping.get(key, ABSENT)
        if not isinstance(value, str) or not _HEX_RE.fullmatch(value):
            raise self.fail(
                field, f"is {_show(value)}, expected a digest-tree root of {HASH_HEX_LENGTH} hex"
            )
        return value


def _show(value: Any) -> str:
    if value is ABSENT:
        return "missing"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def grid_count(shape: list[int], chunks: list[int]) -> int:
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
    c = Checker(store_url, group_path, key)
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
    layout = attrs.get("layout", ABSENT)
    if type(layout) is not int or layout not in READ_LAYOUTS:
        raise c.fail(
            "cpr_zarr.layout", f"is {_show(layout)}, expected one of {sorted(READ_LAYOUTS)}"
        )
    c.expect(attrs, "content_hash", content_hash, "cpr_zarr.content_hash")
    c.expect(attrs, "name", name, "cpr_zarr.name")
    kind = attrs.get("kind", ABSENT)
    if f"/{TABLES_DIR}/" in group_path and kind != "table":
        raise c.fail("cpr_zarr.kind", f"is {_show(kind)} in an image's tables, expected 'table'")
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
    c: Checker, attrs: dict[str, Any], attributes: dict[str, Any], content_hash: str
) -> None:
    layout = attrs["layout"]
    c.expect(attrs, "algorithm", algorithm_for(layout), "cpr_zarr.algorithm")
    c.expect(attrs, "array", ARRAY_PATH, "cpr_zarr.array")
    shape = c.ints(attrs, "shape", "cpr_zarr.shape", minimum=0, length=None)
    if not 1 <= len(shape) <= 5:
        raise c.fail("cpr_zarr.shape", f"is {shape!r}, expected 1 to 5 axes")
    dtype = attrs.get("dtype", ABSENT)
    try:
        ok = isinstance(dtype, str) and canonical_dtype(dtype).name == dtype
    except (TypeError, ValueError, UnsupportedResultError):
        ok = False
    if not ok:
        raise c.fail("cpr_zarr.dtype", f"is {_show(dtype)}, expected a numpy dtype name")
    chunks = c.ints(attrs, "chunks", "cpr_zarr.chunks", minimum=1, length=len(shape))
    count = grid_count(shape, chunks)
    if layout == 1:
        digests = c.digests(attrs, "chunk_digests", "cpr_zarr.chunk_digests", count)
        actual = combine_digests(tuple(shape), np.dtype(dtype), tuple(chunks), digests, layout=1)
        fields = "chunk_digests"
    else:
        root = c.root(attrs, "digest_root", "cpr_zarr.digest_root")
        actual = content_hash_of_root(tuple(shape), np.dtype(dtype), tuple(chunks), root)
        fields = "digest_root"
    if actual != content_hash:
        raise c.fail(
            f"cpr_zarr.shape/dtype/chunks/{fields}",
            f"hash to {actual}, not to the content hash {content_hash} its group path names",
        )
    unwanted = ("table", "digests", "chunk_digests" if layout != 1 else "digest_root")
    for key in unwanted:
        if key in attrs:
            raise c.fail(f"cpr_zarr.{key}", "is set on an array result")
    levels = _check_levels(c, attrs, shape, chunks)
    _check_ome(c, attrs, attributes, shape, dtype, levels)


def _check_levels(
    c: Checker, attrs: dict[str, Any], shape: list[int], chunks: list[int]
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
        path = record.get("path", ABSENT)
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
        if attrs["layout"] == 1:
            c.digests(
                record,
                "chunk_digests",
                f"{where}.chunk_digests",
                grid_count(want_shape, want_chunks),
            )
        else:
            c.root(record, "digest_root", f"{where}.digest_root")
            if "chunk_digests" in record:
                raise c.fail(f"{where}.chunk_digests", "is set in a layout-2 record")
        out.append((path, tuple(cumulative)))
        prev = want_shape
    if len({p for p, _ in out}) != len(out):
        raise c.fail("cpr_zarr.levels", "names one path twice")
    return out


def _check_ome(
    c: Checker,
    attrs: dict[str, Any],
    attributes: dict[str, Any],
    shape: list[int],
    dtype: str,
    levels: list[tuple[str, tuple[int, ...]]],
) -> None:
    """``cpr_zarr.image`` is valid and ``ome`` is exactly what it and the levels imply."""
    from cpr_zarr.model.ngff import ImageMeta, image_label_attrs, multiscales_attrs, parse_meta

    image = attrs.get("image", ABSENT)
    ome = attributes.get("ome", ABSENT)
    if image is ABSENT:
        if ome is not ABSENT:
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
    all_levels = [(ARRAY_PATH, (1,) * len(shape)), *levels]
    # the current form, and the one written before multiscales carried `metadata` (and
    # single-level images `type`): results saved then stay valid
    forms = [
        multiscales_attrs(attrs["name"], meta, all_levels, centered=centered, complete=complete)
        for complete in (True, False)
    ]
    if label:
        stored = ome.get("image-label")
        colors = stored.get("colors") if isinstance(stored, dict) else None
        for form in forms:
            form["image-label"] = image_label_attrs(None)
            if colors is not None:
                form["image-label"]["colors"] = colors  # viewer colours: free-form, unchecked
    expected = forms[0]
    if ome not in forms:
        diff = sorted(k for k in set(ome) | set(expected) if ome.get(k) != expected.get(k))
        raise c.fail(
            "attributes.ome",
            f"does not match cpr_zarr.image and the levels (differs in {diff})",
        )


def _check_table_record(
    c: Checker, attrs: dict[str, Any], attributes: dict[str, Any], content_hash: str
) -> None:
    algorithm = attrs.get("algorithm", ABSENT)
    if algorithm not in TABLE_ALGORITHMS:
        raise c.fail(
            "cpr_zarr.algorithm", f"is {_show(algorithm)}, expected one of {TABLE_ALGORITHMS}"
        )
    c.expect(attrs, "dtype", TABLE_DTYPE, "cpr_zarr.dtype")
    schema = c.dict_field(attrs, "table", "cpr_zarr.table")
    digests = c.dict_field(attrs, "digests", "cpr_zarr.digests")
    if not all(isinstance(v, str) and _HEX_RE.fullmatch(v) for v in digests.values()):
        raise c.fail("cpr_zarr.digests", f"is {_show(digests)}, expected hex digests")
    region = _check_region(c, attrs, algorithm)
    try:
        actual = table_hash(schema, digests, algorithm=algorithm, region=region)
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
    if algorithm == TABLE_PARQUET_ALGORITHM:
        # what ngio reads (the table's type and its label image) is what the record says
        region_name = None if region is None else region.rsplit("/", 1)[-1]
        for key, wanted in TableAttrs(region=region_name).to_dict().items():
            c.expect(attributes, key, wanted, f"attributes.{key}")


def _check_region(c: Checker, attrs: dict[str, Any], algorithm: object) -> str | None:
    """The label image a feature table describes: in the same image as the table's group."""
    inside = f"/{TABLES_DIR}/" in c.group_path
    region = attrs.get("region", ABSENT)
    if region is ABSENT and not inside:
        return None
    image = c.group_path.split(f"/{TABLES_DIR}/")[0]
    if algorithm == TABLE_ALGORITHM or not inside:
        raise c.fail("cpr_zarr.region", f"is {_show(region)} on a table not stored with an image")
    if (
        not isinstance(region, str)
        or parse_group_path(region) is None
        or region.split("/labels/")[0] != image
        or "/labels/" not in region
    ):
        raise c.fail(
            "cpr_zarr.region",
            f"is {_show(region)}, expected a label image of {image!r} ('{image}/labels/<name>')",
        )
    return region


# -- checking stored array metadata ------------------------------------------------------


def _is_zero(value: Any) -> bool:
    if isinstance(value, list):
        return len(value) == 2 and all(_is_zero(v) for v in value)
    return type(value) in (int, float, bool) and value == 0


def check_array_doc(
    c: Checker,
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
    fill = doc.get("fill_value", ABSENT)
    if not (_is_zero(fill) if dtype != "string" else fill == ""):
        raise c.fail("fill_value", f"is {_show(fill)}, expected zero")
    try:  # everything else (codecs, names, attributes) as zarr itself will read it
        ArrayV3Metadata.from_dict(copy.deepcopy(doc))
    except Exception as exc:
        raise c.fail("the document", f"is not valid zarr array metadata ({exc})") from exc


def check_arrays(storage: Storage, path: str, record: ArrayRecord | TableRecord) -> None:
    """Every stored array's metadata agrees with the (already checked) record."""
    if isinstance(record, TableRecord):
        _check_table_arrays(storage, path, record)
        return
    dtype = record.dtype
    wanted = [(record.array, record.shape, record.chunks)]
    wanted += [(level.path, level.shape, level.chunks) for level in record.levels]
    for array, shape, chunks in wanted:
        key = f"{array}/zarr.json"
        raw = read_raw(storage, f"{path}/{key}")
        if raw is None:
            raise Checker(storage.url, path, key).fail("the document", "is missing")
        _checked_array(storage.url, path, key, raw, dtype, tuple(shape), tuple(chunks))


def read_checked(storage: Storage, c: Checker, key: str) -> Any:
    try:
        doc = read_doc(storage, key)
    except ValueError as exc:
        raise c.fail("the document", f"is not valid JSON ({exc})") from exc
    if doc is ABSENT:
        raise c.fail("the document", "is missing")
    return doc


def _table_array_types(schema: TableSchema) -> dict[str, str | None]:
    """The stored data type of every array a table schema implies (None: not derivable)."""
    out: dict[str, str | None] = {}

    def spec_types(prefix: str, spec: ValueSpec | None) -> None:
        if spec is None:
            return
        kind, dtype = spec.kind, spec.dtype
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
                spec_types(f"{prefix}cat.", spec.categories)
            elif kind == "object":  # a type code per row, then the values of each type
                out[f"{prefix}codes"] = "uint8"
                out[f"{prefix}values"] = "string"
                out[f"{prefix}floats"] = "float64"
                out[f"{prefix}ints"] = "int64"
        except (TypeError, ValueError, AttributeError):
            out[f"{prefix}values"] = None
        out[f"{prefix}mask"] = "bool"

    for i, column in enumerate(schema.columns):
        spec_types(f"c{i}/", column)
    for i, level in enumerate(schema.index.levels):
        spec_types(f"i{i}/", level)
    return out


def _codes_dtype(categories: int) -> str:
    import pandas as pd

    codes = pd.Categorical.from_codes([], categories=pd.RangeIndex(categories)).codes
    return str(codes.dtype.name)


def _check_table_arrays(storage: Storage, path: str, record: TableRecord) -> None:
    if record.is_parquet:  # one file: its values are checked when read (core.table)
        if not storage.exists(f"{path}/{TABLE_FILE}"):
            raise Checker(storage.url, path, TABLE_FILE).fail("the file", "is missing")
        return
    schema = record.table
    types = _table_array_types(schema)
    docs: dict[str, Any] = {}
    for key in record.digests:
        c = Checker(storage.url, path, f"{key}/zarr.json")
        docs[key] = read_checked(storage, c, f"{path}/{key}/zarr.json")
    for key, doc in docs.items():
        c = Checker(storage.url, path, f"{key}/zarr.json")
        dtype = types.get(key)
        rows: list[int] | None = [schema.rows]
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


def load_commit(
    storage: Storage, path: str, *, arrays: bool = True
) -> ArrayRecord | TableRecord | None:
    """The checked, typed record of result ``path``; ``None`` if it has no marker (not committed).

    Raises
    ------
    IntegrityError
        If the marker exists but is damaged, or (with ``arrays``) stored array metadata
        disagrees with it.
    """
    document = load_document(storage, path, arrays=arrays)
    return None if document is None else document.record


def load_document(storage: Storage, path: str, *, arrays: bool = True) -> ResultDocument | None:
    """The checked commit marker of result ``path`` (record and ``ome`` attributes); ``None``
    if it has no marker. Raises like :func:`load_commit`."""
    raw = read_raw(storage, f"{path}/zarr.json")
    if raw is None:
        return None
    document = _checked_document(storage.url, path, raw)
    if document.record.record_digest is None and any(
        read_raw(storage, f"{path}/{key}") is not None for key in RECORD_COPIES
    ):
        # record copies came with record digests: a marker without one is not an older
        # record but a damaged one (else removing the digest would disable its checks)
        raise Checker(storage.url, path).fail(
            f"cpr_zarr.{DIGEST_FIELD}", "is missing, but the result has a record copy"
        )
    if arrays:
        check_arrays(storage, path, document.record)
    return document


def parse_document(
    store_url: str, group_path: str, doc: Any, *, key: str = "zarr.json"
) -> ResultDocument:
    """A marker document checked against the path's content hash (:func:`check_record`), typed.

    Raises
    ------
    IntegrityError
        Naming the first field that is damaged, of the wrong type, or does not hash to the
        content hash.
    """
    check_record(store_url, group_path, doc, key=key)
    try:
        return ResultDocument.from_dict(doc)
    except RecordError as exc:
        where = f"cpr_zarr.{exc.field}" if exc.field else "attributes.cpr_zarr"
        raise Checker(store_url, group_path, key).fail(where, f"is invalid ({exc})") from exc


# The checks are pure functions of the stored bytes: a listing re-reads every marker but
# re-checks only those that changed. (Failures are not cached: they raise.) The typed
# document is immutable, so every caller may share it.
@functools.lru_cache(maxsize=4096)
def _checked_document(store_url: str, path: str, raw: bytes) -> ResultDocument:
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise Checker(store_url, path).fail("the document", f"is not valid JSON ({exc})") from exc
    return parse_document(store_url, path, doc)


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
    c = Checker(store_url, path, key)
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


def is_leftover(storage: Storage, path: str) -> bool:
    """A group that was never committed: no marker and no record copy (damage cannot fake it)."""
    keys = (f"{path}/zarr.json", *(f"{path}/{key}" for key in RECORD_COPIES))
    return not any(storage.exists(key) for key in keys)
