"""Multiscale levels, computed lazily from the stored base level with bounded memory.

Level ``i`` is computed from level ``i - 1``, block by block: each output block reads the
``f``-times larger input region it covers. When the base was saved from memory, level 1 is
computed from that in-memory array (each level is at most 1/2 of the previous one, so the
levels together add at most the base's size, 1/7 of it for 3D halving); for streamed Dask
saves it is read back from the store chunk by chunk, so memory stays at a few chunks per
Dask thread whatever the image size. Images are downsampled by
the mean (integers rounded), label images and masks by nearest (strided) sampling, which
never invents label values. Every level's chunks are hashed like the base level's and
recorded in ``cpr_zarr.levels``, so reads of any level are verified; the content hash
still identifies the base level only.

The default (``levels=None``) halves the finest space axes until no space axis is longer
than :data:`AUTO_MIN_SIZE` pixels: a 256 x 2048 x 2048 volume gets 3 levels, the 60 x 256 x
256 example stack none.
"""

from __future__ import annotations

import math
import uuid
from typing import TYPE_CHECKING, Any

import dask.array as da
import numpy as np
import zarr

from cpr_zarr.codec import ChunkCodec, thread_map, worker_count
from cpr_zarr.compute import compute
from cpr_zarr.layout import chunk_grid

if TYPE_CHECKING:
    from cpr_zarr.ngff import ImageMeta
    from cpr_zarr.store import ResultStore
    from cpr_zarr.target import ZarrTarget

__all__ = [
    "AUTO_MIN_SIZE",
    "MAX_LEVELS",
    "downsample",
    "downsample_array",
    "plan_levels",
    "read_level",
    "write_levels",
]

AUTO_MIN_SIZE = 512
MAX_LEVELS = 10


def parse_levels(levels: object) -> int | None:
    """``None`` (automatic) or a number of levels >= 1 including the base."""
    if levels is None:
        return None
    if isinstance(levels, bool) or not isinstance(levels, int) or not 1 <= levels <= MAX_LEVELS:
        raise ValueError(
            f"Invalid levels {levels!r}: give the number of multiscale levels including the base "
            f"(1 = no pyramid, at most {MAX_LEVELS}), or None for automatic."
        )
    return levels


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
    """An integer type summing 2**16 values of ``dtype`` exactly, or None (use float64)."""
    if dtype.kind in "iu" and dtype.itemsize <= 4:
        return np.dtype(f"{dtype.kind}{4 if dtype.itemsize <= 2 else 8}")
    return None


def downsample(block: np.ndarray, step: tuple[int, ...], method: str) -> np.ndarray:
    """One block, reduced by ``step``: ``"nearest"`` (strided) or ``"mean"`` (edge-padded).

    Means of integers are rounded half to even (like ``numpy.rint``), computed exactly with
    integer sums for 8- to 32-bit types; other types are averaged in float64/complex128.
    """
    if method == "nearest" or block.dtype == bool:
        return block[tuple(slice(None, None, f) for f in step)]
    pad = [(0, (-s) % f) for s, f in zip(block.shape, step, strict=True)]
    if any(p for _, p in pad):
        block = np.pad(block, pad, mode="edge")
    acc = _accumulator(block.dtype)
    if acc is None:
        acc = np.dtype(np.complex128 if block.dtype.kind == "c" else np.float64)
    # sum the f shifted strided views along each axis in turn: every pass shrinks the data,
    # so this costs about one pass over the block (a reshape + mean(axis=...) costs ~4x)
    total: np.ndarray = block
    count = 1
    for axis, f in enumerate(step):
        if f == 1:
            continue
        parts = [total[(slice(None),) * axis + (slice(k, None, f),)] for k in range(f)]
        summed = np.add(parts[0], parts[1], dtype=acc)
        for part in parts[2:]:
            summed += part
        total, count = summed, count * f
    if count == 1:
        return block.copy()
    if acc.kind in "iu":
        quotient, remainder = np.divmod(total, count)
        remainder *= 2
        quotient += (remainder > count) | ((remainder == count) & (quotient % 2 == 1))
        return quotient.astype(block.dtype)
    total /= count
    if block.dtype.kind in "iu":  # 64-bit integers, averaged in float64
        np.rint(total, out=total)
    return total.astype(block.dtype)


