"""Digests that scale (layout 2): commit document size and open + read one chunk at 1 k to
1 M chunks, beside plain zarr and ``da.from_zarr`` on the same array.

One result per chunk count: a 2-D uint8 array in 1 x 1 chunks, zero but for one chunk (zarr
stores only that one; every chunk still has its digest). Saving a million chunks one at a
time through ``store.save`` takes most of an hour on a laptop, so the fixture is committed
with cpr_zarr's own building blocks instead (array metadata, the chunk, the digest of every
chunk, :func:`~cpr_zarr.core.integrity.write_marker`): the same files ``save`` writes, and
the result verifies like any other.

* ``track_commit_document_bytes``: the commit marker ``<group>/zarr.json`` (the record that
  every open and every listing reads); ``track_layout_1_document_bytes`` what layout 1 wrote
  for the same result (every chunk digest as JSON in it).
* ``track_digest_bytes_read``: bytes of digest blocks read to open the result and read one
  chunk (fresh reader).
* ``time_cpr_open_read_chunk``: ``store.open(path)`` then the verified read of one chunk by
  the result's chunk reader, with no reader cached; ``time_cpr_open_get_data``: the same
  through the lazy Dask array a task receives (``target.get_data()[i, j].compute()``).
* ``time_dask_from_zarr``: ``da.from_zarr(zarr.open_array(...))[i, j].compute()``;
  ``time_zarr``: ``zarr.open_array(...)[i, j]``.

Chunk counts come from ``CPR_ZARR_BENCH_SIZE``: full 1 k / 131 k / 1 M; small 1 k / 131 k;
tiny 1 k / 4 k.
"""

from __future__ import annotations

import json
import math
import os

import dask.array as da
import numpy as np
import zarr

import cpr_zarr
from benchmarks import common  # first: sets Prefect's environment before prefect is imported
from cpr_zarr.core.arrays import claim_array
from cpr_zarr.core.codec import ChunkCodec
from cpr_zarr.core.digests import DigestTree
from cpr_zarr.core.integrity import write_marker
from cpr_zarr.core.reader import forget_reader
from cpr_zarr.errors import ChunkVerificationError
from cpr_zarr.model.hashing import chunk_digest, combine_digests
from cpr_zarr.model.layout import group_path
from cpr_zarr.model.records import ArrayRecord, ResultDocument

_COUNTS = {
    "full": [1_000, 131_072, 1_048_576],
    "small": [1_000, 131_072],
    "tiny": [1_000, 4_096],
}
COUNTS = _COUNTS[common.size_mode()]
SHAPES = {1_000: (40, 25), 4_096: (64, 64), 131_072: (256, 512), 1_048_576: (1024, 1024)}
STORED = (5, 7)  # the one stored (non-zero) chunk, the one every benchmark reads


def commit_sparse(store: cpr_zarr.ResultStore, count: int) -> str:
    """Commit a zero uint8 array of ``count`` 1 x 1 chunks with one non-zero chunk."""
    shape, dtype, chunks = SHAPES[count], np.dtype("uint8"), (1, 1)
    zero = chunk_digest(np.zeros(chunks, dtype=dtype))
    value = np.full(chunks, 3, dtype=dtype)
    digests = [zero] * count
    digests[int(np.ravel_multi_index(STORED, shape))] = chunk_digest(value)
    content_hash = combine_digests(shape, dtype, chunks, digests)
    path = group_path(f"chunks{count}", content_hash)
    array = claim_array(store.storage, f"{path}/0", shape, dtype, chunks, common.codec())
    if array is None:  # pragma: no cover - a fresh folder
        raise RuntimeError(f"{path}/0 holds another array")
    ChunkCodec(array).write(STORED, value)
    record = ArrayRecord(
        content_hash=content_hash,
        name=f"chunks{count}",
        shape=shape,
        dtype=dtype.name,
        chunks=chunks,
        chunk_digests=tuple(digests),
    )
    write_marker(store.storage, path, ResultDocument(record=record))
    return path


def _refuse(flat: int, problem: str) -> ChunkVerificationError:
    return ChunkVerificationError(
        f"chunk {flat}: {problem}", store_url="", group_path="", chunk_index=(flat,)
    )


class DigestScale:
    params = (COUNTS,)
    param_names = ["chunks"]
    repeat = (3, 10, 30.0)
    warmup_time = 0.0
    timeout = 1800

    def setup_cache(self):
        store = cpr_zarr.ResultStore(os.path.join(os.getcwd(), "digests.zarr"))
        paths = {count: commit_sparse(store, count) for count in COUNTS}
        return {"store": store.url, "paths": paths}

    def setup(self, cache, count):
        self.url = cache["store"]
        self.path = cache["paths"][count]
        self.store = cpr_zarr.ResultStore(self.url, mode="r")
        self.sel = tuple(slice(i, i + 1) for i in STORED)
        # pay for lazy imports and thread pools once, on another array of the store
        warm = cache["paths"][COUNTS[0]]
        self.store.reader(self.store.open(warm)).read_chunk(STORED)
        da.from_zarr(zarr.open_array(self.url, path=f"{warm}/0", mode="r"))[self.sel].compute()

    def _fresh(self) -> cpr_zarr.ZarrTarget:
        forget_reader(self.store.storage, self.path)
        return self.store.open(self.path)

    def time_cpr_open_read_chunk(self, cache, count):
        target = self._fresh()
        self.store.reader(target).read_chunk(STORED)

    def time_cpr_open_get_data(self, cache, count):
        self._fresh().get_data()[self.sel].compute()

    def time_dask_from_zarr(self, cache, count):
        da.from_zarr(zarr.open_array(self.url, path=f"{self.path}/0", mode="r"))[self.sel].compute()

    def time_zarr(self, cache, count):
        zarr.open_array(self.url, path=f"{self.path}/0", mode="r")[self.sel]

    def track_commit_document_bytes(self, cache, count):
        return len(self.store.storage.get(f"{self.path}/zarr.json") or b"")

    track_commit_document_bytes.unit = "bytes"

    def track_layout_1_document_bytes(self, cache, count):
        doc = json.loads(self.store.storage.get(f"{self.path}/zarr.json") or b"{}")
        record = doc["attributes"]["cpr_zarr"]
        tree = DigestTree(self.store.storage, self.path, "0", count, record["digest_root"], _refuse)
        digests = tree.all()
        record.pop("digest_root")
        record["chunk_digests"] = digests
        return len(json.dumps(doc, indent=2).encode())

    track_layout_1_document_bytes.unit = "bytes"

    def track_digest_bytes_read(self, cache, count):
        storage = self.store.storage
        read: list[int] = []
        get = storage.get

        def counting_get(key: str) -> bytes | None:
            data = get(key)
            if "/cpr_zarr/digests/" in key and data is not None:
                read.append(len(data))
            return data

        storage.get = counting_get  # type: ignore[method-assign]
        try:
            self.store.reader(self._fresh()).read_chunk(STORED)
        finally:
            del storage.get
        return sum(read)

    track_digest_bytes_read.unit = "bytes"

    def track_chunks(self, cache, count):
        return math.prod(SHAPES[count])
