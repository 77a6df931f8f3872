"""Multiscale levels, written chunk by chunk with bounded memory.

Each chunk of level ``i`` is one job on a thread per core: read the ``f``-times larger
region of level ``i - 1`` it covers (from the in-memory array for level 1 when the base
was saved from numpy, else from the store, chunk by chunk), downsample it, write and hash
it. Memory stays at a few regions per thread whatever the image size. Images are
downsampled by the mean (integers rounded half to even, computed exactly), label images
and masks by nearest (strided) sampling, which never invents label values. Every level's
chunks are hashed like the base level's and recorded in ``cpr_zarr.levels``, so reads of
any level are verified; the content hash still identifies the base level only.

The default (``levels=None``) halves the finest space axes until no space axis is longer
than :data:`AUTO_MIN_SIZE` pixels: a 256 x 2048 x 2048 volume gets 3 levels, the 60 x 256 x
256 example stack none.
"""

from __future__ import annotations

import itertools
import math
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr

from cpr_zarr.core.arrays import claim_array, store_chunk
from cpr_zarr.core.codec import ChunkCodec, thread_map, worker_count
from cpr_zarr.core.progress import SaveProgress, count_keys
from cpr_zarr.core.reader import ChunkReader, open_reader
from cpr_zarr.errors import InvalidArgumentTypeError, StoreError
from cpr_zarr.model.layout import chunk_grid
from cpr_zarr.model.ngff import MAX_LEVELS
from cpr_zarr.model.records import ArrayRecord, LevelArrayAttrs, LevelRecord
from cpr_zarr.storage import open_storage

if TYPE_CHECKING:
    import dask.array as da

    from cpr_zarr.model.ngff import ImageMeta
    from cpr_zarr.storage import Storage
    from cpr_zarr.target import ZarrTarget

__all__ = [
    "AUTO_MIN_SIZE",
    "MAX_LEVELS",
    "downsample",
    "plan_levels",
    "read_level",
    "read_region",
    "write_levels",
]

AUTO_MIN_SIZE = 512


def plan_levels(
    shape: tuple[int, ...], meta: ImageMeta, levels: int | None
) -> list[tuple[int, ...]]:
    """The downsampling step (per axis) from each level to the next: ``levels - 1`` entries.

    Each step halves the space axes whose pixel size is within 1.5x of the finest one (so an
    anisotropic z is only halved once x and y caught up) and that are longer than 1 pixel.
    """
    space = meta.space_axes
    cur_shape, cur_scale = list(shape), list(meta.scale)
    wanted = levels if levels is not None else MAX_LEVELS
    steps: list[tuple[int, ...]] = []
    while len(steps) + 1 < wanted:
        if levels is None and max(cur_shape[i] for i in space) <= AUTO_MIN_SIZE:
            break
        candidates = [i for i in space if cur_shape[i] > 1]
        if not candidates:
            break
        finest = min(cur_scale[i] for i in candidates)
        step = tuple(
            2 if i in candidates and cur_scale[i] <= finest * 1.5 else 1 for i in range(len(shape))
        )
        steps.append(step)
        cur_shape = [math.ceil(s / f) for s, f in zip(cur_shape, step, strict=True)]
        cur_scale = [s * f for s, f in zip(cur_scale, step, strict=True)]
    return steps


def _accumulator(dtype: np.dtype) -> np.dtype | None:
    """An integer type summing 2**16 values of ``dtype`` exactly; None for other types."""
    if dtype.kind in "iu" and dtype.itemsize <= 4:
        return np.dtype(f"{dtype.kind}{4 if dtype.itemsize <= 2 else 8}")
    return None


_SLAB_BYTES = 2 << 20


