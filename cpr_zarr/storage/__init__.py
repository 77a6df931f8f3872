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
from typing import Any

from cpr_zarr.errors import StoreError
from cpr_zarr.redact import register_options, register_secret, split_userinfo
from cpr_zarr.storage._local import LocalStorage
from cpr_zarr.storage.base import Entry, Storage, register, registered, to_json_bytes

__all__ = [
    "Entry",
    "LocalStorage",
    "Storage",
    "normalize_url",
    "open_storage",
    "to_json_bytes",
]


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
) -> Storage:
    """The :class:`Storage` for a location.

    With ``reuse`` (what unpickling a pointer or a reader does), a location this process
    already opened is returned as it is, with the options it was opened with: credentials
    are never pickled, so a worker process re-opens remote URLs with its own environment.

    Raises
    ------
    StoreError
        If the location cannot be opened (a file where a folder is expected, an unknown
        protocol, a missing fsspec backend).
    """
    clean, path = normalize_url(url)
    if reuse and storage_options is None:
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
