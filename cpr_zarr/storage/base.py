"""The storage interface: the few primitives cpr_zarr needs from a store location.

Everything above this layer (:mod:`cpr_zarr.core`, :class:`cpr_zarr.ResultStore`) talks to a
:class:`Storage` and never asks whether it holds a local folder or an object store; the
implementations (:mod:`cpr_zarr.storage._local`, :mod:`cpr_zarr.storage._fsspec`,
:mod:`cpr_zarr.storage._obstore`) are the only code that knows. The shape follows
zarr-python's ``abc.store.Store`` and fsspec: a handful of primitives per backend, the rest
(JSON documents, sizes, ages, counts) derived here once.

Keys are ``/``-separated paths relative to the store root, as zarr uses them.
"""

from __future__ import annotations

import abc
import json
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cpr_zarr.errors import StoreError

if TYPE_CHECKING:
    from collections.abc import Callable

    from zarr.abc.store import Store

__all__ = [
    "Entry",
    "Storage",
    "describe_error",
    "register",
    "registered",
    "reopen_named",
    "to_json_bytes",
]

# the storages this process opened, by URL: unpickling a pointer, a reader or a storage in
# the same process finds the instance (with its credentials) instead of opening another
_OPENED: dict[str, Storage] = {}
_OPENED_LOCK = threading.Lock()


def registered(url: str, *, read_only: bool) -> Storage | None:
    """The storage this process opened for ``url`` (a writable one serves reads too)."""
    with _OPENED_LOCK:
        found = _OPENED.get(url)
    if found is not None and (read_only or not found.read_only):
        return found
    return None


def register(storage: Storage) -> None:
    """Remember ``storage`` for :func:`registered` (a writable one replaces a read-only one)."""
    with _OPENED_LOCK:
        if not storage.read_only or storage.url not in _OPENED:
            _OPENED[storage.url] = storage


def reopen_named(url: str, read_only: bool) -> Storage:
    """The storage a ``zarrstore://`` name stands for, in the process that opened it
    (:mod:`cpr_zarr.storage._zarrstore` names zarr ``Store`` instances without a URL).

    Raises
    ------
    StoreError
        In any other process: the name stands for a Python object there is no way to
        re-open elsewhere.
    """
    found = registered(url, read_only=read_only)
    if found is not None:
        return found
    raise StoreError(
        f"Result store {url!r} is a zarr Store instance that was passed to ResultStore in "
        "another process (or one that has ended); it cannot be re-opened here. To resolve: "
        "1. give ResultStore a URL or folder path instead (e.g. 's3://bucket/results.zarr'), "
        "or a zarr LocalStore, FsspecStore or ObjectStore over S3/GCS, which are named by "
        "their URL; 2. or read the result in the process that opened the store."
    )


@dataclass(frozen=True, slots=True)
class Entry:
    """One object (or, on local disk, one folder) under a prefix, from :meth:`Storage.walk`."""

    key: str  # relative to the walked prefix; folders end with "/"
    size: int
    mtime: float | None  # POSIX seconds; None where the backend does not say


def describe_error(exc: BaseException) -> str:
    """``"TypeName: message"`` of a storage error, for messages that quote it.

    obstore appends a multi-line Rust debug dump ("Debug source: ...") to its messages; the
    first paragraph already says what failed (method, URL, retries, status), so only that
    is kept.
    """
    text = str(exc).split("\n\nDebug source:", 1)[0].strip()
    return f"{type(exc).__name__}: {text}"


def to_json_bytes(doc: Any) -> bytes:
    """The bytes cpr_zarr writes for a JSON document (indented, like zarr's own metadata)."""
    return json.dumps(doc, indent=2).encode()


