"""Whole chunks of one zarr array, encoded or decoded in the calling thread.

zarr's ``array[...] = data`` runs every chunk through its asyncio codec pipeline: writing
1 GiB took 4.3 CPU-seconds at 1.5 busy cores here, where encoding the same chunks directly
took 1.8 CPU-seconds at 1.96 cores (see ``benchmarks/README.md``). cpr_zarr writes
and reads whole, chunk-aligned blocks, so it can call the array's own codecs directly
(zarr's ``SupportsSyncCodec`` ``_encode_sync``/``_decode_sync``) from a pool of threads,
one chunk per call: Blosc, hashing and copies release the GIL and both cores stay busy
(streamed and pyramid chunks are hashed by the thread that encodes them). The bytes are exactly what zarr writes: the same
codecs with the same parameters, the same keys, edge chunks padded with the fill value,
and chunks holding only the fill value not written (zarr's ``write_empty_chunks=False``).

Arrays whose codecs cannot run synchronously (sharding, array-to-array codecs, custom
codecs) fall back to zarr's own ``array[region] = block`` / ``array[region]``.
"""

from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from numcodecs import blosc
from zarr.abc.codec import ArrayBytesCodec, BytesBytesCodec, SupportsSyncCodec
from zarr.codecs import BloscCodec, BytesCodec, GzipCodec, ZstdCodec
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from cpr_zarr.errors import InvalidArgumentError, InvalidArgumentTypeError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

    import zarr

    from cpr_zarr.storage import Storage

__all__ = ["ChunkCodec", "parse_compressor", "thread_map", "worker_count"]


def worker_count(*, remote: bool = False) -> int:
    """Threads for chunk work: one per usable core; at least 8 when waiting on a network."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        cores = os.cpu_count() or 1
    return max(cores, 8) if remote else cores


def thread_map(fn: Callable[[Any], Any], items: Iterable[Any], workers: int) -> Iterator[Any]:
    """``map(fn, items)`` on ``workers`` threads, results in order; serial for one worker."""
    items = list(items)
    if workers <= 1 or len(items) <= 1:
        return map(fn, items)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cpr-zarr")
    try:
        return iter(list(pool.map(fn, items)))
    finally:
        # on an error (or Ctrl-C) the items not started yet are dropped, not run
        pool.shutdown(wait=True, cancel_futures=True)


_COMPRESSOR_EXAMPLE = "zarr.codecs.BloscCodec(cname='zstd', clevel=3, shuffle='shuffle')"
_BLOSC_SHUFFLE: dict[int, Literal["noshuffle", "shuffle", "bitshuffle"]] = {
    0: "noshuffle",
    1: "shuffle",
    2: "bitshuffle",
}


def _from_numcodecs(codec: Any) -> BytesBytesCodec | None:
    """The zarr v3 codec writing the same bytes as a numcodecs (zarr v2) compressor, if any."""
    kind = type(codec).__name__
    if kind == "Blosc":
        # numcodecs' AUTOSHUFFLE (-1) is zarr's shuffle=None: bitshuffle for 1-byte items
        return BloscCodec(
            cname=codec.cname,
            clevel=codec.clevel,
            shuffle=_BLOSC_SHUFFLE.get(codec.shuffle),
            blocksize=codec.blocksize,
        )
    if kind == "Zstd":
        return ZstdCodec(level=codec.level, checksum=bool(getattr(codec, "checksum", False)))
    if kind == "GZip":
        return GzipCodec(level=codec.level)
    return None


def parse_compressor(compressor: object, *, where: str = "the array") -> Any:
    """A compressor for ``zarr.create_array``: ``None`` (the default), a zarr v3
    bytes-to-bytes codec, a list of them (``[]``: no compression), or a numcodecs
    ``Blosc``/``Zstd``/``GZip`` (converted to its zarr v3 codec, same parameters).

    Raises
    ------
    InvalidArgumentError
        For anything else, naming the value, ``where`` and the codec to pass instead.
    """
    if compressor is None:
        return None
    if isinstance(compressor, (list, tuple)):
        return [parse_compressor(c, where=where) for c in compressor]
    if isinstance(compressor, BytesBytesCodec):
        return compressor
    if type(compressor).__module__.startswith("numcodecs"):
        converted = _from_numcodecs(compressor)
        if converted is not None:
            return converted
        raise InvalidArgumentError(
            f"Invalid compressor {compressor!r} for {where}: results are zarr v3 arrays, "
            "whose compressors are zarr v3 codecs; this numcodecs (zarr v2) codec has no "
            f"zarr v3 equivalent. Pass compressor={_COMPRESSOR_EXAMPLE} (cname 'lz4', "
            "'lz4hc', 'zlib' and 'zstd' are available), zarr.codecs.ZstdCodec(level=3) or "
            "zarr.codecs.GzipCodec(level=5)."
        )
    if isinstance(compressor, (ArrayBytesCodec,)) or hasattr(compressor, "_encode_single"):
        rule = "it is not a bytes-to-bytes codec (compressors run after serialisation)"
    else:
        rule = f"a {type(compressor).__name__} is not a codec"
    raise InvalidArgumentTypeError(
        f"Invalid compressor {compressor!r} for {where}: {rule}. Pass a zarr v3 "
        f"bytes-to-bytes codec, e.g. compressor={_COMPRESSOR_EXAMPLE}, compressor=[] for "
        "no compression, or None for the default (Blosc zstd level 1, byte shuffle)."
    )


def _is_fill(block: np.ndarray, fill: np.ndarray) -> bool:
    """True if every element has exactly the fill value's bits (``-0.0`` is not ``0.0``)."""
    size = block.dtype.itemsize
    if size not in (1, 2, 4, 8) or not block.flags.c_contiguous:
        return bool(np.array_equal(block, np.broadcast_to(fill, block.shape), equal_nan=True))
    bits, fill_bits = block.reshape(-1).view(f"u{size}"), fill.view(f"u{size}")
    if bits.size and (bits[0] != fill_bits or bits[-1] != fill_bits):
        return False  # most chunks tell at their first or last value: no scan
    # count_nonzero is a SIMD loop; ``any()`` would cast every element to bool first
    return np.count_nonzero(bits) == 0 if fill_bits == 0 else bool((bits == fill_bits).all())


