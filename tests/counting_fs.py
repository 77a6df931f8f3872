"""A local filesystem under the fsspec protocol ``countfile://`` that logs every file it reads.

Reads are appended to the file named by ``$CPR_ZARR_TEST_READ_LOG`` (one line per read, with
O_APPEND, so several processes can share it). Importing this module registers the protocol;
Dask worker processes import it through ``distributed.worker.preload``.
"""

from __future__ import annotations

import os
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

LOG_ENV = "CPR_ZARR_TEST_READ_LOG"


class CountingFileSystem(LocalFileSystem):
    protocol = "countfile"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("auto_mkdir", True)
        super().__init__(*args, **kwargs)

    def cat_file(
        self, path: str, start: int | None = None, end: int | None = None, **kw: Any
    ) -> bytes:
        log = os.environ.get(LOG_ENV)
        if log:
            fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            try:
                os.write(fd, f"{os.getpid()} {self._strip_protocol(path)}\n".encode())
            finally:
                os.close(fd)
        return super().cat_file(path, start=start, end=end, **kw)  # type: ignore[no-any-return]


fsspec.register_implementation("countfile", CountingFileSystem, clobber=True)


def chunk_reads(log: str, group_path: str) -> list[str]:
    """The chunk keys (``c/i/j/k``) of a group's base array read so far, in order."""
    if not os.path.exists(log):
        return []
    marker = f"/{group_path}/0/c/"
    with open(log) as f:
        return ["c/" + line.rsplit(marker, 1)[1].strip() for line in f if marker in line]


def dask_setup(worker: object) -> None:
    """Preload hook: importing the module already registered the protocol."""