class Storage(abc.ABC):
    """A store location (local folder, object store bucket prefix, memory).

    Parameters
    ----------
    url
        The credential-free URL or absolute folder path; what pointers and messages name.
    read_only
        Whether writes are refused (by :meth:`check_writable`; the zarr store is also
        opened read-only).
    """

    #: chunk work waits on a network round trip per key: more threads than cores pay off
    remote: bool = True
    #: whether :meth:`set_if_not_exists` lets exactly one of concurrent creators win (a
    #: hard link, a conditional PUT); where it is check-then-write, callers re-read the key
    creates_once: bool = False

    def __init__(self, url: str, *, read_only: bool = False) -> None:
        self.url = url
        self.read_only = read_only

    # -- primitives (each backend) --------------------------------------------------------

    @property
    @abc.abstractmethod
    def zarr_store(self) -> Store:
        """The zarr store that arrays of this location are opened on."""

    @abc.abstractmethod
    def get(self, key: str) -> bytes | None:
        """The bytes at ``key``; ``None`` if there is no such object."""

    @abc.abstractmethod
    def set(self, key: str, data: bytes) -> None:
        """Write ``key`` whole (atomic per key: temp file + rename, or one PUT)."""

    @abc.abstractmethod
    def set_if_not_exists(self, key: str, data: bytes) -> bool:
        """Create ``key`` unless it exists; whether this call created it.

        Of concurrent callers at most one creates the object where the backend has a
        conditional write (local files, obstore); elsewhere (s3fs) it is check-then-write,
        and callers that need one winner must decide on what the store holds afterwards.
        """

    @abc.abstractmethod
    def set_in_folder(self, key: str, data: bytes, folder: str) -> None:
        """Create ``key`` inside the existing ``folder``, never recreating ``folder``.

        On local disk the folders between ``folder`` and ``key`` are created, ``folder``
        itself never: a folder removed stays removed. Object stores have no folders, so
        this is a plain write there.

        Raises
        ------
        FileNotFoundError
            If ``folder`` is gone (local disk).
        FileExistsError
            If ``key`` exists (local disk).
        """

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove one object; a missing one is fine."""

    @abc.abstractmethod
    def exists(self, key: str) -> bool:
        """Whether the object ``key`` exists."""

    @abc.abstractmethod
    def list_dir(self, prefix: str, *, fresh: bool = False) -> list[str]:
        """Names directly under ``prefix`` (objects and sub-prefixes); ``[]`` if none.

        ``fresh`` bypasses listing caches (fsspec caches listings per process), for
        documents other processes write (leases, claims, provenance records).
        """

    @abc.abstractmethod
    def walk(self, prefix: str, *, folders: bool = False) -> list[Entry]:
        """Every object under ``prefix`` with its size and time, in one listing.

        With ``folders``, local folders are entries too (their key ends with ``/``; the
        walked folder itself is the entry ``""``), so a folder that holds no file yet is
        still seen; object stores have none to report. A missing prefix gives ``[]``.
        """

    @abc.abstractmethod
    def delete_tree(
        self,
        prefix: str,
        *,
        first: tuple[str, ...] = (),
        keep: Callable[[str], bool] | None = None,
        trash: str | None = None,
        on_batch: Callable[[], None] | None = None,
    ) -> bool:
        """Remove everything under ``prefix``; whether anything was there.

        On local disk, with ``trash`` (a folder key), the folder is first renamed there —
        one atomic step that takes it out of every reader's and writer's way — and then
        removed. On object stores, the keys in ``first`` (relative to ``prefix``) go first,
        in order, then the rest in batches, skipping relative keys for which ``keep`` is
        true and calling ``on_batch`` after each batch.
        """

    @abc.abstractmethod
    def move_tree(self, src: str, dst: str) -> None:
        """Make every object under ``src`` an object under ``dst``.

        Metadata (objects named ``zarr.json``) goes first and is create-if-absent (see
        :meth:`claim_metadata`): one already under ``dst`` with the same bytes is kept, one
        with other bytes (a concurrent writer of the same content with other codecs won)
        raises ``FileExistsError`` before any other object is copied, so the chunks of one
        array never mix codecs. Every other object is replaced. Local disk renames (the
        whole folder when ``dst`` is absent); object stores copy server-side and leave
        ``src`` for the caller to delete.

        Raises
        ------
        FileExistsError
            If metadata under ``dst`` differs from ``src``'s; nothing else was copied.
        """

    def claim_metadata(self, documents: dict[str, bytes]) -> None:
        """Create-if-absent each metadata document (key -> bytes), in order.

        Raises
        ------
        FileExistsError
            Naming the first key that already holds other bytes.
        """
        for key, data in documents.items():
            if not self.set_if_not_exists(key, data) and self.get(key) != data:
                raise FileExistsError(
                    f"Metadata {key!r} in store {self.url!r} was created by another writer "
                    "with other content (e.g. other codecs); it is kept."
                )

    def make_folder(self, prefix: str) -> None:  # noqa: B027  (no folders: nothing to do)
        """Create folder ``prefix`` and its parents where the backend has folders."""

    def remove_empty_folder(self, prefix: str) -> None:  # noqa: B027
        """Remove folder ``prefix`` if it is empty, where the backend has folders."""

    # -- derived --------------------------------------------------------------------------

    def get_json(self, key: str) -> Any:
        """The JSON document at ``key``; ``None`` if absent or not JSON."""
        raw = self.get(key)
        if raw is None:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return None

    def set_json(self, key: str, doc: Any) -> None:
        self.set(key, to_json_bytes(doc))

    def set_json_if_not_exists(self, key: str, doc: Any) -> bool:
        return self.set_if_not_exists(key, to_json_bytes(doc))

    def size(self, prefix: str) -> int:
        """Bytes of every object under ``prefix``."""
        return sum(e.size for e in self.walk(prefix))

    def newest_time(self, prefix: str) -> float:
        """Newest modification time under ``prefix``; now if none is known (so that age
        never makes anything look old by mistake)."""
        entries = self.walk(prefix, folders=True)
        files = [
            e.mtime for e in entries if e.mtime is not None and e.key and not e.key.endswith("/")
        ]
        if files:
            return max(files)
        # folders without a single file (a writer killed right after creating them) are
        # aged by the folders' own modification times
        folders = [e.mtime for e in entries if e.mtime is not None]
        return max(folders) if folders else time.time()

    def check_writable(self) -> None:
        """Raise :class:`~cpr_zarr.errors.StoreError` if this location was opened read-only."""
        if self.read_only:
            raise StoreError(
                f"Result store {self.url!r} was opened read-only (mode='r'); open it with "
                "mode='a' to save results."
            )

    def key_counter(self, prefix: str) -> Callable[[], int]:
        """A function counting the objects under ``prefix`` now (save progress)."""
        return lambda: len(self.walk(prefix))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r}, read_only={self.read_only})"
