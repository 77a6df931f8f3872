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
import threading
from dataclasses import dataclass
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


_SLAB_BYTES = 1 << 20


def downsample(block: np.ndarray, step: tuple[int, ...], method: str) -> np.ndarray:
    """One block, reduced by ``step``: ``"nearest"`` (strided) or ``"mean"`` (edge-padded).

    Means of integers are exact, rounded half to even (like ``numpy.rint``): integer sums
    for 8- to 32-bit types, a split high/low long division for 64-bit ones (never through
    float64). Floats and complex numbers are averaged in float64/complex128.
    Big blocks are reduced in slabs of about 1 MiB along the first axis, so the wider
    temporaries stay in cache (1.5-2x faster than one pass over an 8 MiB chunk).
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


def _shift_mean(total: np.ndarray, count: int, dtype: np.dtype) -> np.ndarray:
    """``total / count`` rounded half to even, for a power-of-two ``count`` (steps are 1 or 2).

    ``(total + count/2 - 1 + q % 2) >> k`` with ``q = total >> k`` (arithmetic shifts are
    floor divisions, negative sums included): the same integers as the divmod rounding of
    :func:`_round_half_even`, in four in-place passes instead of an integer division (the
    most expensive step of a mean). ``total`` is the accumulator, which has room for it.
    """
    shift = total.dtype.type(count.bit_length() - 1)
    out = total >> shift
    out &= total.dtype.type(1)
    out += total.dtype.type(count // 2 - 1)
    out += total
    out >>= shift
    rounded: np.ndarray = out.astype(dtype)
    return rounded


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
    if acc is not None and count & (count - 1) == 0:
        return _shift_mean(_sum_shifted(block, step, acc), count, block.dtype)
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


# -- levels made in the same pass as the base level -------------------------------------------


@dataclass(frozen=True)
class LevelPlan:
    """How level ``number`` is made from the chunks of the level below it (its *source*).

    ``aligned`` when every source chunk starts on a box boundary (on each stepped axis the
    source chunk length is a multiple of the step): each source chunk is then downsampled
    on its own and the pieces tile the level's chunks. Otherwise boxes straddle source
    chunks, and each level chunk is downsampled from the raw source region it covers,
    assembled from the overlapping source chunks. Either way every output value comes from
    the same box, edge padding and arithmetic as :func:`downsample` over the whole level
    (it computes each output value from its box alone), so values and digests are those of
    :func:`write_levels`.
    """

    number: int
    step: tuple[int, ...]
    method: str
    source_shape: tuple[int, ...]
    source_chunks: tuple[int, ...]
    shape: tuple[int, ...]
    chunks: tuple[int, ...]

    @property
    def chunk_count(self) -> int:
        """How many chunks the level has."""
        return math.prod(-(-s // c) for s, c in zip(self.shape, self.chunks, strict=True))

    @property
    def aligned(self) -> bool:
        return all(f == 1 or c % f == 0 for c, f in zip(self.source_chunks, self.step, strict=True))

    def _width(self, axis: int) -> int:
        """How many source elements one level chunk covers along ``axis``."""
        return self.chunks[axis] * self.step[axis]

    def _span(self, axis: int, j: int) -> tuple[int, int]:
        width = self._width(axis)
        return j * width, min((j + 1) * width, self.source_shape[axis])

    def grid(self) -> list[tuple[int, ...]]:
        """Every chunk index of the level, in C order."""
        return [index for index, _ in chunk_grid(self.shape, self.chunks)]

    def sources(self, index: tuple[int, ...]) -> list[tuple[int, ...]]:
        """The source chunks that level chunk ``index`` is made from, in C order."""
        ranges = []
        for axis, j in enumerate(index):
            lo, hi = self._span(axis, j)
            c = self.source_chunks[axis]
            ranges.append(range(lo // c, (hi - 1) // c + 1))
        return list(itertools.product(*ranges))

    def home(self, source: tuple[int, ...]) -> tuple[int, ...]:
        """The level chunk holding the first element of source chunk ``source``."""
        return tuple(
            i * c // self._width(axis)
            for axis, (i, c) in enumerate(zip(source, self.source_chunks, strict=True))
        )

    def contribute(self, source: tuple[int, ...], block: np.ndarray) -> list[Piece]:
        """What source chunk ``source`` (values ``block``) gives each level chunk it touches.

        Aligned: its downsampled values, placed in one level chunk. Else: the raw overlap
        with each level chunk's source region (views of ``block``).
        """
        starts = [i * c for i, c in zip(source, self.source_chunks, strict=True)]
        if self.aligned:
            index = self.home(source)
            offset = tuple(
                (a - j * self._width(axis)) // f
                for axis, (a, j, f) in enumerate(zip(starts, index, self.step, strict=True))
            )
            return [(index, offset, downsample(block, self.step, self.method))]
        per_axis = []
        for axis, a in enumerate(starts):
            b, width = a + block.shape[axis], self._width(axis)
            per_axis.append(
                [
                    (j, max(a, j * width), min(b, (j + 1) * width))
                    for j in range(a // width, (b - 1) // width + 1)
                ]
            )
        pieces: list[Piece] = []
        for combo in itertools.product(*per_axis):
            index = tuple(j for j, _, _ in combo)
            view = block[
                tuple(slice(lo - a, hi - a) for (_, lo, hi), a in zip(combo, starts, strict=True))
            ]
            offset = tuple(lo - j * self._width(axis) for axis, (j, lo, _) in enumerate(combo))
            pieces.append((index, offset, view))
        return pieces

    def assemble(self, index: tuple[int, ...], pieces: list[Piece]) -> np.ndarray:
        """The values of level chunk ``index`` from the pieces of all its sources."""
        if self.aligned:
            shape = tuple(
                min((j + 1) * k, s) - j * k
                for j, k, s in zip(index, self.chunks, self.shape, strict=True)
            )
            if len(pieces) == 1 and pieces[0][2].shape == shape:
                return pieces[0][2]
        else:
            shape = tuple(hi - lo for lo, hi in (self._span(a, j) for a, j in enumerate(index)))
        out = np.empty(shape, dtype=pieces[0][2].dtype)
        for _, offset, piece in pieces:
            out[tuple(slice(o, o + s) for o, s in zip(offset, piece.shape, strict=True))] = piece
        return out if self.aligned else downsample(out, self.step, self.method)


Piece = tuple[tuple[int, ...], tuple[int, ...], np.ndarray]
"""``(level chunk index, offset, values)``: one source chunk's share of one level chunk."""