class ChunkCodec:
    """Encode + store, or load + decode, whole chunks of one zarr v3 array.

    With ``storage`` (the :class:`~cpr_zarr.storage.Storage` the array lives in), chunk
    bytes go through its ``get``/``set`` (on local disk: plain file reads and atomic
    writes in the calling thread); without, through the zarr store's event loop.
    """

    def __init__(self, array: zarr.Array[Any], storage: Storage | None = None) -> None:
        self.array = array
        self.storage = storage
        meta: Any = array.metadata
        self.shape: tuple[int, ...] = tuple(array.shape)
        self.chunks: tuple[int, ...] = tuple(array.chunks)
        self.dtype = np.dtype(array.dtype)
        self._store = array.store_path.store
        self._prefix = array.store_path.path.rstrip("/")
        codecs = list(meta.codecs) if meta.zarr_format == 3 else []
        self.fast = (
            len(codecs) >= 1
            and isinstance(codecs[0], ArrayBytesCodec)
            and all(isinstance(c, BytesBytesCodec) for c in codecs[1:])
            and all(isinstance(c, SupportsSyncCodec) for c in codecs)
        )
        self._codecs: list[Any] = codecs
        # the default [bytes, blosc] chain: Blosc can decompress straight into a writable
        # array (zarr's wrapper returns read-only bytes, which would cost a copy per chunk)
        self._blosc_into = (
            self.fast
            and len(codecs) == 2
            and isinstance(codecs[0], BytesCodec)
            and (codecs[0].endian is None or codecs[0].endian.value == sys.byteorder)
            and isinstance(codecs[1], BloscCodec)
            and self.dtype.isnative
        )
        self._prototype = default_buffer_prototype()
        if self.fast:
            self._spec = meta.get_chunk_spec(
                (0,) * len(self.shape), array._async_array.config, self._prototype
            )
            self._fill = np.asarray(self._spec.fill_value, dtype=self.dtype)
            self._write_empty = bool(self._spec.config.write_empty_chunks)
            self._encode_key: Callable[[tuple[int, ...]], str] = meta.encode_chunk_key

    def __reduce__(self) -> tuple[Any, ...]:
        return (ChunkCodec, (self.array, self.storage))

    def region(self, index: tuple[int, ...]) -> tuple[slice, ...]:
        """The array region of chunk ``index``."""
        return tuple(
            slice(i * c, min((i + 1) * c, s))
            for i, c, s in zip(index, self.chunks, self.shape, strict=True)
        )

    def _key(self, index: tuple[int, ...]) -> str:
        key = self._encode_key(index)
        return f"{self._prefix}/{key}" if self._prefix else key

    def write(self, index: tuple[int, ...], block: np.ndarray) -> None:
        """Store chunk ``index``; ``block`` is exactly its region's values."""
        if not self.fast:
            self.array[self.region(index)] = block
            return
        if block.shape == self.chunks:
            full = np.ascontiguousarray(block, dtype=self.dtype)
        else:  # edge chunk: zarr stores it padded to the full chunk shape
            full = np.full(self.chunks, self._fill, dtype=self.dtype)
            full[tuple(slice(0, s) for s in block.shape)] = block
        if not self._write_empty and _is_fill(full, self._fill):
            return  # like zarr: a missing chunk reads as the fill value
        key = self._key(index)
        if self._blosc_into:  # what zarr's [bytes, blosc] chain does, minus its wrappers
            encoded = self._codecs[1]._blosc_codec.encode(full.reshape(-1).view(np.uint8))
            if self.storage is not None:
                self.storage.set(key, encoded)
                return
            data: Any = self._prototype.buffer.from_bytes(encoded)
        else:
            data = self._prototype.nd_buffer.from_numpy_array(full)
            for codec in self._codecs:
                data = codec._encode_sync(data, self._spec)
            if self.storage is not None:
                self.storage.set(key, data.to_bytes())
                return
        sync(self._store.set(key, data))

    def read(self, index: tuple[int, ...], *, writeable: bool = True) -> np.ndarray:
        """The values of chunk ``index`` (its region only; may be a view of the decoded chunk).

        With ``writeable=False`` the result may be a read-only view of the codec's output
        (saves a copy when the caller copies it anyway). A missing chunk reads as the fill
        value, like zarr.
        """
        block = self.load(index, writeable=writeable)
        return self.fill_block(index) if block is None else block

    def fill_block(self, index: tuple[int, ...]) -> np.ndarray:
        """What a missing chunk ``index`` reads as: the fill value over its region."""
        return np.full(self._valid_shape(index), self._fill, dtype=self.dtype)

    def load(
        self, index: tuple[int, ...], *, writeable: bool = True, out: np.ndarray | None = None
    ) -> np.ndarray | None:
        """Like :meth:`read`, but ``None`` if the chunk is not stored (fast path only).

        ``out``: a C-contiguous array of the chunk shape and dtype that the chunk may be
        decoded into (reused by callers that copy the values on: no fresh allocation, no
        page faults); the result is then a view of it.
        """
        if not self.fast:
            return np.asarray(self.array[self.region(index)])
        raw: Any
        if self.storage is not None:
            raw = self.storage.get(self._key(index))
        else:
            raw = sync(self._store.get(self._key(index), self._prototype))
        if raw is None:
            return None
        if self._blosc_into:
            if (
                out is not None
                and out.shape == self.chunks
                and out.dtype == self.dtype
                and out.flags.c_contiguous
                and out.flags.writeable
            ):
                full = out
            else:
                full = np.empty(self.chunks, dtype=self.dtype)
            frame = (
                np.frombuffer(raw, dtype=np.uint8)
                if isinstance(raw, bytes)
                else raw.as_numpy_array()
            )
            # the frame header's uncompressed size (bytes 4-8) must fill the chunk exactly,
            # else a damaged frame could leave part of ``full`` uninitialised
            declared = int.from_bytes(bytes(frame[4:8]), "little") if frame.size >= 16 else -1
            if declared != full.nbytes:
                raise ValueError(
                    f"Blosc frame of chunk {index} declares {declared} bytes, the chunk "
                    f"holds {full.nbytes}"
                )
            blosc.decompress(frame, full)
            return self._valid(index, full)
        data: Any = self._prototype.buffer.from_bytes(raw) if isinstance(raw, bytes) else raw
        for codec in reversed(self._codecs[1:]):
            data = codec._decode_sync(data, self._spec)
        full = np.asarray(self._codecs[0]._decode_sync(data, self._spec).as_numpy_array())
        if writeable and not full.flags.writeable:  # a view of the codec's output bytes
            full = full.copy()
        return self._valid(index, full)

    def _valid(self, index: tuple[int, ...], full: np.ndarray) -> np.ndarray:
        """The part of a decoded (padded) chunk inside the array."""
        valid = self._valid_shape(index)
        if full.shape == valid:
            return full
        return full[tuple(slice(0, v) for v in valid)]

    def _valid_shape(self, index: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(r.stop - r.start for r in self.region(index))
