"""A store behind obstore (``s3://``, ``gs://``, ``az://``, ``http(s)://``, ``memory://``).

obstore is a thin Python layer over the Rust ``object_store`` crate; zarr reads and writes
arrays through its ``zarr.storage.ObjectStore``. This backend calls obstore's synchronous
functions directly for everything else (no round trip through zarr's event loop), and
decides create-if-absent with one conditional request: ``put(..., mode="create")`` is a PUT
with ``If-None-Match: *`` on S3, so of two concurrent creators exactly one succeeds and the
other is told so by the server (s3fs checks with a HEAD, then PUTs: both can pass the check).
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import TYPE_CHECKING, Any

import obstore
import zarr
from obstore.exceptions import (
    AlreadyExistsError,
    BaseError,
    NotFoundError,
    PreconditionError,
)
from obstore.store import MemoryStore, from_url

from cpr_zarr.errors import StoreError
from cpr_zarr.storage.base import (
    Entry,
    Storage,
    describe_error,
    register,
    registered,
    reopen_named,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from obstore.store import ObjectStore as ObstoreStore
    from zarr.abc.store import Store

__all__ = ["SCHEMES", "ObjectStorage", "obstore_options"]

#: URL schemes obstore serves (``memory://`` is a store per URL in this process)
SCHEMES = ("s3", "s3a", "gs", "gcs", "az", "azure", "abfs", "abfss", "http", "https", "memory")

_BATCH = 1000  # S3 DeleteObjects takes at most 1,000 keys (obstore batches the same way)
_COPY_WINDOW = 64  # server-side copies in flight at once

# obstore's MemoryStore lives in one Python object: memory:// URLs name one per process, as
# fsspec's memory file system does, so that re-opening a URL (a pointer) finds the data
_MEMORY: dict[str, MemoryStore] = {}
_MEMORY_LOCK = threading.Lock()

# s3fs-style storage options -> obstore S3 configuration keys
_S3_RENAMES = {
    "key": "access_key_id",
    "secret": "secret_access_key",
    "token": "session_token",
    "endpoint_url": "endpoint",
    "region_name": "region",
}
# s3fs tuning options with no obstore meaning: accepted so that the same options open a
# store with either backend
_S3FS_ONLY = frozenset(
    {
        "max_concurrency",
        "use_listings_cache",
        "listings_expiry_time",
        "skip_instance_cache",
        "default_block_size",
        "default_fill_cache",
        "default_cache_type",
        "asynchronous",
        "loop",
        "use_ssl",
        "version_aware",
        "cache_regions",
        "s3_additional_kwargs",
        "requester_pays",
    }
)


def obstore_options(url: str, options: dict[str, Any]) -> dict[str, Any]:
    """obstore ``from_url`` keyword arguments for ``url`` from fsspec/s3fs-style options.

    ``key``/``secret``/``token``, ``endpoint_url`` (also inside ``client_kwargs``),
    ``region_name``, ``anon`` and ``config_kwargs={"retries": {"max_attempts": n}}`` are
    translated; obstore's own keys (``access_key_id``, ``endpoint``, ``region``,
    ``client_options``, ``retry_config``, ...) pass through. Anything obstore reads from the
    environment (``AWS_*``, ``GOOGLE_*``, ``AZURE_*``) is left to it. An ``http://``
    endpoint (a local S3-compatible server) switches on ``allow_http``.

    Raises
    ------
    ValueError
        If an option has no obstore meaning (use ``backend="fsspec"`` for those).
    """
    out: dict[str, Any] = {}
    client_options = dict(options.get("client_options") or {})
    for name, value in options.items():
        if name in ("client_options", *_S3FS_ONLY):
            continue
        if name == "client_kwargs":
            for inner, inner_value in dict(value).items():
                if inner in ("endpoint_url", "region_name"):
                    out[_S3_RENAMES[inner]] = inner_value
                else:
                    raise ValueError(
                        f"client_kwargs option {inner!r} has no obstore equivalent; use "
                        "endpoint_url or region_name, or open the store with backend='fsspec'"
                    )
        elif name == "anon":
            out["skip_signature"] = bool(value)
        elif name == "config_kwargs":
            retries = dict(value).get("retries", {})
            if "max_attempts" in retries:
                out["retry_config"] = {"max_retries": max(int(retries["max_attempts"]) - 1, 0)}
        elif name in _S3_RENAMES:
            out[_S3_RENAMES[name]] = value
        else:
            out[name] = value
    if url.startswith(("s3://", "s3a://")):
        endpoint = str(
            out.get("endpoint")
            or out.get("aws_endpoint_url_s3")
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
            or os.environ.get("AWS_ENDPOINT")
            or ""
        )
        if endpoint.startswith("http://"):
            client_options.setdefault("allow_http", True)
    if client_options:
        out["client_options"] = client_options
    return out


def _open_obstore(url: str, options: dict[str, Any]) -> ObstoreStore:
    if url.startswith("memory://"):
        with _MEMORY_LOCK:
            return _MEMORY.setdefault(url, MemoryStore())
    if url.startswith("s3a://"):
        url = "s3://" + url[len("s3a://") :]
    store: ObstoreStore = from_url(url, **obstore_options(url, options))
    return store


class ObjectStorage(Storage):
    """An object store location, opened through obstore and zarr's ``ObjectStore``.

    Parameters
    ----------
    url
        The credential-free URL (``s3://bucket/results.zarr``).
    storage_options
        Credentials, endpoint, region (s3fs-style names are translated, see
        :func:`obstore_options`); kept in memory only, never written or pickled.
    """

    creates_once = True  # set_if_not_exists: one conditional PUT (If-None-Match: *)

    def __init__(
        self,
        url: str,
        *,
        read_only: bool = False,
        storage_options: dict[str, Any] | None = None,
        store: ObstoreStore | None = None,
    ) -> None:
        super().__init__(url, read_only=read_only)
        self.remote = not url.startswith("memory://") and not isinstance(store, MemoryStore)
        self._ob = store if store is not None else _open_obstore(url, dict(storage_options or {}))
        self._zarr = zarr.storage.ObjectStore(self._ob, read_only=read_only)

    def __reduce__(self) -> tuple[object, ...]:
        # storage options are never pickled (they may hold credentials): the process that
        # unpickles re-opens the URL with its own environment
        return (_reopen, (self.url, self.read_only))

    @property
    def zarr_store(self) -> Store:
        return self._zarr

    @property
    def obstore(self) -> ObstoreStore:
        """The obstore store under this location (keys are relative to its prefix)."""
        return self._ob

    def get(self, key: str) -> bytes | None:
        try:
            return bytes(obstore.get(self._ob, key).bytes())
        except (NotFoundError, FileNotFoundError):
            return None

    def set(self, key: str, data: bytes) -> None:
        obstore.put(self._ob, key, data)

    def set_if_not_exists(self, key: str, data: bytes) -> bool:
        # one conditional PUT (If-None-Match: *): the server lets exactly one of concurrent
        # creators write the object and answers the others 412 (AlreadyExists here)
        try:
            obstore.put(self._ob, key, data, mode="create")
        except (AlreadyExistsError, PreconditionError, FileExistsError):
            return False
        return True

    def set_in_folder(self, key: str, data: bytes, folder: str) -> None:
        self.set(key, data)  # no folders to recreate

    def delete(self, key: str) -> None:
        # a missing key: S3 says nothing, local/GCS/Azure raise
        with contextlib.suppress(NotFoundError, FileNotFoundError):
            obstore.delete(self._ob, key)

    def exists(self, key: str) -> bool:
        try:
            obstore.head(self._ob, key)
        except (NotFoundError, FileNotFoundError):
            return False
        return True

    def list_dir(self, prefix: str, *, fresh: bool = False) -> list[str]:
        # obstore keeps no listing cache: every listing is fresh
        found = obstore.list_with_delimiter(self._ob, prefix.strip("/") or None)
        names = [p.rsplit("/", 1)[-1] for p in found["common_prefixes"]]
        names += [o["path"].rsplit("/", 1)[-1] for o in found["objects"]]
        return names

    def _list(self, prefix: str) -> Iterable[dict[str, Any]]:
        base = prefix.strip("/")
        # (the ignore is needed only where obstore, and so its types, is installed)
        for batch in obstore.list(self._ob, base or None, chunk_size=1000):
            yield from batch  # type: ignore[misc,unused-ignore]

    def walk(self, prefix: str, *, folders: bool = False) -> list[Entry]:
        base = prefix.strip("/")
        start = len(base) + 1 if base else 0
        return [
            Entry(meta["path"][start:], int(meta["size"]), meta["last_modified"].timestamp())
            for meta in self._list(base)
            if meta["path"][start:]
        ]

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
        listed = [meta["path"] for meta in self._list(base)]
        for key in first:  # in order: readers stop seeing a result before the rest goes
            self.delete(f"{base}/{key}")
        skip = {f"{base}/{key}" for key in first}
        rest = [
            path for path in listed if path not in skip and (keep is None or not keep(path[start:]))
        ]
        for begin in range(0, len(rest), _BATCH):
            # one DeleteObjects request per batch on S3; another remover may be faster
            with contextlib.suppress(NotFoundError, FileNotFoundError):
                obstore.delete(self._ob, rest[begin : begin + _BATCH])
            if on_batch is not None:
                on_batch()
        return bool(listed)

    def move_tree(self, src: str, dst: str) -> None:
        # object stores cannot rename. Metadata first: S3 has no copy-if-absent (obstore
        # refuses copy(overwrite=False) there), so each small document is read and created
        # with one conditional PUT; if another writer's (other codecs) is there, this raises
        # before any chunk is copied. Then each object is copied server-side (S3 CopyObject,
        # no data through this process).
        src = src.strip("/")
        dst = dst.strip("/")
        keys = [meta["path"] for meta in self._list(src)]
        metadata = {}
        for key in (k for k in keys if k.endswith("zarr.json")):
            raw = self.get(key)
            if raw is not None:
                metadata[f"{dst}{key[len(src) :]}"] = raw
        self.claim_metadata(metadata)
        data_keys = [k for k in keys if not k.endswith("zarr.json")]
        for begin in range(0, len(data_keys), _COPY_WINDOW):
            window = data_keys[begin : begin + _COPY_WINDOW]
            _run_all(obstore.copy_async(self._ob, k, f"{dst}{k[len(src) :]}") for k in window)

    def size(self, prefix: str) -> int:
        return sum(int(meta["size"]) for meta in self._list(prefix))

    def key_counter(self, prefix: str) -> Callable[[], int]:
        return lambda: sum(1 for _ in self._list(prefix))


def obstore_url(store: ObstoreStore) -> str | None:
    """The URL that re-opens an obstore store elsewhere (credentials aside), if it has one.

    S3 and GCS buckets (with the store's prefix), and the ``memory://`` stores this module
    keeps by URL; ``None`` for the rest (a bare ``MemoryStore``, Azure, HTTP, local).
    """
    with _MEMORY_LOCK:
        for url, memory in _MEMORY.items():
            if memory is store:
                return url
    scheme = {"S3Store": "s3", "GCSStore": "gs"}.get(type(store).__name__)
    if scheme is None:
        return None
    bucket = getattr(store, "config", {}).get("bucket")
    if not bucket:
        return None
    prefix = str(getattr(store, "prefix", None) or "").strip("/")
    return f"{scheme}://{bucket}/{prefix}" if prefix else f"{scheme}://{bucket}"


def _run_all(coroutines: Iterable[Any]) -> None:
    """Run obstore coroutines concurrently on zarr's event loop (and wait for all)."""
    import asyncio

    from zarr.core.sync import sync

    async def gather() -> None:
        await asyncio.gather(*coroutines)

    sync(gather())


def is_obstore_error(exc: BaseException) -> bool:
    """Whether ``exc`` comes from obstore."""
    return isinstance(exc, BaseError)


def open_object_storage(
    url: str, *, read_only: bool, storage_options: dict[str, Any]
) -> ObjectStorage:
    """:class:`ObjectStorage` for ``url``, with a message naming the URL if it fails."""
    try:
        return ObjectStorage(url, read_only=read_only, storage_options=storage_options)
    except (BaseError, ValueError, TypeError) as exc:
        raise StoreError(
            f"Cannot open result store {url!r} with obstore: {describe_error(exc)}. "
            "Check the URL and storage options (s3fs-style key/secret/endpoint_url/anon or "
            "obstore's own config keys), or open it with backend='fsspec'."
        ) from exc


def _reopen(url: str, read_only: bool) -> Storage:
    """Unpickle: the storage this process opened for ``url``, else a new one."""
    found = registered(url, read_only=read_only)
    if found is not None:
        return found
    if url.startswith("zarrstore://"):  # a store instance of another process: says so
        return reopen_named(url, read_only)
    storage = ObjectStorage(url, read_only=read_only)
    register(storage)
    return storage
