"""The store's catalog: a hash index for lookups and a journal for listings (derived data).

The result groups stay the source of truth; the catalog only makes finding and listing them
cost a bounded number of requests, whatever the store size. Everything lives under one
zarr *array* node, so plain zarr lists it as one node and never looks inside::

    _catalog/zarr.json                           an empty array: "this store keeps a catalog"
    _catalog/index/<hash[:3]>/<hash>.<path>      one small object per committed result
    _catalog/log/<UTC time>-<uuid>.json          journal segments: one per save or removal
    _catalog/snap/<generation>.json.gz           snapshots: the journal compacted

Object stores first: nothing is renamed, locked, appended to or rewritten.

Index
    A save writes ``<hash>.<group path>`` (``/`` spelled ``~``) create-if-absent *after* the
    commit, so the index never names a group that was not committed. A lookup by hash or
    hash prefix (at least 6 hex digits) lists one bucket of 4,096: one LIST request on S3 up
    to about 4 million results. A removal deletes the key after the group. The dedup check of
    a save looks at its own path first, so a writer killed between commit and index write
    is repaired by the next save of the same content.

Journal
    After its commit (and its provenance record) a save writes one immutable segment named
    by time and a random id holding a ``put`` event: the result's row (shape, dtype, bytes)
    and the record it added. A removal writes a ``drop`` event *before* it removes anything,
    so a crash never leaves the catalog listing a removed result, and another once the group
    is gone (voiding a gc refresh that put it back meanwhile). Every save writes a
    ``pending`` event just before its commit marker (a label image or table inside an image
    also before it writes anything, where gc looks for a leftover if it never commits).
    Readers read the newest snapshot plus the segments it does not hold (``merged``), and
    apply events in time order; a ``put`` older than a ``drop`` of the same path is void.

Compaction
    When more than :data:`COMPACT_AFTER` segments are outside the snapshot, a writable reader
    (and one save in :data:`COMPACT_CHANCE`) writes snapshot ``N + 1`` create-if-absent:
    every row, and in ``merged`` every segment it listed. It then deletes the segments that
    snapshot ``N`` merged (they are in ``N + 1`` too) and snapshots older than ``N``. A
    reader lists the segments *before* the snapshots, so any segment removed before it looked
    is inside the snapshot it reads; an object removed after it listed reads as missing, and
    the read starts again. Two compactors of one generation: one wins; on a store without
    conditional writes (s3fs) the later overwrites the earlier, and since only the segments of
    the surviving previous generation are ever deleted, nothing is lost either way.

Cost of a listing on S3: one LIST of the segments and one of the snapshots (one more per
1,000 objects), one GET of the snapshot, one GET per segment outside it (at most about
``COMPACT_AFTER`` plus what was saved since the last compaction).

Refresh
    The catalog never lists a result that was not committed, and never misses one: a writer
    killed between its commit and its ``put`` left a ``pending`` event, and listings
    (:func:`cpr_zarr.core.inventory.read_catalog`) check the commit marker of every pending
    path without a row (one GET each; none but killed or running saves), and add the
    committed ones, journalling them once the event is :data:`SETTLE_SECONDS` old. A gc run
    does the same for every group it finds unlisted, and ``cpr-zarr catalog rebuild``
    rebuilds everything. Stores written before the catalog existed have none until
    ``cpr-zarr catalog rebuild``; until then everything falls back to scanning the groups,
    as before.
"""

from __future__ import annotations

import gzip
import itertools
import json
import logging
import random
import threading
import time
import uuid
import weakref
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson  # 3x json's speed on a snapshot of 100,000 rows

from cpr_zarr.core.codec import thread_map, worker_count
from cpr_zarr.core.lease import checkpoint
from cpr_zarr.errors import RecordError, StoreError
from cpr_zarr.model.layout import HASH_HEX_LENGTH, parse_group_path
from cpr_zarr.model.records import (
    CATALOG_COLUMNS,
    CatalogEntry,
    CatalogEvent,
    CatalogSegment,
    CatalogSnapshot,
    catalog_marker,
)
from cpr_zarr.storage import to_json_bytes

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from cpr_zarr.model.records import ProvenanceRecord
    from cpr_zarr.storage import Storage
    from cpr_zarr.target import ZarrTarget

