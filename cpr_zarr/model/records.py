"""Typed records for every document cpr_zarr stores (pure: no I/O).

One frozen, slotted class per stored document, each with ``to_dict`` (the JSON form that
is written) and ``from_dict`` (the parser every reader goes through):

* :class:`StoreRoot`: the ``cpr_zarr`` attributes of the store root (``store_layout``);
* :class:`ResultDocument`: a result's commit marker, ``<name>-<hash>/zarr.json``, holding
  the commit record (:class:`ArrayRecord` or :class:`TableRecord`, told apart by ``kind``)
  and the ``ome`` attributes the record digest covers;
* :class:`LevelRecord`: one pyramid level inside an array record, and
  :class:`LevelArrayAttrs`, the attributes of the level's own array;
* :class:`TableSchema` (:class:`ColumnSpec`, :class:`ValueSpec`, :class:`TableIndex`):
  the schema inside a table record;
* :class:`ProvenanceRecord`: one provenance record of a result;
* :class:`TableAttrs`: the Fractal/ngio attributes of a parquet table's group (what ngio and
  Fractal's tools read), and :func:`tables_group_attrs`, the ``tables`` list of an image.

Versions
    The commit record carries its format version in ``layout`` (:data:`LAYOUT_VERSION`), the
    store root in ``store_layout`` (:data:`STORE_LAYOUT`); levels and table schemas are part
    of the commit record and share its version. Provenance records have no version field:
    the format of release 0.1 is version 1, and a future change adds one (absent means 1).
    A record of another version is refused with a :class:`~cpr_zarr.errors.RecordError`
    that says to upgrade, never read as something it is not.

Unknown keys are kept
    ``from_dict`` keeps keys it does not know (written by a newer cpr_zarr, or by a user in a
    provenance record) in ``extra``, and ``to_dict`` writes them back, in the order read. The
    record digest and the table hash are computed over the stored dicts: a record must come
    back from ``to_dict`` exactly as it was stored (keys, order, values, absent versus null)
    for it to keep verifying, and for a repaired marker to equal the lost one. ``keys`` holds
    the order read (empty for records built in code, which use the canonical order).

Errors
    ``from_dict`` raises :class:`~cpr_zarr.errors.RecordError` (a ``ValueError``) naming the
    field and the offending value; :mod:`cpr_zarr.core.integrity` adds the store and group.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field, replace
from datetime import datetime
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar, TypeAlias

from cpr_zarr.errors import RecordError
from cpr_zarr.model.hashing import (
    TABLE_ALGORITHM,
    TABLE_DTYPE,
    TABLE_PARQUET_ALGORITHM,
    TREE_ALGORITHM,
)
from cpr_zarr.model.layout import LAYOUT_VERSION, READ_LAYOUTS
from cpr_zarr.model.ngff import ImageMeta

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "ARRAY_PATH",
    "COMMIT_ATTR",
    "DIGEST_FIELD",
    "LAYOUT_VERSION",
    "PROVENANCE_ATTR",
    "STORE_LAYOUT",
    "TABLES_DIR",
    "TABLE_FILE",
    "ArrayRecord",
    "ColumnSpec",
    "LevelArrayAttrs",
    "LevelRecord",
    "ProvenanceRecord",
    "ResultDocument",
    "ResultRecord",
    "StoreRoot",
    "TableAttrs",
    "TableIndex",
    "TableRecord",
    "TableSchema",
    "ValueSpec",
    "parse_result_record",
    "record_digest",
    "tables_group_attrs",
]

#: the group attribute holding the commit record (and the store root's attributes)
COMMIT_ATTR = "cpr_zarr"
#: the field of the commit record holding the digest of the record and its ``ome`` attributes
DIGEST_FIELD = "record_digest"
#: the base array of an array result, inside its group
ARRAY_PATH = "0"
#: the format version of the store root document
STORE_LAYOUT = 1
#: the group attribute holding a provenance record
PROVENANCE_ATTR = "cpr_zarr_provenance"
#: the folder of an image's tables (Fractal/ngio layout: ``<image>/tables/<name>``)
TABLES_DIR = "tables"
#: the file holding a parquet table's values, inside its group (ngio's parquet backend)
TABLE_FILE = "table.parquet"
#: the kinds of table value encodings (``ValueSpec.kind``)
VALUE_KINDS = frozenset({"numpy", "datetime", "object", "string", "masked", "category"})

JSONName: TypeAlias = str | int | float | bool | None
_EMPTY: Mapping[str, Any] = MappingProxyType({})


def _empty() -> Mapping[str, Any]:
    return _EMPTY


def _frozen(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping))


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# -- parsing -------------------------------------------------------------------------------


class _Fields:
    """Reads the fields of one JSON object, raising :class:`RecordError` naming the field."""

    _MISSING: ClassVar[object] = object()

    def __init__(self, data: object, where: str, known: tuple[str, ...]) -> None:
        if not isinstance(data, dict):
            raise RecordError(
                f"{where or 'the record'} is {_show(data)}, expected a JSON object",
                field=where,
            )
        self.data: dict[str, Any] = data
        self.where = where
        self.known = known

    def name(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def fail(self, key: str, wanted: str) -> RecordError:
        value = self.data.get(key, self._MISSING)
        shown = "missing" if value is self._MISSING else _show(value)
        return RecordError(f"{self.name(key)} is {shown}, expected {wanted}", field=self.name(key))

    def has(self, key: str) -> bool:
        return key in self.data

    def raw(self, key: str) -> Any:
        if key not in self.data:
            raise self.fail(key, "a value")
        return self.data[key]

    def text(self, key: str) -> str:
        value = self.data.get(key)
        if not isinstance(value, str):
            raise self.fail(key, "a string")
        return value

    def opt_text(self, key: str) -> str | None:
        value = self.data.get(key)
        if value is not None and not isinstance(value, str):
            raise self.fail(key, "a string or null")
        return value

    def integer(self, key: str, *, minimum: int = 0) -> int:
        value = self.data.get(key)
        if type(value) is not int or value < minimum:
            raise self.fail(key, f"an integer >= {minimum}")
        return value

    def boolean(self, key: str) -> bool:
        value = self.data.get(key)
        if type(value) is not bool:
            raise self.fail(key, "true or false")
        return value

    def integers(self, key: str, *, minimum: int = 0) -> tuple[int, ...]:
        value = self.data.get(key)
        if not isinstance(value, list) or not all(type(v) is int and v >= minimum for v in value):
            raise self.fail(key, f"a list of integers >= {minimum}")
        return tuple(value)

    def texts(self, key: str) -> tuple[str, ...]:
        value = self.data.get(key)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(key, "a list of strings")
        return tuple(value)

    def mapping(self, key: str) -> dict[str, Any]:
        value = self.data.get(key)
        if not isinstance(value, dict):
            raise self.fail(key, "a JSON object")
        return value

    def array(self, key: str) -> list[Any]:
        value = self.data.get(key)
        if not isinstance(value, list):
            raise self.fail(key, "a list")
        return value

    def extra(self) -> Mapping[str, Any]:
        return _frozen({k: v for k, v in self.data.items() if k not in self.known})

    def keys(self) -> tuple[str, ...]:
        return tuple(self.data)


def _emit(
    known: dict[str, Any], unset: set[str], keys: tuple[str, ...], extra: Mapping[str, Any]
) -> dict[str, Any]:
    """The stored dict: fields in the order read (``keys``), else in canonical order.

    Fields in ``unset`` (optional fields holding no value) are written only if the record
    was read with the key (stored as null or empty); unknown keys come back from ``extra``.
    """
    out: dict[str, Any] = {}
    for key in keys:
        if key in known:
            out[key] = known[key]
        elif key in extra:
            out[key] = extra[key]
    for key, value in known.items():  # set in code after reading (e.g. the record digest)
        if key not in out and key not in unset:
            out[key] = value
    for key, value in extra.items():
        out.setdefault(key, value)
    return out


# -- the store root ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreRoot:
    """The ``cpr_zarr`` attributes of the store root's ``zarr.json``."""

    store_layout: int = STORE_LAYOUT
    extra: Mapping[str, Any] = field(default_factory=_empty)
    keys: tuple[str, ...] = field(default=(), compare=False, repr=False)

    _FIELDS: ClassVar[tuple[str, ...]] = ("store_layout",)

    def to_dict(self) -> dict[str, Any]:
        return _emit({"store_layout": self.store_layout}, set(), self.keys, self.extra)

    @classmethod
    def from_dict(cls, data: object) -> StoreRoot:
        """Parse the root's ``cpr_zarr`` attributes (any ``store_layout`` number: the caller
        decides what it reads)."""
        f = _Fields(data, "cpr_zarr", cls._FIELDS)
        return cls(store_layout=f.integer("store_layout"), extra=f.extra(), keys=f.keys())

    def document(self) -> dict[str, Any]:
        """The root group's whole ``zarr.json``."""
        return {"zarr_format": 3, "node_type": "group", "attributes": {COMMIT_ATTR: self.to_dict()}}


