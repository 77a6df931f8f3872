"""Leases and claims: how writers and garbage collection keep out of each other's way.

Every folder a save writes into (``<name>-<hash>/``, ``_staging/<name>-<uuid>/``, a label
group) gets a *writer lease* first, and a collection that is about to remove a folder puts a
*claim* in it first; both are small objects under ``<folder>/.lease/``::

    <folder>/.lease/writer-<uuid>     a live writer (rewritten every REFRESH_SECONDS)
    <folder>/.lease/gc-<uuid>         a collection removing the folder

The protocol is two flags read after being written (Dekker's), which needs only that a write
is visible to a later listing (true on local disk and on S3, strongly consistent):

* a writer writes its lease, *then* lists the claims; if there is one it waits until the
  claims are gone (the collection gave up, or removed the folder) and starts again;
* a collection writes its claim, *then* lists the folder again and removes it only if
  nothing changed since it decided (no new lease, record, chunk or commit marker).

So at least one of the two sees the other: either the collection backs off, or the writer
waits and then works on a folder that is complete or gone, never on one being removed. A
save that reuses a committed result writes its provenance record (its flag), then checks
for claims and for the commit marker, and saves again if the result went meanwhile.

The lease is refreshed while the save runs, so a folder whose newest object is older than
the collection's age limit (an hour by default, far above REFRESH_SECONDS) has no live
writer. Tests pause the real code between steps with :func:`set_checkpoint_hook`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

    from cpr_zarr.storage import Storage

__all__ = [
    "CLAIM_PREFIX",
    "LEASE_DIR",
    "REFRESH_SECONDS",
    "WRITER_PREFIX",
    "Lease",
    "checkpoint",
    "claims",
    "fresh_list_dir",
    "put",
    "put_claim",
    "remove",
    "set_checkpoint_hook",
    "wait_unclaimed",
]

logger = logging.getLogger("cpr_zarr")

LEASE_DIR = ".lease"
WRITER_PREFIX = "writer-"
CLAIM_PREFIX = "gc-"
REFRESH_SECONDS = 60.0
# a claim nobody refreshed for this long belongs to a collection that died mid-way
CLAIM_STALE_SECONDS = 900.0
POLL_SECONDS = 0.02

_hook: Callable[[str], None] | None = None


def set_checkpoint_hook(hook: Callable[[str], None] | None) -> None:
    """Call ``hook(step)`` at every step of the save and collection protocols (tests)."""
    global _hook
    _hook = hook


def checkpoint(step: str) -> None:
    """A named step of the protocol (``"save.leased"``, ``"gc.claimed"``, ...)."""
    hook = _hook
    if hook is not None:
        hook(step)


def _stamp() -> bytes:
    return json.dumps({"host": platform.node(), "pid": os.getpid(), "time": time.time()}).encode()


def put(storage: Storage, key: str) -> None:
    """Write a writer's lease (its modification time is what counts), creating its folder.

    On local disk a collection may remove an empty ``.lease`` folder between our creating
    it and writing into it: that is retried.
    """

    for attempt in range(5):
        try:
            storage.set(key, _stamp())
            return
        except FileNotFoundError:
            if attempt == 4:
                raise


def put_claim(storage: Storage, path: str, key: str) -> None:
    """Write a collection's claim ``key`` into folder ``path``, never creating ``path``.

    Raises
    ------
    FileNotFoundError
        If the folder is gone (another collection removed it first).
    """
    storage.set_in_folder(key, _stamp(), path)  # removed stays removed


def remove(storage: Storage, key: str) -> None:
    """Delete a lease or claim object; a missing one is fine. On local disk the ``.lease``
    folder goes too once empty (a writer putting a lease there meanwhile retries)."""

    storage.delete(key)
    # not empty (another lease or claim) or gone: stays
    storage.remove_empty_folder(key.rsplit("/", 1)[0])


def fresh_list_dir(storage: Storage, prefix: str) -> list[str]:
    """``store._list_dir(prefix)`` as it is now: fsspec caches listings per process, and
    another process's lease, claim or record must be seen."""
    return storage.list_dir(prefix, fresh=True)


def claims(storage: Storage, path: str) -> list[str]:
    """The collection claims present in folder ``path``."""
    entries = fresh_list_dir(storage, f"{path}/{LEASE_DIR}")
    return sorted(entry for entry in entries if entry.startswith(CLAIM_PREFIX))