__all__ = [
    "CATALOG",
    "COMPACT_AFTER",
    "INPUTS",
    "SETTLE_SECONDS",
    "Catalog",
    "Rows",
    "compact",
    "create",
    "enabled",
    "index_key",
    "lookup",
    "note_pending",
    "note_removed",
    "note_removing",
    "note_row",
    "note_saved",
    "own_bytes",
    "read",
    "rebuild",
    "row_entry",
    "write_snapshot",
]

logger = logging.getLogger("cpr_zarr")

CATALOG = "_catalog"
MARKER = f"{CATALOG}/zarr.json"
INDEX = f"{CATALOG}/index"
LOG = f"{CATALOG}/log"
SNAP = f"{CATALOG}/snap"
BUCKET_DIGITS = 3
#: segments outside the snapshot that make a writable reader compact
COMPACT_AFTER = 64
#: one save in this many checks whether the journal needs compacting
COMPACT_CHANCE = 16
#: how long a snapshot remembers a removal (voids late ``put`` events of the removed result)
KEEP_DROPPED_SECONDS = 7 * 86400
#: a committed save whose ``pending`` event is this old and that has no row yet lost its
#: writer: a writable listing journals its row (a younger one may be journalling it itself)
SETTLE_SECONDS = 300.0
_ATTEMPTS = 30
_COL = {name: i for i, name in enumerate(CATALOG_COLUMNS)}
#: where a row (a list in CATALOG_COLUMNS order) holds its input hashes
INPUTS = _COL["inputs"]

_ENABLED: weakref.WeakKeyDictionary[Storage, bool] = weakref.WeakKeyDictionary()
_ENABLED_LOCK = threading.Lock()


# -- the catalog's existence ------------------------------------------------------------------


def enabled(storage: Storage) -> bool:
    """Whether the store keeps a catalog (its marker exists; remembered once seen)."""
    with _ENABLED_LOCK:
        if _ENABLED.get(storage):
            return True
    found = storage.exists(MARKER)
    if found:
        with _ENABLED_LOCK:
            _ENABLED[storage] = True
    return found


def create(storage: Storage) -> None:
    """Start the catalog of a store that holds no result yet: an empty snapshot, then the
    marker (create-if-absent both: concurrent creators write the same documents)."""
    storage.set_if_not_exists(_snap_key(0), _encode_snapshot(CatalogSnapshot(generation=0)))
    storage.set_if_not_exists(MARKER, to_json_bytes(catalog_marker()))


# -- the hash index -------------------------------------------------------------------------


def index_key(content_hash: str, path: str) -> str:
    """The index object of result ``path``: ``_catalog/index/<hash[:3]>/<hash>.<path>``."""
    return f"{INDEX}/{content_hash[:BUCKET_DIGITS]}/{content_hash}.{path.replace('/', '~')}"


def lookup(storage: Storage, prefix: str) -> list[tuple[str, str]] | None:
    """``(content hash, group path)`` of every indexed result whose hash starts with
    ``prefix`` (at least 3 hex digits): one listing. ``None`` if the store has no catalog.

    The paths are candidates: the caller checks their commit (a removal stopped between
    removing the group and its index key leaves a key without a result).
    """
    if not enabled(storage):
        return None
    found = []
    for entry in storage.list_dir(f"{INDEX}/{prefix[:BUCKET_DIGITS]}", fresh=True):
        content_hash, _, encoded = entry.partition(".")
        path = encoded.replace("~", "/")
        parsed = parse_group_path(path)
        if (
            len(content_hash) == HASH_HEX_LENGTH
            and content_hash.startswith(prefix)
            and parsed is not None
            and parsed[1] == content_hash
        ):
            found.append((content_hash, path))
    return sorted(found)


# -- writing the journal ----------------------------------------------------------------------


