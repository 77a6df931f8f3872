"""Content hashes: one xxh3-128 digest per chunk, combined into one content hash (pure).

The chunk digest covers the chunk's *decoded* values as little-endian C-order bytes
(the valid region only, so edge chunks do not depend on fill values). Compressed bytes
are never hashed: multithreaded Blosc output is not deterministic. The content hash is
``blake2b-128(header || digests)`` where the header is canonical JSON of the algorithm,
layout version, shape, dtype and chunk shape, so equal bytes with another shape, dtype
or chunking never collide.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

import numpy as np
import xxhash

from cpr_zarr.model.layout import LAYOUT_VERSION

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = [
    "ALGORITHM",
    "TABLE_ALGORITHM",
    "TABLE_ALGORITHMS",
    "TABLE_DTYPE",
    "TABLE_PARQUET_ALGORITHM",
    "array_fingerprint",
    "chunk_digest",
    "combine_digests",
    "table_hash",
]

ALGORITHM = "xxh3_128-per-chunk+blake2b-128"
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


def combine_digests(
    shape: tuple[int, ...], dtype: np.dtype, chunks: tuple[int, ...], digests: Iterable[str]
) -> str:
    """Combine per-chunk digests (C order) with the array's header into the content hash."""
    header = json.dumps(
        {
            "algorithm": ALGORITHM,
            "layout": LAYOUT_VERSION,
            "shape": list(shape),
            "dtype": np.dtype(dtype).name,
            "chunks": list(chunks),
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    h = hashlib.blake2b(header.encode(), digest_size=16)
    for digest in digests:
        h.update(bytes.fromhex(digest))
    return h.hexdigest()


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
