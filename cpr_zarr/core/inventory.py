"""What a store holds: listings, lineage, leftovers and garbage-collection plans.

Everything here reads the store alone (attributes and provenance records): no Prefect
server is needed, and a store written by flows elsewhere is inspected the same way.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import math
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cpr_zarr.core import catalog, journal
from cpr_zarr.core.integrity import is_leftover
from cpr_zarr.core.progress import track
from cpr_zarr.core.provenance import read_provenance
from cpr_zarr.model.layout import HASH_HEX_LENGTH
from cpr_zarr.target import ZarrTarget

logger = logging.getLogger("cpr_zarr")

if TYPE_CHECKING:
    import os
    from collections.abc import Sequence

    import pandas as pd

    from cpr_zarr.core.integrity import Damage
    from cpr_zarr.model.records import CatalogEntry
    from cpr_zarr.storage import Storage

__all__ = [
    "Removal",
    "leftovers",
    "lineage",
    "list_results",
    "parent_image",
    "plan_gc",
    "read_catalog",
    "referenced_hashes",
    "result_rows",
    "stored_bytes",
]

COLUMNS = [
    "name", "hash", "kind", "shape", "dtype", "chunks", "stored_bytes", "raw_bytes",
    "ratio", "created", "last_produced", "records", "last_task", "last_flow_run", "group_path",
]  # fmt: skip
_HASH_RE = re.compile(rb"[0-9a-f]{%d}" % HASH_HEX_LENGTH)


def stored_bytes(storage: Storage, prefix: str) -> int:
    """Bytes of every object under ``prefix`` (a group, a staging folder)."""
    return storage.size(prefix)


def _newest_mtime(storage: Storage, prefix: str) -> float:
    """Newest modification time under ``prefix``; now if unknown (never collected by age)."""
    try:
        return storage.newest_time(prefix)
    except Exception as exc:  # a listing failure must never make gc remove anything
        logger.warning("Cannot list %s in %s to age it: %s", prefix, storage.url, exc)
        return time.time()


def result_row(storage: Storage, target: ZarrTarget) -> dict[str, Any]:
    record = catalog.committed(storage, target.group_path)
    records = read_provenance(storage, target.group_path)
    stored = stored_bytes(storage, target.group_path)
    raw: int | None = None  # tables: columns of mixed, partly variable-width types
    if target.dtype != "table":
        raw = int(np.prod(target.shape, dtype=np.int64)) * np.dtype(target.dtype).itemsize
    last = records[-1] if records else None
    return {
        "name": target.name,
        "hash": target.content_hash,
        "kind": record.kind if record is not None else "array",
        "shape": target.shape,
        "dtype": target.dtype,
        "chunks": target.chunks,
        "stored_bytes": stored,
        "raw_bytes": raw,
        "ratio": raw / stored if raw is not None and stored else float("nan"),
        "created": records[0].created_at if records else None,
        "last_produced": last.created_at if last else None,
        "records": len(records),
        "last_task": last.task_name if last else None,
        "last_flow_run": last.flow_run_name if last else None,
        "group_path": target.group_path,
    }


def result_rows(
    storage: Storage, state: journal.Catalog | None = None
) -> tuple[list[dict[str, Any]], list[str]]:
    """One row per committed result (see ``COLUMNS``; plain dicts), oldest first, and the
    messages of the damaged results left out.

    Without pandas, whose import takes longer than listing a small store (``cpr-zarr ls``).
    """
    state = state if state is not None else read_catalog(storage)
    if state is not None:
        rows = catalog_rows(storage, state)
        rows.sort(key=_created_order)
        return rows, []  # damage is found by open and `cpr-zarr verify`, not by a listing
    found, damaged = catalog.scan(storage)
    listing = track(found, f"store {storage.url}", verb="listed", doing="listing", done="listed")
    rows = [result_row(storage, t) for t in listing]
    # as list_results sorts: no provenance record first, then by creation time and path
    rows.sort(key=_created_order)
    return rows, [d.message for d in damaged]


def _catalog_columns(storage: Storage, state: journal.Catalog) -> dict[str, list[Any]]:
    """The listing's columns from the catalog (no request per result): ``COLUMNS`` in order
    but ``ratio``, times in seconds (None: no record), raw bytes None for tables. What
    :func:`catalog_rows` and :func:`catalog_frame` share.

    An image's stored bytes include its label images' and tables', as a listing of its
    folder would.
    """
    (paths, kinds, shapes, dtypes, chunks, stored, records, created, last, tasks, flow_runs,
     _, _) = state.rows.columns()  # fmt: skip
    for i, nbytes in enumerate(stored):
        if nbytes is None:  # journalled by a save that did not count it (rare): count now
            stored[i] = stored_bytes(storage, paths[i])
    total = dict(zip(paths, stored, strict=True))
    for path, nbytes in zip(paths, stored, strict=True):
        image = parent_image(path)
        if image is not None and image in total:
            total[image] += nbytes
    itemsize = {d: np.dtype(d).itemsize for d in set(dtypes) if d != "table"}
    return {
        # <name>-<hash>, the last part of the path
        "name": [p[p.rfind("/") + 1 : -HASH_HEX_LENGTH - 1] for p in paths],
        "hash": [p[-HASH_HEX_LENGTH:] for p in paths],
        "kind": kinds,
        "shape": [tuple(s) for s in shapes],
        "dtype": dtypes,
        "chunks": [tuple(c) for c in chunks],
        "stored_bytes": [total[p] for p in paths],
        "raw_bytes": [
            None if d == "table" else math.prod(s) * itemsize[d]
            for s, d in zip(shapes, dtypes, strict=True)
        ],
        "created": created,
        "last_produced": last,
        "records": records,
        "last_task": tasks,
        "last_flow_run": flow_runs,
        "group_path": paths,
    }


def catalog_rows(storage: Storage, state: journal.Catalog) -> list[dict[str, Any]]:
    """The rows of :func:`result_rows` from the catalog (no request per result)."""

    def when(seconds: float | None) -> datetime | None:
        return None if seconds is None else datetime.fromtimestamp(seconds, UTC)

    rows = []
    for (name, content_hash, kind, shape, dtype, chunks, stored, raw, created, last, records,
         task, flow_run, path) in zip(*_catalog_columns(storage, state).values(), strict=True):  # fmt: skip
        rows.append(
            {
                "name": name,
                "hash": content_hash,
                "kind": kind,
                "shape": shape,
                "dtype": dtype,
                "chunks": chunks,
                "stored_bytes": stored,
                "raw_bytes": raw,
                "ratio": raw / stored if raw is not None and stored else float("nan"),
                "created": when(created),
                "last_produced": when(last),
                "records": records,
                "last_task": task,
                "last_flow_run": flow_run,
                "group_path": path,
            }
        )
    return rows


def _created_order(row: dict[str, Any]) -> tuple[bool, float, str]:
    created = row["created"]
    if created is None:
        return (False, 0.0, row["group_path"])
    if created.tzinfo is None:  # read as UTC, as pandas.to_datetime(utc=True) does
        created = created.replace(tzinfo=UTC)
    return (True, created.timestamp(), row["group_path"])


def catalog_frame(storage: Storage, state: journal.Catalog) -> pd.DataFrame:
    """The frame of :func:`list_results` from the catalog, built column by column: no dict
    and no datetime per row (a third of :func:`catalog_rows`' time at 100,000 rows)."""
    import pandas as pd

    columns = _catalog_columns(storage, state)
    paths = columns["group_path"]
    if not paths:
        return _frame([], [])
    raw = np.array([np.nan if r is None else r for r in columns["raw_bytes"]], dtype=np.float64)
    stored_total = np.array(columns["stored_bytes"], dtype=np.int64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(stored_total > 0, raw / stored_total, np.nan)

    def micros(seconds: Sequence[float | None]) -> np.ndarray:
        # whole microseconds, as datetime.fromtimestamp gives them (None: NaN)
        return np.round(np.array(seconds, dtype=np.float64) * 1e6)

    def times(us: np.ndarray) -> pd.Series:
        return pd.to_datetime(us, unit="us", utc=True).astype("datetime64[ns, UTC]")

    # the order of _frame's sort (no record first, then oldest, then by path), sorted here:
    # a third of sort_values' time at 100,000 rows
    created_us = micros(columns["created"])
    keys = created_us.tolist()

    def order_key(i: int) -> tuple[bool, float, str]:
        c = keys[i]
        return (False, 0.0, paths[i]) if math.isnan(c) else (True, c, paths[i])

    order = sorted(range(len(paths)), key=order_key)
    frame = pd.DataFrame(
        {
            **columns,
            "stored_bytes": stored_total,
            # float (NaN) only where tables have none, as _frame's
            "raw_bytes": raw if "table" in columns["dtype"] else raw.astype(np.int64),
            "ratio": ratio,
            "created": times(created_us),
            "last_produced": times(micros(columns["last_produced"])),
            "records": np.array(columns["records"], dtype=np.int64),
        },
        columns=COLUMNS,
    )
    frame = frame.take(order).reset_index(drop=True)
    frame.attrs["damaged"] = []
    return frame


def list_results(storage: Storage, state: journal.Catalog | None = None) -> pd.DataFrame:
    """One row per committed result (see ``COLUMNS``), oldest first; from ``state`` if given
    (a catalog just read)."""
    state = state if state is not None else read_catalog(storage)
    if state is not None:
        # damage is found by open and `cpr-zarr verify`, not by a listing
        return catalog_frame(storage, state)
    rows, damaged = result_rows(storage, state)
    for message in damaged:
        logger.warning("Skipping a damaged result: %s", message)
    return _frame(rows, damaged)


def _frame(rows: list[dict[str, Any]], damaged: list[str]) -> pd.DataFrame:
    """The frame of :func:`list_results` from rows of :func:`result_rows`."""
    import pandas as pd

    frame = pd.DataFrame(rows, columns=COLUMNS)
    for col in ("created", "last_produced"):
        frame[col] = pd.to_datetime(frame[col], utc=True)
    frame = frame.sort_values(["created", "group_path"], na_position="first")
    frame = frame.reset_index(drop=True)
    # damaged results are not rows: their records cannot be trusted (`cpr-zarr verify`)
    frame.attrs["damaged"] = damaged
    return frame


def lineage(storage: Storage, start: ZarrTarget) -> dict[str, list[ZarrTarget]]:
    """Results upstream (``inputs``) and downstream (``outputs``) of ``ref``, transitively.

    Edges come from provenance records: a record lists the content hashes of the inputs
    of the task run that produced the result.
    """
    state = read_catalog(storage)
    parents: dict[str, set[str]] = {}
    if state is not None:  # the inputs of every result are in its catalog row
        by_hash = {}
        for path, values in state.rows.items():
            target = ZarrTarget(
                store_url=storage.url,
                group_path=path,
                content_hash=path[-HASH_HEX_LENGTH:],
                shape=tuple(values[2]),
                dtype=values[3],
                chunks=tuple(values[4]),
            )
            by_hash[target.content_hash] = target
            parents[target.content_hash] = set(values[journal.INPUTS])
        for h in parents:
            parents[h] &= by_hash.keys()
    else:
        by_hash = {t.content_hash: t for t in catalog.scan(storage)[0]}
        parents = {h: set() for h in by_hash}
        for h, t in by_hash.items():
            for record in read_provenance(storage, t.group_path):
                parents[h].update(i for i in record.inputs if i in by_hash)
    children: dict[str, set[str]] = {h: set() for h in by_hash}
    for h, ps in parents.items():
        for p in ps:
            children[p].add(h)

    def walk(edges: dict[str, set[str]]) -> list[ZarrTarget]:
        seen: list[str] = []
        frontier = sorted(edges.get(start.content_hash, ()))
        while frontier:
            nxt = []
            for h in frontier:
                if h not in seen and h != start.content_hash:
                    seen.append(h)
                    nxt.extend(sorted(edges.get(h, ())))
            frontier = nxt
        return [by_hash[h] for h in seen]

    return {"inputs": walk(parents), "outputs": walk(children)}


@dataclass(frozen=True)
class Removal:
    """One entry a garbage collection removes."""

    path: str
    reason: str
    nbytes: int
    content_hash: str | None = None
    # results: the number of provenance records when planned; the collector skips a result
    # that gained one since (it was produced again while gc ran)
    stamp: str | None = None
    # images: the committed label images and tables inside, removed with it (their bytes
    # are counted in ``nbytes``), so that what goes is listed whole
    inside: tuple[str, ...] = ()


def gc_damage(storage: Storage, plan: list[Removal]) -> list[Damage]:
    """The damaged results a collection must keep (never removed: repaired or deleted by
    hand). With the catalog only the groups gc looks at are read, those it does not list
    and the results in ``plan``; without one, every group."""
    state = journal.read(storage)
    if state is None:
        return catalog.scan(storage)[1]
    unlisted = [path for path in catalog.candidate_paths(storage) if path not in state.rows]
    planned = [item.path for item in plan if item.content_hash is not None]
    return catalog.damaged_among(storage, unlisted + planned)


def leftovers(
    storage: Storage, min_age_seconds: float, state: journal.Catalog | None = None
) -> list[Removal]:
    """Staging folders and uncommitted groups whose newest file is older than the limit.

    With the catalog (``state``), only groups it does not list are looked at (one listing of
    the root, then two lookups per unlisted group), and label images only where the journal
    says a label save began and never committed; committed groups it lacks (a writer killed
    between commit and journal) are journalled again on the way, if the store is writable.
    """
    now = time.time()
    found = [(f"_staging/{entry}", "staging leftover") for entry in storage.list_dir("_staging")]
    # never committed: no marker and no record copy. A damaged marker still exists, so a
    # damaged result is never taken for a leftover (it is reported, see store.damaged())
    alive = state.rows if state is not None else {}
    unlisted = [path for path in catalog.candidate_paths(storage) if path not in alive]
    found += [
        (path, "incomplete (never committed)") for path in unlisted if is_leftover(storage, path)
    ]
    if state is None:
        found += label_leftovers(storage, {path for path, _ in found})
    else:
        leftover = {path for path, _ in found}
        missing = [path for path in unlisted if path not in leftover]
        missing += [p for p in state.pending if p not in alive and p not in leftover]
        restore_missing(storage, sorted(set(missing)), state)
        for path, since in sorted(state.pending.items()):
            if path in alive:
                continue
            if not storage.walk(path):  # never written, or removed: forget it
                if now - since >= min_age_seconds and not storage.read_only:
                    journal.note_removing(storage, path)
            elif path not in leftover and is_leftover(storage, path):
                what = "table" if "/tables/" in path else "label image"
                found.append((path, f"incomplete {what} (never committed)"))
    return [
        Removal(path, reason, stored_bytes(storage, path))
        for path, reason in found
        if now - _newest_mtime(storage, path) >= min_age_seconds
    ]


def read_catalog(storage: Storage) -> journal.Catalog | None:
    """The store's catalog as listings use it (``None`` without one): read, compacted when
    due (if writable), and with every committed result in it.

    A writer killed between its commit and its journal segment left only a ``pending``
    event: each pending path without a row has its commit marker checked (one GET; only
    killed and running saves are pending) and is added if committed, and journalled once
    the event is :data:`~cpr_zarr.core.journal.SETTLE_SECONDS` old (a younger one's writer
    may be journalling it).
    """
    state = journal.read(storage)
    if state is None:
        return None
    journal.maybe_compact(storage, state)
    settled = time.time() - journal.SETTLE_SECONDS
    pending = [(p, since) for p, since in sorted(state.pending.items()) if p not in state.rows]
    restore_missing(storage, [p for p, since in pending if since < settled], state)
    restore_missing(storage, [p for p, since in pending if since >= settled], state, note=False)
    return state


def restore_missing(
    storage: Storage, paths: list[str], state: journal.Catalog, *, note: bool = True
) -> None:
    """Add committed results the catalog lacks (their writer was killed between its commit
    and its journal segment) to ``state``, and with ``note`` journal them if the store is
    writable: the catalog's refresh, done by each gc plan and by listings."""
    for path in paths:
        record = catalog.committed(storage, path)
        if record is None:
            continue
        entry = catalog_entry(storage, catalog.target_for(storage, path, record))
        state.rows[path] = list(entry.row())
        state.pending.pop(path, None)
        if note and not storage.read_only:
            journal.note_row(storage, entry)
            logger.info("Added committed result %s to the catalog of %s.", path, storage.url)


def catalog_entry(storage: Storage, target: ZarrTarget) -> CatalogEntry:
    """The catalog entry of a committed result, read from its group (records included)."""
    inputs = [i for r in read_provenance(storage, target.group_path) for i in r.inputs]
    row = result_row(storage, target)
    row["stored_bytes"] = journal.own_bytes(storage, target.group_path)
    return journal.row_entry(row, time.time(), inputs)


def rebuild_catalog(storage: Storage) -> int:
    """Rebuild the store's catalog from its result groups (``cpr-zarr catalog rebuild``);
    the number of results. Damaged results are left out (``cpr-zarr verify`` reports them).

    Raises
    ------
    StoreError
        If the store is read-only, or compactions kept winning the snapshot's generation.
    """

    def scan() -> list[CatalogEntry]:
        found, damaged = catalog.scan(storage)
        for damage in damaged:
            logger.warning("Leaving a damaged result out of the catalog: %s", damage.message)
        listing = track(found, f"store {storage.url}", verb="read", doing="reading", done="read")
        return [catalog_entry(storage, t) for t in listing]

    return journal.rebuild(storage, scan)


def label_leftovers(storage: Storage, skip: set[str]) -> list[tuple[str, str]]:
    """Label and table groups a killed save left inside an image (no commit marker of their
    own). Images in ``skip`` (removed whole as leftovers) are not looked into.
    """
    from cpr_zarr.core.integrity import is_leftover
    from cpr_zarr.model.layout import parse_group_path

    out = []
    for image in catalog.candidate_paths(storage):
        if image in skip:
            continue
        for folder, what in (("labels", "label image"), ("tables", "table")):
            for entry in sorted(storage.list_dir(f"{image}/{folder}")):
                path = f"{image}/{folder}/{entry}"
                # never committed: no marker and no record copy (a damaged one is not a leftover)
                if parse_group_path(path) is not None and is_leftover(storage, path):
                    out.append((path, f"incomplete {what} (never committed)"))
    return out


def parent_image(path: str) -> str | None:
    """The image a label image or table is stored in (``<image>/labels|tables/<name>``)."""
    for folder in ("/labels/", "/tables/"):
        if folder in path:
            return path.split(folder)[0]
    return None


def referenced_hashes(result_storage: str | os.PathLike[str]) -> set[str]:
    """Content hashes of the results that Prefect records in a result-storage folder point to.

    Reads JSON records (``cpr_zarr.task``) and pickled ones (plain tasks returning a
    ``ZarrTarget``: the hash is plain text inside the pickle), without unpickling anything.
    """
    root = Path(result_storage)
    if not root.is_dir():
        raise FileNotFoundError(
            f"Result storage {str(root)!r} is not a folder. Pass the folder Prefect writes "
            "result records to (PREFECT_LOCAL_STORAGE_PATH, default ~/.prefect/storage)."
        )
    found: set[str] = set()
    for path in root.rglob("*"):
        if not path.is_file():
            continue
        try:
            raw = path.read_bytes()
        except OSError:
            continue
        found.update(m.decode() for m in _HASH_RE.findall(raw))
        try:
            payload = json.loads(raw).get("result")
        except (ValueError, AttributeError):
            continue
        if isinstance(payload, str):
            # Prefect's pickle records hold base64 with a line break every 76 characters
            with contextlib.suppress(ValueError):
                decoded = base64.b64decode("".join(payload.split()), validate=True)
                found.update(m.decode() for m in _HASH_RE.findall(decoded))
    return found


def plan_gc(
    storage: Storage,
    *,
    older_than: float | None = None,
    max_size: int | None = None,
    keep_referenced: str | os.PathLike[str] | None = None,
    leftover_age: float = 3600.0,
    grace: float = 3600.0,
) -> list[Removal]:
    """What a garbage collection removes (nothing is removed here).

    * leftovers (staging, uncommitted groups) older than ``leftover_age`` seconds, always;
    * with ``keep_referenced``: results referenced by a record there are never removed, and
      with no other criterion every unreferenced result is; results produced less than
      ``grace`` seconds ago are kept too (their task may have returned them and not yet
      written its Prefect record);
    * ``older_than`` seconds: results last produced longer ago than that;
    * ``max_size`` bytes: least recently produced results until the rest fits.
    """
    import pandas as pd

    # leftovers always wait leftover_age: a running streaming save may not touch its staging
    # folder for a while, and removing it under the writer would corrupt its result
    state = journal.read(storage)
    plan = leftovers(storage, leftover_age, state)
    if state is not None:
        journal.maybe_compact(storage, state)
    frame = list_results(storage, state)
    protected: set[str] = set()
    if keep_referenced is not None:
        protected = referenced_hashes(keep_referenced) | recent_hashes(storage, frame, grace)
    # an image holding a protected label image or table is protected too (deleting it
    # deletes them)
    paths = dict(zip(frame["hash"], frame["group_path"], strict=True))
    parent_of = {h: parent for h, p in paths.items() if (parent := parent_image(p)) is not None}
    path_to_hash = {p: h for h, p in paths.items()}
    protected |= {
        path_to_hash[parent_of[h]]
        for h in protected
        if h in parent_of and parent_of[h] in path_to_hash
    }
    candidates = frame[~frame["hash"].isin(protected)]
    chosen: dict[str, str] = {}
    now = datetime.now(UTC)
    if keep_referenced is not None and older_than is None and max_size is None:
        chosen.update(dict.fromkeys(candidates["hash"], "not referenced by any record"))
    if older_than is not None:
        # no provenance record (e.g. just committed): age unknown, never removed by age
        last = candidates["last_produced"]
        age = (pd.Timestamp(now) - last).dt.total_seconds()
        old = candidates.loc[last.notna() & (age > older_than), "hash"]
        for h in old:
            chosen.setdefault(h, "older than the limit")
    if max_size is not None:
        kept = frame[~frame["hash"].isin(chosen)]
        recent_first = kept.sort_values("last_produced", ascending=False, na_position="last")
        total = recent_first["stored_bytes"].astype("int64").cumsum()
        over = recent_first.loc[(total > max_size) & ~recent_first["hash"].isin(protected), "hash"]
        for h in over:
            chosen.setdefault(h, "least recently produced beyond the size budget")
    nbytes = dict(zip(frame["hash"], frame["stored_bytes"], strict=True))
    records = dict(zip(frame["hash"], frame["records"], strict=True))
    chosen_paths = {paths[h] for h in chosen}
    for h in [h for h in chosen if h in parent_of and parent_of[h] in chosen_paths]:
        del chosen[h]  # removed with its image
    children: dict[str, list[str]] = {}
    for c, p in parent_of.items():
        children.setdefault(p, []).append(paths[c])
    for h, reason in chosen.items():
        path = str(paths[h])
        plan.append(
            Removal(
                path,
                reason,
                int(nbytes[h]),
                h,
                stamp=str(int(records[h])),
                inside=tuple(sorted(children.get(path, ()))),
            )
        )
    return plan


def recent_hashes(storage: Storage, frame: pd.DataFrame, grace: float) -> set[str]:
    """Results last produced (or, without a record, last written) less than ``grace`` ago."""
    now = time.time()
    recent = set()
    for _, row in frame.iterrows():
        last = row["last_produced"]
        if last is None or last != last:  # no provenance record: the group's own age
            when = _newest_mtime(storage, row["group_path"])
        else:
            when = last.timestamp()
        if now - when < grace:
            recent.add(row["hash"])
    return recent
