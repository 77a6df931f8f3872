"""Stores of many results: open by hash prefix, a save's dedup check, ``store.list()``,
``cpr-zarr ls`` and a gc plan, at 100 / 10,000 / 100,000 results (``full``).

The baseline is what a store without catalog does (and what cpr_zarr did before it): a
listing of the root and a read of every result's commit record and provenance
(``catalog.scan``), timed up to 10,000 results (at 100,000 it takes many minutes).

Stores are generated quickly (:func:`make_store`): the first result is a real
``store.save``; every other one is written through the same core functions a save ends
with (array metadata, its chunk, the commit marker, a copy of the first result's provenance
record, the journal segment and the index key), without the per-save hashing, lease and dedup work. Each
result is a 4-element uint32 array of its own content. ``benchmarks/catalog_s3.py`` measures
the same operations on the S3 server on loopback, with request counts.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import scratch_dir, size_mode

SHAPE = (4,)
DTYPE = np.dtype("uint32")
_SIZES = {"full": [100, 10_000, 100_000], "small": [100, 1_000, 10_000], "tiny": [100]}
SCAN_LIMIT = 10_000  # the baseline is timed up to this many results


def value(i: int) -> np.ndarray:
    return np.arange(4, dtype=DTYPE) + DTYPE.type(i)


def make_store(url: str, n: int, **options: Any) -> Any:
    """A store of ``n`` results named ``r<i>`` (see the module docstring)."""
    import zarr

    import cpr_zarr
    from cpr_zarr.core import journal
    from cpr_zarr.core.codec import ChunkCodec
    from cpr_zarr.core.integrity import write_marker
    from cpr_zarr.core.provenance import PROVENANCE, read_provenance
    from cpr_zarr.model.hashing import chunk_digest, combine_digests
    from cpr_zarr.model.records import ArrayRecord, ResultDocument
    from cpr_zarr.target import ZarrTarget

    store = cpr_zarr.ResultStore(url, **options)
    first = store.save(value(0), "r0")
    storage = store.storage
    meta = storage.get(f"{first.group_path}/0/zarr.json")
    assert meta is not None
    chunk_key = "c/0"
    scratch: dict[str, Any] = {}
    # chunks are encoded by an in-memory array with the stored array's codecs
    stored = zarr.open_array(storage.zarr_store, path=f"{first.group_path}/0", mode="r")
    codec = ChunkCodec(
        zarr.create_array(
            zarr.storage.MemoryStore(scratch),
            shape=SHAPE,
            chunks=SHAPE,
            dtype=DTYPE,
            compressors=stored.compressors,
        )
    )
    # every result gets a copy of the first one's provenance record (writing a new one
    # costs more than everything else here: package versions, secret redaction)
    (produced,) = read_provenance(storage, first.group_path)
    source = f"{first.group_path}/{PROVENANCE}"
    documents = {e.key: storage.get(f"{source}/{e.key}") for e in storage.walk(source)}
    chance = journal.COMPACT_CHANCE
    journal.COMPACT_CHANCE = 10**12  # compact once at the end, not while generating
    try:
        for i in range(1, n):
            data = value(i)
            digest = chunk_digest(data)
            content_hash = combine_digests(SHAPE, DTYPE, SHAPE, [digest])
            path = f"r{i}-{content_hash}"
            storage.set(f"{path}/0/zarr.json", meta)
            codec.write((0,), data)
            storage.set(f"{path}/0/{chunk_key}", scratch[chunk_key].to_bytes())
            record = ArrayRecord(
                content_hash=content_hash,
                name=f"r{i}",
                shape=SHAPE,
                dtype=DTYPE.name,
                chunks=SHAPE,
                chunk_digests=(digest,),
            )
            write_marker(storage, path, ResultDocument(record=record))
            target = ZarrTarget(
                store_url=storage.url,
                group_path=path,
                content_hash=content_hash,
                shape=SHAPE,
                dtype=DTYPE.name,
                chunks=SHAPE,
            )
            for key, doc in documents.items():
                storage.set(f"{path}/{PROVENANCE}/{key}", doc or b"")
            journal.note_saved(storage, target, "array", produced)
    finally:
        journal.COMPACT_CHANCE = chance
    # as saves and listings leave a store, compacting as it goes: the second compaction
    # deletes the segments the first merged, the third writes a snapshot no longer naming them
    for _ in range(3):
        journal.compact(storage)
    return store


class StoreOfManyResults:
    """Local folder stores of 100 / 10,000 / 100,000 results."""

    params = [_SIZES[size_mode()]]
    param_names = ["results"]
    timeout = 3600.0
    number = 1
    repeat = 3

    def setup_cache(self) -> dict[int, str]:
        root = scratch_dir("catalog")
        paths = {}
        for n in self.params[0]:
            path = root / f"store-{n}.zarr"
            make_store(str(path), n)
            paths[n] = str(path)
        return paths

    def setup(self, paths: dict[int, str], n: int) -> None:
        import cpr_zarr
        from cpr_zarr.model.hashing import chunk_digest, combine_digests

        self.url = paths[n]
        self.store = cpr_zarr.ResultStore(self.url, mode="r")
        self.prefix = combine_digests(SHAPE, DTYPE, SHAPE, [chunk_digest(value(n // 2))])[:8]
        # a content no result has: what the dedup check of a new save looks up
        self.absent = combine_digests(SHAPE, DTYPE, SHAPE, [chunk_digest(value(10**9))])
        self.n = n
        self.writable = cpr_zarr.ResultStore(self.url)
        self.next = int(time.time() * 1000) % 10**9  # new content in every sample

    def time_save_new_result(self, paths: dict[int, str], n: int) -> None:
        """A whole ``store.save`` of a new tiny result: hash, dedup check, write, commit,
        provenance, journal (the store grows by one result per sample)."""
        self.next += 1
        self.writable.save(value(10**9 + self.next), "new")

    def time_open_by_prefix(self, paths: dict[int, str], n: int) -> None:
        self.store.open(self.prefix)

    def time_dedup_check(self, paths: dict[int, str], n: int) -> None:
        from cpr_zarr.core import catalog

        catalog.find(self.store.storage, self.absent, preferred=f"new-{self.absent}")

    def time_store_list(self, paths: dict[int, str], n: int) -> None:
        self.store.list()

    def time_gc_plan(self, paths: dict[int, str], n: int) -> None:
        from cpr_zarr.core.inventory import plan_gc

        plan_gc(self.store.storage, older_than=10 * 86400, max_size=2**40)

    def time_cli_ls(self, paths: dict[int, str], n: int) -> None:
        """``cpr-zarr ls`` as a user runs it: a new process (its start-up included)."""
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        subprocess.run(
            [sys.executable, "-m", "cpr_zarr", "ls", self.url],
            check=True,
            stdout=subprocess.DEVNULL,
            env=env,
        )

    def time_baseline_list_by_scan(self, paths: dict[int, str], n: int) -> None:
        """What a listing costs without catalog: every commit record and provenance read."""
        from cpr_zarr.core import catalog
        from cpr_zarr.core.inventory import result_row

        if n > SCAN_LIMIT:
            raise NotImplementedError  # minutes per run; asv reports it as n/a
        found, _ = catalog.scan(self.store.storage)
        [result_row(self.store.storage, t) for t in found]

    def track_catalog_bytes(self, paths: dict[int, str], n: int) -> int:
        """Bytes of the catalog's snapshot (what a listing reads, compressed)."""
        from cpr_zarr.core import journal

        snaps = sorted((Path(self.url) / journal.SNAP).iterdir())
        return snaps[-1].stat().st_size

    track_catalog_bytes.unit = "bytes"  # type: ignore[attr-defined]
