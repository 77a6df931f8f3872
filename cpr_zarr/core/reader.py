"""Reading results: lazy Dask arrays whose every chunk is verified as it is read.

Whole reads are decoded in place: :meth:`ChunkReader.to_numpy` decodes each chunk into a
buffer reused by its thread and copies it into the output, and a result's lazy array
(:class:`ResultArray`), computed whole, has its read tasks copy their chunks straight into
one output array, which is returned as it is (no per-chunk arrays, no concatenation).
"""

from __future__ import annotations

import math
import threading
import uuid
import weakref
from typing import TYPE_CHECKING, Any

import dask.array as da
import dask.core
import numpy as np
import zarr
from dask.array.core import finalize, slices_from_chunks
from dask.utils import ensure_dict

from cpr_zarr.core import catalog
from cpr_zarr.core.codec import ChunkCodec, thread_map, worker_count
from cpr_zarr.core.digests import DigestTree
from cpr_zarr.core.integrity import load_commit, remove_command
from cpr_zarr.errors import ChunkVerificationError, InvalidArgumentTypeError, ResultNotFoundError
from cpr_zarr.model.hashing import chunk_digest
from cpr_zarr.model.layout import chunk_grid, parse_group_path, parse_member_path
from cpr_zarr.model.records import ArrayRecord

if TYPE_CHECKING:
    from cpr_zarr.storage import Storage

__all__ = ["ChunkReader", "ResultArray", "forget_reader", "open_reader"]

# verified readers by (store URL, group path): a result's record is checked once per process.
# Content-hashed groups never change; a deleted or damaged one is forgotten (forget_reader)
# and a reader re-checks the record when a chunk read fails (ChunkReader.refresh).
_READERS: dict[tuple[str, str], ChunkReader] = {}
_READERS_LOCK = threading.Lock()


def open_reader(storage: Storage, group_path: str) -> ChunkReader:
    """A verifying chunk reader for committed result ``group_path`` (cached per process).

    Raises
    ------
    ResultNotFoundError
        If the result is not (or no longer) committed, or ``group_path`` is not a result path.
    IntegrityError
        If its record does not hash to its content hash or its array metadata disagrees.
    """
    key = (storage.url, group_path)
    with _READERS_LOCK:
        reader = _READERS.get(key)
    if reader is not None:
        return reader
    # a pointer naming a path outside its store is never followed; then record vs content
    # hash, array metadata vs record (IntegrityError on damage)
    record = load_commit(storage, group_path) if parse_group_path(group_path) else None
    if record is None:
        raise ResultNotFoundError(
            f"Result {group_path!r} is not (or no longer) committed in store "
            f"{storage.url!r}. Re-run the task that produced it."
        )
    if not isinstance(record, ArrayRecord):
        raise InvalidArgumentTypeError(
            f"Result {group_path!r} in store {storage.url!r} is a table, not an array: read "
            "it with cpr_zarr.read_table(target)."
        )
    reader = ChunkReader(storage, group_path, record)
    with _READERS_LOCK:
        return _READERS.setdefault(key, reader)


def forget_reader(storage: Storage, group_path: str) -> None:
    """Drop the cached reader of ``group_path`` (deleted, repaired or re-saved)."""
    with _READERS_LOCK:
        _READERS.pop((storage.url, group_path), None)


_View = tuple[str, tuple[int, ...], tuple[int, ...], tuple[str, ...] | None, str | None, str]


def _view(record: ArrayRecord, level: int) -> _View:
    """(dask name hash, shape, chunks, chunk digests (layout 1), digest-tree root (layout 2),
    array path) of one level of a result."""
    if level == 0:
        return (
            record.content_hash,
            record.shape,
            record.chunks,
            record.chunk_digests,
            record.digest_root,
            record.array,
        )
    entry = record.levels[level - 1]
    content_hash = f"{record.content_hash}-level{level}"
    return (
        content_hash,
        entry.shape,
        entry.chunks,
        entry.chunk_digests,
        entry.digest_root,
        entry.path,
    )