def downsample(block: np.ndarray, step: tuple[int, ...], method: str) -> np.ndarray:
    """One block, reduced by ``step``: ``"nearest"`` (strided) or ``"mean"`` (edge-padded).

    Means of integers are exact, rounded half to even (like ``numpy.rint``): integer sums
    for 8- to 32-bit types, a split high/low long division for 64-bit ones (never through
    float64). Floats and complex numbers are averaged in float64/complex128.
    Big blocks are reduced in slabs of about 2 MiB along the first axis, so the wider
    temporaries stay in cache (1.5x faster than one pass over an 8 MiB chunk).
    """
    if method == "nearest" or block.dtype == bool:
        return block[tuple(slice(None, None, f) for f in step)]
    plane = block[:1].nbytes * step[0]
    if block.ndim < 2 or block.nbytes <= 2 * _SLAB_BYTES or plane == 0:
        return _mean(block, step)
    rows = max(1, _SLAB_BYTES // plane)  # output planes per slab
    shape = tuple(math.ceil(s / f) for s, f in zip(block.shape, step, strict=True))
    out = np.empty(shape, dtype=block.dtype)
    f0 = step[0]
    for start in range(0, shape[0], rows):
        out[start : start + rows] = _mean(block[start * f0 : (start + rows) * f0], step)
    return out


def _sum_shifted(block: np.ndarray, step: tuple[int, ...], acc: np.dtype) -> np.ndarray:
    """The sums of ``step``-sized boxes of ``block`` (whose shape ``step`` divides), in ``acc``.

    Sums the ``f`` shifted strided views along each axis in turn: every pass shrinks the
    data, so this costs about one pass over the block (a reshape + sum(axis=...) costs ~4x).
    """
    total: np.ndarray = block
    for axis, f in enumerate(step):
        if f == 1:
            continue
        parts = [total[(slice(None),) * axis + (slice(k, None, f),)] for k in range(f)]
        summed = np.add(parts[0], parts[1], dtype=acc)
        for part in parts[2:]:
            summed += part
        total = summed
    return total


def _round_half_even(
    quotient: np.ndarray, remainder: np.ndarray, count: int, dtype: np.dtype
) -> np.ndarray:
    """``quotient + remainder / count`` (``0 <= remainder < count``) rounded half to even."""
    twice = remainder * 2
    up = (twice > count) | ((twice == count) & (quotient % 2 == 1))
    # never overflows: rounding up happens only when the exact mean lies strictly between
    # quotient and quotient + 1, and the mean is at most the largest input value
    rounded: np.ndarray = (quotient + up.astype(quotient.dtype)).astype(dtype)
    return rounded


def _mean_int64(block: np.ndarray, step: tuple[int, ...], count: int) -> np.ndarray:
    """Exact, half-to-even rounded box means of 64-bit integers.

    A sum of 64-bit values needs more than 64 bits, and float64 keeps only 53 (2**64 - 1
    averages to 0 through it). Each value is split as ``hi * 2**32 + lo`` (``hi`` the
    arithmetic shift, ``lo`` in ``[0, 2**32)``); the sums of each part fit in 64 bits for
    boxes of up to 2**30 values, and the quotient is assembled by long division:
    ``sum = (qh * count + rh) * 2**32 + LO``, so ``sum // count = qh * 2**32 + (rh * 2**32
    + LO) // count``.
    """
    wide = np.dtype(np.int64 if block.dtype.kind == "i" else np.uint64).newbyteorder("=")
    values = block.astype(wide, copy=False)
    hi = values >> wide.type(32)
    lo = values & wide.type(0xFFFFFFFF)
    hi_sum = _sum_shifted(hi, step, wide)
    lo_sum = _sum_shifted(lo, step, wide)
    n = wide.type(count)
    qh, rh = np.divmod(hi_sum, n)  # floor division: 0 <= rh < count
    ql, rl = np.divmod((rh << wide.type(32)) + lo_sum, n)
    return _round_half_even((qh << wide.type(32)) + ql, rl, count, block.dtype)


def _mean(block: np.ndarray, step: tuple[int, ...]) -> np.ndarray:
    pad = [(0, (-s) % f) for s, f in zip(block.shape, step, strict=True)]
    if any(p for _, p in pad):
        block = np.pad(block, pad, mode="edge")
    count = math.prod(step)
    if count == 1:
        return block.copy()
    if block.dtype.kind in "iu" and block.dtype.itemsize == 8:
        return _mean_int64(block, step, count)
    acc = _accumulator(block.dtype)
    if acc is not None:
        quotient, remainder = np.divmod(_sum_shifted(block, step, acc), count)
        return _round_half_even(quotient, remainder, count, block.dtype)
    acc = np.dtype(np.complex128 if block.dtype.kind == "c" else np.float64)
    total = _sum_shifted(block, step, acc)
    total /= count
    return total.astype(block.dtype)


def read_region(codec: ChunkCodec, region: tuple[slice, ...]) -> np.ndarray:
    """The values of ``region`` of a stored array, assembled from the chunks it overlaps."""
    out = np.empty(tuple(r.stop - r.start for r in region), dtype=codec.dtype)
    ranges = [
        range(r.start // c, (r.stop - 1) // c + 1) if r.stop > r.start else range(0)
        for r, c in zip(region, codec.chunks, strict=True)
    ]
    for index in itertools.product(*ranges):
        chunk_region = codec.region(index)
        overlap = [
            (max(r.start, cr.start), min(r.stop, cr.stop))
            for r, cr in zip(region, chunk_region, strict=True)
        ]
        block = codec.read(index, writeable=False)
        out[
            tuple(
                slice(lo - r.start, hi - r.start)
                for (lo, hi), r in zip(overlap, region, strict=True)
            )
        ] = block[
            tuple(
                slice(lo - cr.start, hi - cr.start)
                for (lo, hi), cr in zip(overlap, chunk_region, strict=True)
            )
        ]
    return out


def write_levels(
    storage: Storage,
    group: str,
    steps: list[tuple[int, ...]],
    method: str,
    dimension_names: list[str],
    *,
    base: np.ndarray | None = None,
) -> list[LevelRecord]:
    """Write levels ``1..len(steps)`` of the group; their records.

    Each output chunk is one job on a thread per core: read the ``step``-times larger input
    region it covers (from ``base``, the in-memory base array, for level 1 if given, else
    from the level below as stored), downsample, write, hash. Memory stays at a few input
    regions per thread whatever the image size. Runs before the group is committed. A level
    left at the same path by a crashed or concurrent writer with the same steps is completed
    (same values); one with other steps is left alone and ours goes to ``<n>-<factors>``
    (or ``<n>-<step>_<step>...`` if that is taken too), decided after a create-if-absent
    write of the level's metadata, so racing writers never share a path by mistake.
    """
    source_array: zarr.Array[Any] = zarr.open_array(
        storage.zarr_store, path=f"{group}/0", mode="r", zarr_format=3
    )
    dtype, base_chunks = np.dtype(source_array.dtype), source_array.chunks
    codecs = source_array.compressors
    source = ChunkCodec(source_array)
    workers = worker_count(remote=storage.remote)
    records: list[LevelRecord] = []
    cumulative = (1,) * len(source.shape)
    for number, step in enumerate(steps, start=1):
        shape = tuple(math.ceil(s / f) for s, f in zip(source.shape, step, strict=True))
        chunks = tuple(max(1, min(c, s)) for c, s in zip(base_chunks, shape, strict=True))
        cumulative = tuple(c * f for c, f in zip(cumulative, step, strict=True))
        history = [list(s) for s in steps[:number]]
        # a level's values depend on every step that led to it (means of rounded means), so
        # its array records them; another writer of this content with another pyramid plan
        # (other `levels=` or scale), still writing or crashed, owns the paths whose array
        # records other steps: use the next candidate path, never touch its level
        candidates = [
            str(number),
            f"{number}-{'x'.join(map(str, cumulative))}",
            f"{number}-{'_'.join('x'.join(map(str, s)) for s in history)}",
        ]
        attributes = LevelArrayAttrs(
            level=number, method=method, steps=tuple(steps[:number])
        ).attributes()
        for name in candidates:
            array = claim_array(
                storage,
                f"{group}/{name}",
                shape,
                dtype,
                chunks,
                codecs,
                dimension_names=dimension_names,
                attributes=attributes,
            )
            if array is not None:
                break
        else:
            raise StoreError(
                f"Cannot write pyramid level {number} of result {group!r} in store "
                f"{storage.url!r}: arrays that cpr_zarr did not write for this level already "
                f"exist at {', '.join(repr(f'{group}/{c}') for c in candidates)}. Delete them "
                "(they are not part of any committed result) and save again."
            )
        path = f"{group}/{name}"
        codec = ChunkCodec(array)
        in_memory = base if number == 1 else None

        def one(
            item: tuple[tuple[int, ...], tuple[slice, ...]],
            step: tuple[int, ...] = step,
            src: ChunkCodec = source,
            in_memory: np.ndarray | None = in_memory,
            codec: ChunkCodec = codec,
        ) -> str:
            index, region = item
            wanted = tuple(
                slice(r.start * f, min(r.stop * f, s))
                for r, f, s in zip(region, step, src.shape, strict=True)
            )
            values = in_memory[wanted] if in_memory is not None else read_region(src, wanted)
            return store_chunk(codec, index, downsample(values, step, method))

        grid = list(chunk_grid(shape, chunks))
        nbytes = math.prod(shape) * dtype.itemsize
        with SaveProgress(f"{group} level {number}", len(grid), nbytes, count_keys(storage, path)):
            digests = list(thread_map(one, grid, workers))
        records.append(
            LevelRecord(
                path=name,
                step=tuple(step),
                shape=shape,
                chunks=chunks,
                chunk_digests=tuple(digests),
            )
        )
        source = codec
    return records


def read_level(target: ZarrTarget, level: int, *, verify: bool = True) -> da.Array:
    """Level ``level`` of a result (0 = the base) as a lazy, verified Dask array.

    Raises
    ------
    IndexError
        If the result has fewer levels.
    InvalidArgumentTypeError
        If ``level`` is not an int.
    """
    from cpr_zarr.target import ZarrTarget

    if not isinstance(target, ZarrTarget):
        raise InvalidArgumentTypeError(
            f"read_level takes the ZarrTarget of an image result, got {target!r:.80}. Get one "
            "with store.open(ref) or from the task that saved the image."
        )
    if isinstance(level, bool) or not isinstance(level, (int, np.integer)):
        raise InvalidArgumentTypeError(
            f"Invalid level {level!r} for result {target.group_path!r} in store "
            f"{target.store_url!r}: a level is an int, 0 for the base, 1 for the first "
            "downsampled level... (cpr_zarr.read_level(target, 1))."
        )
    level = int(level)
    if level == 0:
        return target.get_data(verify=verify)
    storage = open_storage(target.store_url, read_only=True)
    record = open_reader(storage, target.group_path).record
    records = record.levels if isinstance(record, ArrayRecord) else ()
    if not 0 <= level <= len(records):
        raise IndexError(
            f"Result {target.group_path!r} in store {target.store_url!r} has "
            f"{len(records) + 1} level(s) (0..{len(records)}); level {level} does not exist."
        )
    return ChunkReader(storage, target.group_path, record, level=level).to_dask(verify=verify)


def level_count(target: ZarrTarget) -> int:
    """Number of multiscale levels of a result, including the base."""
    storage = open_storage(target.store_url, read_only=True)
    record = open_reader(storage, target.group_path).record
    return 1 + (len(record.levels) if isinstance(record, ArrayRecord) else 0)
