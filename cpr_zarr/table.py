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
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import zarr
import zarr.storage
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from cpr_zarr.errors import ChunkVerificationError, UnsupportedResultError
from cpr_zarr.hashing import chunk_digest
from cpr_zarr.layout import LAYOUT_VERSION, group_path, parse_name
from cpr_zarr.lease import Lease, checkpoint

if TYPE_CHECKING:
    import os

    from cpr_zarr.store import ResultStore
    from cpr_zarr.target import ZarrTarget

__all__ = ["TABLE_DTYPE", "is_table", "read_table", "save_table", "to_csv"]

TABLE_DTYPE = "table"
TABLE_ALGORITHM = "cpr-table-1:xxh3_128+blake2b-128"
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


def _encode(
    series: pd.Series | pd.Index, where: str
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(schema entry, arrays) of one column or index level."""
    dtype = series.dtype
    spec: dict[str, Any] = {"dtype": str(dtype)}
    arrays: dict[str, np.ndarray] = {}
    if isinstance(dtype, pd.CategoricalDtype):
        categories = dtype.categories
        sub, sub_arrays = _encode(pd.Series(categories), f"{where} categories")
        spec.update(kind="category", ordered=bool(dtype.ordered), categories=sub)
        arrays["values"] = np.asarray(
            series.cat.codes if isinstance(series, pd.Series) else series.codes
        )
        arrays.update({f"cat.{k}": v for k, v in sub_arrays.items()})
        return spec, arrays
    if isinstance(dtype, np.dtype) and dtype.kind in "biufc":
        spec["kind"] = "numpy"
        arrays["values"] = np.asarray(
            series, dtype=dtype.newbyteorder("<") if dtype.itemsize > 1 else dtype
        )
        return spec, arrays
    if isinstance(dtype, np.dtype) and dtype.kind in "mM":
        spec["kind"] = "datetime"
        arrays["values"] = np.asarray(series).view(np.int64)
        return spec, arrays
    values = pd.array(series)
    mask = np.asarray(pd.isna(values), dtype=bool)
    if isinstance(dtype, pd.StringDtype) or (
        isinstance(dtype, np.dtype)
        and dtype.kind == "O"
        and all(isinstance(v, str) for v in np.asarray(values)[~mask])
    ):
        spec["kind"] = "string"
        arrays["values"] = np.asarray(
            ["" if m else str(v) for v, m in zip(values, mask, strict=True)],
            dtype=np.dtypes.StringDType(),
        )
    elif isinstance(dtype, pd.api.extensions.ExtensionDtype) and hasattr(values, "_data"):
        spec["kind"] = "masked"  # Int64, Float64, boolean
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


def _decode(spec: dict[str, Any], arrays: dict[str, np.ndarray]) -> Any:
    kind = spec["kind"]
    values = arrays["values"]
    if kind == "category":
        categories = _decode(
            spec["categories"], {k[4:]: v for k, v in arrays.items() if k.startswith("cat.")}
        )
        dtype = pd.CategoricalDtype(pd.Index(categories), ordered=spec["ordered"])
        return pd.Categorical.from_codes(values, dtype=dtype)
    if kind == "numpy":
        return values.astype(spec["dtype"], copy=False)
    if kind == "datetime":
        return values.view(spec["dtype"])
    mask = arrays.get("mask", np.zeros(len(values), dtype=bool))
    if kind == "string":
        objects = values.astype(object)
        if mask.any():
            objects[mask] = None
        return pd.array(objects, dtype=spec["dtype"])
    return (
        pd.arrays.IntegerArray(values, mask)
        if spec["dtype"].startswith(("Int", "UInt"))
        else (
            pd.arrays.BooleanArray(values, mask)
            if spec["dtype"] == "boolean"
            else pd.arrays.FloatingArray(values, mask)
        )
    )


def _index_schema(index: pd.Index) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    names = [_name(n, "index") for n in index.names]
    if isinstance(index, pd.RangeIndex):
        return {"range": [index.start, index.stop, index.step], "names": names}, {}
    levels: list[dict[str, Any]] = []
    arrays: dict[str, np.ndarray] = {}
    for i in range(index.nlevels):
        spec, level_arrays = _encode(index.get_level_values(i), "index level")
        levels.append(spec)
        arrays.update({f"i{i}/{k}": v for k, v in level_arrays.items()})
    return {"levels": levels, "names": names, "multi": isinstance(index, pd.MultiIndex)}, arrays


def save_table(store: ResultStore, df: pd.DataFrame, name: str = "table") -> ZarrTarget:
    """Store a DataFrame as a content-hashed table group; the same table is stored once.

    Raises
    ------
    UnsupportedResultError
        For MultiIndex columns, duplicate column names or columns of unsupported dtypes.
    """
    name = parse_name(name)
    store._check_writable()
    if not isinstance(df, pd.DataFrame):
        raise UnsupportedResultError(
            f"save_table takes a pandas DataFrame, got {type(df).__name__}."
        )
    if isinstance(df.columns, pd.MultiIndex) or not df.columns.is_unique:
        raise UnsupportedResultError(
            f"Cannot store table {name!r}: its columns must be unique and one level deep, got "
            f"{list(df.columns)[:10]!r}. Flatten them (df.columns = ['_'.join(map(str, c)) ...])."
        )
    columns: list[dict[str, Any]] = []
    arrays: dict[str, np.ndarray] = {}
    for i, column in enumerate(df.columns):
        spec, column_arrays = _encode(df.iloc[:, i], f"column {column!r}")
        spec["name"] = _name(column, "column")
        columns.append(spec)
        arrays.update({f"c{i}/{k}": v for k, v in column_arrays.items()})
    index, index_arrays = _index_schema(df.index)
    arrays.update(index_arrays)
    schema = {
        "columns": columns,
        "index": index,
        "columns_dtype": str(df.columns.dtype),
        "rows": len(df),
    }
    digests = {key: _digest(arr) for key, arr in sorted(arrays.items())}
    canonical = json.dumps(
        {"algorithm": TABLE_ALGORITHM, "schema": schema, "digests": digests},
        sort_keys=True,
        separators=(",", ":"),
    )
    content_hash = hashlib.blake2b(canonical.encode(), digest_size=16).hexdigest()
    path = group_path(name, content_hash)
    found = store._find(content_hash, preferred=path)
    if found is not None:
        return found
    checkpoint("save.hashed")
    with Lease(store, path):  # keeps gc away while the table is written (cpr_zarr.lease)
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
                    await store._zstore.set(f"{path}/{key}", buf)

        sync(_copy())
        attrs = {
            "layout": LAYOUT_VERSION,
            "algorithm": TABLE_ALGORITHM,
            "content_hash": content_hash,
            "name": name,
            "kind": "table",
            "shape": [len(df), len(df.columns)],
            "dtype": TABLE_DTYPE,
            "chunks": [max(1, len(df)), max(1, len(df.columns))],
            "table": schema,
            "digests": digests,
        }
        store._set_json(
            f"{path}/zarr.json",
            {"zarr_format": 3, "node_type": "group", "attributes": {"cpr_zarr": attrs}},
        )
        checkpoint("save.committed")
    return store._target(path, attrs)


def read_table(target: ZarrTarget, *, verify: bool = True) -> pd.DataFrame:
    """The DataFrame of a table result, every stored array re-hashed (``verify=True``).

    Raises
    ------
    TypeError
        If the target is not a table.
    ChunkVerificationError
        If a stored array does not match its recorded digest.
    """
    if not is_table(target):
        raise TypeError(
            f"Result {target.group_path!r} is an array, not a table: read it with "
            "target.get_data() or target.to_numpy()."
        )
    store = target.store
    attrs = store._committed_attrs(target.group_path)
    if attrs is None:
        from cpr_zarr.errors import ResultNotFoundError

        raise ResultNotFoundError(
            f"Table {target.group_path!r} is not (or no longer) committed in store {store.url!r}."
        )
    schema, digests = attrs["table"], attrs["digests"]
    arrays: dict[str, np.ndarray] = {}
    for key, expected in digests.items():
        array = zarr.open_array(
            store._zstore, path=f"{target.group_path}/{key}", mode="r", zarr_format=3
        )
        values = np.asarray(array[...]) if array.shape[0] else np.empty(0, dtype=array.dtype)
        if verify and _digest(values) != expected:
            raise ChunkVerificationError(
                f"Verification failed for array {key!r} of table {target.group_path!r} in store "
                f"{store.url!r}: its values do not match the digest recorded when it was saved. "
                "Delete the result and re-run the task that produced it.",
                store_url=store.url,
                group_path=target.group_path,
                chunk_index=(0,),
            )
        arrays[key] = values

    def _sub(prefix: str) -> dict[str, np.ndarray]:
        return {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}

    # Series keep their dtype (a DataFrame built from bare object arrays would infer "str")
    data = {
        i: pd.Series(
            _decode(spec, _sub(f"c{i}/")), dtype=object if spec["dtype"] == "object" else None
        )
        for i, spec in enumerate(schema["columns"])
    }
    index_spec = schema["index"]
    if "range" in index_spec:
        index: pd.Index = pd.RangeIndex(*index_spec["range"], name=index_spec["names"][0])
    else:
        levels = [pd.Index(_decode(s, _sub(f"i{i}/"))) for i, s in enumerate(index_spec["levels"])]
        if index_spec["multi"]:
            index = pd.MultiIndex.from_arrays(levels, names=index_spec["names"])
        else:
            index = levels[0].rename(index_spec["names"][0])
    df = pd.DataFrame(data)
    df.index = index
    df.columns = pd.Index([c["name"] for c in schema["columns"]], dtype=schema["columns_dtype"])
    return df


def to_csv(target: ZarrTarget, path: str | os.PathLike[str], **kwargs: Any) -> None:
    """Export a table result to CSV (``pandas.DataFrame.to_csv`` options pass through)."""
    read_table(target).to_csv(path, **kwargs)
