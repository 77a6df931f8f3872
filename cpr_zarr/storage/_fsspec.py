"""A store behind an fsspec file system (``s3://`` through s3fs, ``memory://``, ...)."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime
from typing import TYPE_CHECKING, Any

import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from cpr_zarr.storage.base import Entry, Storage, register, registered

if TYPE_CHECKING:
    from collections.abc import Callable

    from zarr.abc.store import Store

__all__ = ["FsspecStorage", "info_time"]

_BATCH = 1000  # S3 DeleteObjects takes at most 1,000 keys


def info_time(info: dict[str, Any]) -> float | None:
    """Modification time (POSIX seconds) from an fsspec listing entry, if it has one."""
    for field in ("LastModified", "last_modified", "mtime", "updated", "created"):
        value = info.get(field)
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, int | float):
            return float(value)
    return None


class FsspecStorage(Storage):
    """An fsspec location, opened through zarr's ``FsspecStore``.

    Parameters
    ----------
    url
        The credential-free URL (``s3://bucket/results.zarr``).
    storage_options
        fsspec options (endpoint, credentials); kept in memory only, never written.
    """

    def __init__(
        self,
        url: str,
        *,
        read_only: bool = False,
        storage_options: dict[str, Any] | None = None,
        store: zarr.storage.FsspecStore | None = None,
    ) -> None:
        super().__init__(url, read_only=read_only)
        if store is not None:  # a zarr FsspecStore the user opened (with its file system)
            self.storage_options = {}
            self.remote = "memory" not in store.fs.protocol
            self._zarr: Any = store
            self._fs: Any = store.fs
            self._root: str = store.path.rstrip("/")
            return
        self.storage_options = dict(storage_options or {})
        options = dict(self.storage_options)
        if url.startswith(("s3://", "s3a://")):
            # one GET per chunk (s3fs otherwise sends a HEAD first to split big objects), and
            # retries with exponential backoff for 5xx, throttling and dropped connections
            options.setdefault("max_concurrency", 1)
            options.setdefault(
                "config_kwargs", {"retries": {"max_attempts": 8, "mode": "standard"}}
            )
        self.remote = not url.startswith("memory://")
        self._zarr = zarr.storage.FsspecStore.from_url(
            url, storage_options=options or None, read_only=read_only
        )
        self._fs = self._zarr.fs
        self._root = self._zarr.path.rstrip("/")

    def __reduce__(self) -> tuple[object, ...]:
        # storage options are never pickled (they may hold credentials): the process that
        # unpickles re-opens the URL with its own environment or fsspec configuration
        return (_reopen, (self.url, self.read_only))

    @property
    def zarr_store(self) -> Store:
        store: Store = self._zarr
        return store

    def _full(self, key: str) -> str:
        return f"{self._root}/{key}" if key else self._root

    def get(self, key: str) -> bytes | None:
        buf = sync(self._zarr.get(key, default_buffer_prototype()))
        return None if buf is None else bytes(buf.to_bytes())

    def set(self, key: str, data: bytes) -> None:
        sync(self._zarr.set(key, default_buffer_prototype().buffer.from_bytes(data)))

    def set_if_not_exists(self, key: str, data: bytes) -> bool:
        # s3fs has no conditional PUT: HEAD, then PUT. Two creators can both pass the HEAD
        # and the second PUT replaces the first object (the obstore backend decides this in
        # one conditional request); callers decide on what the store holds afterwards.
        if self.exists(key):
            return False
        self.set(key, data)
        return True

    def set_in_folder(self, key: str, data: bytes, folder: str) -> None:
        self.set(key, data)  # no folders to recreate

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            sync(self._zarr.delete(key))

    def exists(self, key: str) -> bool:
        return bool(sync(self._zarr.exists(key)))

    def list_dir(self, prefix: str, *, fresh: bool = False) -> list[str]:
        if fresh:  # fsspec caches listings per process
            self._fs.invalidate_cache(self._full(prefix))

        async def collect() -> list[str]:
            return [k async for k in self._zarr.list_dir(prefix)]

        return sync(collect())

    def walk(self, prefix: str, *, folders: bool = False) -> list[Entry]:
        base = self._full(prefix)
        try:
            found = sync(self._fs._find(base, detail=True))
        except FileNotFoundError:
            return []
        entries = []
        for full, info in found.items():
            rel = full[len(base) :].lstrip("/")
            if rel:
                entries.append(Entry(rel, int(info.get("size") or 0), info_time(info)))
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
        base = self._full(prefix)
        for key in first:
            self.delete(f"{prefix}/{key}")
        try:
            keys = sync(self._fs._find(base))
        except FileNotFoundError:
            keys = []
        keys = [k for k in keys if keep is None or not keep(k[len(base) :].lstrip("/"))]
        for start in range(0, len(keys), _BATCH):
            with contextlib.suppress(FileNotFoundError):  # another remover was faster
                sync(self._fs._rm(keys[start : start + _BATCH]))
            if on_batch is not None:
                on_batch()
        return bool(keys or first)

    def move_tree(self, src: str, dst: str) -> None:
        # object stores cannot rename: copy each key server-side (S3 CopyObject: one request
        # per object, no data through this process), metadata last and create-if-absent
        async def copy() -> None:
            keys = [k async for k in self._zarr.list_prefix(f"{src}/")]
            data_keys = [k for k in keys if not k.endswith("zarr.json")]
            meta_keys = [k for k in keys if k.endswith("zarr.json")]
            for start in range(0, len(data_keys), 64):
                await asyncio.gather(*(copy_key(k) for k in data_keys[start : start + 64]))
            for key in meta_keys:
                if not await self._zarr.exists(f"{dst}{key[len(src) :]}"):
                    await copy_key(key)

        async def copy_key(key: str) -> None:
            await self._fs._cp_file(self._full(key), self._full(f"{dst}{key[len(src) :]}"))

        sync(copy())

    def size(self, prefix: str) -> int:
        return int(sync(self._fs._du(self._full(prefix), total=True)))

    def key_counter(self, prefix: str) -> Callable[[], int]:
        async def count() -> int:
            return sum([1 async for _ in self._zarr.list_prefix(f"{prefix}/")])

        return lambda: sync(count())


def _reopen(url: str, read_only: bool) -> Storage:
    """Unpickle: the storage this process opened for ``url``, else a new one."""
    found = registered(url, read_only=read_only)
    if found is not None:
        return found
    storage = FsspecStorage(url, read_only=read_only)
    register(storage)
    return storage