class ChunkReader:
    """Reads and verifies the chunks of one committed result group (``level`` 0: the base
    array; ``n``: pyramid level ``n`` of the record)."""

    def __init__(
        self, storage: Storage, group_path: str, record: ArrayRecord, level: int = 0
    ) -> None:
        self.storage = storage
        self.group_path = group_path
        self.record = record
        self.level = level
        self._set_view(record)
        self.dtype = np.dtype(record.dtype)
        self._array: zarr.Array[Any] | None = None
        self._codec: ChunkCodec | None = None
        self._fill_digests: dict[tuple[int, ...], str] = {}
        self._lock = threading.Lock()
        self._generation = 0  # bumped by each refresh that changed something
        self._check_digest_list()

    def _set_view(self, record: ArrayRecord) -> None:
        view = _view(record, self.level)
        self.content_hash, self.shape, self.chunks, self.digests, root, array = view
        # a record read from disk must not send reads outside its group
        self.array_path = parse_member_path(
            array, where=f"result {self.group_path!r} in store {self.storage.url!r}"
        )
        self.grid = tuple(
            math.ceil(s / c) if s else 0 for s, c in zip(self.shape, self.chunks, strict=True)
        )
        # layout 2: the digests are read from the stored digest tree, a block at a time
        self._tree = (
            None
            if root is None
            else DigestTree(
                self.storage,
                self.group_path,
                self.array_path,
                math.prod(self.grid),
                root,
                self._tree_error,
            )
        )

    def _chunk_error(self, index: tuple[int, ...], message: str) -> ChunkVerificationError:
        """The error for chunk ``index`` of this array, saying ``message``."""
        return ChunkVerificationError(
            message, store_url=self.storage.url, group_path=self.group_path, chunk_index=index
        )

    def _tree_error(self, flat: int, problem: str) -> ChunkVerificationError:
        index = tuple(int(i) for i in np.unravel_index(flat, self.grid))
        return self._chunk_error(
            index,
            f"Cannot verify {self._where(index)}: {problem}, so its recorded digest is not "
            f"known. {self._remedy()}",
        )

    @property
    def attrs(self) -> dict[str, Any]:
        """The commit record as stored (a new dict; read fields of :attr:`record` instead)."""
        return self.record.to_dict()

    def _check_digest_list(self) -> None:
        """The commit record lists one digest (32 hex digits) per chunk of the grid (layout
        1; a layout-2 record's root was checked against the content hash or record digest)."""
        expected = math.prod(self.grid)
        digests = self.digests
        if self._tree is not None:
            return
        if (
            isinstance(digests, tuple)
            and len(digests) == expected
            and all(isinstance(d, str) and len(d) == 32 for d in digests)
        ):
            try:
                for d in digests:
                    bytes.fromhex(d)
                return
            except ValueError:
                pass
        got = f"{len(digests)} entries" if isinstance(digests, tuple) else repr(digests)[:80]
        raise ChunkVerificationError(
            f"The commit record of result {self.group_path!r} in store {self.storage.url!r} is "
            f"damaged: its chunk_digests ({got}) must list one 32-hex-digit digest for each of "
            f"the {expected} chunks of shape {self.shape} in chunks {self.chunks}, so no chunk "
            f"can be verified. {self._remedy()}",
            store_url=self.storage.url,
            group_path=self.group_path,
            chunk_index=(),
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (ChunkReader, (self.storage, self.group_path, self.record, self.level))

    def _open_array(self) -> zarr.Array[Any]:
        return zarr.open_array(
            self.storage.zarr_store,
            path=f"{self.group_path}/{self.array_path}",
            mode="r",
            zarr_format=3,
        )

    @property
    def array(self) -> zarr.Array[Any]:
        if self._array is None:
            self._array = self._open_array()
        return self._array

    @property
    def codec(self) -> ChunkCodec:
        if self._codec is None:
            self._codec = ChunkCodec(self.array, self.storage)
        return self._codec

    def _read_chunk(
        self,
        index: tuple[int, ...],
        verify: bool,
        *,
        writeable: bool,
        scratch: np.ndarray | None = None,
    ) -> np.ndarray:
        try:
            block = self.codec.load(index, writeable=writeable, out=scratch)
        except Exception as exc:
            raise self._chunk_error(
                index,
                f"Cannot read {self._where(index)}: {type(exc).__name__}: {exc}. The stored "
                f"chunk is damaged or unreadable. {self._remedy()}",
            ) from exc
        if block is None:
            # not stored: right only if the saved chunk held just the fill value (zarr skips
            # those). Checked even unverified: a result deleted by another process since this
            # reader was opened must not read as zeros.
            block = self.codec.fill_block(index)
            if self._fill_digest(block) != self._expected(index):
                raise self._chunk_error(
                    index,
                    f"Cannot read {self._where(index)}: the chunk is not in the store (was the "
                    "result deleted or garbage-collected?). To resolve: open the result again "
                    "(store.open(ref)); if it is gone, re-run the task that produced it.",
                )
            return block
        if verify:
            self._check(index, block)
        return block

    def _remedy(self) -> str:
        return (
            "To resolve: remove the result (store.delete(ref), or "
            f"`{remove_command(self.storage.url, self.group_path)}`) and re-run the task that "
            "produced it."
        )

    def _where(self, index: tuple[int, ...]) -> str:
        array = self.array_path
        level = "" if self.level == 0 else f" (pyramid level array {array!r})"
        return f"chunk {index}{level} of result {self.group_path!r} in store {self.storage.url!r}"

    def _check(self, index: tuple[int, ...], block: np.ndarray) -> None:
        expected = self._expected(index)
        actual = chunk_digest(block)
        if actual != expected:
            raise self._chunk_error(
                index,
                f"Verification failed for {self._where(index)}: its decoded values hash to "
                f"{actual}, but {expected} was recorded when it was saved. The stored chunk is "
                "damaged or was changed outside cpr_zarr. Other chunks are unaffected. "
                f"{self._remedy()}",
            )

    def read_chunk(
        self,
        index: tuple[int, ...],
        verify: bool = True,
        *,
        writeable: bool = True,
        scratch: np.ndarray | None = None,
    ) -> np.ndarray:
        """Read (and by default verify) one chunk; ``writeable=False`` may give a read-only view.

        ``scratch``: a C-contiguous array of the chunk shape and dtype to decode into (the
        result may then be a view of it: copy it out before ``scratch`` is reused).

        A chunk that fails is read once more if the result was re-saved since this reader
        opened it (another process deleted it and saved the same content again, maybe with
        another compressor or pyramid plan): the failure was this reader's stale metadata,
        not damage.
        """
        generation = self._generation
        try:
            return self._read_chunk(index, verify, writeable=writeable, scratch=scratch)
        except ChunkVerificationError:
            if not self.refresh(since=generation):
                raise
        return self._read_chunk(index, verify, writeable=writeable, scratch=scratch)

    def read_into(self, index: tuple[int, ...], out: np.ndarray, verify: bool = True) -> np.ndarray:
        """Read (and verify) chunk ``index`` into ``out``, the whole array's output; returns
        the view of ``out`` it filled. Decoded in this thread's reused chunk buffer."""
        # the record's grid, not the codec's: opening the array (damaged metadata) must fail
        # inside read_chunk, which reports it as a ChunkVerificationError
        region = tuple(
            slice(i * c, min((i + 1) * c, s))
            for i, c, s in zip(index, self.chunks, self.shape, strict=True)
        )
        view = out[region]
        view[...] = self.read_chunk(
            index, verify, writeable=False, scratch=_scratch(self.chunks, self.dtype)
        )
        return view

    def refresh(self, *, since: int | None = None) -> bool:
        """Re-read the commit record and array metadata; whether either changed.

        ``since``: the generation a failed read started from; if another thread refreshed
        since, this returns True at once (the failure may have been the stale metadata).

        Raises
        ------
        ResultNotFoundError
            If the result is no longer committed (deleted by another process), or was
            re-saved with a pyramid plan that no longer has this level's shape.
        """
        with self._lock:
            if since is not None and since != self._generation:
                return True
            record = catalog.committed(self.storage, self.group_path)
            if record is None and self.storage.exists(f"{self.group_path}/zarr.json"):
                return False  # the marker is there but damaged: report the chunk as it failed
            if record is not None and not isinstance(record, ArrayRecord):
                return False  # an array's path cannot hold a table: damage
            level = self.level
            if record is not None and len(record.levels) < level:
                record = None
            if record is None or (view := _view(record, level))[1:3] != (self.shape, self.chunks):
                what = "result" if level == 0 else f"level {level} of result"
                raise ResultNotFoundError(
                    f"The {what} {self.group_path!r} in store {self.storage.url!r} read by this "
                    "process is no longer committed as it was opened: another process deleted "
                    "it (or re-saved it with another pyramid plan). Open it again "
                    "(store.open(ref)); if it is gone, re-run the task that produced it."
                )
            changed = False
            if record.dtype != self.record.dtype or (level == 0 and view != _view(self.record, 0)):
                return False  # the base's are fixed by its content hash: this is damage
            if record != self.record:
                # levels (another pyramid plan) or image metadata changed with the re-save
                changed = level == 0 or view != _view(self.record, level)
                self.record = record
                self._set_view(record)
                self._check_digest_list()
            fresh = self._open_array()
            if (
                changed
                or self._array is None
                or fresh.metadata.to_dict() != self._array.metadata.to_dict()
            ):
                self._array, self._codec, changed = fresh, None, True
            if changed:
                self._generation += 1
                if level != 0:  # the store's cached reader has stale level records
                    forget_reader(self.storage, self.group_path)
            return changed

    def _expected(self, index: tuple[int, ...]) -> str:
        flat = int(np.ravel_multi_index(index, self.grid))
        if self._tree is not None:
            return self._tree.digest(flat)
        digests = self.digests if self.digests is not None else ()  # checked on open
        return digests[flat]

    def _fill_digest(self, block: np.ndarray) -> str:
        """Digest of a fill-value chunk of this shape, computed once per shape."""
        if block.shape not in self._fill_digests:
            self._fill_digests[block.shape] = chunk_digest(block)
        return self._fill_digests[block.shape]

    def to_dask(self, *, verify: bool = True) -> da.Array:
        """A lazy Dask array named after the content hash; one read task per stored chunk.

        The graph is Dask's lazy array-reading layer (``da.from_array``) over a view whose
        every (chunk-aligned) read is a verified chunk read: building it costs no Python
        object per chunk, so opening a result of a million chunks is as cheap as opening
        it with ``da.from_zarr``.
        """
        name = f"cpr-zarr-{self.content_hash}" + ("" if verify else "-unverified")
        chunks = da.core.normalize_chunks(self.chunks, self.shape)
        meta = np.empty((0,) * len(self.shape), dtype=self.dtype)
        if 0 in self.shape:
            # no chunk is stored, but Dask still wants one (empty) block per chunk it counts
            dsk: dict[Any, Any] = {}
            for index in np.ndindex(*(len(c) for c in chunks)):
                block = np.empty(tuple(c[i] for c, i in zip(chunks, index, strict=True)))
                dsk[(name, *index)] = block.astype(self.dtype)
            return da.Array(dsk, name, chunks, meta=meta)
        # Dask's lazy layer over verified chunk reads: no graph object per chunk until a
        # computation needs it (opening a 1M-chunk result costs what da.from_zarr does)
        lazy = da.from_array(
            _ChunkView(self, verify),
            chunks=chunks,
            name=name,
            asarray=False,
            fancy=False,
            lock=False,
            meta=meta,
            inline_array=False,
        )
        array = ResultArray(lazy.dask, name, chunks, meta=meta)  # type: ignore[no-untyped-call]
        array._cpr_reader = self
        array._cpr_verify = verify
        return array

    def to_numpy(self, *, verify: bool = True) -> np.ndarray:
        """Read everything into one array, one chunk per thread call, each verified as read.

        Raises
        ------
        ChunkVerificationError
            Naming the first chunk that cannot be read or does not match its digest.
        """
        out = np.empty(self.shape, dtype=self.dtype)

        def one(index: tuple[int, ...]) -> None:
            self.read_into(index, out, verify)

        grid = [index for index, _ in chunk_grid(self.shape, self.chunks)]
        list(thread_map(one, grid, worker_count(remote=self.storage.remote)))
        return out


class _ChunkView:
    """What :meth:`ChunkReader.to_dask` hands to ``da.from_array``: an array-like whose
    reads, one chunk each (the Dask chunks are the stored chunks), are chunk reads."""

    def __init__(self, reader: ChunkReader, verify: bool) -> None:
        self.reader = reader
        self.verify = verify
        self.shape = reader.shape
        self.dtype = reader.dtype
        self.ndim = len(reader.shape)

    def __getitem__(self, key: tuple[slice | int, ...]) -> np.ndarray:
        # Dask asks for one whole chunk; should its optimiser fuse a later selection into
        # the read, the key is a region (or an index) inside one chunk: read that chunk
        # and cut the region out of it.
        index: list[int] = []
        inner: list[slice | int] = []
        for k, c, n in zip(key, self.reader.chunks, self.shape, strict=True):
            if isinstance(k, slice):
                start = k.start or 0
                i = start // c
                stop = n if k.stop is None else k.stop
                inner.append(slice(start - i * c, stop - i * c, k.step))
            else:
                i = int(k) // c
                inner.append(int(k) - i * c)
            index.append(i)
        block = self.reader.read_chunk(tuple(index), self.verify)
        whole = all(
            isinstance(r, slice) and r.start == 0 and r.step in (None, 1) and r.stop >= size
            for r, size in zip(inner, block.shape, strict=True)
        )
        return block if whole else block[tuple(inner)]

    def __reduce__(self) -> tuple[Any, ...]:
        return (_ChunkView, (self.reader, self.verify))


# -- decoding buffers and whole reads through Dask ----------------------------------------

_SCRATCH = threading.local()


def _scratch(chunks: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """This thread's chunk-sized decoding buffer (one per thread, replaced on another shape):
    a fresh array per chunk would cost a page fault per 4 KiB written."""
    buf: np.ndarray | None = getattr(_SCRATCH, "buf", None)
    if buf is None or buf.shape != chunks or buf.dtype != dtype:
        buf = _SCRATCH.buf = np.empty(chunks, dtype=dtype)
    return buf


# output arrays of whole reads in progress, by read token: each process (thread pool,
# worker process, cluster worker) makes its own on first use, and it lives while a read
# task's view of it does
_OUTPUTS: weakref.WeakValueDictionary[str, np.ndarray] = weakref.WeakValueDictionary()
_OUTPUTS_LOCK = threading.Lock()


def _output(token: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    with _OUTPUTS_LOCK:
        out = _OUTPUTS.get(token)
        if out is None:
            out = np.empty(shape, dtype=dtype)  # untouched pages cost nothing
            _OUTPUTS[token] = out
        return out


def _read_into(reader: ChunkReader, index: tuple[int, ...], verify: bool, token: str) -> np.ndarray:
    """Dask task of a whole read: chunk ``index`` decoded into the read's shared output."""
    return reader.read_into(tuple(index), _output(token, reader.shape, reader.dtype), verify)


def _assemble(results: Any, shape: tuple[int, ...], chunks: tuple[tuple[int, ...], ...]) -> Any:
    """Finalize a whole read: the shared output array if every block is its view in place
    (all read by threads of one process); else Dask's concatenation (blocks that came from
    other processes are copies)."""
    blocks = list(dask.core.flatten(results, container=list))
    regions = slices_from_chunks(chunks)
    base = blocks[0].base if blocks and isinstance(blocks[0], np.ndarray) else None
    if (
        isinstance(base, np.ndarray)
        and base.shape == shape
        and base.flags.c_contiguous
        and len(blocks) == len(regions)
        and all(_in_place(b, base, r) for b, r in zip(blocks, regions, strict=True))
    ):
        return base
    return finalize(results)


def _in_place(block: Any, base: np.ndarray, region: tuple[slice, ...]) -> bool:
    if not isinstance(block, np.ndarray) or block.base is not base:
        return False
    expected = base[region]
    return (
        block.shape == expected.shape
        and block.strides == expected.strides
        and block.__array_interface__["data"][0] == expected.__array_interface__["data"][0]
    )


class ResultArray(da.Array):
    """The lazy array of a stored result (:meth:`ChunkReader.to_dask`): a plain Dask array,
    one read task per stored chunk, which when computed whole (``.compute()`` of the array
    itself) decodes every chunk straight into one output array, as ``to_numpy`` does.

    Any operation on it (slicing, arithmetic, ``map_blocks``) gives a plain Dask array that
    reads only the chunks it needs.
    """

    _cpr_reader: ChunkReader
    _cpr_verify: bool

    def __dask_optimize__(self, dsk: Any, keys: Any, **kwargs: Any) -> Any:
        reader = getattr(self, "_cpr_reader", None)
        if reader is None:
            return da.Array.__dask_optimize__(dsk, keys, **kwargs)
        token = uuid.uuid4().hex  # one per compute: concurrent computes never share output
        # the graph also holds Dask's finalize task (and whatever else is computed with it):
        # only this array's read tasks are replaced
        graph: dict[Any, Any] = dict(ensure_dict(dsk))
        reader_key = f"cpr-zarr-reader-{reader.content_hash}"
        graph[reader_key] = reader
        for index, _ in chunk_grid(reader.shape, reader.chunks):
            graph[(self.name, *index)] = (_read_into, reader_key, index, self._cpr_verify, token)
        return graph

    def __dask_postcompute__(self) -> tuple[Any, tuple[Any, ...]]:
        return _assemble, (self.shape, self.chunks)