def downsample_array(
    data: np.ndarray,
    step: tuple[int, ...],
    method: str,
    *,
    workers: int,
    slab_bytes: int = 32 << 20,
) -> np.ndarray:
    """:func:`downsample` of a whole in-memory array, in slabs along the first axis on threads.

    Slabs of about ``slab_bytes`` of input keep the temporaries small whatever the array size.
    """
    shape = tuple(math.ceil(s / f) for s, f in zip(data.shape, step, strict=True))
    out = np.empty(shape, dtype=data.dtype)
    f0 = step[0]
    plane = max(1, data[:1].nbytes) * f0
    rows = max(1, slab_bytes // plane)
    starts = range(0, shape[0], rows)

    def one(start: int) -> None:
        stop = min(start + rows, shape[0])
        out[start:stop] = downsample(data[start * f0 : stop * f0], step, method)

    list(thread_map(one, starts, workers))
    return out


def _stored(codec: ChunkCodec) -> da.Array:
    """A lazy Dask array over a just-written array, read with its own codecs (unverified)."""
    name = f"cpr-zarr-level-source-{uuid.uuid4().hex}"
    codec_key = f"{name}-codec"
    dsk: dict[Any, Any] = {codec_key: codec}
    for index, _ in chunk_grid(codec.shape, codec.chunks):
        dsk[(name, *index)] = (_read, codec_key, list(index))
    chunks = da.core.normalize_chunks(codec.chunks, codec.shape)
    return da.Array(dsk, name, chunks, meta=np.empty((0,) * len(codec.shape), codec.dtype))


def _read(codec: ChunkCodec, index: list[int]) -> np.ndarray:
    return codec.read(tuple(index))


def write_levels(
    store: ResultStore,
    group: str,
    steps: list[tuple[int, ...]],
    method: str,
    dimension_names: list[str],
    *,
    base: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """Write levels ``1..len(steps)`` of the group; their records.

    Level 1 is computed from ``base`` (the in-memory base array) if given, else from the
    stored base ``0``. Runs before the group is committed. A level left by a crashed writer
    is overwritten (its path names the base's hash, and the steps are a pure function of
    the metadata).
    """
    from cpr_zarr.writer import _create_array, remove_prefix, write_block, write_chunks

    source: zarr.Array[Any] = zarr.open_array(
        store._zstore, path=f"{group}/0", mode="r", zarr_format=3
    )
    dtype, base_chunks = np.dtype(source.dtype), source.chunks
    codecs = source.compressors
    current: np.ndarray | None = base
    source_codec = ChunkCodec(source)
    records: list[dict[str, Any]] = []
    for number, step in enumerate(steps, start=1):
        shape = tuple(math.ceil(s / f) for s, f in zip(source_codec.shape, step, strict=True))
        chunks = tuple(min(c, s) for c, s in zip(base_chunks, shape, strict=True))
        path = f"{group}/{number}"
        if store._get_json(f"{path}/zarr.json") is not None:
            existing = zarr.open_array(store._zstore, path=path, mode="r", zarr_format=3)
            if existing.shape != shape or existing.chunks != chunks:
                # a crashed writer with other metadata (other steps) left it: replace it
                remove_prefix(store, path)
        array = _create_array(
            store, path, shape, dtype, chunks, codecs, dimension_names=dimension_names
        )
        codec = ChunkCodec(array)
        if current is not None:
            # in memory: this level from the previous one, then its chunks on threads
            current = downsample_array(current, step, method, workers=worker_count())
            grid = list(chunk_grid(shape, chunks))
            digests = write_chunks(
                codec, current, grid, workers=worker_count(remote=store._local_path is None)
            )
        else:
            data = _stored(source_codec).rechunk(
                tuple(c * f for c, f in zip(chunks, step, strict=True))
            )
            level = data.map_blocks(
                downsample,
                step=step,
                method=method,
                chunks=da.core.normalize_chunks(chunks, shape),
                dtype=dtype,
                meta=np.empty((0,) * len(shape), dtype=dtype),
            )
            digest_blocks = da.map_blocks(
                write_block,
                level,
                codec=codec,
                chunks=tuple((1,) * len(c) for c in level.chunks),
                dtype=object,
                meta=np.empty((0,) * len(shape), dtype=object),
            )
            (grid_digests,) = compute(digest_blocks)
            digests = [str(d) for d in np.asarray(grid_digests).ravel(order="C")]
        records.append(
            {
                "path": str(number),
                "step": list(step),
                "shape": list(shape),
                "chunks": list(chunks),
                "chunk_digests": digests,
            }
        )
        source_codec = codec
    return records


def read_level(target: ZarrTarget, level: int, *, verify: bool = True) -> da.Array:
    """Level ``level`` of a result (0 = the base) as a lazy, verified Dask array.

    Raises
    ------
    IndexError
        If the result has fewer levels.
    """
    if level == 0:
        return target.get_data(verify=verify)
    from cpr_zarr.reader import ChunkReader

    store = target.store
    attrs = store.reader(target).attrs
    records = attrs.get("levels", [])
    if not 0 <= level <= len(records):
        raise IndexError(
            f"Result {target.group_path!r} in store {target.store_url!r} has "
            f"{len(records) + 1} level(s) (0..{len(records)}); level {level} does not exist."
        )
    record = records[level - 1]
    level_attrs = {
        "content_hash": f"{target.content_hash}-level{level}",
        "shape": record["shape"],
        "dtype": attrs["dtype"],
        "chunks": record["chunks"],
        "chunk_digests": record["chunk_digests"],
        "array": record["path"],
    }
    return ChunkReader(store, target.group_path, level_attrs).to_dask(verify=verify)


def level_count(target: ZarrTarget) -> int:
    """Number of multiscale levels of a result, including the base."""
    return 1 + len(target.store.reader(target).attrs.get("levels", []))