def _segment_key(now: float) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now))
    micros = int(now * 1e6) % 1_000_000
    return f"{LOG}/{stamp}.{micros:06d}Z-{uuid.uuid4().hex[:12]}.json"


def _append(storage: Storage, events: list[CatalogEvent]) -> None:
    doc = CatalogSegment(events=tuple(events)).to_dict()
    storage.set(_segment_key(events[0].time), json.dumps(doc, separators=(",", ":")).encode())


def note_saved(
    storage: Storage, target: ZarrTarget, kind: str, record: ProvenanceRecord | None
) -> None:
    """Journal a save of committed result ``target`` (and the provenance record it added),
    then index it. Called after the commit; a failure only delays the catalog (logged)."""
    try:
        if not enabled(storage):
            return
        path = target.group_path
        key = index_key(target.content_hash, path)
        indexed = storage.exists(key)
        now = time.time()
        created = record.created_at.timestamp() if record is not None else None
        entry = CatalogEntry(
            path=path,
            kind=kind,
            shape=tuple(target.shape),
            dtype=target.dtype,
            chunks=tuple(target.chunks),
            # the group's bytes, counted once: by the save that indexes it
            stored_bytes=None if indexed else own_bytes(storage, path),
            records=int(record is not None),
            created=created,
            last_produced=created,
            last_task=record.task_name if record is not None else None,
            last_flow_run=record.flow_run_name if record is not None else None,
            inputs=tuple(record.inputs) if record is not None else (),
            time=now,
        )
        _append(storage, [CatalogEvent(op="put", path=path, time=now, entry=entry)])
        checkpoint("catalog.journalled")
        if not indexed:
            storage.set_if_not_exists(key, path.encode())
        if random.random() < 1 / COMPACT_CHANCE:
            maybe_compact(storage)
    except Exception as exc:  # the result is committed and valid: do not fail the save
        logger.warning(
            "Result %s was saved in %s, but the store's catalog could not be updated (%s); "
            "listings miss it until its next save or `cpr-zarr catalog rebuild`.",
            target.group_path,
            storage.url,
            exc,
        )


def own_bytes(storage: Storage, path: str) -> int:
    """Bytes of group ``path`` without the label images and tables inside it (they have rows
    of their own, added to their image's by listings)."""
    total = 0
    for entry in storage.walk(path):
        parts = entry.key.split("/", 2)
        nested = parts[0] in ("labels", "tables") and parse_group_path(parts[1]) is not None
        if len(parts) == 3 and nested:
            continue
        total += entry.size
    return total


def note_removing(storage: Storage, path: str) -> None:
    """Journal that result ``path`` is about to be removed (before anything is removed, so
    that no crash leaves the catalog listing it)."""
    if enabled(storage):
        now = time.time()
        _append(storage, [CatalogEvent(op="drop", path=path, time=now)])
        checkpoint("catalog.dropped")


def note_removed(storage: Storage, path: str) -> None:
    """Journal that result ``path`` is gone and remove its index key (after the group is).

    The second ``drop`` voids a ``put`` journalled while the group was being removed: a gc
    run elsewhere that found the group still committed and put it back in the catalog
    (:func:`cpr_zarr.core.inventory.restore_missing`)."""
    parsed = parse_group_path(path)
    if parsed is not None and enabled(storage):
        _append(storage, [CatalogEvent(op="drop", path=path, time=time.time())])
        storage.delete(index_key(parsed[1], path))


def note_pending(storage: Storage, path: str) -> None:
    """Journal that result ``path`` is about to be written or committed: if its writer dies
    after the commit, listings find the result here; if it never commits, gc finds the
    leftover (of a label image or table, without listing every image)."""
    if enabled(storage):
        now = time.time()
        _append(storage, [CatalogEvent(op="pending", path=path, time=now)])


# -- reading ----------------------------------------------------------------------------------


