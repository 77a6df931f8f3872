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

import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cpr_zarr.core import catalog, journal
from cpr_zarr.core.integrity import RECORD_COPIES
from cpr_zarr.core.lease import (
    CLAIM_PREFIX,
    LEASE_DIR,
    checkpoint,
    fresh_list_dir,
    put,
    put_claim,
    remove,
)
from cpr_zarr.core.reader import forget_reader
from cpr_zarr.errors import IntegrityError, StoreError
from cpr_zarr.model.layout import parse_group_path

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from cpr_zarr.core.inventory import Removal
    from cpr_zarr.storage import Storage

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


TRASH_PARENT = "_staging"  # where local removals rename a folder before removing it


def _is_claim(rel: str) -> bool:
    return rel.startswith(f"{LEASE_DIR}/{CLAIM_PREFIX}")


def snapshot(storage: Storage, path: str) -> Snapshot:
    """List folder ``path`` with sizes and modification times (one listing)."""
    entries = storage.walk(path, folders=True)
    if not entries:
        return Snapshot(frozenset(), None)
    folder_mtime = next((e.mtime for e in entries if e.key == ""), None)
    found = frozenset(
        (e.key, e.size, e.mtime if e.mtime is not None else time.time())
        for e in entries
        if e.key and not _is_claim(e.key) and e.key.rstrip("/") != LEASE_DIR
    )  # claims come and go by design
    return Snapshot(found, folder_mtime)


def _record_count(storage: Storage, path: str) -> str:
    from cpr_zarr.core.provenance import PROVENANCE_DIRS, read_records

    for folder in PROVENANCE_DIRS:  # drops a cached listing of the records
        fresh_list_dir(storage, f"{path}/{folder}")
    return str(len(read_records(storage, path)))


def _not_writable(storage: Storage, path: str, exc: BaseException) -> StoreError:
    return StoreError(
        f"Cannot remove {path!r} from store {storage.url!r}: the store is not writable "
        f"({type(exc).__name__}: {exc}). Removing results and leftovers needs write access: "
        "1. run it where the store is mounted read-write, as a user allowed to write it; "
        "2. or, for S3, with credentials allowed to PUT and DELETE; "
        "3. `cpr-zarr gc` without --yes only reads (a dry run)."
    )


def collect(storage: Storage, plan: Iterable[Removal], *, leftover_age: float) -> Iterator[Outcome]:
    """Remove each entry of ``plan`` that is still what it was when planned (module doc).

    Raises
    ------
    StoreError
        If the store cannot be written (read-only file system, no permission); entries
        before it were handled, none after it.
    """
    for removal in plan:
        yield Outcome(removal, _remove_one(storage, removal, leftover_age=leftover_age))


def _remove_one(storage: Storage, removal: Removal, *, leftover_age: float) -> str:
    path = removal.path
    checkpoint("gc.start")
    first = snapshot(storage, path)
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
        try:
            if catalog.committed_or_raise(storage, path) is None:
                return GONE
        except IntegrityError:
            return (
                "kept: its commit record is damaged; repair it (`cpr-zarr verify --repair`) "
                "or remove it by hand (`cpr-zarr rm`)"
            )
        if removal.stamp is not None and _record_count(storage, path) != removal.stamp:
            return "skipped: produced again since the plan was made"
    checkpoint("gc.checked")
    claim = f"{path}/{LEASE_DIR}/{CLAIM_PREFIX}{uuid.uuid4().hex}"
    try:
        put_claim(storage, path, claim)
    except FileNotFoundError:
        return GONE
    except OSError as exc:
        raise _not_writable(storage, path, exc) from exc
    try:
        checkpoint("gc.claimed")
        if snapshot(storage, path) != first:
            return "skipped: it changed while being collected, a writer is using it"
        checkpoint("gc.verified")
        status = _remove_claimed(storage, path, claim)
        checkpoint("gc.removed")
        return status
    finally:  # never leave a claim behind (interrupted, failed or done): writers wait on it
        remove(storage, claim)


def _remove_claimed(storage: Storage, path: str, claim: str) -> str:
    """Remove folder ``path`` that holds our ``claim`` (step 4 of the module doc)."""
    try:
        if parse_group_path(path) is not None:
            # before anything goes: a crash from here on never leaves it listed
            journal.note_removing(storage, path)
        # local disk: one rename into a trash folder takes it out of every writer's way,
        # then it is removed (a failure leaves a leftover). Object stores: the record copy,
        # then the marker, so that readers stop seeing a result first and a removal stopped
        # halfway leaves a plain leftover, not a damaged result; then the rest, refreshing
        # our claim after each batch so that waiting writers know we are alive.
        present = storage.delete_tree(
            path,
            first=(*RECORD_COPIES, "zarr.json"),
            keep=_is_claim,
            trash=f"{TRASH_PARENT}/.gc-{uuid.uuid4().hex}",
            on_batch=lambda: put(storage, claim),
        )
    except OSError as exc:
        raise _not_writable(storage, path, exc) from exc
    # an empty _staging/ makes plain zarr warn about the root (not empty: a save is staging)
    storage.remove_empty_folder(TRASH_PARENT)
    journal.note_removed(storage, path)
    if not present:
        return GONE
    if "/labels/" in path:  # keep the image's list of label images true
        from cpr_zarr.core.labels import update_labels_list

        update_labels_list(storage, path.split("/labels/")[0])
    if "/tables/" in path:  # and of its tables
        from cpr_zarr.core.table import update_tables_list

        update_tables_list(storage, path.split("/tables/")[0])
    forget_reader(storage, path)
    return REMOVED


def delete_group(storage: Storage, path: str) -> None:
    """Remove committed result ``path`` at once (``Storage.delete``): claim, then remove.

    The claim makes a save that reuses this result at the same moment wait and save it again
    rather than return a target that is being deleted.

    Raises
    ------
    StoreError
        If the store cannot be written.
    """
    claim = f"{path}/{LEASE_DIR}/{CLAIM_PREFIX}{uuid.uuid4().hex}"
    try:
        put_claim(storage, path, claim)
    except FileNotFoundError:
        return  # removed by another process meanwhile
    except OSError as exc:
        raise _not_writable(storage, path, exc) from exc
    try:
        _remove_claimed(storage, path, claim)
    finally:
        remove(storage, claim)
