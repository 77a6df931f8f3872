"""A zarr ``Store`` instance given as the store location.

Known store types keep their own backend, under the URL that re-opens them in another
process: ``LocalStore`` is its folder, ``FsspecStore`` its ``protocol://path``, an
``ObjectStore`` over an obstore S3 or GCS store its ``s3://bucket/prefix``. Any other store
(``zarr.storage.MemoryStore``, a wrapper, a user's own ``Store``) is served through zarr's
``Store`` API alone by :class:`ZarrStoreStorage`, under a process-local name
``zarrstore://<id>``: pointers that name it open in this process only.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from cpr_zarr.errors import StoreError
from cpr_zarr.storage._local import LocalStorage
from cpr_zarr.storage.base import Entry, Storage, registered

if TYPE_CHECKING:
    from collections.abc import Callable

    from zarr.abc.store import Store

__all__ = ["SCHEME", "ZarrStoreStorage", "reopen_named", "storage_for_store"]

#: the URL scheme of stores known only by their instance in one process
SCHEME = "zarrstore://"

_NAMES = itertools.count(1)
_NAMES_LOCK = threading.Lock()


def _new_name() -> str:
    with _NAMES_LOCK:
        return f"{SCHEME}{next(_NAMES)}"


class ZarrStoreStorage(Storage):
    """Any zarr ``Store``, through zarr's ``Store`` API only.

    ``set_if_not_exists`` is whatever the store's own is (zarr's ``MemoryStore``: a check
    and a write under no lock, so of two concurrent creators both may think they created the
    object; callers decide on what the store holds afterwards). Walks report no times.
    """

    def __init__(self, store: Store, url: str, *, read_only: bool = False) -> None:
        super().__init__(url, read_only=read_only)
        self._zarr = store
        self.remote = type(store).__name__ != "MemoryStore"

    def __reduce__(self) -> tuple[object, ...]:
        return (reopen_named, (self.url, self.read_only))

    @property
    def zarr_store(self) -> Store:
        return self._zarr

    def get(self, key: str) -> bytes | None:
        buf = sync(self._zarr.get(key, default_buffer_prototype()))
        return None if buf is None else bytes(buf.to_bytes())

    def set(self, key: str, data: bytes) -> None:
        sync(self._zarr.set(key, default_buffer_prototype().buffer.from_bytes(data)))

    def set_if_not_exists(self, key: str, data: bytes) -> bool:
        if self.exists(key):
            return False
        sync(self._zarr.set_if_not_exists(key, default_buffer_prototype().buffer.from_bytes(data)))
        return True

    def set_in_folder(self, key: str, data: bytes, folder: str) -> None:
        self.set(key, data)

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError, KeyError):
            sync(self._zarr.delete(key))

    def exists(self, key: str) -> bool:
        return bool(sync(self._zarr.exists(key)))

    def list_dir(self, prefix: str, *, fresh: bool = False) -> list[str]:
        async def collect() -> list[str]:
            return [k async for k in self._zarr.list_dir(prefix.strip("/"))]

        return sync(collect())

    def _keys(self, prefix: str) -> list[str]:
        base = prefix.strip("/")

        async def collect() -> list[str]:
            if not base:
                return [k async for k in self._zarr.list()]
            return [k async for k in self._zarr.list_prefix(f"{base}/")]

        return sync(collect())

    def walk(self, prefix: str, *, folders: bool = False) -> list[Entry]:
        base = prefix.strip("/")
        start = len(base) + 1 if base else 0
        entries = []
        for key in self._keys(base):
            try:
                size = int(sync(self._zarr.getsize(key)))
            except (FileNotFoundError, KeyError):  # removed meanwhile
                continue
            entries.append(Entry(key[start:], size, None))
        return entries

    def delete_tree(
        self,
        prefix: str,
        *,
        first: tuple[str, ...] = (),
        keep: Callable[[str], bool] | None = None,
        trash: str | None = None,
        on_batch: Callable[[], None] | None = None,
    ) -> bool:
        base = prefix.strip("/")
        start = len(base) + 1
        listed = self._keys(base)
        for key in first:
            self.delete(f"{base}/{key}")
        skip = {f"{base}/{key}" for key in first}
        for key in listed:
            if key not in skip and (keep is None or not keep(key[start:])):
                self.delete(key)
        if on_batch is not None and listed:
            on_batch()
        return bool(listed)

    def move_tree(self, src: str, dst: str) -> None:
        src, dst = src.strip("/"), dst.strip("/")
        keys = self._keys(src)
        for key in [k for k in keys if not k.endswith("zarr.json")]:
            data = self.get(key)
            if data is not None:
                self.set(f"{dst}{key[len(src) :]}", data)
        for key in [k for k in keys if k.endswith("zarr.json")]:
            data = self.get(key)
            if data is not None:
                self.set_if_not_exists(f"{dst}{key[len(src) :]}", data)


def storage_for_store(store: Store, *, read_only: bool = False) -> Storage:
    """The :class:`Storage` for a zarr ``Store`` instance (see the module doc).

    The store's own ``read_only`` flag makes the storage read-only too.
    """
    read_only = read_only or store.read_only
    if isinstance(store, zarr.storage.LocalStore):
        return LocalStorage(Path(store.root).resolve(), read_only=read_only)
    if isinstance(store, zarr.storage.FsspecStore):
        from cpr_zarr.storage._fsspec import FsspecStorage

        protocol = store.fs.protocol
        protocol = protocol[0] if isinstance(protocol, tuple | list) else protocol
        url = f"{protocol}://{store.path.strip('/')}"
        return FsspecStorage(url, read_only=read_only, store=store)
    if isinstance(store, zarr.storage.ObjectStore):
        from cpr_zarr.storage._obstore import ObjectStorage, obstore_url

        inner: Any = store.store
        return ObjectStorage(obstore_url(inner) or _new_name(), read_only=read_only, store=inner)
    return ZarrStoreStorage(store, _new_name(), read_only=read_only)


def reopen_named(url: str, read_only: bool) -> Storage:
    """The storage a ``zarrstore://`` name stands for, in the process that opened it.

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
