"""Per-chunk digests stored beside the data (layout 2): write a digest tree, read it verified.

A layout-2 commit record holds one digest-tree root per array (``digest_root``); the chunk
digests themselves are binary blocks under the group's non-node folder
(:func:`~cpr_zarr.model.layout.digest_block_key`), built by
:func:`~cpr_zarr.model.hashing.digest_tree`. The blocks are written before the commit
marker, so a committed result always has them; like chunks, they are a pure function of
the data, so concurrent writers of one result write identical blocks.

:class:`DigestTree` serves the digest of one chunk by reading one block per height of the
tree (two blocks up to a million chunks, at most 16 KiB each), each checked against the
verified block above it and the top one against the root, which the record (and, for the
base array, the content hash in the group path) vouches for. Verified blocks are kept in a
small per-tree cache.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import replace
from typing import TYPE_CHECKING

from cpr_zarr.core.codec import thread_map, worker_count
from cpr_zarr.model.hashing import DIGEST_SIZE, block_digest, digest_tree, tree_counts
from cpr_zarr.model.layout import DIGEST_BLOCK, digest_block_key

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from cpr_zarr.errors import ChunkVerificationError
    from cpr_zarr.model.records import ArrayRecord
    from cpr_zarr.storage import Storage

__all__ = ["CACHED_BLOCKS", "DigestTree", "store_digests", "write_tree"]

#: verified leaf blocks kept per tree (16 KiB each at most)
CACHED_BLOCKS = 64


def write_tree(storage: Storage, group_path: str, array_path: str, digests: Sequence[str]) -> str:
    """Store the digest tree of one array's chunk digests (C order); returns its root (hex)."""
    heights = digest_tree(b"".join(bytes.fromhex(d) for d in digests))
    jobs = [
        (f"{group_path}/{digest_block_key(array_path, height, index)}", block)
        for height, blocks in enumerate(heights)
        for index, block in enumerate(blocks)
    ]

    def one(job: tuple[str, bytes]) -> None:
        storage.set(*job)

    list(thread_map(one, jobs, worker_count(remote=storage.remote)))
    return block_digest(heights[-1][0]).hex()


def store_digests(storage: Storage, group_path: str, record: ArrayRecord) -> ArrayRecord:
    """``record`` with the chunk digests of every array (base, levels) moved into stored
    digest trees: ``chunk_digests`` replaced by ``digest_root``. Layout-1 records and
    records already stored are returned unchanged."""
    if record.layout == 1 or record.chunk_digests is None:
        return record
    root = write_tree(storage, group_path, record.array, record.chunk_digests)
    levels = tuple(
        level
        if level.chunk_digests is None
        else replace(
            level,
            chunk_digests=None,
            digest_root=write_tree(storage, group_path, level.path, level.chunk_digests),
        )
        for level in record.levels
    )
    return replace(record, chunk_digests=None, digest_root=root, levels=levels)


class DigestTree:
    """The verified chunk digests of one stored array, read a block at a time.

    ``fail(index, problem)`` builds the error for chunk ``index`` (flat, C order) when a
    block is missing or does not hash to what the block above (or the root) says.
    """

    def __init__(
        self,
        storage: Storage,
        group_path: str,
        array_path: str,
        count: int,
        root: str,
        fail: Callable[[int, str], ChunkVerificationError],
    ) -> None:
        self.storage = storage
        self.group_path = group_path
        self.array_path = array_path
        self.counts = tree_counts(count)
        self.root = bytes.fromhex(root)
        self._fail = fail
        self._upper: dict[tuple[int, int], bytes] = {}  # heights >= 1: few, all kept
        self._leaves: OrderedDict[int, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def digest(self, flat: int) -> str:
        """The recorded digest (hex) of chunk ``flat`` (its C-order position)."""
        if not 0 <= flat < self.counts[0]:
            raise IndexError(f"chunk {flat} of {self.counts[0]}")
        block = self._block(0, flat // DIGEST_BLOCK, flat)
        offset = (flat % DIGEST_BLOCK) * DIGEST_SIZE
        return block[offset : offset + DIGEST_SIZE].hex()

    def all(self) -> list[str]:
        """Every chunk digest (hex, C order), each block verified."""
        out: list[str] = []
        for index in range(-(-self.counts[0] // DIGEST_BLOCK)):
            block = self._block(0, index, index * DIGEST_BLOCK)
            out.extend(block[i : i + DIGEST_SIZE].hex() for i in range(0, len(block), DIGEST_SIZE))
        return out

    def _cached(self, height: int, index: int) -> bytes | None:
        with self._lock:
            if height:
                return self._upper.get((height, index))
            block = self._leaves.get(index)
            if block is not None:
                self._leaves.move_to_end(index)
            return block

    def _keep(self, height: int, index: int, block: bytes) -> None:
        with self._lock:
            if height:
                self._upper[(height, index)] = block
                return
            self._leaves[index] = block
            while len(self._leaves) > CACHED_BLOCKS:
                self._leaves.popitem(last=False)

    def _block(self, height: int, index: int, flat: int) -> bytes:
        block = self._cached(height, index)
        if block is not None:
            return block
        top = len(self.counts) - 1
        if height == top:
            expected = self.root
        else:
            parent = self._block(height + 1, index // DIGEST_BLOCK, flat)
            offset = (index % DIGEST_BLOCK) * DIGEST_SIZE
            expected = parent[offset : offset + DIGEST_SIZE]
        key = digest_block_key(self.array_path, height, index)
        raw = self.storage.get(f"{self.group_path}/{key}")
        if raw is None:
            raise self._fail(flat, f"its digest block {key!r} is missing")
        entries = min(DIGEST_BLOCK, self.counts[height] - index * DIGEST_BLOCK)
        if len(raw) != max(0, entries) * DIGEST_SIZE or block_digest(raw) != expected:
            raise self._fail(
                flat,
                f"its digest block {key!r} is damaged (it does not hash to the digest the "
                f"{'commit record' if height == top else 'digest block above it'} names)",
            )
        self._keep(height, index, raw)
        return raw
