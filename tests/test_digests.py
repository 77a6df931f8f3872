"""Layout 2: chunk digests as a binary hash tree beside the data, protected by the content hash.

The commit record holds one root per array; a chunk read fetches one digest block per
height of the tree (two up to a million chunks), each verified against the block above it
and the top one against the root. Tampering with any block is detected on the read of a
chunk it covers; reading one chunk reads a bounded number of bytes of digest data.
"""

from __future__ import annotations

import itertools
import json
import os
from typing import TYPE_CHECKING

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cpr_zarr
from cpr_zarr.core.reader import ChunkReader, forget_reader
from cpr_zarr.errors import ChunkVerificationError, IntegrityError
from cpr_zarr.model.hashing import (
    DIGEST_SIZE,
    block_digest,
    combine_digests,
    content_hash_of_root,
    digest_tree,
    tree_counts,
)
from cpr_zarr.model.layout import DIGEST_BLOCK
from tests.counting_fs import LOG_ENV

if TYPE_CHECKING:
    from pathlib import Path

# 2 full leaf blocks and a partial one: the tree has two heights (3 leaf blocks, 1 top block)
COUNT = 2 * DIGEST_BLOCK + 37


def sparse_vector(count: int = COUNT) -> np.ndarray:
    """One uint8 value per chunk, mostly zeros: zarr stores only the non-zero chunks."""
    data = np.zeros(count, dtype=np.uint8)
    places = [i for i in (3, DIGEST_BLOCK + 5, 2 * DIGEST_BLOCK + 1) if i < count]
    data[places] = [7, 8, 9][: len(places)]
    return data


@pytest.fixture
def tree_store(tmp_path: Path) -> tuple[cpr_zarr.ResultStore, cpr_zarr.ZarrTarget, Path]:
    store = cpr_zarr.ResultStore(tmp_path / "results.zarr")
    target = store.save(sparse_vector(), "sparse", chunks=(1,))
    return store, target, tmp_path / "results.zarr" / target.group_path


def fresh_reader(url: str, target: cpr_zarr.ZarrTarget) -> ChunkReader:
    """A new reader (no digest blocks cached) of ``target`` in a new store object."""
    store = cpr_zarr.ResultStore(url)
    forget_reader(store.storage, target.group_path)
    return store.reader(store.open(target.group_path))


def block(group: Path, height: int, index: int) -> Path:
    return group / "cpr_zarr" / "digests" / "0" / str(height) / str(index)