def _digest_fields(f: _Fields) -> dict[str, Any]:
    """``chunk_digests`` (layout 1) or ``digest_root`` (layout 2): one of them is stored."""
    if f.has("chunk_digests"):
        return {"chunk_digests": f.texts("chunk_digests"), "digest_root": None}
    if not f.has("digest_root"):
        raise f.fail("digest_root", "the root of the chunk digests' tree (layout 1: chunk_digests)")
    return {"chunk_digests": None, "digest_root": f.text("digest_root")}


# -- pyramid levels ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class LevelRecord:
    """One downsampled level of an array result, as its commit record lists it.

    ``step`` is the downsampling from the level before; ``path`` the level's array inside
    the group (``"1"``, or ``"1-2x2"``... when another writer's plan holds ``"1"``).
    Its chunk digests are ``chunk_digests`` (layout 1, and records being built in memory)
    or the root of their digest tree, ``digest_root`` (layout 2, as stored).
    """

    path: str
    step: tuple[int, ...]
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    chunk_digests: tuple[str, ...] | None = None
    digest_root: str | None = None
    extra: Mapping[str, Any] = field(default_factory=_empty)
    keys: tuple[str, ...] = field(default=(), compare=False, repr=False)

    _FIELDS: ClassVar[tuple[str, ...]] = (
        "path",
        "step",
        "shape",
        "chunks",
        "chunk_digests",
        "digest_root",
    )

    def to_dict(self) -> dict[str, Any]:
        known = {
            "path": self.path,
            "step": list(self.step),
            "shape": list(self.shape),
            "chunks": list(self.chunks),
            "chunk_digests": None if self.chunk_digests is None else list(self.chunk_digests),
            "digest_root": self.digest_root,
        }
        unset = {k for k in ("chunk_digests", "digest_root") if known[k] is None}
        return _emit(known, unset, self.keys, self.extra)

    @classmethod
    def from_dict(cls, data: object, where: str = "levels[0]") -> LevelRecord:
        f = _Fields(data, where, cls._FIELDS)
        return cls(
            path=f.text("path"),
            step=f.integers("step", minimum=1),
            shape=f.integers("shape"),
            chunks=f.integers("chunks", minimum=1),
            **_digest_fields(f),
            extra=f.extra(),
            keys=f.keys(),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class LevelArrayAttrs:
    """The ``cpr_zarr`` attributes of a pyramid level's own array: which level, how it was
    made, and every step that led to it (a level's values depend on all of them)."""

    level: int
    method: str
    steps: tuple[tuple[int, ...], ...]
    extra: Mapping[str, Any] = field(default_factory=_empty)
    keys: tuple[str, ...] = field(default=(), compare=False, repr=False)

    _FIELDS: ClassVar[tuple[str, ...]] = ("level", "method", "steps")

    def to_dict(self) -> dict[str, Any]:
        known = {"level": self.level, "method": self.method, "steps": [list(s) for s in self.steps]}
        return _emit(known, set(), self.keys, self.extra)

    def attributes(self) -> dict[str, Any]:
        """The array's attributes (what ``zarr.create_array(attributes=...)`` takes)."""
        return {COMMIT_ATTR: self.to_dict()}

    @classmethod
    def from_dict(cls, data: object) -> LevelArrayAttrs:
        f = _Fields(data, "cpr_zarr", cls._FIELDS)
        steps = f.array("steps")
        if not all(
            isinstance(s, list) and all(type(v) is int and v >= 1 for v in s) for s in steps
        ):
            raise f.fail("steps", "a list of lists of integers >= 1")
        return cls(
            level=f.integer("level", minimum=1),
            method=f.text("method"),
            steps=tuple(tuple(s) for s in steps),
            extra=f.extra(),
            keys=f.keys(),
        )


# -- table schemas -------------------------------------------------------------------------


def _json_name(f: _Fields, key: str) -> JSONName:
    value = f.raw(key)
    if not isinstance(value, (str, int, float, bool, type(None))):
        raise f.fail(key, "a string, number, boolean or null")
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class ValueSpec:
    """How one column, index level or set of categories is stored.

    ``kind`` is one of :data:`VALUE_KINDS`; ``dtype`` the pandas dtype to restore;
    categoricals also have ``ordered`` and ``categories`` (the spec of their categories).
    """

    dtype: str
    kind: str
    ordered: bool | None = None
    categories: ValueSpec | None = None
    extra: Mapping[str, Any] = field(default_factory=_empty)
    keys: tuple[str, ...] = field(default=(), compare=False, repr=False)

    _FIELDS: ClassVar[tuple[str, ...]] = ("dtype", "kind", "ordered", "categories")

    def _known(self) -> tuple[dict[str, Any], set[str]]:
        known: dict[str, Any] = {"dtype": self.dtype, "kind": self.kind}
        known["ordered"] = self.ordered
        known["categories"] = None if self.categories is None else self.categories.to_dict()
        unset = {k for k in ("ordered", "categories") if known[k] is None}
        return known, unset

    def to_dict(self) -> dict[str, Any]:
        known, unset = self._known()
        return _emit(known, unset, self.keys, self.extra)

    @staticmethod
    def _parse(f: _Fields) -> dict[str, Any]:
        kind = f.text("kind")
        if kind not in VALUE_KINDS:
            raise RecordError(
                f"{f.name('kind')} is {kind!r}, not a kind this cpr_zarr reads "
                f"({sorted(VALUE_KINDS)}): the table was written by a newer cpr_zarr; upgrade "
                "cpr_zarr to read it.",
                field=f.name("kind"),
            )
        fields: dict[str, Any] = {"dtype": f.text("dtype"), "kind": kind}
        if kind == "category":
            fields["ordered"] = f.boolean("ordered")
            fields["categories"] = ValueSpec.from_dict(f.raw("categories"), f.name("categories"))
        return fields

    @classmethod
    def from_dict(cls, data: object, where: str = "spec") -> ValueSpec:
        f = _Fields(data, where, cls._FIELDS)
        return cls(**cls._parse(f), extra=f.extra(), keys=f.keys())


@dataclass(frozen=True, slots=True, kw_only=True)
class ColumnSpec(ValueSpec):
    """A column of a table: its :class:`ValueSpec` and its name (any JSON scalar)."""

    name: JSONName

    _FIELDS: ClassVar[tuple[str, ...]] = (*ValueSpec._FIELDS, "name")

    def to_dict(self) -> dict[str, Any]:
        known, unset = self._known()
        known["name"] = self.name
        return _emit(known, unset, self.keys, self.extra)

    @classmethod
    def from_dict(cls, data: object, where: str = "column") -> ColumnSpec:
        f = _Fields(data, where, cls._FIELDS)
        return cls(**cls._parse(f), name=_json_name(f, "name"), extra=f.extra(), keys=f.keys())


@dataclass(frozen=True, slots=True, kw_only=True)
class TableIndex:
    """A table's index: a ``RangeIndex`` (``range``: start, stop, step) or stored ``levels``
    (``multi`` for a ``MultiIndex``), with the level ``names``."""

    names: tuple[JSONName, ...]
    range: tuple[int, int, int] | None = None
    levels: tuple[ValueSpec, ...] = ()
    multi: bool = False
    extra: Mapping[str, Any] = field(default_factory=_empty)
    keys: tuple[str, ...] = field(default=(), compare=False, repr=False)

    _FIELDS: ClassVar[tuple[str, ...]] = ("range", "levels", "names", "multi")

    def to_dict(self) -> dict[str, Any]:
        if self.range is not None:
            known: dict[str, Any] = {"range": list(self.range), "names": list(self.names)}
        else:
            known = {
                "levels": [s.to_dict() for s in self.levels],
                "names": list(self.names),
                "multi": self.multi,
            }
        return _emit(known, set(), self.keys, self.extra)

    @classmethod
    def from_dict(cls, data: object, where: str = "table.index") -> TableIndex:
        f = _Fields(data, where, cls._FIELDS)
        names = f.array("names")
        if not all(isinstance(n, (str, int, float, bool, type(None))) for n in names):
            raise f.fail("names", "a list of strings, numbers, booleans or nulls")
        if f.has("range"):
            bounds = f.data["range"]
            if not (isinstance(bounds, list) and len(bounds) == 3):
                raise f.fail("range", "[start, stop, step]")
            start, stop, step = f.integers("range", minimum=-(2**63))
            return cls(
                range=(start, stop, step), names=tuple(names), extra=f.extra(), keys=f.keys()
            )
        levels = tuple(
            ValueSpec.from_dict(s, f"{f.name('levels')}[{i}]")
            for i, s in enumerate(f.array("levels"))
        )
        return cls(
            levels=levels,
            names=tuple(names),
            multi=f.boolean("multi"),
            extra=f.extra(),
            keys=f.keys(),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class TableSchema:
    """What a table result holds besides the values: columns, index, column-label dtype, rows."""

    columns: tuple[ColumnSpec, ...]
    index: TableIndex
    columns_dtype: str
    rows: int
    extra: Mapping[str, Any] = field(default_factory=_empty)
    keys: tuple[str, ...] = field(default=(), compare=False, repr=False)

    _FIELDS: ClassVar[tuple[str, ...]] = ("columns", "index", "columns_dtype", "rows")

    def to_dict(self) -> dict[str, Any]:
        known = {
            "columns": [c.to_dict() for c in self.columns],
            "index": self.index.to_dict(),
            "columns_dtype": self.columns_dtype,
            "rows": self.rows,
        }
        return _emit(known, set(), self.keys, self.extra)

    @classmethod
    def from_dict(cls, data: object, where: str = "table") -> TableSchema:
        f = _Fields(data, where, cls._FIELDS)
        columns = tuple(
            ColumnSpec.from_dict(c, f"{f.name('columns')}[{i}]")
            for i, c in enumerate(f.array("columns"))
        )
        return cls(
            columns=columns,
            index=TableIndex.from_dict(f.raw("index"), f.name("index")),
            columns_dtype=f.text("columns_dtype"),
            rows=f.integer("rows"),
            extra=f.extra(),
            keys=f.keys(),
        )


# -- the commit record ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ResultRecord:
    """The commit record of a result: the ``cpr_zarr`` attributes of its marker document.

    Fields common to both kinds; :class:`ArrayRecord` and :class:`TableRecord` add theirs.
    ``shape``, ``dtype`` and ``chunks`` are what the result's pointer carries (a table's are
    ``(rows, columns)``, ``"table"`` and ``(max(1, rows), max(1, columns))``).
    """

    kind: ClassVar[str] = ""

    content_hash: str
    name: str
    shape: tuple[int, ...]
    dtype: str
    chunks: tuple[int, ...]
    algorithm: str
    layout: int = LAYOUT_VERSION
    record_digest: str | None = None
    extra: Mapping[str, Any] = field(default_factory=_empty)
    keys: tuple[str, ...] = field(default=(), compare=False, repr=False)

    _FIELDS: ClassVar[tuple[str, ...]] = (
        "layout",
        "algorithm",
        "content_hash",
        "name",
        "kind",
        "shape",
        "dtype",
        "chunks",
        DIGEST_FIELD,
    )

    @property
    def digest_count(self) -> int:
        """How many stored digests the record lists (chunks of an array, arrays of a table)."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_dict(cls, data: object) -> ArrayRecord | TableRecord:
        """Parse a commit record of either kind (see :func:`parse_result_record`)."""
        return parse_result_record(data)

    @staticmethod
    def _common(f: _Fields) -> dict[str, Any]:
        layout = f.integer("layout")
        if layout not in READ_LAYOUTS:
            raise RecordError(
                f"{f.name('layout')} is {layout!r}: the result was written by a cpr_zarr with "
                f"record layout {layout}, and this one reads layouts {sorted(READ_LAYOUTS)}. "
                "Upgrade cpr_zarr to read it.",
                field=f.name("layout"),
            )
        return {
            "layout": layout,
            "algorithm": f.text("algorithm"),
            "content_hash": f.text("content_hash"),
            "name": f.text("name"),
            "shape": f.integers("shape"),
            "dtype": f.text("dtype"),
            "chunks": f.integers("chunks", minimum=1),
            "record_digest": f.opt_text(DIGEST_FIELD),
            "extra": f.extra(),
            "keys": f.keys(),
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class ArrayRecord(ResultRecord):
    """The commit record of an array result (images, label images, PIL images, plain arrays).

    The chunk digests of the base array (C order) hash, with shape, dtype and chunks, to
    ``content_hash``: in layout 1 ``chunk_digests`` lists them; in layout 2 ``digest_root``
    is the root of their digest tree (stored beside the data, see
    :func:`~cpr_zarr.model.hashing.digest_tree`), and a record built in memory by a writer
    carries ``chunk_digests`` until the commit stores the tree. ``image`` is the NGFF metadata (None for
    arrays saved without it), ``levels`` the downsampled levels, ``labels_of`` the group path
    of the image a label image belongs to.
    """

    kind: ClassVar[str] = "array"

    chunk_digests: tuple[str, ...] | None = None
    digest_root: str | None = None
    algorithm: str = TREE_ALGORITHM
    array: str = ARRAY_PATH
    image: ImageMeta | None = None
    levels: tuple[LevelRecord, ...] = ()
    labels_of: str | None = None

    _FIELDS: ClassVar[tuple[str, ...]] = (
        *ResultRecord._FIELDS,
        "array",
        "chunk_digests",
        "digest_root",
        "image",
        "levels",
        "labels_of",
    )

    @property
    def digest_count(self) -> int:
        if self.chunk_digests is not None:
            return len(self.chunk_digests)
        return math.prod(
            -(-s // c) if s else 0 for s, c in zip(self.shape, self.chunks, strict=True)
        )

    @property
    def is_label_image(self) -> bool:
        return self.labels_of is not None

    def to_dict(self) -> dict[str, Any]:
        known: dict[str, Any] = {
            "layout": self.layout,
            "algorithm": self.algorithm,
            "content_hash": self.content_hash,
            "name": self.name,
            "kind": self.kind,
            "array": self.array,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "chunks": list(self.chunks),
            "chunk_digests": None if self.chunk_digests is None else list(self.chunk_digests),
            "digest_root": self.digest_root,
            "image": None if self.image is None else self.image.to_dict(),
            "levels": [level.to_dict() for level in self.levels],
            "labels_of": self.labels_of,
            DIGEST_FIELD: self.record_digest,
        }
        optional = ("chunk_digests", "digest_root", "image", "labels_of", DIGEST_FIELD)
        unset = {k for k in optional if known[k] is None}
        if not self.levels:
            unset.add("levels")
        return _emit(known, unset, self.keys, self.extra)

    @classmethod
    def from_dict(cls, data: object) -> ArrayRecord:
        f = _Fields(data, "", cls._FIELDS)
        fields = cls._common(f)
        image: ImageMeta | None = None
        if f.has("image"):
            raw = f.mapping("image")
            try:
                image = ImageMeta.from_dict(raw)
                canonical = json.dumps(image.to_dict()) == json.dumps(raw)
            except (KeyError, TypeError, ValueError) as exc:
                wanted = f"image metadata (axes, units, scale, translation): {exc}"
                raise f.fail("image", wanted) from exc
            if not canonical:
                raise f.fail("image", f"image metadata in canonical form {image.to_dict()!r}")
        levels = tuple(
            LevelRecord.from_dict(r, f"levels[{i}]")
            for i, r in enumerate(f.array("levels") if f.has("levels") else [])
        )
        return cls(
            **fields,
            array=f.text("array"),
            **_digest_fields(f),
            image=image,
            levels=levels,
            labels_of=f.text("labels_of") if f.has("labels_of") else None,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class TableRecord(ResultRecord):
    """The commit record of a table result: its schema and one digest per stored array
    (sorted by array path), which hash to ``content_hash``.

    ``algorithm`` tells the stored form: :data:`TABLE_ALGORITHM`, one zarr array per column
    (release 0.1), or :data:`TABLE_PARQUET_ALGORITHM`, one parquet file
    (:data:`TABLE_FILE`; the digests are then those of the decoded values). ``region`` is
    the group path of the label image a feature table describes (it then lives in that
    image's ``tables/``); None for a table of its own.
    """

    kind: ClassVar[str] = "table"

    table: TableSchema
    digests: Mapping[str, str]
    algorithm: str = TABLE_ALGORITHM
    dtype: str = TABLE_DTYPE
    region: str | None = None

    _FIELDS: ClassVar[tuple[str, ...]] = (*ResultRecord._FIELDS, "table", "digests", "region")

    @property
    def digest_count(self) -> int:
        return len(self.digests)

    @property
    def is_parquet(self) -> bool:
        """Whether the values are one parquet file (else one zarr array per column)."""
        return self.algorithm == TABLE_PARQUET_ALGORITHM

    def to_dict(self) -> dict[str, Any]:
        known: dict[str, Any] = {
            "layout": self.layout,
            "algorithm": self.algorithm,
            "content_hash": self.content_hash,
            "name": self.name,
            "kind": self.kind,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "chunks": list(self.chunks),
            "table": self.table.to_dict(),
            "digests": dict(self.digests),
            "region": self.region,
            DIGEST_FIELD: self.record_digest,
        }
        unset = {k for k in (DIGEST_FIELD, "region") if known[k] is None}
        return _emit(known, unset, self.keys, self.extra)

    @classmethod
    def from_dict(cls, data: object) -> TableRecord:
        f = _Fields(data, "", cls._FIELDS)
        fields = cls._common(f)
        digests = f.mapping("digests")
        if not all(isinstance(v, str) for v in digests.values()):
            raise f.fail("digests", "an object of array path -> hex digest")
        return cls(
            **fields,
            table=TableSchema.from_dict(f.raw("table")),
            digests=_frozen(digests),
            region=f.text("region") if f.has("region") else None,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class TableAttrs:
    """The Fractal/ngio attributes of a parquet table's group, beside its commit record.

    What ngio 1.1 writes for a table on its parquet backend (Fractal's table specification,
    version 1): a ``feature_table`` keyed by ``label`` that names its label image by
    ``region.path`` (``../labels/<label group>``, as ngio writes it), or a ``generic_table``.
    Derived from the commit record (:meth:`of`) and checked against it on every read, so
    they can never disagree with it.
    """

    region: str | None = None

    @classmethod
    def of(cls, record: TableRecord) -> TableAttrs:
        region = record.region
        return cls(region=None if region is None else region.rsplit("/", 1)[-1])

    def to_dict(self) -> dict[str, Any]:
        if self.region is None:
            return {"backend": "parquet", "table_version": "1", "type": "generic_table"}
        return {
            "backend": "parquet",
            "index_key": "label",
            "index_type": "int",
            "table_version": "1",
            "type": "feature_table",
            "region": {"path": f"../labels/{self.region}"},
            "instance_key": "label",
            "categorical_columns": [],
            "measurement_columns": [],
            "metadata_columns": [],
        }


def tables_group_attrs(names: list[str]) -> dict[str, Any]:
    """The attributes of an image's ``tables`` group: the names of its tables (Fractal/ngio)."""
    return {"tables": list(names)}


def parse_result_record(data: object) -> ArrayRecord | TableRecord:
    """The typed commit record of a result, by its ``kind``.

    Raises
    ------
    RecordError
        Naming the first field that is missing or has the wrong type, or a ``layout`` or
        ``kind`` this version does not read.
    """
    f = _Fields(data, "", ())
    kind = f.data.get("kind")
    if kind == ArrayRecord.kind:
        return ArrayRecord.from_dict(data)
    if kind == TableRecord.kind:
        return TableRecord.from_dict(data)
    raise f.fail("kind", "'array' or 'table'")


def record_digest(attributes: Mapping[str, Any]) -> str:
    """Digest of a group's ``cpr_zarr`` record (without the digest itself) and ``ome``.

    Over canonical JSON (sorted keys), so key order does not change it; NaN or infinity
    anywhere raises ``ValueError``.
    """
    record = {k: v for k, v in attributes.get(COMMIT_ATTR, {}).items() if k != DIGEST_FIELD}
    canonical = json.dumps(
        {COMMIT_ATTR: record, "ome": attributes.get("ome")},
        sort_keys=True,
        separators=(",", ":"),
        allow_nan=False,
    )
    return hashlib.blake2b(canonical.encode(), digest_size=16).hexdigest()


@dataclass(frozen=True, slots=True, kw_only=True)
class ResultDocument:
    """A result's commit marker, ``<name>-<hash>/zarr.json``: the commit record and the
    ``ome`` attributes (NGFF metadata; None for tables and plain arrays), which the record
    digest covers. Other attributes are kept in ``extra``."""

    record: ArrayRecord | TableRecord
    ome: Mapping[str, Any] | None = None
    extra: Mapping[str, Any] = field(default_factory=_empty)
    keys: tuple[str, ...] = field(default=(), compare=False, repr=False)

    def attributes(self) -> dict[str, Any]:
        known: dict[str, Any] = {"ome": self.ome, COMMIT_ATTR: self.record.to_dict()}
        if isinstance(self.ome, MappingProxyType):
            known["ome"] = dict(self.ome)
        return _emit(known, {"ome"} if self.ome is None else set(), self.keys, self.extra)

    def to_dict(self) -> dict[str, Any]:
        """The whole ``zarr.json`` (a zarr v3 group document)."""
        return {"zarr_format": 3, "node_type": "group", "attributes": self.attributes()}

    def digest(self) -> str:
        return record_digest(self.attributes())

    def sealed(self) -> ResultDocument:
        """This document with the record's ``record_digest`` set (written by every commit)."""
        return replace(self, record=replace(self.record, record_digest=self.digest()))

    @classmethod
    def from_dict(cls, doc: object) -> ResultDocument:
        """Parse a marker document (its envelope, ``zarr_format`` and ``node_type``, is
        zarr's and checked by :mod:`cpr_zarr.core.integrity`)."""
        envelope = _Fields(doc, "", ())
        f = _Fields(envelope.mapping("attributes"), "attributes", (COMMIT_ATTR, "ome"))
        ome = f.mapping("ome") if f.has("ome") else None
        return cls(
            record=parse_result_record(f.raw(COMMIT_ATTR)),
            ome=ome,
            extra=f.extra(),
            keys=f.keys(),
        )


# -- provenance ----------------------------------------------------------------------------

_PROVENANCE_STRINGS = (
    "output",
    "host",
    "worker",
    "task_name",
    "task_run_id",
    "task_run_name",
    "flow_run_id",
    "flow_run_name",
    "flow_name",
    "function",
    "source_hash",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class ProvenanceRecord:
    """One provenance record: when and where a result was produced, by which task run of
    which flow run, from which parameters and input results (``inputs``: content hashes).

    Only ``created`` (an ISO time) is required; the task and flow fields are null for direct
    saves. ``host``, ``pid`` and ``worker`` (the Dask worker's address, when a Dask worker
    saved it) name the process that wrote the result. Fields given to ``save(provenance=...)``
    that are not listed here are in ``extra``.
    """

    created: str
    output: str | None = None
    host: str | None = None
    pid: int | None = None
    worker: str | None = None
    versions: Mapping[str, Any] = field(default_factory=_empty)
    argv: tuple[Any, ...] = ()
    task_name: str | None = None
    task_run_id: str | None = None
    task_run_name: str | None = None
    flow_run_id: str | None = None
    flow_run_name: str | None = None
    flow_name: str | None = None
    function: str | None = None
    source_hash: str | None = None
    parameters: Mapping[str, Any] = field(default_factory=_empty)
    inputs: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=_empty)
    keys: tuple[str, ...] = field(default=(), compare=False, repr=False)

    _FIELDS: ClassVar[tuple[str, ...]] = (
        "created",
        "output",
        "host",
        "pid",
        "worker",
        "versions",
        "argv",
        "task_name",
        "task_run_id",
        "task_run_name",
        "flow_run_id",
        "flow_run_name",
        "flow_name",
        "function",
        "source_hash",
        "parameters",
        "inputs",
    )

    @property
    def created_at(self) -> datetime:
        return datetime.fromisoformat(self.created)

    def to_dict(self) -> dict[str, Any]:
        known: dict[str, Any] = {"created": self.created}
        known.update({k: getattr(self, k) for k in _PROVENANCE_STRINGS})
        known["pid"] = self.pid
        known["versions"] = dict(self.versions)
        known["argv"] = list(self.argv)
        known["parameters"] = dict(self.parameters)
        known["inputs"] = list(self.inputs)
        known = {k: known[k] for k in self._FIELDS}
        unset = {k for k in (*_PROVENANCE_STRINGS, "pid") if known[k] is None}
        unset |= {k for k in ("versions", "argv", "parameters", "inputs") if not known[k]}
        return _emit(known, unset, self.keys, self.extra)

    @classmethod
    def from_dict(cls, data: object) -> ProvenanceRecord:
        f = _Fields(data, PROVENANCE_ATTR, cls._FIELDS)
        created = f.text("created")
        try:
            datetime.fromisoformat(created)
        except ValueError:
            raise f.fail("created", "an ISO time such as '2026-11-30T10:00:00.000+00:00'") from None
        strings = {k: f.opt_text(k) for k in _PROVENANCE_STRINGS}
        pid = f.integer("pid", minimum=0) if f.data.get("pid") is not None else None
        return cls(
            created=created,
            pid=pid,
            versions=_frozen(f.mapping("versions")) if f.has("versions") else _EMPTY,
            argv=tuple(f.array("argv")) if f.has("argv") else (),
            parameters=_frozen(f.mapping("parameters")) if f.has("parameters") else _EMPTY,
            inputs=f.texts("inputs") if f.has("inputs") else (),
            extra=f.extra(),
            keys=f.keys(),
            **strings,
        )
