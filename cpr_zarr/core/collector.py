"""Removing what a garbage-collection plan names, safely against live writers.

:func:`cpr_zarr.core.inventory.plan_gc` decides; this module removes, one entry at a time, with
the collection half of the protocol in :mod:`cpr_zarr.core.lease`:

1. *check*: list the folder (every object with its size and modification time). A leftover
   is skipped if it now has a group ``zarr.json`` (committed meanwhile, or a damaged marker)
   or if its newest object is younger than the age limit (a live writer's lease is
   refreshed far more often); a result is skipped if it gained a provenance record since
   it was planned (it was produced again);
2. *claim*: write ``<folder>/.lease/gc-<uuid>``;
3. *verify*: list the folder again; if anything changed since step 1 (a writer's lease, a
   record, a chunk, the commit marker), drop the claim and skip;
4. *remove*: on local disk one atomic ``rename`` into ``_staging/.gc-<uuid>`` (writers
   that were waiting start on an empty path), then delete that; on object stores the record
   copy, then the commit marker, then every other object, the claim last.

A writer writes its lease *before* looking for claims and the collection writes its claim
*before* its second listing, so a removal never overlaps a write (see :mod:`cpr_zarr.core.lease`).
Entries another process removed first are reported as already gone, never as errors.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from zarr.core.sync import sync

from cpr_zarr.core.integrity import RECORD_COPY
from cpr_zarr.core.lease import (
    CLAIM_PREFIX,
    LEASE_DIR,
    checkpoint,
    fresh_list_dir,
    put,
    put_claim,
    remove,
)
from cpr_zarr.errors import StoreError

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from cpr_zarr.core.inventory import Removal
    from cpr_zarr.store import ResultStore

__all__ = ["Outcome", "collect", "delete_group", "snapshot"]

logger = logging.getLogger("cpr_zarr")

REMOVED = "removed"
GONE = "already removed (by another process)"


@dataclass(frozen=True)
class Outcome:
    """What happened to one planned removal: ``removed``, ``already removed ...`` or a skip."""

    removal: Removal
    status: str

    @property
    def removed(self) -> bool:
        return self.status == REMOVED


@dataclass(frozen=True)
class Snapshot:
    """Every object below a folder (collection claims excluded), with size and mtime."""

    entries: frozenset[tuple[str, int, float]]
    # local folders only: ages an empty folder; changes with any entry, so not compared
    folder_mtime: float | None = field(default=None, compare=False)

    @property
    def exists(self) -> bool:
        return bool(self.entries) or self.folder_mtime is not None

    @property
    def newest(self) -> float:
        """The newest object's time; for a folder without objects, the newest folder's."""
        times = [t for k, _, t in self.entries if not k.endswith("/")]
        if not times:
            times = [t for _, _, t in self.entries]
            if self.folder_mtime is not None:
                times.append(self.folder_mtime)
        return max(times) if times else time.time()

    def has(self, key: str) -> bool:
        return any(k == key for k, _, _ in self.entries)


def _is_claim(rel: str) -> bool:
    return rel.startswith(f"{LEASE_DIR}/{CLAIM_PREFIX}")


def snapshot(store: ResultStore, path: str) -> Snapshot:
    """List folder ``path`` with sizes and modification times (one listing)."""
    entries: set[tuple[str, int, float]] = set()
    if store._local_path is not None:
        root = store._local_path / path
        try:
            folder_mtime: float | None = os.stat(root).st_mtime
        except FileNotFoundError:
            return Snapshot(frozenset(), None)
        for dirpath, dirnames, files in os.walk(root):
            rel_dir = os.path.relpath(dirpath, root)
            for name in [*files, *dirnames]:
                rel = name if rel_dir == "." else f"{rel_dir}/{name}"
                if _is_claim(rel) or rel == LEASE_DIR:  # claims come and go by design
                    continue
                try:
                    st = os.stat(os.path.join(dirpath, name))
                except FileNotFoundError:
                    continue
                is_dir = name in dirnames
                entries.add((rel + "/" * is_dir, 0 if is_dir else st.st_size, st.st_mtime))
        return Snapshot(frozenset(entries), folder_mtime)
    zstore: Any = store._zstore
    base = f"{zstore.path.rstrip('/')}/{path}"
    found = sync(zstore.fs._find(base, detail=True))
    for full, info in found.items():
        rel = full[len(base) :].lstrip("/")
        if not rel or _is_claim(rel):
            continue
        entries.add((rel, int(info.get("size") or 0), _mtime(info)))
    return Snapshot(frozenset(entries), None)


def _mtime(info: dict[str, Any]) -> float:
    from cpr_zarr.core.inventory import info_time

    value = info_time(info)
    return value if value is not None else time.time()


def _record_count(store: ResultStore, path: str) -> str:
    from cpr_zarr.core.provenance import PROVENANCE, read_records

    fresh_list_dir(store, f"{path}/{PROVENANCE}")  # drops a cached listing of the records
    return str(len(read_records(store, path)))


def _not_writable(store: ResultStore, path: str, exc: BaseException) -> StoreError:
    return StoreError(
        f"Cannot remove {path!r} from store {store.url!r}: the store is not writable "
        f"({type(exc).__name__}: {exc}). Removing results and leftovers needs write access: "
        "1. run it where the store is mounted read-write, as a user allowed to write it; "
        "2. or, for S3, with credentials allowed to PUT and DELETE; "
        "3. `cpr-zarr gc` without --yes only reads (a dry run)."
    )


def collect(
    store: ResultStore, plan: Iterable[Removal], *, leftover_age: float
) -> Iterator[Outcome]:
    """Remove each entry of ``plan`` that is still what it was when planned (module doc).

    Raises
    ------
    StoreError
        If the store cannot be written (read-only file system, no permission); entries
        before it were handled, none after it.
    """
    for removal in plan:
        yield Outcome(removal, _remove_one(store, removal, leftover_age=leftover_age))


def _remove_one(store: ResultStore, removal: Removal, *, leftover_age: float) -> str:
    path = removal.path
    checkpoint("gc.start")
    first = snapshot(store, path)
    if not first.exists:
        return GONE
    if removal.content_hash is None:
        if first.has("zarr.json"):
            return (
                "skipped: it has a group zarr.json now (committed meanwhile, or a damaged "
                "marker that `cpr-zarr verify` reports)"
            )
        age = time.time() - first.newest
        if age < leftover_age:
            return f"skipped: written {age:.0f} s ago, a writer is using it"
    else:
        if store._committed_attrs(path) is None:
            return GONE
        if removal.stamp is not None and _record_count(store, path) != removal.stamp:
            return "skipped: produced again since the plan was made"
    checkpoint("gc.checked")
    claim = f"{path}/{LEASE_DIR}/{CLAIM_PREFIX}{uuid.uuid4().hex}"
    try:
        put_claim(store, path, claim)
    except FileNotFoundError:
        return GONE
    except OSError as exc:
        raise _not_writable(store, path, exc) from exc
    try:
        checkpoint("gc.claimed")
        if snapshot(store, path) != first:
            return "skipped: it changed while being collected, a writer is using it"
        checkpoint("gc.verified")
        status = _remove_claimed(store, path, claim)
        checkpoint("gc.removed")
        return status
    finally:  # never leave a claim behind (interrupted, failed or done): writers wait on it
        remove(store, claim)


def _remove_claimed(store: ResultStore, path: str, claim: str) -> str:
    """Remove folder ``path`` that holds our ``claim`` (step 4 of the module doc)."""
    if store._local_path is not None:
        trash = store._local_path / "_staging" / f".gc-{uuid.uuid4().hex}"
        try:
            trash.parent.mkdir(exist_ok=True)
            os.rename(store._local_path / path, trash)
        except FileNotFoundError:
            return GONE
        except OSError as exc:
            raise _not_writable(store, path, exc) from exc
        # from here the folder is out of every writer's way; a failure leaves a leftover
        shutil.rmtree(trash, ignore_errors=True)
        with contextlib.suppress(OSError):  # not empty (a save is staging), or gone
            trash.parent.rmdir()  # an empty _staging/ makes plain zarr warn about the root
    else:
        zstore: Any = store._zstore
        base = f"{zstore.path.rstrip('/')}/{path}"
        try:
            # the record copy, then the marker: readers stop seeing a result first, and a
            # removal stopped halfway leaves a plain leftover, not a damaged result
            sync(zstore.delete(f"{path}/{RECORD_COPY}"))
            sync(zstore.delete(f"{path}/zarr.json"))
            keys = [
                k for k in sync(zstore.fs._find(base)) if not _is_claim(k[len(base) :].lstrip("/"))
            ]
            for start in range(0, len(keys), 1000):
                with contextlib.suppress(FileNotFoundError):  # another gc was faster
                    sync(zstore.fs._rm(keys[start : start + 1000]))
                put(store, claim)  # refresh: waiting writers know we are alive
        except OSError as exc:
            raise _not_writable(store, path, exc) from exc
    if "/labels/" in path:  # keep the image's list of label images true
        from cpr_zarr.core.labels import update_labels_list

        update_labels_list(store, path.split("/labels/")[0])
    store._readers.pop(path, None)
    return REMOVED


def delete_group(store: ResultStore, path: str) -> None:
    """Remove committed result ``path`` at once (``ResultStore.delete``): claim, then remove.

    The claim makes a save that reuses this result at the same moment wait and save it again
    rather than return a target that is being deleted.

    Raises
    ------
    StoreError
        If the store cannot be written.
    """
    claim = f"{path}/{LEASE_DIR}/{CLAIM_PREFIX}{uuid.uuid4().hex}"
    try:
        put_claim(store, path, claim)
    except FileNotFoundError:
        return  # removed by another process meanwhile
    except OSError as exc:
        raise _not_writable(store, path, exc) from exc
    try:
        _remove_claimed(store, path, claim)
    finally:
        remove(store, claim)
