"""Reading results: lazy Dask arrays whose every chunk is verified as it is read."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import dask.array as da
import numpy as np
import zarr

from cpr_zarr.codec import ChunkCodec, thread_map, worker_count
from cpr_zarr.errors import ChunkVerificationError
from cpr_zarr.hashing import chunk_digest
from cpr_zarr.layout import chunk_grid, parse_member_path

if TYPE_CHECKING:
    from cpr_zarr.store import ResultStore

__all__ = ["ChunkReader"]


class ChunkReader:
    """Reads and verifies the chunks of one committed result group."""

    def __init__(self, store: ResultStore, group_path: str, attrs: dict[str, Any]) -> None:
        self.store = store
        self.group_path = group_path
        self.attrs = attrs
        # a record read from disk must not send reads outside its group
        self.array_path = parse_member_path(
            attrs.get("array"), where=f"result {group_path!r} in store {store.url!r}"
        )
        self.content_hash: str = attrs["content_hash"]
        self.shape = tuple(int(s) for s in attrs["shape"])
        self.dtype = np.dtype(attrs["dtype"])
        self.chunks = tuple(int(c) for c in attrs["chunks"])
        self.digests: list[str] = attrs["chunk_digests"]
        self.grid = tuple(
            math.ceil(s / c) if s else 0 for s, c in zip(self.shape, self.chunks, strict=True)
        )
        self._array: zarr.Array[Any] | None = None
        self._codec: ChunkCodec | None = None
        self._fill_digests: dict[tuple[int, ...], str] = {}

    def __reduce__(self) -> tuple[Any, ...]:
        return (ChunkReader, (self.store, self.group_path, self.attrs))

    @property
    def array(self) -> zarr.Array[Any]:
        if self._array is None:
            self._array = zarr.open_array(
                self.store._zstore,
                path=f"{self.group_path}/{self.array_path}",
                mode="r",
                zarr_format=3,
            )
        return self._array

    @property
    def codec(self) -> ChunkCodec:
        if self._codec is None:
            self._codec = ChunkCodec(self.array)
        return self._codec

    def _where(self, index: tuple[int, ...]) -> str:
        return f"chunk {index} of result {self.group_path!r} in store {self.store.url!r}"

    def _check(self, index: tuple[int, ...], block: np.ndarray) -> None:
        expected = self._expected(index)
        actual = chunk_digest(block)
        if actual != expected:
            raise ChunkVerificationError(
                f"Verification failed for {self._where(index)}: its decoded values hash to "
                f"{actual}, but {expected} was recorded when it was saved. The stored chunk is "
                "damaged or was changed outside cpr_zarr. Other chunks are unaffected. To "
                "resolve: delete the result (store.delete(ref) or `cpr-zarr gc`) and re-run the "
                "task that produced it.",
                store_url=self.store.url,
                group_path=self.group_path,
                chunk_index=index,
            )

    def read_chunk(
        self, index: tuple[int, ...], verify: bool = True, *, writeable: bool = True
    ) -> np.ndarray:
        """Read (and by default verify) one chunk; ``writeable=False`` may give a read-only view."""
        try:
            block = self.codec.load(index, writeable=writeable)
        except Exception as exc:
            raise ChunkVerificationError(
                f"Cannot read {self._where(index)}: {type(exc).__name__}: {exc}. The stored "
                "chunk is damaged or unreadable. To resolve: delete the result "
                "(store.delete(ref)) and re-run the task that produced it.",
                store_url=self.store.url,
                group_path=self.group_path,
                chunk_index=index,
            ) from exc
        if block is None:
            # not stored: right only if the saved chunk held just the fill value (zarr skips
            # those). Checked even unverified: a result deleted by another process since this
            # reader was opened must not read as zeros.
            block = self.codec.fill_block(index)
            if self._fill_digest(block) != self._expected(index):
                raise ChunkVerificationError(
                    f"Cannot read {self._where(index)}: the chunk is not in the store (was the "
                    "result deleted or garbage-collected?). To resolve: open the result again "
                    "(store.open(ref)); if it is gone, re-run the task that produced it.",
                    store_url=self.store.url,
                    group_path=self.group_path,
                    chunk_index=index,
                )
            return block
        if verify:
            self._check(index, block)
        return block

    def _expected(self, index: tuple[int, ...]) -> str:
        return self.digests[int(np.ravel_multi_index(index, self.grid))]

    def _fill_digest(self, block: np.ndarray) -> str:
        """Digest of a fill-value chunk of this shape, computed once per shape."""
        if block.shape not in self._fill_digests:
            self._fill_digests[block.shape] = chunk_digest(block)
        return self._fill_digests[block.shape]

    def to_dask(self, *, verify: bool = True) -> da.Array:
        """A lazy Dask array named after the content hash; one read task per stored chunk."""
        name = f"cpr-zarr-{self.content_hash}" + ("" if verify else "-unverified")
        reader_key = f"cpr-zarr-reader-{self.content_hash}"
        dsk: dict[Any, Any] = {reader_key: self}
        for index, _ in chunk_grid(self.shape, self.chunks):
            dsk[(name, *index)] = (_read_chunk, reader_key, index, verify)
        chunks = da.core.normalize_chunks(self.chunks, self.shape)
        meta = np.empty((0,) * len(self.shape), dtype=self.dtype)
        return da.Array(dsk, name, chunks, meta=meta)

    def to_numpy(self, *, verify: bool = True) -> np.ndarray:
        """Read everything into one array, one chunk per thread call, each verified as read.

        Raises
        ------
        ChunkVerificationError
            Naming the first chunk that cannot be read or does not match its digest.
        """
        out = np.empty(self.shape, dtype=self.dtype)

        def one(item: tuple[tuple[int, ...], tuple[slice, ...]]) -> None:
            index, region = item
            out[region] = self.read_chunk(index, verify, writeable=False)

        grid = list(chunk_grid(self.shape, self.chunks))
        list(thread_map(one, grid, worker_count(remote=self.store._local_path is None)))
        return out


def _read_chunk(reader: ChunkReader, index: tuple[int, ...], verify: bool) -> np.ndarray:
    return reader.read_chunk(tuple(index), verify)