def plan_pyramid(
    shape: tuple[int, ...],
    chunks: tuple[int, ...],
    steps: list[tuple[int, ...]],
    method: str,
) -> list[LevelPlan]:
    """The :class:`LevelPlan` of every level of a base array of ``shape`` in ``chunks``.

    Level chunks are the base chunk shape, clipped to the level's shape (as always).
    """
    plans: list[LevelPlan] = []
    source_shape, source_chunks = tuple(shape), tuple(chunks)
    for number, step in enumerate(steps, start=1):
        level_shape = tuple(math.ceil(s / f) for s, f in zip(source_shape, step, strict=True))
        level_chunks = tuple(max(1, min(c, s)) for c, s in zip(chunks, level_shape, strict=True))
        plans.append(
            LevelPlan(
                number, tuple(step), method, source_shape, source_chunks, level_shape, level_chunks
            )
        )
        source_shape, source_chunks = level_shape, level_chunks
    return plans


def _candidates(number: int, steps: list[tuple[int, ...]]) -> list[str]:
    """The paths level ``number`` may take: ``"1"``, then names that spell its steps."""
    history = [list(s) for s in steps[:number]]
    cumulative = [math.prod(s[axis] for s in history) for axis in range(len(history[0]))]
    return [
        str(number),
        f"{number}-{'x'.join(map(str, cumulative))}",
        f"{number}-{'_'.join('x'.join(map(str, s)) for s in history)}",
    ]


def claim_level(
    storage: Storage,
    group: str,
    plan: LevelPlan,
    steps: list[tuple[int, ...]],
    dtype: np.dtype,
    codecs: Any,
    dimension_names: list[str] | None,
) -> tuple[str, zarr.Array[Any]]:
    """The path (inside ``group``) and the open array of level ``plan.number``.

    A level's values depend on every step that led to it (means of rounded means), so its
    array records them; another writer of this content with another pyramid plan (other
    ``levels=`` or scale), still writing or crashed, owns the paths whose array records
    other steps: take the next candidate path, never touch its level. One with the same
    steps (a crashed or concurrent writer of this plan) is completed: same values.
    Decided after a create-if-absent write of the metadata, so racing writers agree.

    Raises
    ------
    StoreError
        If every candidate path holds another array.
    """
    attributes = LevelArrayAttrs(
        level=plan.number, method=plan.method, steps=tuple(steps[: plan.number])
    ).attributes()
    candidates = _candidates(plan.number, steps)
    for name in candidates:
        array = claim_array(
            storage,
            f"{group}/{name}",
            plan.shape,
            dtype,
            plan.chunks,
            codecs,
            dimension_names=dimension_names,
            attributes=attributes,
        )
        if array is not None:
            return name, array
    raise StoreError(
        f"Cannot write pyramid level {plan.number} of result {group!r} in store "
        f"{storage.url!r}: arrays that cpr_zarr did not write for this level already "
        f"exist at {', '.join(repr(f'{group}/{c}') for c in candidates)}. Delete them "
        "(they are not part of any committed result) and save again."
    )


