"""A store in a local (or network-mounted) folder: plain file operations, no event loop."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import zarr

from cpr_zarr.storage.base import Entry, Storage, register, registered

if TYPE_CHECKING:
    from collections.abc import Callable

    from zarr.abc.store import Store

__all__ = ["LocalStorage"]

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)


class LocalStorage(Storage):
    """A folder on a file system with POSIX rename and ``link`` (local disk, NFS, Lustre)."""

    remote = False
    creates_once = True  # set_if_not_exists: link() of a private temporary file

    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        super().__init__(str(path), read_only=read_only)
        self.root = path
        self._root = str(path)
        self._zarr = zarr.storage.LocalStore(path, read_only=read_only)

    def __reduce__(self) -> tuple[object, ...]:
        return (_reopen, (self.url, self.read_only))

    @property
    def zarr_store(self) -> Store:
        return self._zarr

    def get(self, key: str) -> bytes | None:
        try:  # a plain file read: no round trip to zarr's event loop
            with open(os.path.join(self._root, key), "rb") as f:
                return f.read()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None

    def set(self, key: str, data: bytes) -> None:
        # like zarr's LocalStore, a temporary file renamed over the key: readers see the old
        # or the new bytes, never a part. Done here, in the calling thread: chunk writes from
        # a pool of threads then run in parallel, not queued on zarr's event loop
        self.check_writable()
        tmp, path = self._write_temporary(key, data)
        try:
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def set_if_not_exists(self, key: str, data: bytes) -> bool:
        # write a private temporary file, then hard-link it under the final name: link()
        # fails if the name exists, so exactly one of concurrent creators wins, and a reader
        # never sees a partly written document (an O_EXCL open would show one)
        tmp, path = self._write_temporary(key, data)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return True

    def _write_temporary(self, key: str, data: bytes) -> tuple[str, str]:
        """``data`` in a new temporary file beside ``key`` (its folder made only where it is
        missing); the temporary file's path and the key's."""
        path = os.path.join(self._root, key)
        folder, name = os.path.split(path)
        # hidden and ".partial": never counted as a chunk, never read as one
        tmp = os.path.join(folder, f".{name}.{uuid.uuid4().hex}.partial")
        try:
            fd = os.open(tmp, _CREATE, 0o666)
        except FileNotFoundError:
            os.makedirs(folder, exist_ok=True)
            fd = os.open(tmp, _CREATE, 0o666)
        try:
            with open(fd, "wb") as f:  # large writes go straight to the file, not copied
                f.write(data)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return tmp, path

    def set_in_folder(self, key: str, data: bytes, folder: str) -> None:
        rel = Path(key).relative_to(folder)
        current = self.root / folder
        for part in rel.parts[:-1]:  # never the folder itself: removed stays removed
            current = current / part
            with contextlib.suppress(FileExistsError):
                os.mkdir(current)
        with open(self.root / key, "xb") as f:
            f.write(data)

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            os.remove(self.root / key)

    def exists(self, key: str) -> bool:
        return (self.root / key).exists()

    def list_dir(self, prefix: str, *, fresh: bool = False) -> list[str]:
        try:  # what LocalStore.list_dir does, without its event loop
            return os.listdir(self.root / prefix)
        except (FileNotFoundError, NotADirectoryError):
            return []

    def walk(self, prefix: str, *, folders: bool = False) -> list[Entry]:
        root = self.root / prefix
        entries: list[Entry] = []
        if folders:
            try:
                entries.append(Entry("", 0, os.stat(root).st_mtime))
            except FileNotFoundError:
                return []
        for dirpath, dirnames, files in os.walk(root):
            rel_dir = os.path.relpath(dirpath, root)
            for name in [*files, *dirnames] if folders else files:
                rel = name if rel_dir == "." else f"{rel_dir}/{name}"
                try:
                    st = os.stat(os.path.join(dirpath, name))
                except FileNotFoundError:  # removed meanwhile
                    continue
                if name in files:
                    entries.append(Entry(rel, st.st_size, st.st_mtime))
                else:
                    entries.append(Entry(f"{rel}/", 0, st.st_mtime))
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
        folder = self.root / prefix
        if trash is not None:
            target = self.root / trash
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(folder, target)  # atomic: out of everyone's way at once
            except FileNotFoundError:
                return False
            folder = target
        elif not folder.exists():
            return False
        shutil.rmtree(folder, ignore_errors=True)
        return True

    def move_tree(self, src: str, dst: str) -> None:
        src_dir, dst_dir = self.root / src, self.root / dst
        dst_dir.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(src_dir, dst_dir)  # fails if dst_dir exists and is not empty
            return
        except OSError:
            pass
        # dst exists (a crashed or concurrent writer of the same content): its metadata
        # first, create-if-absent (raises if another writer's, with other codecs, is there),
        # then replace its objects file by file (each replace is atomic)
        files = [
            (Path(dirpath) / name, os.path.relpath(Path(dirpath) / name, src_dir))
            for dirpath, _, names in os.walk(src_dir)
            for name in names
        ]
        self.claim_metadata(
            {f"{dst}/{rel}": path.read_bytes() for path, rel in files if path.name == "zarr.json"}
        )
        for path, rel in files:
            if path.name != "zarr.json":
                (dst_dir / rel).parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, dst_dir / rel)

    def make_folder(self, prefix: str) -> None:
        path = self.root / prefix
        for _ in range(100):
            try:
                path.mkdir(parents=True, exist_ok=True)
                return
            except FileNotFoundError:  # a parent was removed under us (an emptied _staging)
                continue
        path.mkdir(parents=True, exist_ok=True)  # raises the error, if it still happens

    def remove_empty_folder(self, prefix: str) -> None:
        with contextlib.suppress(OSError):  # not empty, or already gone
            os.rmdir(self.root / prefix)

    def key_counter(self, prefix: str) -> Callable[[], int]:
        root = self.root / prefix

        def count() -> int:  # zarr's temporary files are not chunks yet
            return sum(
                1
                for _, _, files in os.walk(root)
                for f in files
                if not f.startswith(".") and ".partial" not in f
            )

        return count


def _reopen(url: str, read_only: bool) -> Storage:
    """Unpickle: the storage this process opened for ``url``, else a new one."""
    found = registered(url, read_only=read_only)
    if found is not None:
        return found
    storage = LocalStorage(Path(url), read_only=read_only)
    register(storage)
    return storage