class Rows(MutableMapping[str, list[Any]]):
    """Every result's row by path (a list in :data:`CATALOG_COLUMNS` order): a snapshot's
    columns, read as they are, under the rows that journal events added or changed.

    A row of the snapshot becomes a list only when it is looked up (a ``put`` merging into
    it, a removal); :meth:`columns` gives every row column by column without building one,
    which is what listings need (building 100,000 lists took as long as parsing them).
    """

    def __init__(
        self, columns: Sequence[Sequence[Any]] = (), rows: Mapping[str, list[Any]] | None = None
    ) -> None:
        self._columns = [list(col) for col in columns] or [[] for _ in CATALOG_COLUMNS]
        self._at = {path: i for i, path in enumerate(self._columns[0])}
        self._changed: dict[str, list[Any]] = dict(rows or {})  # added or looked up
        self._gone: set[str] = set()  # snapshot rows removed

    def __getitem__(self, path: str) -> list[Any]:
        row = self._changed.get(path)
        if row is not None:
            return row
        if path in self._gone:
            raise KeyError(path)
        i = self._at[path]
        row = self._changed[path] = [col[i] for col in self._columns]
        return row

    def __setitem__(self, path: str, row: list[Any]) -> None:
        self._changed[path] = row

    def __delitem__(self, path: str) -> None:
        if path not in self:
            raise KeyError(path)
        self._changed.pop(path, None)
        if path in self._at:
            self._gone.add(path)

    def __contains__(self, path: object) -> bool:
        return path in self._changed or (path in self._at and path not in self._gone)

    def _kept(self) -> list[bool]:
        """Whether each snapshot row is listed as it is (not removed, not changed)."""
        kept = [True] * len(self._at)
        for path in (*self._changed, *self._gone):
            i = self._at.get(path)
            if i is not None:
                kept[i] = False
        return kept

    def __iter__(self) -> Iterator[str]:
        changed = list(self._changed)  # a lookup while iterating adds to it
        yield from itertools.compress(self._columns[0], self._kept())
        yield from changed

    def items(self) -> Iterator[tuple[str, list[Any]]]:  # type: ignore[override]
        """Every (path, row), without keeping the snapshot's rows as lists: change a row
        through ``rows[path]``, not through what this yields."""
        changed = list(self._changed.items())
        kept = self._kept()
        for i, path in enumerate(self._columns[0]):
            if kept[i]:
                yield path, [col[i] for col in self._columns]
        yield from changed

    def values(self) -> Iterator[list[Any]]:  # type: ignore[override]
        """Every row (see :meth:`items`)."""
        return (row for _, row in self.items())

    def __len__(self) -> int:
        return sum(self._kept()) + len(self._changed)

    def columns(self) -> list[list[Any]]:
        """Every row's values column by column, in :data:`CATALOG_COLUMNS` order (new lists:
        the caller may change them)."""
        kept = self._kept()
        out = [list(itertools.compress(col, kept)) for col in self._columns]
        for row in self._changed.values():
            for col, value in zip(out, row, strict=True):
                col.append(value)
        return out


