"""Content hashes: one xxh3-128 digest per chunk, combined into one content hash (pure).

The chunk digest covers the chunk's *decoded* values as little-endian C-order bytes
(the valid region only, so edge chunks do not depend on fill values). Compressed bytes
are never hashed: multithreaded Blosc output is not deterministic. The content hash is
``blake2b-128(header || digests)`` where the header is canonical JSON of the algorithm,
layout version, shape, dtype and chunk shape, so equal bytes with another shape, dtype
or chunking never collide.

Layout 2 (:data:`TREE_ALGORITHM`) keeps the chunk digests but no longer hashes them in one
run: they form a hash tree (:func:`digest_tree`). Height 0 cuts the 16-byte chunk digests
(C order) into blocks of :data:`~cpr_zarr.model.layout.DIGEST_BLOCK`; each height above
holds the blake2b-128 digests of the blocks below, cut the same way, up to a height of one
block, whose digest is the *root*. The content hash is ``blake2b-128(header || root)``, so
a record holds one root per array whatever its chunk count, and one chunk is verified by
reading one block per height (two up to a million chunks), each checked against the
block above it and the top one against the root the content hash vouches for.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

import numpy as np
import xxhash

from cpr_zarr.model.layout import DIGEST_BLOCK, LAYOUT_VERSION

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = [
    "ALGORITHM",
    "DIGEST_SIZE",
    "TABLE_ALGORITHM",
    "TABLE_ALGORITHMS",
    "TABLE_DTYPE",
    "TABLE_PARQUET_ALGORITHM",
    "TREE_ALGORITHM",
    "algorithm_for",
    "array_fingerprint",
    "block_digest",
    "chunk_digest",
    "combine_digests",
    "content_hash_of_root",
    "digest_tree",
    "table_hash",
    "tree_counts",
]

#: layout 1: the content hash runs over every chunk digest
ALGORITHM = "xxh3_128-per-chunk+blake2b-128"
#: layout 2: the content hash runs over the root of the chunk digests' hash tree
TREE_ALGORITHM = f"xxh3_128-per-chunk+blake2b-128-tree{DIGEST_BLOCK}"
DIGEST_SIZE = 16
_TREE_PERSON = b"cpr-zarr-tree"
# tables (cpr_zarr.core.table): the dtype their pointers carry, and their hash algorithm
TABLE_DTYPE = "table"
TABLE_ALGORITHM = "cpr-table-1:xxh3_128+blake2b-128"
# tables stored as one parquet file (the Fractal/ngio layout): the same digests of decoded
# values (values under a missing-value mask zeroed), and the label image a feature table
# belongs to (``region``), which is part of what it is
TABLE_PARQUET_ALGORITHM = "cpr-table-2:xxh3_128+blake2b-128"
TABLE_ALGORITHMS = (TABLE_ALGORITHM, TABLE_PARQUET_ALGORITHM)


def _canonical_bytes(block: np.ndarray) -> memoryview:
    dt = block.dtype.newbyteorder("<") if block.dtype.itemsize > 1 else block.dtype
    return memoryview(np.ascontiguousarray(block, dtype=dt)).cast("B")  # type: ignore[arg-type]


def chunk_digest(block: np.ndarray) -> str:
    """Hex xxh3-128 digest of one chunk's decoded values."""
    return xxhash.xxh3_128_hexdigest(_canonical_bytes(block))


def algorithm_for(layout: int) -> str:
    """The array hash algorithm of a record layout."""
    return ALGORITHM if layout == 1 else TREE_ALGORITHM


def _header(shape: tuple[int, ...], dtype: np.dtype, chunks: tuple[int, ...], layout: int) -> bytes:
    return json.dumps(
        {
            "algorithm": algorithm_for(layout),
            "layout": layout,
            "shape": list(shape),
            "dtype": np.dtype(dtype).name,
            "chunks": list(chunks),
        },
        sort_keys=True,
        separators=(",", ":"),
    ).encode()


def combine_digests(
    shape: tuple[int, ...],
    dtype: np.dtype,
    chunks: tuple[int, ...],
    digests: Iterable[str],
    *,
    layout: int = LAYOUT_VERSION,
) -> str:
    """Combine per-chunk digests (C order) with the array's header into the content hash."""
    if layout != 1:
        leaves = b"".join(bytes.fromhex(d) for d in digests)
        root = block_digest(digest_tree(leaves)[-1][0])
        return content_hash_of_root(shape, dtype, chunks, root.hex())
    h = hashlib.blake2b(_header(shape, dtype, chunks, 1), digest_size=DIGEST_SIZE)
    for digest in digests:
        h.update(bytes.fromhex(digest))
    return h.hexdigest()


def content_hash_of_root(
    shape: tuple[int, ...], dtype: np.dtype, chunks: tuple[int, ...], root: str
) -> str:
    """The layout-2 content hash of an array whose digest tree has root ``root`` (hex)."""
    h = hashlib.blake2b(_header(shape, dtype, chunks, 2), digest_size=DIGEST_SIZE)
    h.update(bytes.fromhex(root))
    return h.hexdigest()


def block_digest(block: bytes) -> bytes:
    """The digest of one block of a digest tree (blake2b-128, personalised for the tree)."""
    return hashlib.blake2b(block, digest_size=DIGEST_SIZE, person=_TREE_PERSON).digest()


def tree_counts(count: int) -> list[int]:
    """How many digests each height of the tree of ``count`` chunk digests holds; the last
    height holds at most one block's worth (one block: its digest is the root)."""
    counts = [count]
    while counts[-1] > DIGEST_BLOCK:
        counts.append(-(-counts[-1] // DIGEST_BLOCK))
    return counts


def digest_tree(leaves: bytes) -> list[list[bytes]]:
    """The blocks of every height of the digest tree over ``leaves`` (concatenated 16-byte
    chunk digests); the last height has one block, whose :func:`block_digest` is the root."""
    size = DIGEST_BLOCK * DIGEST_SIZE
    heights: list[list[bytes]] = []
    level = leaves
    while True:
        blocks = [level[i : i + size] for i in range(0, len(level), size)] or [b""]
        heights.append(blocks)
        if len(blocks) == 1:
            return heights
        level = b"".join(block_digest(b) for b in blocks)


def array_fingerprint(array: np.ndarray) -> str:
    """A fast content hash of a whole in-memory array, for cache keys (not a store hash)."""
    header = f"{np.dtype(array.dtype).name}:{array.shape}:".encode()
    h = xxhash.xxh3_128(header)
    h.update(_canonical_bytes(array))
    return h.hexdigest()


def table_hash(
    schema: dict[str, Any],
    digests: dict[str, str],
    *,
    algorithm: str = TABLE_ALGORITHM,
    region: str | None = None,
) -> str:
    """The content hash of a table: its schema and the digest of every stored array.

    ``algorithm`` is :data:`TABLE_ALGORITHM` (one zarr array per column) or
    :data:`TABLE_PARQUET_ALGORITHM` (one parquet file; ``region`` is then the label image a
    feature table describes, or None). Here, not beside the table code, so that checking a
    table's record (every listing does) does not import pandas.
    """
    content: dict[str, Any] = {"algorithm": algorithm, "schema": schema, "digests": digests}
    if algorithm != TABLE_ALGORITHM:
        content["region"] = region
    canonical = json.dumps(
        content,
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.blake2b(canonical.encode(), digest_size=16).hexdigest()
