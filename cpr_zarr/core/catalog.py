"""Finding committed results in a storage: by path, by content hash, or all of them.

A group is a result once its commit marker holds a record that hashes to the content hash
its path names (:func:`cpr_zarr.core.integrity.load_commit`); everything else under the root
(a crashed writer's folder, staging, leases) is ignored here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cpr_zarr.core import journal
from cpr_zarr.core.integrity import Damage, load_commit
from cpr_zarr.errors import IntegrityError, ResultNotFoundError
from cpr_zarr.model.layout import parse_group_path
from cpr_zarr.target import ZarrTarget

if TYPE_CHECKING:
    from cpr_zarr.model.records import ArrayRecord, ResultRecord, TableRecord
    from cpr_zarr.storage import Storage

__all__ = [
    "candidate_paths",
    "committed",
    "committed_or_raise",
    "damaged_among",
    "find",
    "listed",
    "load",
    "scan",
    "target_for",
]

LABELS_DIR = "labels"
TABLES_DIR = "tables"


def target_for(storage: Storage, path: str, record: ResultRecord) -> ZarrTarget:
    """The pointer to committed result ``path`` with commit record ``record``."""
    return ZarrTarget(
        store_url=storage.url,
        group_path=path,
        content_hash=record.content_hash,
        shape=record.shape,
        dtype=record.dtype,
        chunks=record.chunks,
    )


def listed(storage: Storage, state: journal.Catalog) -> list[ZarrTarget]:
    """The pointers to every result the catalog ``state`` lists, by path: no group is read
    (each record is checked when its result is opened or read)."""
    # columns in CATALOG_COLUMNS order: path, kind, shape, dtype, chunks, ...
    paths, _, shapes, dtypes, chunk_shapes, *_ = state.rows.columns()
    out = []
    for i in sorted(range(len(paths)), key=paths.__getitem__):
        path, shape, dtype, chunks = paths[i], shapes[i], dtypes[i], chunk_shapes[i]
        parsed = parse_group_path(path)
        if parsed is None:  # a row naming no result path: never served
            continue
        out.append(
            ZarrTarget(
                store_url=storage.url,
                group_path=path,
                content_hash=parsed[1],
                shape=tuple(shape),
                dtype=dtype,
                chunks=tuple(chunks),
            )
        )
    return out


def candidate_paths(storage: Storage, *, nested: bool = False) -> list[str]:
    """Result group paths under the root; with ``nested``, the label images and tables
    inside them too (two more listings per result, so saves, which only need the top
    level, skip them)."""
    top = sorted(p for p in storage.list_dir("") if parse_group_path(p) is not None)
    if not nested:
        return top
    out = []
    for path in top:
        out.append(path)
        for folder in (LABELS_DIR, TABLES_DIR):
            out.extend(
                f"{path}/{folder}/{child}"
                for child in sorted(storage.list_dir(f"{path}/{folder}"))
                if parse_group_path(child) is not None
            )
    return out


def committed(storage: Storage, path: str) -> ArrayRecord | TableRecord | None:
    """The checked record of committed result ``path``, else ``None``.

    ``None`` also for a damaged marker: writers then rewrite it (the same content gives
    the same record). Readers use :func:`load` instead, which raises on damage.
    """
    if parse_group_path(path) is None:
        return None
    try:
        return load_commit(storage, path, arrays=False)
    except IntegrityError:
        return None


def committed_or_raise(storage: Storage, path: str) -> ArrayRecord | TableRecord | None:
    """The checked record of committed result ``path``; ``None`` if it has no marker.

    Raises
    ------
    IntegrityError
        If the marker is damaged (a listing reports it, never skips it silently).
    """
    return load_commit(storage, path, arrays=False)


def load(storage: Storage, path: str) -> ArrayRecord | TableRecord:
    """The record of result ``path``, checked against its content hash and its arrays.

    Raises
    ------
    ResultNotFoundError
        If the group has no commit marker.
    IntegrityError
        If the marker is damaged or the stored array metadata disagrees with it.
    """
    record = load_commit(storage, path)
    if record is None:
        raise ResultNotFoundError(
            f"No committed result {path!r} in store {storage.url!r}. It may never have been "
            "saved, have been removed, or a writer may have stopped before committing it. "
            "List what the store holds with store.targets() (or `cpr-zarr ls`)."
        )
    return record


def find(storage: Storage, content_hash: str, preferred: str | None = None) -> ZarrTarget | None:
    """A committed result with exactly this hash (``preferred`` path first), or None.

    With a catalog: the path, then the hash index (a bounded number of requests); without
    one (a store written before catalogs existed), a listing of the root.
    """
    if preferred is not None and (record := committed(storage, preferred)) is not None:
        return target_for(storage, preferred, record)
    indexed = journal.lookup(storage, content_hash)
    if indexed is not None:
        for _, path in indexed:
            if path != preferred and (record := committed(storage, path)) is not None:
                return target_for(storage, path, record)
        return None
    for path in candidate_paths(storage):
        if path.endswith(content_hash) and (record := committed(storage, path)):
            return target_for(storage, path, record)
    return None


def damaged_among(storage: Storage, paths: list[str]) -> list[Damage]:
    """The damage of each result in ``paths`` whose commit record is damaged."""
    damaged = []
    for path in paths:
        try:
            load_commit(storage, path, arrays=False)
        except IntegrityError as exc:
            damaged.append(Damage.from_error(exc))
    return damaged


def scan(storage: Storage) -> tuple[list[ZarrTarget], list[Damage]]:
    """Every committed result (label images included) and every damaged one, by path."""
    found, damaged = [], []
    for path in candidate_paths(storage, nested=True):
        try:
            record = load_commit(storage, path, arrays=False)
        except IntegrityError as exc:
            damaged.append(Damage.from_error(exc))
            continue
        if record is not None:
            found.append(target_for(storage, path, record))
    return found, damaged