@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=0, max_value=3 * DIGEST_BLOCK + 3))
def test_the_tree_has_one_top_block_and_its_root_makes_the_content_hash(count: int) -> None:
    leaves = os.urandom(count * DIGEST_SIZE)
    heights = digest_tree(leaves)
    assert len(heights[-1]) == 1
    assert [sum(len(b) for b in h) // DIGEST_SIZE for h in heights] == tree_counts(count)
    assert b"".join(heights[0]) == leaves
    for below, above in itertools.pairwise(heights):
        assert b"".join(above) == b"".join(block_digest(b) for b in below)
    digests = [leaves[i : i + DIGEST_SIZE].hex() for i in range(0, len(leaves), DIGEST_SIZE)]
    shape, dtype, chunks = (max(count, 1),), np.dtype("uint8"), (1,)
    root = block_digest(heights[-1][0]).hex()
    assert combine_digests(shape, dtype, chunks, digests) == content_hash_of_root(
        shape, dtype, chunks, root
    )
    # layout 1 hashes the digests themselves: another hash for the same digests
    assert combine_digests(shape, dtype, chunks, digests, layout=1) != content_hash_of_root(
        shape, dtype, chunks, root
    )


def test_two_heights_up_to_a_million_chunks() -> None:
    assert len(tree_counts(2**20)) == 2
    assert tree_counts(2**20) == [2**20, 2**20 // DIGEST_BLOCK]
    assert len(tree_counts(2**30)) == 3


def test_the_commit_record_does_not_grow_with_the_chunk_count(tmp_path: Path) -> None:
    store = cpr_zarr.ResultStore(tmp_path / "results.zarr")
    few = store.save(sparse_vector(10), "v", chunks=(1,))
    many = store.save(sparse_vector(), "v", chunks=(1,))
    sizes = [
        len((tmp_path / "results.zarr" / t.group_path / "zarr.json").read_bytes())
        for t in (few, many)
    ]
    assert abs(sizes[0] - sizes[1]) <= 4  # only the digits of shape and chunk counts differ
    assert sizes[1] < 1024
    blocks = sorted(
        p.relative_to(tmp_path / "results.zarr" / many.group_path).as_posix()
        for p in (tmp_path / "results.zarr" / many.group_path / "cpr_zarr").rglob("*")
        if p.is_file() and "digests" in p.parts
    )
    assert blocks == [
        "cpr_zarr/digests/0/0/0",
        "cpr_zarr/digests/0/0/1",
        "cpr_zarr/digests/0/0/2",
        "cpr_zarr/digests/0/1/0",
    ]


def test_a_tampered_digest_block_is_detected_on_a_read_of_its_chunks(
    tree_store: tuple[cpr_zarr.ResultStore, cpr_zarr.ZarrTarget, Path],
) -> None:
    store, target, group = tree_store
    leaf = block(group, 0, 1)  # the digests of chunks 1024 to 2047
    raw = bytearray(leaf.read_bytes())
    raw[5 * DIGEST_SIZE] ^= 1  # the digest of chunk 1029 (stored, value 8)
    leaf.write_bytes(bytes(raw))
    reader = fresh_reader(store.url, target)
    with pytest.raises(
        ChunkVerificationError, match=r"digest block 'cpr_zarr/digests/0/0/1' is damaged"
    ) as info:
        reader.read_chunk((DIGEST_BLOCK + 5,))
    assert info.value.chunk_index == (DIGEST_BLOCK + 5,)
    assert info.value.group_path == target.group_path
    with pytest.raises(ChunkVerificationError, match="0/0/1"):
        reader.read_chunk((DIGEST_BLOCK + 6,))  # a fill chunk: its digest is checked too
    # chunks of the other blocks still read and verify
    assert reader.read_chunk((3,)).tolist() == [7]
    assert reader.read_chunk((2 * DIGEST_BLOCK + 1,)).tolist() == [9]
    report = cpr_zarr.ResultStore(store.url).verify()
    assert not report.ok
    assert report.failed_chunks == DIGEST_BLOCK
    assert report.damaged_data == [target.group_path]


def test_swapped_or_missing_leaf_blocks_are_detected(
    tree_store: tuple[cpr_zarr.ResultStore, cpr_zarr.ZarrTarget, Path],
) -> None:
    store, target, group = tree_store
    first, second = block(group, 0, 0), block(group, 0, 1)
    a, b = first.read_bytes(), second.read_bytes()
    first.write_bytes(b)
    second.write_bytes(a)
    with pytest.raises(ChunkVerificationError, match="0/0/0' is damaged"):
        fresh_reader(store.url, target).read_chunk((3,))
    first.unlink()
    with pytest.raises(ChunkVerificationError, match="0/0/0' is missing"):
        fresh_reader(store.url, target).read_chunk((3,))


def test_a_tampered_block_index_is_detected(
    tree_store: tuple[cpr_zarr.ResultStore, cpr_zarr.ZarrTarget, Path],
) -> None:
    """The top block lists the leaf blocks' digests: changing it (even to entries that
    match re-hashed, forged leaf blocks) no longer hashes to the root the record holds."""
    store, target, group = tree_store
    leaf = block(group, 0, 1)
    forged = bytearray(leaf.read_bytes())
    forged[5 * DIGEST_SIZE : 6 * DIGEST_SIZE] = bytes(DIGEST_SIZE)
    leaf.write_bytes(bytes(forged))
    top = block(group, 1, 0)
    index = bytearray(top.read_bytes())
    index[DIGEST_SIZE : 2 * DIGEST_SIZE] = block_digest(bytes(forged))  # consistent forgery
    top.write_bytes(bytes(index))
    reader = fresh_reader(store.url, target)
    for chunk in (3, DIGEST_BLOCK + 5):  # every chunk goes through the top block
        with pytest.raises(
            ChunkVerificationError,
            match=r"digest block 'cpr_zarr/digests/0/1/0' is damaged \(it does not hash to "
            r"the digest the commit record names\)",
        ):
            reader.read_chunk((chunk,))
    # and a root changed in the record no longer hashes to the content hash in the path
    marker = group / "zarr.json"
    doc = json.loads(marker.read_text())
    doc["attributes"]["cpr_zarr"]["digest_root"] = block_digest(bytes(index)).hex()
    marker.write_text(json.dumps(doc))
    forget_reader(store.storage, target.group_path)
    with pytest.raises(IntegrityError, match="digest_root"):
        cpr_zarr.ResultStore(store.url).open(target.group_path)


def test_reading_one_chunk_reads_a_bounded_amount_of_digest_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"countfile://{tmp_path}/results.zarr"
    target = cpr_zarr.ResultStore(url).save(sparse_vector(), "sparse", chunks=(1,))
    log = tmp_path / "reads.log"
    monkeypatch.setenv(LOG_ENV, str(log))
    reader = fresh_reader(url, target)
    assert reader.read_chunk((DIGEST_BLOCK + 5,)).tolist() == [8]

    def digest_reads() -> list[str]:
        lines = log.read_text().splitlines()
        return [line.split(" ", 1)[1] for line in lines if "/cpr_zarr/digests/" in line]

    read = digest_reads()
    assert [p.rsplit("/digests/", 1)[1] for p in read] == ["0/1/0", "0/0/1"]
    assert sum(os.path.getsize(p) for p in read) <= 2 * DIGEST_BLOCK * DIGEST_SIZE
    # another chunk of the same block: no digest data read again
    assert reader.read_chunk((DIGEST_BLOCK + 6,)).tolist() == [0]
    assert len(digest_reads()) == 2


def test_verify_repair_rebuilds_damaged_digest_blocks_from_chunks_that_still_hash(
    tree_store: tuple[cpr_zarr.ResultStore, cpr_zarr.ZarrTarget, Path],
) -> None:
    store, target, group = tree_store
    leaf, top = block(group, 0, 1), block(group, 1, 0)
    original = leaf.read_bytes(), top.read_bytes()
    leaf.write_bytes(b"\0" + original[0][1:])
    top.unlink()
    forget_reader(store.storage, target.group_path)
    report = cpr_zarr.ResultStore(store.url).verify(repair=True)
    assert report.ok, report.problems
    assert report.repaired == [
        f"rebuilt the digest blocks of {target.group_path!r} (arrays ['0']) from its chunks"
    ]
    assert (leaf.read_bytes(), top.read_bytes()) == original
    # changed data is never vouched for by rebuilt digests
    chunks = group / "0" / "c"
    (chunks / str(DIGEST_BLOCK + 5)).write_bytes((chunks / "3").read_bytes())  # 8 -> 7
    leaf.write_bytes(b"\0" + original[0][1:])
    forget_reader(store.storage, target.group_path)
    report = cpr_zarr.ResultStore(store.url).verify(repair=True)
    assert not report.ok
    assert report.repaired == []
    assert leaf.read_bytes() != original[0]
