"""Multiscale levels, computed lazily from the stored base level with bounded memory.

Level ``i`` is computed from the *stored* level ``i - 1`` (read back chunk by chunk), block
by block: each output chunk reads the ``f``-times larger input region it covers, so memory
stays at a few chunks per Dask thread whatever the image size. Images are downsampled by
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
from typing import TYPE_CHECKING, Any

import dask.array as da
import numpy as np
import zarr

from cpr_zarr.compute import compute

if TYPE_CHECKING:
    from cpr_zarr.ngff import ImageMeta
    from cpr_zarr.store import ResultStore
    from cpr_zarr.target import ZarrTarget

__all__ = ["AUTO_MIN_SIZE", "MAX_LEVELS", "downsample", "plan_levels", "read_level", "write_levels"]

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


def downsample(block: np.ndarray, step: tuple[int, ...], method: str) -> np.ndarray:
    """One block, reduced by ``step``: ``"nearest"`` (strided) or ``"mean"`` (edge-padded)."""
    if method == "nearest" or block.dtype == bool:
        return block[tuple(slice(None, None, f) for f in step)]
    pad = [(0, (-s) % f) for s, f in zip(block.shape, step, strict=True)]
    if any(p for _, p in pad):
        block = np.pad(block, pad, mode="edge")
    split: list[int] = []
    for s, f in zip(block.shape, step, strict=True):
        split += [s // f, f]
    acc = np.complex128 if block.dtype.kind == "c" else np.float64
    mean: np.ndarray = block.reshape(split).mean(axis=tuple(range(1, 2 * block.ndim, 2)), dtype=acc)
    if block.dtype.kind in "iu":
        mean = np.rint(mean)
    return mean.astype(block.dtype)


def write_levels(
    store: ResultStore,
    group: str,
    steps: list[tuple[int, ...]],
    method: str,
    dimension_names: list[str],
) -> list[dict[str, Any]]:
    """Write levels ``1..len(steps)`` of the group from its stored base ``0``; their records.

    Runs before the group is committed. A level left by a crashed writer is overwritten
    (its path names the base's hash, and the steps are a pure function of the metadata).
    """
    from cpr_zarr.writer import _create_array, write_block

    source: zarr.Array[Any] = zarr.open_array(
        store._zstore, path=f"{group}/0", mode="r", zarr_format=3
    )
    dtype, base_chunks = source.dtype, source.chunks
    codecs = source.compressors
    records: list[dict[str, Any]] = []
    for number, step in enumerate(steps, start=1):
        shape = tuple(math.ceil(s / f) for s, f in zip(source.shape, step, strict=True))
        chunks = tuple(min(c, s) for c, s in zip(base_chunks, shape, strict=True))
        data = da.from_zarr(source).rechunk(tuple(c * f for c, f in zip(chunks, step, strict=True)))
        level = data.map_blocks(
            downsample,
            step=step,
            method=method,
            chunks=da.core.normalize_chunks(chunks, shape),
            dtype=dtype,
            meta=np.empty((0,) * len(shape), dtype=dtype),
        )
        path = f"{group}/{number}"
        if store._get_json(f"{path}/zarr.json") is not None:
            existing = zarr.open_array(store._zstore, path=path, mode="r", zarr_format=3)
            if existing.shape != shape or existing.chunks != chunks:
                # a crashed writer with other metadata (other steps) left it: replace it
                from cpr_zarr.writer import remove_prefix

                remove_prefix(store, path)
        target = _create_array(
            store, path, shape, np.dtype(dtype), chunks, codecs, dimension_names=dimension_names
        )
        digests = da.map_blocks(
            write_block,
            level,
            array=target,
            chunks=tuple((1,) * len(c) for c in level.chunks),
            dtype=object,
            meta=np.empty((0,) * len(shape), dtype=object),
        )
        (grid,) = compute(digests)
        records.append(
            {
                "path": str(number),
                "step": list(step),
                "shape": list(shape),
                "chunks": list(chunks),
                "chunk_digests": [str(d) for d in np.asarray(grid).ravel(order="C")],
            }
        )
        source = target
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