class LevelBuilder:
    """Levels ``1..n`` built in this process from the base chunks as they are written.

    The writer calls :meth:`add` with each base chunk right after storing it (from any of
    its threads). Each level chunk collects its sources' pieces; the thread that brings
    the last piece assembles it, stores and hashes it, and passes it on to the next level,
    so a level chunk lives only until its last source arrives: with the base chunks
    visited in :meth:`order`, a few per thread.
    """

    def __init__(self, plans: list[LevelPlan], codecs: list[ChunkCodec], names: list[str]) -> None:
        self.plans, self.codecs, self.names = plans, codecs, names
        self._lock = threading.Lock()
        self._pending: list[dict[tuple[int, ...], list[Piece]]] = [{} for _ in plans]
        self._needed = [
            {index: len(plan.sources(index)) for index in plan.grid()} for plan in plans
        ]
        self._digests: list[dict[tuple[int, ...], str]] = [{} for _ in plans]

    def order(self, grid: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
        """The base chunks of ``grid`` ordered so that the sources of each level chunk (at
        every level) come one after the other: few level chunks are open at once."""

        def key(index: tuple[int, ...]) -> list[tuple[int, ...]]:
            homes, current = [], index
            for plan in self.plans:
                current = plan.home(current)
                homes.append(current)
            return [*reversed(homes), index]

        return sorted(grid, key=key)

    def add(self, source: tuple[int, ...], block: np.ndarray, level: int = 0) -> None:
        """Chunk ``source`` of level ``level`` (0: the base) holds ``block``."""
        if level >= len(self.plans):
            return
        plan = self.plans[level]
        for index, offset, piece in plan.contribute(source, block):
            with self._lock:
                pieces = self._pending[level].setdefault(index, [])
                pieces.append((index, offset, piece))
                if len(pieces) < self._needed[level][index]:
                    continue
                del self._pending[level][index]
            values = plan.assemble(index, pieces)
            digest = store_chunk(self.codecs[level], index, values)
            with self._lock:
                self._digests[level][index] = digest
            self.add(index, values, level + 1)

    def records(self) -> list[LevelRecord]:
        """The level records, once every base chunk was added."""
        records = []
        for plan, name, digests in zip(self.plans, self.names, self._digests, strict=True):
            grid = plan.grid()
            if len(digests) != len(grid):  # pragma: no cover - a base chunk never came
                raise StoreError(
                    f"Pyramid level {plan.number}: {len(grid) - len(digests)} of its chunks "
                    "were never made (a base chunk was not passed on); not committing."
                )
            records.append(
                LevelRecord(
                    path=name,
                    step=plan.step,
                    shape=plan.shape,
                    chunks=plan.chunks,
                    chunk_digests=tuple(digests[index] for index in grid),
                )
            )
        return records


def open_levels(
    storage: Storage,
    group: str,
    plans: list[LevelPlan],
    dtype: np.dtype,
    codecs: Any,
    dimension_names: list[str] | None,
) -> tuple[list[str], list[ChunkCodec]]:
    """Claim the arrays of every level in ``group`` (see :func:`claim_level`)."""
    steps = [plan.step for plan in plans]
    names, opened = [], []
    for plan in plans:
        name, array = claim_level(storage, group, plan, steps, dtype, codecs, dimension_names)
        names.append(name)
        opened.append(ChunkCodec(array, storage))
    return names, opened


# -- the same, as tasks of a Dask graph (workers may be other processes) ----------------------


def _write_base(
    block: np.ndarray, codec: ChunkCodec, index: tuple[int, ...], plan: LevelPlan
) -> tuple[str, list[Piece]]:
    """Store one base chunk; its digest and its pieces of level 1."""
    digest = store_chunk(codec, index, block)
    return digest, plan.contribute(index, np.ascontiguousarray(block))


def _write_level(
    codec: ChunkCodec,
    plan: LevelPlan,
    after: LevelPlan | None,
    index: tuple[int, ...],
    sources: list[tuple[str, list[Piece]]],
) -> tuple[str, list[Piece]]:
    """Assemble, store and hash one level chunk; its digest and its pieces of the next level."""
    pieces = [p for _, contributed in sources for p in contributed if p[0] == index]
    values = plan.assemble(index, pieces)
    digest = store_chunk(codec, index, values)
    return digest, ([] if after is None else after.contribute(index, values))


def _digest_of(result: tuple[str, list[Piece]]) -> str:
    return result[0]


def _collect(*levels: list[str]) -> list[list[str]]:
    return [list(level) for level in levels]


def pyramid_graph(
    data: da.Array,
    base: ChunkCodec,
    plans: list[LevelPlan],
    codecs: list[ChunkCodec],
    token: str,
) -> Any:
    """A Dask ``Delayed`` that writes ``data`` (chunked like ``base``) and every level in one
    graph, returning the digests of each level (base first), each in C order.

    One task per base chunk stores it and downsamples it (or slices it, when level boxes
    straddle chunks) into its pieces of level 1; one task per level chunk assembles its
    pieces, stores it, and makes its pieces of the next level. Digests are split off in
    their own tiny tasks, so the pieces are released as soon as the level chunks that need
    them are written: memory stays at a few chunks per thread, on any scheduler.
    """
    from dask.delayed import Delayed
    from dask.highlevelgraph import HighLevelGraph

    name = f"cpr-zarr-pyramid-{token}"
    layer: dict[Any, Any] = {}
    grid = [index for index, _ in chunk_grid(base.shape, base.chunks)]
    written = {index: (f"{name}-0", *index) for index in grid}
    for index, key in written.items():
        layer[key] = (_write_base, (data.name, *index), base, index, plans[0])
    digests = [[(f"{name}-d0", *index) for index in grid]]
    for index, key in zip(grid, digests[0], strict=True):
        layer[key] = (_digest_of, written[index])
    for number, (plan, codec) in enumerate(zip(plans, codecs, strict=True), start=1):
        after = plans[number] if number < len(plans) else None
        level_written = {}
        for index in plan.grid():
            key = (f"{name}-{number}", *index)
            layer[key] = (
                _write_level,
                codec,
                plan,
                after,
                index,
                [written[source] for source in plan.sources(index)],
            )
            level_written[index] = key
        level_digests = [(f"{name}-d{number}", *index) for index in plan.grid()]
        for index, key in zip(plan.grid(), level_digests, strict=True):
            layer[key] = (_digest_of, level_written[index])
        digests.append(level_digests)
        written = level_written
    final = f"{name}-digests"
    layer[final] = (_collect, *digests)
    collection: Any = data
    graph = HighLevelGraph.from_collections(final, layer, dependencies=[collection])
    return Delayed(final, graph)


def move_levels(
    storage: Storage,
    staging: str,
    group: str,
    plans: list[LevelPlan],
    staged: list[str],
    digests: list[list[str]],
    dimension_names: list[str] | None,
) -> list[LevelRecord]:
    """Move the levels written under ``staging`` into ``group``; their records.

    Each level goes to the first of its candidate paths (see :func:`claim_level`) that is
    free or holds the same level (same steps): a leftover of a crashed or concurrent
    writer of this content and plan is completed with our chunks (same values), in its
    codecs if they differ. A path holding another plan's level is never touched.
    """
    steps = [plan.step for plan in plans]
    records = []
    for plan, src, level_digests in zip(plans, staged, digests, strict=True):
        source = ChunkCodec(
            zarr.open_array(storage.zarr_store, path=f"{staging}/{src}", mode="r", zarr_format=3)
        )
        for name in _candidates(plan.number, steps):
            dst = f"{group}/{name}"
            try:
                storage.move_tree(f"{staging}/{src}", dst)
                break
            except FileExistsError:  # another writer's metadata is there
                pass
            attributes = LevelArrayAttrs(
                level=plan.number, method=plan.method, steps=tuple(steps[: plan.number])
            ).attributes()
            array = claim_array(
                storage,
                dst,
                plan.shape,
                source.dtype,
                plan.chunks,
                None,
                dimension_names=dimension_names,
                attributes=attributes,
            )
            if array is not None:  # the same level, other codecs: store ours in its codecs
                target = ChunkCodec(array)

                def copy(
                    index: tuple[int, ...], target: ChunkCodec = target, source: ChunkCodec = source
                ) -> None:
                    target.write(index, source.read(index, writeable=False))

                list(thread_map(copy, plan.grid(), worker_count(remote=storage.remote)))
                break
        else:
            raise StoreError(
                f"Cannot move pyramid level {plan.number} of result {group!r} in store "
                f"{storage.url!r}: arrays that cpr_zarr did not write for this level already "
                f"exist at every path it may take under {group!r}. Delete them (they are "
                "not part of any committed result) and save again."
            )
        records.append(
            LevelRecord(
                path=name,
                step=plan.step,
                shape=plan.shape,
                chunks=plan.chunks,
                chunk_digests=tuple(level_digests),
            )
        )
    return records


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
    for number, step in enumerate(steps, start=1):
        shape = tuple(math.ceil(s / f) for s, f in zip(source.shape, step, strict=True))
        chunks = tuple(max(1, min(c, s)) for c, s in zip(base_chunks, shape, strict=True))
        plan = LevelPlan(number, tuple(step), method, source.shape, source.chunks, shape, chunks)
        name, array = claim_level(storage, group, plan, steps, dtype, codecs, dimension_names)
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
