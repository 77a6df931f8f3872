"""Tables: pandas DataFrames as content-hashed result groups in the same store.

Layout of a table result ``<name>-<hash>/``::

    zarr.json          the commit marker (written last): cpr_zarr attributes with kind "table",
                       the schema (column names, pandas dtypes, index) and one digest per column
    c0/, c1/, ...      one 1-D zarr array per column (strings as zarr variable-length UTF-8)
    i0/, ...           one per index level (a RangeIndex is stored as its start/stop/step)
    m0/, ...           missing-value masks of nullable columns (pandas "str", Int64, boolean, ...)

The content hash covers the schema and the decoded values of every stored array, so the
same DataFrame gives the same group whatever the process; every array is re-hashed when
read. The pointer is a :class:`~cpr_zarr.ZarrTarget` with ``dtype == "table"`` and
``shape == (rows, columns)``; :func:`read_table` (and ``cpr_zarr.task`` inputs) turn it back
into a DataFrame with the same dtypes, index and column names.

Since the Fractal/ngio layout (issue #17) a table is saved as one parquet file instead, the
form OME-Zarr tools read (ngio, Fractal's feature explorer, pandas, polars, DuckDB)::

    <name>-<hash>/                     a table of its own, or, for a :class:`Table` of a
    <image>/tables/<name>-<hash>/      label image's measurements, inside that image
      zarr.json      the commit marker: Fractal/ngio attributes (``backend: parquet``, a
                     ``feature_table`` naming its label image by ``region.path``, or a
                     ``generic_table``) beside the cpr_zarr record (schema, one digest per
                     decoded array of the encoding above, ``region``)
      table.parquet  the values (pyarrow, with pandas' metadata: index, dtypes)

The image's ``tables/zarr.json`` lists its tables (``{"tables": [...]}``), rewritten like
its ``labels`` list (:func:`update_tables_list`). The content hash covers the schema, the
digests of the decoded values (:data:`~cpr_zarr.model.hashing.TABLE_PARQUET_ALGORITHM`)
and the label image, so it does not depend on parquet's bytes (another pyarrow writes
other bytes for the same values); reading decodes the file and re-hashes every value. A
DataFrame that parquet cannot hold exactly (object columns mixing types, NaN beside None
in a text column, ...) is stored in the column layout above, which round-trips it.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import zarr
import zarr.storage
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from cpr_zarr.core import catalog, journal
from cpr_zarr.core.integrity import load_commit, remove_command, write_marker
from cpr_zarr.core.lease import Lease, checkpoint
from cpr_zarr.errors import (
    ChunkVerificationError,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    UnsupportedResultError,
)
from cpr_zarr.model.hashing import (
    TABLE_DTYPE,
    TABLE_PARQUET_ALGORITHM,
    chunk_digest,
    table_hash,
)
from cpr_zarr.model.layout import group_path, parse_group_path, parse_name
from cpr_zarr.model.records import (
    TABLE_FILE,
    TABLES_DIR,
    ColumnSpec,
    ResultDocument,
    TableAttrs,
    TableIndex,
    TableRecord,
    TableSchema,
    ValueSpec,
    tables_group_attrs,
)
from cpr_zarr.storage import open_storage

if TYPE_CHECKING:
    import os

    from cpr_zarr.storage import Storage
    from cpr_zarr.target import ZarrTarget

__all__ = [
    "TABLE_DTYPE",
    "Table",
    "encode_table",
    "is_table",
    "read_checked_table",
    "read_table",
    "save_table",
    "table_hash",
    "to_csv",
    "update_tables_list",
]

logger = logging.getLogger("cpr_zarr")

_JSON_NAME = (str, int, float, bool, type(None))


def is_table(target: ZarrTarget) -> bool:
    """Whether a pointer names a table (decided from the pointer alone, no I/O)."""
    return target.dtype == TABLE_DTYPE


def _name(value: object, where: str) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if not isinstance(value, _JSON_NAME):
        raise UnsupportedResultError(
            f"Cannot store {where} name {value!r}: table column and index names must be str, "
            "int, float, bool or None. Rename it (df.columns = [str(c) for c in df.columns])."
        )
    return value


def _digest(values: np.ndarray) -> str:
    if values.dtype.kind in "OUT":
        encoded = json.dumps([str(v) for v in values.tolist()], ensure_ascii=False).encode()
        return chunk_digest(np.frombuffer(encoded, dtype=np.uint8))
    return chunk_digest(np.ascontiguousarray(values))


def _encode(series: pd.Series | pd.Index, where: str) -> tuple[ValueSpec, dict[str, np.ndarray]]:
    """(schema entry, arrays) of one column or index level."""
    dtype = series.dtype
    arrays: dict[str, np.ndarray] = {}
    if isinstance(dtype, pd.CategoricalDtype):
        categories = dtype.categories
        sub, sub_arrays = _encode(pd.Series(categories), f"{where} categories")
        spec = ValueSpec(
            dtype=str(dtype), kind="category", ordered=bool(dtype.ordered), categories=sub
        )
        arrays["values"] = np.asarray(
            series.cat.codes if isinstance(series, pd.Series) else series.codes
        )
        arrays.update({f"cat.{k}": v for k, v in sub_arrays.items()})
        return spec, arrays
    if isinstance(dtype, np.dtype) and dtype.kind in "biufc":
        arrays["values"] = np.asarray(
            series, dtype=dtype.newbyteorder("<") if dtype.itemsize > 1 else dtype
        )
        return ValueSpec(dtype=str(dtype), kind="numpy"), arrays
    if isinstance(dtype, np.dtype) and dtype.kind in "mM":
        arrays["values"] = np.asarray(series).view(np.int64)
        return ValueSpec(dtype=str(dtype), kind="datetime"), arrays
    values = pd.array(series)
    mask = np.asarray(pd.isna(values), dtype=bool)
    if isinstance(dtype, np.dtype) and dtype.kind == "O":
        objects = np.asarray(values, dtype=object)
        if mask.any() or not all(type(v) is str for v in objects):
            # NaN, None, pd.NA, numbers...: every value's type is kept, not just "missing"
            arrays.update(_encode_objects(objects, where))
            return ValueSpec(dtype=str(dtype), kind="object"), arrays
    if isinstance(dtype, pd.StringDtype) or (isinstance(dtype, np.dtype) and dtype.kind == "O"):
        spec = ValueSpec(dtype=str(dtype), kind="string")
        arrays["values"] = np.asarray(
            ["" if m else str(v) for v, m in zip(values, mask, strict=True)],
            dtype=np.dtypes.StringDType(),
        )
    elif isinstance(dtype, pd.api.extensions.ExtensionDtype) and hasattr(values, "_data"):
        spec = ValueSpec(dtype=str(dtype), kind="masked")  # Int64, Float64, boolean
        arrays["values"] = np.asarray(values._data)
    else:
        raise UnsupportedResultError(
            f"Cannot store {where} of dtype {dtype}: tables hold numbers, booleans, strings, "
            "categories, datetimes/timedeltas and pandas nullable types. Convert it (e.g. "
            "df[col].astype(str)) or drop it."
        )
    if mask.any():
        arrays["mask"] = mask
    return spec, arrays


# object columns: one type code per row; each value in the array of its kind, in row order
_OBJ_STR, _OBJ_NONE, _OBJ_NA, _OBJ_NAT, _OBJ_BIGINT, _OBJ_BIG_UINT64 = 0, 1, 2, 3, 4, 5
_OBJ_FLOAT_TYPES: dict[type, int] = {float: 10, np.float64: 11, np.float32: 12, np.float16: 13}
_OBJ_INT_TYPES: dict[type, int] = {
    int: 20,
    bool: 21,
    np.int64: 22,
    np.int32: 23,
    np.int16: 24,
    np.int8: 25,
    np.uint32: 26,
    np.uint16: 27,
    np.uint8: 28,
    np.bool_: 29,
    np.uint64: 30,
}
_OBJ_TYPES = {code: t for t, code in (_OBJ_FLOAT_TYPES | _OBJ_INT_TYPES).items()}
_INT64 = np.iinfo(np.int64)


def _encode_objects(objects: np.ndarray, where: str) -> dict[str, np.ndarray]:
    """The arrays of an object column: type codes, strings, floats and integers.

    ``None``, ``NaN`` (of any float type), ``pd.NA`` and ``pd.NaT`` come back as themselves,
    and so does the type of every number (Python or numpy scalar).
    """
    codes = np.empty(len(objects), dtype=np.uint8)
    strings: list[str] = []
    floats: list[float] = []
    ints: list[int] = []
    for row, value in enumerate(objects):
        kind = type(value)
        if kind is str:
            codes[row] = _OBJ_STR
            strings.append(value)
        elif value is None:
            codes[row] = _OBJ_NONE
        elif value is pd.NA:
            codes[row] = _OBJ_NA
        elif value is pd.NaT:
            codes[row] = _OBJ_NAT
        elif kind in _OBJ_FLOAT_TYPES:
            codes[row] = _OBJ_FLOAT_TYPES[kind]
            floats.append(float(value))
        elif kind in _OBJ_INT_TYPES and _INT64.min <= int(value) <= _INT64.max:
            codes[row] = _OBJ_INT_TYPES[kind]
            ints.append(int(value))
        elif kind is int or kind is np.uint64:  # beyond int64: kept exactly as decimal text
            codes[row] = _OBJ_BIGINT if kind is int else _OBJ_BIG_UINT64
            strings.append(str(value))
        else:
            raise UnsupportedResultError(
                f"Cannot store {where} of dtype object: row {row} holds {value!r} of type "
                f"{kind.__module__}.{kind.__qualname__}. Object columns may hold str, int, "
                "float, bool (Python or numpy scalars), None, NaN, pd.NA and pd.NaT. Convert "
                "the column, e.g. df[col].astype(str), or pd.to_datetime(df[col]) for dates."
            )
    arrays = {"codes": codes}
    if strings:
        arrays["values"] = np.asarray(strings, dtype=np.dtypes.StringDType())
    if floats:
        arrays["floats"] = np.asarray(floats, dtype="<f8")
    if ints:
        arrays["ints"] = np.asarray(ints, dtype="<i8")
    return arrays


def _decode_objects(arrays: dict[str, np.ndarray]) -> np.ndarray:
    codes = arrays["codes"]
    strings = iter(arrays.get("values", np.empty(0, dtype=object)).tolist())
    floats = iter(arrays.get("floats", np.empty(0)).tolist())
    ints = iter(arrays.get("ints", np.empty(0, dtype=np.int64)).tolist())
    out = np.empty(len(codes), dtype=object)
    for row, code in enumerate(codes.tolist()):
        if code == _OBJ_STR:
            out[row] = next(strings)
        elif code == _OBJ_NONE:
            out[row] = None
        elif code == _OBJ_NA:
            out[row] = pd.NA
        elif code == _OBJ_NAT:
            out[row] = pd.NaT
        elif code == _OBJ_BIGINT:
            out[row] = int(next(strings))
        elif code == _OBJ_BIG_UINT64:
            out[row] = np.uint64(int(next(strings)))
        elif code in _OBJ_TYPES:
            kind = _OBJ_TYPES[code]
            out[row] = kind(next(floats) if code < 20 else next(ints))
        else:
            raise ValueError(f"unknown object type code {code} in row {row}")
    return out


def _decode(spec: ValueSpec, arrays: dict[str, np.ndarray]) -> Any:
    kind = spec.kind
    if kind == "object":
        return _decode_objects(arrays)
    values = arrays["values"]
    if kind == "category" and spec.categories is not None:
        categories = _decode(
            spec.categories, {k[4:]: v for k, v in arrays.items() if k.startswith("cat.")}
        )
        dtype = pd.CategoricalDtype(pd.Index(categories), ordered=spec.ordered)
        return pd.Categorical.from_codes(values, dtype=dtype)
    if kind == "numpy":
        return values.astype(spec.dtype, copy=False)
    if kind == "datetime":
        return values.view(spec.dtype)
    mask = arrays.get("mask", np.zeros(len(values), dtype=bool))
    if kind == "string":
        objects = values.astype(object)
        if mask.any():
            objects[mask] = None
        return pd.array(objects, dtype=spec.dtype)
    return (
        pd.arrays.IntegerArray(values, mask)
        if spec.dtype.startswith(("Int", "UInt"))
        else (
            pd.arrays.BooleanArray(values, mask)
            if spec.dtype == "boolean"
            else pd.arrays.FloatingArray(values, mask)
        )
    )


def _index_schema(index: pd.Index) -> tuple[TableIndex, dict[str, np.ndarray]]:
    names = tuple(_name(n, "index") for n in index.names)
    if isinstance(index, pd.RangeIndex):
        return TableIndex(range=(index.start, index.stop, index.step), names=names), {}
    levels: list[ValueSpec] = []
    arrays: dict[str, np.ndarray] = {}
    for i in range(index.nlevels):
        spec, level_arrays = _encode(index.get_level_values(i), "index level")
        levels.append(spec)
        arrays.update({f"i{i}/{k}": v for k, v in level_arrays.items()})
    multi = isinstance(index, pd.MultiIndex)
    return TableIndex(levels=tuple(levels), names=names, multi=multi), arrays


def encode_table(
    df: pd.DataFrame, name: str = "table"
) -> tuple[TableSchema, dict[str, np.ndarray]]:
    """The schema and column arrays ``df`` is stored as; raises what ``save_table`` would.

    Writes nothing: ``cpr_zarr.task`` checks every part of a return value with it before
    storing any part.
    """
    if not isinstance(df, pd.DataFrame):
        raise UnsupportedResultError(
            f"save_table takes a pandas DataFrame, got {type(df).__name__}."
        )
    if isinstance(df.columns, pd.MultiIndex) or not df.columns.is_unique:
        raise UnsupportedResultError(
            f"Cannot store table {name!r}: its columns must be unique and one level deep, got "
            f"{list(df.columns)[:10]!r}. Flatten them (df.columns = ['_'.join(map(str, c)) ...])."
        )
    columns: list[ColumnSpec] = []
    arrays: dict[str, np.ndarray] = {}
    for i, column in enumerate(df.columns):
        spec, column_arrays = _encode(df.iloc[:, i], f"column {column!r}")
        columns.append(
            ColumnSpec(
                dtype=spec.dtype,
                kind=spec.kind,
                ordered=spec.ordered,
                categories=spec.categories,
                name=_name(column, "column"),
            )
        )
        arrays.update({f"c{i}/{k}": v for k, v in column_arrays.items()})
    index, index_arrays = _index_schema(df.index)
    arrays.update(index_arrays)
    schema = TableSchema(
        columns=tuple(columns),
        index=index,
        columns_dtype=str(df.columns.dtype),
        rows=len(df),
    )
    return schema, arrays


@dataclass(frozen=True, eq=False)
class Table:
    """Measurements of a label image, to be stored with it: a Fractal/ngio *feature table*.

    Return ``cpr_zarr.Table(df, labels=labels)`` from a task (or ``store.save`` it) and
    ``df`` is stored as ``<image>/tables/<name>-<hash>/`` in the image of the label image
    ``labels``, a feature table whose ``region.path`` names ``labels`` and which ngio,
    Fractal's tools and napari plugins reading ngio tables find there. It stays a
    content-hashed result: verified when read, stored once, read back as the same DataFrame.

    Parameters
    ----------
    data
        The DataFrame: one row per label, keyed by an index (or a column) named ``label``
        holding the label values (integers).
    labels
        The label image result (a ``ZarrTarget``), or, inside a ``cpr_zarr.task``, the
        input array the task received for it.
    """

    data: Any
    labels: Any


def _region(storage: Storage, labels: object, df: pd.DataFrame, name: str) -> str:
    """The group path of the label image a feature table describes, checked."""
    from cpr_zarr.model.records import ArrayRecord
    from cpr_zarr.target import ZarrTarget

    if not isinstance(labels, ZarrTarget):
        raise InvalidArgumentTypeError(
            f"Table(labels=...) must be the label image result (a ZarrTarget), got "
            f"{type(labels).__name__} for table {name!r}. Inside a cpr_zarr.task pass the input "
            "array the task received for the label image."
        )
    if labels.store_url != storage.url:
        raise InvalidArgumentError(
            f"Table {name!r} is stored with its label image's image, but label image "
            f"{labels.group_path!r} is in store {labels.store_url!r}, not {storage.url!r}. "
            "Save the table to that store."
        )
    record = catalog.load(storage, labels.group_path)
    if not (isinstance(record, ArrayRecord) and record.is_label_image):
        raise InvalidArgumentError(
            f"Table(labels=...) must be a label image (saved as cpr_zarr.Labels), but "
            f"{labels.group_path!r} in store {storage.url!r} is not one. Pass the label image "
            f"the measurements of table {name!r} were made on."
        )
    index = df.index
    keyed = (index.name == "label" and index.nlevels == 1) or "label" in df.columns
    key = index if index.name == "label" and index.nlevels == 1 else df.get("label")
    if not keyed or key is None or not pd.api.types.is_integer_dtype(key.dtype):
        raise UnsupportedResultError(
            f"Table {name!r} of label image {labels.group_path!r} must key its rows by label "
            f"value: an index (or a column) named 'label' of integers (Fractal/ngio feature "
            f"tables); it has index {list(index.names)!r} and columns {list(df.columns)[:10]!r}. "
            "E.g. df.set_index('label'), or df.index.name = 'label'."
        )
    return labels.group_path


def _digests(arrays: dict[str, np.ndarray], *, canonical: bool) -> dict[str, str]:
    """One digest per array; ``canonical``: values under a missing-value mask count as 0
    (what a nullable column holds there is not part of its values, and parquet drops it)."""
    out = {}
    for key, values in sorted(arrays.items()):
        if canonical and key.endswith("values") and values.dtype.kind in "biufc":
            mask = arrays.get(key[: -len("values")] + "mask")
            if mask is not None and mask.any():
                values = np.where(mask, np.zeros((), values.dtype), values)
        out[key] = _digest(values)
    return out


def _from_parquet(raw: bytes, schema: TableSchema) -> pd.DataFrame:
    """The DataFrame of a stored parquet file, with the column names and dtypes of ``schema``
    (pandas' parquet metadata restores them; this covers readers of another pandas)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    df = pq.read_table(pa.BufferReader(raw)).to_pandas()
    for i, spec in enumerate(schema.columns):
        column = df.iloc[:, i]
        if str(column.dtype) != spec.dtype and spec.kind in ("numpy", "string", "masked"):
            # left as read if it does not convert: verification then names the column
            with contextlib.suppress(TypeError, ValueError):
                df.isetitem(i, column.astype(spec.dtype))
    df.columns = pd.Index([c.name for c in schema.columns], dtype=schema.columns_dtype)
    return df


def _to_parquet(
    df: pd.DataFrame, schema: TableSchema, digests: dict[str, str], name: str
) -> bytes | None:
    """The parquet file of ``df``, or None if reading it back does not give ``df`` exactly."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        buffer = io.BytesIO()
        pq.write_table(pa.Table.from_pandas(df), buffer)
        raw = buffer.getvalue()
        back_schema, back_arrays = encode_table(_from_parquet(raw, schema), name)
    except (pa.ArrowException, TypeError, ValueError, UnsupportedResultError) as exc:
        logger.info("Table %r is not stored as parquet: %s: %s", name, type(exc).__name__, exc)
        return None
    if back_schema != schema or _digests(back_arrays, canonical=True) != digests:
        logger.info("Table %r is not stored as parquet: parquet does not keep it exactly", name)
        return None
    return raw


def update_tables_list(storage: Storage, image_path: str) -> None:
    """Make ``<image>/tables/zarr.json`` list every committed table of the image.

    As :func:`cpr_zarr.core.labels.update_labels_list` does for label images: each writer
    lists after committing, writes the list, and re-lists until what it wrote is what it
    sees, so concurrent writers lose no table. Tables other tools (ngio) added to the list
    stay listed while their group exists.
    """
    folder = f"{image_path}/{TABLES_DIR}"
    key = f"{folder}/zarr.json"
    for _ in range(10):
        current = storage.get_json(key)
        attrs = current.get("attributes") if isinstance(current, dict) else None
        listed = attrs.get(TABLES_DIR) if isinstance(attrs, dict) else None
        entries = storage.list_dir(folder)
        ours = [
            entry
            for entry in sorted(entries)
            if parse_group_path(entry) is not None
            and catalog.committed(storage, f"{folder}/{entry}") is not None
        ]
        others = [
            n
            for n in (listed if isinstance(listed, list) else [])
            if isinstance(n, str) and parse_group_path(n) is None and n in entries
        ]
        doc = {
            "zarr_format": 3,
            "node_type": "group",
            "attributes": tables_group_attrs(ours + others),
        }
        if current == doc:
            return
        storage.set_json(key, doc)


def save_table(
    storage: Storage, df: pd.DataFrame, name: str = "table", *, labels: object = None
) -> ZarrTarget:
    """Store a DataFrame as a content-hashed table group; the same table is stored once.

    As one parquet file in the Fractal/ngio layout (module doc); with ``labels`` (a label
    image result), as a feature table of it inside its image. A DataFrame that parquet
    cannot hold exactly is stored one zarr array per column (not with ``labels``).

    Raises
    ------
    UnsupportedResultError
        For MultiIndex columns, duplicate column names or columns of unsupported dtypes;
        with ``labels``, for rows not keyed by integer ``label`` values or values parquet
        cannot hold exactly.
    InvalidArgumentError
        If ``labels`` is not a label image of this store.
    """
    name = parse_name(name)
    storage.check_writable()
    schema, arrays = encode_table(df, name)
    region = None if labels is None else _region(storage, labels, df, name)
    digests = _digests(arrays, canonical=True)
    raw = _to_parquet(df, schema, digests, name)
    if raw is None and region is not None:
        raise UnsupportedResultError(
            f"Cannot store table {name!r} as a feature table of {region!r} in store "
            f"{storage.url!r}: parquet (what ngio and Fractal read) does not hold its values "
            "exactly (an object column mixing types, NaN beside None in a text column, an "
            "empty categorical...). Convert those columns (e.g. df[col].astype(str)), or "
            "save the DataFrame without labels= (stored as a table of its own)."
        )
    if raw is None:
        return _save_columns(storage, df, name, schema, arrays)
    content_hash = table_hash(
        schema.to_dict(), digests, algorithm=TABLE_PARQUET_ALGORITHM, region=region
    )
    image = None if region is None else region.split("/labels/")[0]
    if image is None:
        path = group_path(name, content_hash)
        found = catalog.find(storage, content_hash, preferred=path)
        if found is not None:
            return found
    else:
        path = f"{image}/{TABLES_DIR}/{group_path(name, content_hash)}"
        existing = catalog.committed(storage, path)
        if existing is not None:
            update_tables_list(storage, image)  # a crash may have left it unlisted
            return catalog.target_for(storage, path, existing)
    # where gc looks if it never commits, and listings if its writer dies after the commit
    journal.note_pending(storage, path)
    checkpoint("save.hashed")
    with Lease(storage, path):  # keeps gc away while the table is written (cpr_zarr.core.lease)
        storage.set(f"{path}/{TABLE_FILE}", raw)
        record = TableRecord(
            content_hash=content_hash,
            name=name,
            shape=(len(df), len(df.columns)),
            chunks=(max(1, len(df)), max(1, len(df.columns))),
            table=schema,
            digests=digests,
            algorithm=TABLE_PARQUET_ALGORITHM,
            region=region,
        )
        attrs = TableAttrs.of(record).to_dict()
        write_marker(storage, path, ResultDocument(record=record, extra=attrs))
        checkpoint("save.committed")
    if image is not None:
        update_tables_list(storage, image)
    return catalog.target_for(storage, path, record)


def _save_columns(
    storage: Storage,
    df: pd.DataFrame,
    name: str,
    schema: TableSchema,
    arrays: dict[str, np.ndarray],
) -> ZarrTarget:
    """Store a table one zarr array per column (the layout of release 0.1)."""
    digests = _digests(arrays, canonical=False)
    content_hash = table_hash(schema.to_dict(), digests)
    path = group_path(name, content_hash)
    found = catalog.find(storage, content_hash, preferred=path)
    if found is not None:
        return found
    checkpoint("save.hashed")
    with Lease(storage, path):  # keeps gc away while the table is written (cpr_zarr.core.lease)
        # build the arrays in memory, then copy their keys: zarr would otherwise write the
        # group document (our commit marker) before the data
        scratch = zarr.storage.MemoryStore()
        root = zarr.open_group(scratch, mode="w", zarr_format=3)
        for key, arr in arrays.items():
            out = root.create_array(
                key, shape=arr.shape, dtype=arr.dtype, chunks=(max(1, len(arr)),)
            )
            if len(arr):
                out[...] = arr

        async def _copy() -> None:
            async for key in scratch.list():
                if key == "zarr.json":  # the scratch root; ours is the commit marker, written last
                    continue
                buf = await scratch.get(key, default_buffer_prototype())
                if buf is not None:
                    await storage.zarr_store.set(f"{path}/{key}", buf)

        sync(_copy())
        record = TableRecord(
            content_hash=content_hash,
            name=name,
            shape=(len(df), len(df.columns)),
            chunks=(max(1, len(df)), max(1, len(df.columns))),
            table=schema,
            digests=digests,
        )
        journal.note_pending(storage, path)  # listed even if its writer dies after the commit
        write_marker(storage, path, ResultDocument(record=record))
        checkpoint("save.committed")
    return catalog.target_for(storage, path, record)


def read_table(target: ZarrTarget, *, verify: bool = True) -> pd.DataFrame:
    """The DataFrame of a table result, every stored array re-hashed (``verify=True``).

    Raises
    ------
    TypeError
        If the target is not a table.
    IntegrityError
        If the table's record (schema, digests) does not hash to its content hash, or a
        stored array's metadata disagrees with the schema.
    ChunkVerificationError
        If a stored array does not match its recorded digest.
    """
    from cpr_zarr.target import ZarrTarget

    if not isinstance(target, ZarrTarget):
        raise InvalidArgumentTypeError(
            f"read_table takes the ZarrTarget of a table result, got {target!r:.80}. Get one "
            "with store.open(ref) or from the task that saved the table."
        )
    if not is_table(target):
        raise InvalidArgumentTypeError(
            f"Result {target.group_path!r} is an array, not a table: read it with "
            "target.get_data() or target.to_numpy()."
        )
    storage = open_storage(target.store_url, read_only=True)
    # the record must hash to the content hash and every array's metadata agree with it
    record = load_commit(storage, target.group_path)
    if record is None:
        from cpr_zarr.errors import ResultNotFoundError

        raise ResultNotFoundError(
            f"Table {target.group_path!r} is not (or no longer) committed in store {storage.url!r}."
        )
    if not isinstance(record, TableRecord):
        raise InvalidArgumentTypeError(
            f"Result {target.group_path!r} in store {storage.url!r} is an array, not a table "
            "(its pointer was changed): read it with target.get_data()."
        )
    return read_checked_table(storage, target.group_path, record, verify=verify)


def read_checked_table(
    storage: Storage, path: str, record: TableRecord, *, verify: bool = True
) -> pd.DataFrame:
    """The DataFrame of a table whose record and array metadata were checked already."""
    if record.is_parquet:
        return _read_parquet(storage, path, record, verify=verify)
    schema, digests = record.table, record.digests
    arrays: dict[str, np.ndarray] = {}
    for key, expected in digests.items():
        try:
            array = zarr.open_array(
                storage.zarr_store, path=f"{path}/{key}", mode="r", zarr_format=3
            )
            values = np.asarray(array[...]) if array.shape[0] else np.empty(0, dtype=array.dtype)
        except Exception as exc:  # damaged bytes can claim any decoded size (MemoryError)
            raise ChunkVerificationError(
                f"Cannot read array {key!r} (chunk (0,)) of table {path!r} in store "
                f"{storage.url!r}: {type(exc).__name__}: {exc}. The stored array is damaged, "
                "unreadable or missing. To resolve: remove the result (store.delete(ref), or "
                f"`{remove_command(storage.url, path)}`) and re-run the task that produced it.",
                store_url=storage.url,
                group_path=path,
                chunk_index=(0,),
            ) from exc
        if verify and _digest(values) != expected:
            raise ChunkVerificationError(
                f"Verification failed for array {key!r} of table {path!r} in store "
                f"{storage.url!r}: its values do not match the digest recorded when it was saved. "
                "Delete the result and re-run the task that produced it.",
                store_url=storage.url,
                group_path=path,
                chunk_index=(0,),
            )
        arrays[key] = values

    def _sub(prefix: str) -> dict[str, np.ndarray]:
        return {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}

    # Series keep their dtype (a DataFrame built from bare object arrays would infer "str")
    data = {
        i: pd.Series(
            _decode(spec, _sub(f"c{i}/")), dtype=object if spec.dtype == "object" else None
        )
        for i, spec in enumerate(schema.columns)
    }
    index_spec = schema.index
    if index_spec.range is not None:
        index: pd.Index = pd.RangeIndex(*index_spec.range, name=index_spec.names[0])
    else:
        levels = [
            pd.Index(_decode(s, _sub(f"i{i}/")), dtype=object if s.dtype == "object" else None)
            for i, s in enumerate(index_spec.levels)
        ]
        if index_spec.multi:
            index = pd.MultiIndex.from_arrays(levels, names=list(index_spec.names))
        else:
            index = levels[0].rename(index_spec.names[0])
    df = pd.DataFrame(data)
    df.index = index
    df.columns = pd.Index([c.name for c in schema.columns], dtype=schema.columns_dtype)
    return df


def _read_parquet(
    storage: Storage, path: str, record: TableRecord, *, verify: bool
) -> pd.DataFrame:
    """The DataFrame of a parquet table, every decoded value re-hashed (``verify``)."""
    raw = storage.get(f"{path}/{TABLE_FILE}")
    try:
        if raw is None:
            raise FileNotFoundError(f"{TABLE_FILE} is missing")
        df = _from_parquet(raw, record.table)
    except Exception as exc:  # damaged bytes: pyarrow raises many kinds of errors
        raise ChunkVerificationError(
            f"Cannot read {TABLE_FILE} of table {path!r} in store {storage.url!r}: "
            f"{type(exc).__name__}: {exc}. The file is damaged, unreadable or missing. To "
            f"resolve: remove the result (store.delete(ref), or "
            f"`{remove_command(storage.url, path)}`) and re-run the task that produced it.",
            store_url=storage.url,
            group_path=path,
            chunk_index=(0,),
        ) from exc
    if not verify:
        return df
    try:
        schema, arrays = encode_table(df)
        digests = _digests(arrays, canonical=True)
    except UnsupportedResultError:
        schema, digests = None, {}
    if schema != record.table:
        what = "its columns, dtypes or index"
    else:
        wrong = [k for k in sorted(set(digests) | set(record.digests))
                 if digests.get(k) != record.digests.get(k)]  # fmt: skip
        if not wrong:
            return df
        head = wrong[0].split("/", 1)[0]
        column = (
            f"column {record.table.columns[int(head[1:])].name!r}"
            if head[0] == "c" and head[1:].isdigit() and int(head[1:]) < len(record.table.columns)
            else "the index"
        )
        what = f"{column} (array {wrong[0]!r})"
    raise ChunkVerificationError(
        f"Verification failed for {what} of table {path!r} in store {storage.url!r}: "
        f"{TABLE_FILE} does not hold the values recorded when it was saved. Delete the "
        "result and re-run the task that produced it.",
        store_url=storage.url,
        group_path=path,
        chunk_index=(0,),
    )


def to_csv(target: ZarrTarget, path: str | os.PathLike[str], **kwargs: Any) -> None:
    """Export a table result to CSV (``pandas.DataFrame.to_csv`` options pass through)."""
    read_table(target).to_csv(path, **kwargs)