@dataclass
class Catalog:
    """The catalog as read: every result's row (values in :data:`CATALOG_COLUMNS` order),
    the removals and pending saves remembered, and the journal state."""

    generation: int
    rows: Rows
    dropped: dict[str, float] = field(default_factory=dict)
    pending: dict[str, float] = field(default_factory=dict)
    #: the segments the snapshot holds, and those listed (all folded into the rows)
    merged: frozenset[str] = frozenset()
    listed: list[str] = field(default_factory=list)
    #: image path -> the label images and tables inside it with a row (see ``_inside``)
    _nested: dict[str, set[str]] = field(default_factory=dict, repr=False)
    _nested_built: bool = field(default=False, repr=False)

    @classmethod
    def from_snapshot(cls, snap: CatalogSnapshot) -> Catalog:
        return cls(
            generation=snap.generation,
            rows=Rows([snap.columns[c] for c in CATALOG_COLUMNS]),
            dropped=dict(snap.dropped),
            pending=dict(snap.pending),
            merged=frozenset(snap.merged),
        )

    @property
    def unmerged(self) -> list[str]:
        return [s for s in self.listed if s not in self.merged]

    def apply(self, event: CatalogEvent) -> None:
        path = event.path
        if event.op == "put" and event.entry is not None:
            if event.time <= self._dropped_at(path):
                return  # a save older than the removal (of it or of its image): void
            self.pending.pop(path, None)
            new = event.entry.row()
            old = self.rows.get(path)
            if old is None:
                self.rows[path] = list(new)
                if (image := _image_of(path)) != path and self._nested_built:
                    self._nested.setdefault(image, set()).add(path)
                return
            _merge(old, new)
        elif event.op == "drop":
            # an image goes with the label images and tables inside it
            for gone in [path, *self._inside(path)]:
                row = self.rows.get(gone)
                if row is not None and row[_COL["time"]] < event.time:
                    del self.rows[gone]
                    self._nested.get(_image_of(gone), set()).discard(gone)
                self.pending.pop(gone, None)
            self.dropped[path] = max(event.time, self.dropped.get(path, event.time))
        elif event.op == "pending" and path not in self.rows:
            self.pending[path] = max(event.time, self.pending.get(path, event.time))

    def _dropped_at(self, path: str) -> float:
        """When ``path``, or the image holding it, was last removed."""
        never = float("-inf")
        return max(self.dropped.get(path, never), self.dropped.get(_image_of(path), never))

    def _inside(self, path: str) -> list[str]:
        """The rows and pending entries of the label images and tables inside ``path``."""
        if not self._nested_built:  # built once per read, on the first removal
            for inner in [*self.rows, *self.pending]:
                if (image := _image_of(inner)) != inner:
                    self._nested.setdefault(image, set()).add(inner)
            self._nested_built = True
        pending = [p for p in self.pending if p.startswith(f"{path}/")] if self.pending else []
        return sorted(self._nested.get(path, set()) | set(pending))

    def snapshot(self, generation: int, merged: Iterable[str]) -> CatalogSnapshot:
        values = self.rows.columns()
        order = sorted(range(len(values[0])), key=values[0].__getitem__)  # by path
        columns = {
            c: [col[i] for i in order] for c, col in zip(CATALOG_COLUMNS, values, strict=True)
        }
        horizon = time.time() - KEEP_DROPPED_SECONDS
        return CatalogSnapshot(
            generation=generation,
            merged=tuple(sorted(merged)),
            columns=columns,
            dropped={p: t for p, t in self.dropped.items() if t >= horizon},
            pending=dict(self.pending),
        )


def _image_of(path: str) -> str:
    """The top-level result holding ``path`` (``<image>/labels/<name>``, ``<image>/tables/
    <name>``), or ``path`` itself."""
    return path.split("/", 1)[0]


def _merge(old: list[Any], new: tuple[Any, ...]) -> None:
    """Fold another save of the same result into its row."""
    c = _COL
    old[c["records"]] += new[c["records"]]
    if new[c["created"]] is not None and (
        old[c["created"]] is None or new[c["created"]] < old[c["created"]]
    ):
        old[c["created"]] = new[c["created"]]
    if new[c["last_produced"]] is not None and (
        old[c["last_produced"]] is None or new[c["last_produced"]] >= old[c["last_produced"]]
    ):
        for key in ("last_produced", "last_task", "last_flow_run"):
            old[c[key]] = new[c[key]]
    if new[c["inputs"]]:
        old[c["inputs"]] = sorted(set(old[c["inputs"]]) | set(new[c["inputs"]]))
    if new[c["stored_bytes"]] is not None:
        old[c["stored_bytes"]] = new[c["stored_bytes"]]
    old[c["time"]] = max(old[c["time"]], new[c["time"]])


def _snap_key(generation: int) -> str:
    return f"{SNAP}/{generation:012d}.json.gz"


def _encode_snapshot(snap: CatalogSnapshot) -> bytes:
    raw = json.dumps(snap.to_dict(), separators=(",", ":")).encode()
    return gzip.compress(raw, compresslevel=1, mtime=0)


