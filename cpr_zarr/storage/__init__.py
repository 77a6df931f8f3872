"""The storage layer: the only code that knows a local folder from an object store.

:func:`open_storage` turns a location (folder path, ``file://``, ``memory://``, ``s3://``, any
fsspec URL, or a zarr ``Store`` instance) into a :class:`Storage`; everything above talks to
that interface. Backends: :class:`LocalStorage` (plain file operations), ``FsspecStorage``
(s3fs and other fsspec file systems), ``ObjectStorage`` (obstore, through zarr's
``ObjectStore``).
"""

from __future__ import annotations

import os
import urllib.parse
from pathlib import Path
from typing import Any, Literal

import zarr.abc.store

from cpr_zarr.errors import StoreError
from cpr_zarr.redact import register_options, register_secret, split_userinfo
from cpr_zarr.storage._local import LocalStorage
from cpr_zarr.storage.base import Entry, Storage, register, registered, to_json_bytes

__all__ = [
    "Backend",
    "Entry",
    "LocalStorage",
    "Storage",
    "default_backend",
    "normalize_url",
    "open_storage",
    "to_json_bytes",
]


#: which library serves a remote URL: ``None`` picks :func:`default_backend`
Backend = Literal["obstore", "fsspec"]


def _obstore_serves(url: str) -> bool:
    from cpr_zarr.storage._obstore import SCHEMES

    return url.split("://", 1)[0] in SCHEMES


def default_backend(url: str) -> Backend:
    """The backend cpr_zarr uses for ``url`` when none is chosen.

    ``s3://``: obstore when it is installed (measured on an S3 server on loopback it moves
    the same data in fewer requests, faster, and decides create-if-absent with one
    conditional PUT; see the README's "Storage backends"), else fsspec (s3fs). Every other
    URL: fsspec, which serves more protocols and, for ``memory://``, shares one file system
    with other fsspec users of the process.
    """
    if url.startswith(("s3://", "s3a://")) and _have_obstore():
        return "obstore"
    return "fsspec"


def _have_obstore() -> bool:
    try:
        import obstore  # noqa: F401  (optional: the s3 extra installs it)
    except ImportError:
        return False
    return True


def normalize_url(url: object) -> tuple[str, Path | None]:
    """Return ``(credential-free url, local path or None)``."""
    if isinstance(url, os.PathLike):
        url = os.fspath(url)
    if not isinstance(url, str) or not url:
        raise StoreError(
            f"A store location must be a folder path or a URL string, got {url!r}. "
            "Example: ResultStore('results.zarr') or ResultStore('s3://bucket/results.zarr')."
        )
    if url.startswith("file://"):
        url = urllib.parse.unquote(url[len("file://") :])
    if "://" not in url:
        path = Path(url).expanduser().resolve()
        return str(path), path
    # credentials in a URL are never kept (pointers, records and messages carry the URL);
    # they are remembered as secrets, so no message or record shows them either
    clean, secrets = split_userinfo(url.rstrip("/"))
    for secret in secrets:
        register_secret(secret)
    return clean, None


def open_storage(
    url: object,
    read_only: bool = False,
    storage_options: dict[str, Any] | None = None,
    *,
    reuse: bool = True,
    backend: Backend | None = None,
) -> Storage:
    """The :class:`Storage` for a location: a folder path, a URL or a zarr ``Store``.

    A zarr ``Store`` instance keeps its own backend and is named by a URL that re-opens it
    where it has one (see :mod:`cpr_zarr.storage._zarrstore`), else by a process-local
    ``zarrstore://<n>`` name.

    ``backend`` picks the library for remote URLs: ``"obstore"`` (zarr's ``ObjectStore``;
    ``s3://``, ``gs://``, ``az://``, ``http(s)://``, ``memory://``) or ``"fsspec"`` (any
    fsspec URL); ``None`` is :func:`default_backend`. Local folders are always plain file
    operations (:class:`LocalStorage`), whatever ``backend`` says.

    With ``reuse`` (what unpickling a pointer or a reader does), a location this process
    already opened is returned as it is, with the options it was opened with: credentials
    are never pickled, so a worker process re-opens remote URLs with its own environment.

    Raises
    ------
    StoreError
        If the location cannot be opened (a file where a folder is expected, an unknown
        protocol, a missing fsspec backend).
    """
    if backend not in (None, "obstore", "fsspec"):
        raise StoreError(
            f"Unknown storage backend {backend!r} for result store {url!r}: use 'obstore', "
            "'fsspec' or None (the default for the URL)."
        )
    if isinstance(url, zarr.abc.store.Store):
        from cpr_zarr.storage._zarrstore import storage_for_store

        storage = storage_for_store(url, read_only=read_only)
        register(storage)
        return storage
    clean, path = normalize_url(url)
    if clean.startswith("zarrstore://"):
        from cpr_zarr.storage._zarrstore import reopen_named

        return reopen_named(clean, read_only)
    if reuse and storage_options is None and backend is None:
        found = registered(clean, read_only=read_only)
        if found is not None:
            return found
    options = dict(storage_options or {})
    register_options(options)  # never shown in a message or record
    storage: Storage
    if path is not None:
        if path.exists() and not path.is_dir():
            raise StoreError(
                f"Cannot open result store {clean!r}: it is a file, not a folder. "
                "Pass a folder path (it is created if absent), e.g. 'results.zarr'."
            )
        try:
            storage = LocalStorage(path, read_only=read_only)
        except OSError as exc:
            raise StoreError(f"Cannot open result store {clean!r}: {exc}") from exc
    elif (backend or default_backend(clean)) == "obstore":
        if not _have_obstore():
            raise StoreError(
                f"Cannot open result store {clean!r} with backend='obstore': obstore is not "
                "installed. Install it (`pip install 'cpr-zarr[s3]'` or `pip install obstore`), "
                "or use backend='fsspec'."
            )
        if not _obstore_serves(clean):
            raise StoreError(
                f"Cannot open result store {clean!r} with backend='obstore': obstore serves "
                "s3://, gs://, az://, http(s):// and memory:// URLs. Use backend='fsspec' for "
                "this one."
            )
        from cpr_zarr.storage._obstore import open_object_storage

        storage = open_object_storage(clean, read_only=read_only, storage_options=options)
    else:
        from cpr_zarr.storage._fsspec import FsspecStorage

        try:
            storage = FsspecStorage(clean, read_only=read_only, storage_options=options)
        except ImportError as exc:
            raise StoreError(
                f"Cannot open result store {clean!r}: {exc}. Install the fsspec backend for "
                "this protocol (e.g. `pip install s3fs` for s3://)."
            ) from exc
        except Exception as exc:
            raise StoreError(
                f"Cannot open result store {clean!r}: {type(exc).__name__}: {exc}. Use a "
                "folder path, file://, memory:// or an fsspec URL such as s3://bucket/results.zarr."
            ) from exc
    register(storage)
    return storage