def wait_unclaimed(storage: Storage, path: str) -> bool:
    """Wait until folder ``path`` holds no claim; whether there was one.

    A claim that stays unchanged for ``CLAIM_STALE_SECONDS`` is left by a collection that
    died: it is removed and the writer goes on (the folder is then a plain leftover).
    """
    seen: list[str] = []
    since = time.monotonic()
    waited = False
    while True:
        found = claims(storage, path)
        if not found:
            return waited
        waited = True
        checkpoint("save.waiting")
        if found != seen:
            seen, since = found, time.monotonic()
        elif time.monotonic() - since > CLAIM_STALE_SECONDS:
            logger.warning(
                "Removing stale garbage-collection claims %s in %s of store %s (unchanged "
                "for %.0f s: the collection that wrote them stopped).",
                found,
                path,
                storage.url,
                CLAIM_STALE_SECONDS,
            )
            for entry in found:
                remove(storage, f"{path}/{LEASE_DIR}/{entry}")
        time.sleep(POLL_SECONDS)


class Lease:
    """A writer's lease on folder ``path``: acquire before writing, release after committing.

    Use it as a context manager. While held it is rewritten every ``REFRESH_SECONDS`` by the
    process's lease refresher (one daemon thread for all leases: a thread per lease cost
    more than a whole small save), so the folder never looks abandoned to a collection.
    """

    def __init__(self, storage: Storage, path: str) -> None:
        self.storage = storage
        self.path = path
        self.key = f"{path}/{LEASE_DIR}/{WRITER_PREFIX}{uuid.uuid4().hex}"
        self._lock = threading.Lock()  # a refresh and the release never overlap
        self._held = False
        self.due = 0.0  # when the refresher rewrites it next (time.monotonic)

    def acquire(self) -> None:
        """Write the lease, then wait out any collection claiming the folder (see module doc)."""
        while True:
            put(self.storage, self.key)
            if not wait_unclaimed(self.storage, self.path):
                break
            # a collection held the folder: it gave up or removed it (our lease with it)
        checkpoint("save.leased")
        self._held = True
        _refresher.add(self)

    def refresh(self) -> None:
        """Rewrite the lease now, unless it was released (never after its removal)."""
        with self._lock:
            if not self._held:
                return
            try:
                put(self.storage, self.key)
            except Exception as exc:  # the save itself reports storage failures
                logger.warning(
                    "Could not refresh the lease %s in %s: %s", self.key, self.storage.url, exc
                )

    def release(self) -> None:
        """Stop refreshing and delete the lease (a failure only leaves a small object)."""
        with self._lock:  # waits for a refresh under way: none can follow the removal
            self._held = False
        _refresher.discard(self)
        with contextlib.suppress(OSError):  # read-only now: a small object stays behind
            remove(self.storage, self.key)

    def __enter__(self) -> Lease:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


class _Refresher:
    """The one thread of a process that rewrites its held leases every ``REFRESH_SECONDS``.

    Started with the first lease (again in a forked child, which has no threads and starts
    from a fresh refresher), and idle while no lease is held.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._wake = threading.Condition()
        self._leases: dict[int, Lease] = {}
        self._thread: threading.Thread | None = None
        self._wakes_at = 0.0  # when the thread wakes up next (time.monotonic)

    def add(self, lease: Lease) -> None:
        with self._wake:
            lease.due = time.monotonic() + REFRESH_SECONDS
            self._leases[id(lease)] = lease
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="cpr-zarr-lease-refresher", daemon=True
                )
                self._thread.start()
            elif lease.due < self._wakes_at:  # it sleeps longer than this lease can wait
                self._wake.notify()

    def discard(self, lease: Lease) -> None:
        with self._wake:
            self._leases.pop(id(lease), None)

    def _run(self) -> None:
        while True:
            with self._wake:
                now = time.monotonic()
                due = [lease for lease in self._leases.values() if lease.due <= now]
                for lease in due:
                    lease.due = now + REFRESH_SECONDS
                if not due:
                    nearest = min((lease.due for lease in self._leases.values()), default=None)
                    self._wakes_at = now + REFRESH_SECONDS if nearest is None else nearest
                    self._wake.wait(self._wakes_at - now)
                    continue
            for lease in due:  # outside the lock: saves keep taking and releasing leases
                lease.refresh()


_refresher = _Refresher()
if hasattr(os, "register_at_fork"):  # a lock held by a parent's thread stays held in a child
    os.register_at_fork(after_in_child=_refresher.reset)