def _damaged(storage: Storage, key: str, exc: Exception) -> StoreError:
    return StoreError(
        f"The catalog object {key!r} of result store {storage.url!r} is damaged ({exc}). "
        "The results are not affected (the catalog is derived from them). To resolve: run "
        f"`cpr-zarr catalog rebuild {storage.url}`."
    )


def read(storage: Storage) -> Catalog | None:
    """The catalog now: the newest snapshot and the journal segments outside it.

    ``None`` if the store keeps no catalog (written before catalogs existed).

    Raises
    ------
    StoreError
        If a catalog object is damaged, or compactions kept removing what was listed.
    """
    if not enabled(storage):
        return None
    workers = worker_count(remote=storage.remote)
    fetched: dict[str, bytes | None] = {}  # segments are immutable: a retry reuses them
    for attempt in range(_ATTEMPTS):
        if attempt:
            time.sleep(random.uniform(0, 0.05 * attempt))  # compactors at work: let them finish
        # segments first: a segment removed before this listing is inside every snapshot
        # listed after it (see the module docstring)
        segments = sorted(n for n in storage.list_dir(LOG, fresh=True) if n.endswith(".json"))
        snaps = sorted(n for n in storage.list_dir(SNAP, fresh=True) if n.endswith(".json.gz"))
        if not snaps:
            raise _damaged(storage, SNAP, FileNotFoundError("no snapshot"))
        key = f"{SNAP}/{snaps[-1]}"
        raw = storage.get(key)
        if raw is None:
            continue  # removed by a newer compaction meanwhile: list again
        try:
            snap = CatalogSnapshot.from_dict(orjson.loads(gzip.decompress(raw)))
        except (OSError, ValueError, RecordError) as exc:
            raise _damaged(storage, key, exc) from exc
        catalog = Catalog.from_snapshot(snap)
        catalog.listed = segments
        todo = catalog.unmerged
        missing = [n for n in todo if fetched.get(n) is None]
        found = thread_map(lambda n: storage.get(f"{LOG}/{n}"), missing, workers)
        fetched.update(zip(missing, found, strict=True))
        blobs = [fetched[n] for n in todo]
        if any(b is None for b in blobs):
            continue  # removed by a compaction since listed: its snapshot holds it
        events: list[tuple[float, str, int, CatalogEvent]] = []
        for name, blob in zip(todo, blobs, strict=True):
            try:
                segment = CatalogSegment.from_dict(orjson.loads(blob or b""))
            except (ValueError, RecordError) as exc:
                logger.warning(
                    "Skipping a damaged catalog segment: %s", _damaged(storage, name, exc)
                )
                continue
            events += [(e.time, name, i, e) for i, e in enumerate(segment.events)]
        for *_, event in sorted(events, key=lambda item: item[:3]):
            catalog.apply(event)
        return catalog
    raise StoreError(
        f"Could not read the catalog of result store {storage.url!r}: it was compacted under "
        f"the reader {_ATTEMPTS} times in a row. Try again; if it persists, run "
        f"`cpr-zarr catalog rebuild {storage.url}`."
    )


# -- compaction -------------------------------------------------------------------------------


def maybe_compact(storage: Storage, catalog: Catalog | None = None) -> Catalog | None:
    """Compact if more than :data:`COMPACT_AFTER` segments are outside the snapshot and the
    store is writable; the catalog (as read, or as compacted)."""
    if storage.read_only:
        return catalog
    if catalog is None:
        if len(storage.list_dir(LOG, fresh=True)) <= COMPACT_AFTER:
            return None
        catalog = read(storage)
        if catalog is None:
            return None
    if len(catalog.unmerged) > COMPACT_AFTER:
        compact(storage, catalog)
    return catalog


def compact(storage: Storage, catalog: Catalog | None = None) -> bool:
    """Write the next snapshot and delete what it makes redundant; whether this call wrote it
    (another compactor of the same generation may win)."""
    catalog = catalog if catalog is not None else read(storage)
    if catalog is None:
        return False
    return write_snapshot(storage, catalog, catalog.listed, previous=catalog.merged)


def write_snapshot(
    storage: Storage, catalog: Catalog, merged: Iterable[str], previous: frozenset[str]
) -> bool:
    """Write ``catalog`` as snapshot ``generation + 1`` holding segments ``merged``, then delete
    the segments of ``previous`` (those the snapshot it was read from merged) and every older
    snapshot. Whether this call wrote it."""
    generation = catalog.generation + 1
    merged = list(merged)
    snap = catalog.snapshot(generation, merged)
    if not storage.set_if_not_exists(_snap_key(generation), _encode_snapshot(snap)):
        return False
    for name in sorted(previous & set(merged)):
        storage.delete(f"{LOG}/{name}")
    for name in storage.list_dir(SNAP, fresh=True):
        number = name.split(".", 1)[0]
        if number.isdigit() and int(number) < generation - 1:
            storage.delete(f"{SNAP}/{name}")
    return True


# -- rebuilding from the groups ---------------------------------------------------------------


def row_entry(row: dict[str, Any], now: float, inputs: Iterable[str] = ()) -> CatalogEntry:
    """The catalog entry of a listing row (:func:`cpr_zarr.core.inventory.result_row`) whose
    provenance records name ``inputs``."""

    def seconds(when: Any) -> float | None:
        return None if when is None else float(when.timestamp())

    return CatalogEntry(
        path=row["group_path"],
        kind=row["kind"],
        shape=tuple(row["shape"]),
        dtype=row["dtype"],
        chunks=tuple(row["chunks"]),
        stored_bytes=int(row["stored_bytes"]),
        records=int(row["records"]),
        created=seconds(row["created"]),
        last_produced=seconds(row["last_produced"]),
        last_task=row["last_task"],
        last_flow_run=row["last_flow_run"],
        inputs=tuple(sorted(set(inputs))),
        time=now,
    )


def note_row(storage: Storage, entry: CatalogEntry) -> None:
    """Journal a committed result read from its group (its whole row), and index it."""
    if not enabled(storage):
        return
    now = entry.time
    _append(storage, [CatalogEvent(op="put", path=entry.path, time=now, entry=entry)])
    content_hash = entry.path[-HASH_HEX_LENGTH:]
    storage.set_if_not_exists(index_key(content_hash, entry.path), entry.path.encode())


def rebuild(storage: Storage, scan: Callable[[], list[CatalogEntry]]) -> int:
    """Rebuild the catalog from the result groups: ``scan()`` gives the entry of every
    committed result (read after the journal is listed, so that every segment listed is
    older than what the groups say). Every result is indexed, then a snapshot of the next
    generation holds the rows, then the marker is written. The number of results.

    Concurrent saves and removals journal as usual: their segments are newer than the
    snapshot's and are applied on top of it.
    """
    storage.check_writable()
    segments = sorted(n for n in storage.list_dir(LOG, fresh=True) if n.endswith(".json"))
    entries = scan()
    workers = worker_count(remote=storage.remote)

    def index(entry: CatalogEntry) -> None:
        content_hash = entry.path[-HASH_HEX_LENGTH:]
        storage.set_if_not_exists(index_key(content_hash, entry.path), entry.path.encode())

    list(thread_map(index, entries, workers))
    state = Catalog(generation=-1, rows=Rows(rows={e.path: list(e.row()) for e in entries}))
    for _ in range(_ATTEMPTS):
        snaps = [n.split(".", 1)[0] for n in storage.list_dir(SNAP, fresh=True)]
        state.generation = max((int(n) for n in snaps if n.isdigit()), default=-1)
        if write_snapshot(storage, state, segments, previous=frozenset()):
            break
    else:
        raise StoreError(
            f"Could not write a catalog snapshot to result store {storage.url!r}: other "
            f"processes compacted it {_ATTEMPTS} times meanwhile. Run the rebuild again."
        )
    storage.set_if_not_exists(MARKER, to_json_bytes(catalog_marker()))
    with _ENABLED_LOCK:
        _ENABLED[storage] = True
    return len(entries)
