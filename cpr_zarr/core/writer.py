"""Writing results: array -> chunks -> digests -> committed group.

Commit protocol (every store kind):

1. The content hash is known before the final group is touched: numpy arrays are hashed
   in memory first (one thread per core); Dask arrays are written to
   ``_staging/<name>-<uuid>/0`` by the workers, each block hashed in the same task that
   writes it, then moved under the final path.
2. If a committed group with this hash exists (under any name), nothing is written.
3. The base array ``<name>-<hash>/0`` is written: metadata, then chunks. Every writer of
   the same hash writes the same decoded values, so concurrent writers and a writer
   repeating a crashed one's work cannot produce a mix of contents; chunk writes are
   atomic per key (temp file + rename on local disk, single PUT on object stores).
4. Last, ``<name>-<hash>/zarr.json`` is written with the ``cpr_zarr`` attributes: the
   commit marker. Its content is a pure function of the data, so concurrent writers
   write identical documents and both succeed.

A crash before step 4 leaves a folder without a group ``zarr.json`` (or a ``_staging``
entry), which no reader treats as a result and which the next save of that content
completes.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import uuid
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import dask.array as da
import numpy as np
import zarr

from cpr_zarr.core import catalog, journal, labels, pyramid
from cpr_zarr.core.arrays import claim_array, store_chunk
from cpr_zarr.core.codec import ChunkCodec, parse_compressor, thread_map, worker_count
from cpr_zarr.core.compute import compute
from cpr_zarr.core.integrity import write_marker
from cpr_zarr.core.lease import Lease, checkpoint
from cpr_zarr.core.progress import SaveProgress, count_keys
from cpr_zarr.errors import InvalidArgumentError, StoreError, UnsupportedResultError
from cpr_zarr.model.hashing import chunk_digest, combine_digests
from cpr_zarr.model.layout import (
    HASH_HEX_LENGTH,
    canonical_dtype,
    chunk_grid,
    parse_chunks,
    parse_name,
)
from cpr_zarr.model.records import ArrayRecord, ResultDocument

if TYPE_CHECKING:
    from cpr_zarr.model.records import LevelRecord
    from cpr_zarr.storage import Storage
    from cpr_zarr.target import ZarrTarget

__all__ = ["check_ndim", "save", "unmask"]

logger = logging.getLogger("cpr_zarr")
ARRAY_PATH = "0"
MAX_NDIM = 5
STAGING = "_staging"
_ATTEMPTS = 3


def check_ndim(shape: tuple[int, ...], what: str) -> None:
    if not 1 <= len(shape) <= MAX_NDIM:
        raise UnsupportedResultError(
            f"Cannot store {what} with shape {shape} ({len(shape)}-D): results are 1-D to "
            f"{MAX_NDIM}-D arrays. Return a 0-D value as a plain number (float(x)), and "
            "reshape arrays with more axes."
        )


def save(
    storage: Storage,
    data: Any,
    name: str,
    *,
    chunks: Any = None,
    compressor: Any = None,
    axes: Any = None,
    scale: Any = None,
    units: Any = None,
    translation: Any = None,
    levels: int | None = None,
) -> ZarrTarget:
    """Write ``data`` into ``store`` and commit it (see the module docstring).

    ``data`` may be wrapped in :class:`~cpr_zarr.model.ngff.Image` / :class:`~cpr_zarr.model.ngff.Labels`;
    ``axes``, ``scale``, ``units``, ``translation`` and ``levels`` go to the NGFF metadata
    and pyramid (:mod:`cpr_zarr.model.ngff`, :mod:`cpr_zarr.core.pyramid`), never into the content hash.
    """
    name = parse_name(name)
    try:
        data, spec = labels.resolve_save(
            storage,
            data,
            axes=axes,
            scale=scale,
            units=units,
            translation=translation,
            levels=levels,
        )
    except InvalidArgumentError as exc:  # name the place: which save, which store
        raise type(exc)(f"Cannot save result {name!r} to store {storage.url!r}: {exc}") from exc
    data = unmask(data, f"result {name!r} in store {storage.url!r}")
    compressor = parse_compressor(compressor, where=f"result {name!r} in store {storage.url!r}")
    if isinstance(data, da.Array):
        return _save_dask(storage, data, name, chunks=chunks, compressor=compressor, spec=spec)
    if isinstance(data, np.ndarray):
        return _save_numpy(storage, data, name, chunks=chunks, compressor=compressor, spec=spec)
    raise UnsupportedResultError(
        f"Cannot store {type(data).__module__}.{type(data).__qualname__} object {data!r:.80} "
        f"as result {name!r}: Storage.save takes a numpy or Dask array. Convert it "
        "(numpy.asarray(value)) or return it as a small JSON-able value."
    )


def unmask(data: Any, where: str) -> Any:
    """``data`` without a mask that hides nothing; a masked array that masks values is refused.

    Stored results are plain arrays and every read returns plain arrays: the mask would be
    dropped and the hidden values (whatever they are) served as data.
    """
    if isinstance(data, np.ma.MaskedArray):
        if np.ma.getmask(data) is np.ma.nomask or not np.ma.getmaskarray(data).any():
            return np.ma.getdata(data)
        raise UnsupportedResultError(
            f"Cannot store a masked array (numpy.ma) as {where}: "
            f"{int(np.ma.getmaskarray(data).sum())} of {data.size} values are masked, and a result "
            "is a plain array, so the mask would be lost and the hidden values served as data. "
            "To resolve, either: 1. fill the masked values, "
            "e.g. save(numpy.ma.filled(x, 0)), or NaN for floats; or 2. store the values and "
            "the mask as two results: save(x.data, name='values') and "
            "save(numpy.ma.getmaskarray(x), name='mask')."
        )
    if isinstance(data, da.Array) and isinstance(data._meta, np.ma.MaskedArray):
        raise UnsupportedResultError(
            f"Cannot store a masked Dask array (dask.array.ma) as {where}: a result is a plain "
            "array, so its mask would be lost. Fill it (dask.array.ma.filled(x, 0)) or store "
            "dask.array.ma.getdata(x) and dask.array.ma.getmaskarray(x) as two results."
        )
    return data


def _saving(what: str, plans: list[pyramid.LevelPlan]) -> str:
    """What a save's progress names: the result, and the levels made in the same pass."""
    if not plans:
        return what
    return f"{what} with {len(plans)} pyramid level{'s' if len(plans) > 1 else ''}"


def _save_numpy(
    storage: Storage,
    data: np.ndarray,
    name: str,
    *,
    chunks: Any,
    compressor: Any,
    spec: labels.SaveSpec,
) -> ZarrTarget:
    dtype = canonical_dtype(data.dtype, what=f"result {name!r}")
    check_ndim(data.shape, f"result {name!r}")
    data = np.asarray(data, dtype=dtype)
    chunk_shape = parse_chunks(
        chunks, data.shape, dtype, where=f"result {name!r} in store {storage.url!r}"
    )
    workers = worker_count(remote=storage.remote)
    grid = list(chunk_grid(data.shape, chunk_shape))
    digests = digest_chunks(data, [s for _, s in grid], workers=worker_count())
    content_hash = combine_digests(data.shape, dtype, chunk_shape, digests)
    path = spec.path(name, content_hash)
    plans = spec.level_plans(data.shape, chunk_shape, dtype)
    for _ in range(_ATTEMPTS):
        found = spec.find(storage, content_hash, path)
        if found is not None:
            return found
        checkpoint("save.hashed")
        with Lease(storage, path):
            array_path = f"{path}/{ARRAY_PATH}"
            array = _create_array(
                storage,
                array_path,
                data.shape,
                dtype,
                chunk_shape,
                compressor,
                dimension_names=spec.dimension_names,
            )
            builder: pyramid.LevelBuilder | None = None
            names: list[str] = []
            if plans:  # pyramid levels, made from the base chunks as they are written
                names, codecs = pyramid.open_levels(
                    storage, path, plans, dtype, array.compressors, spec.dimension_names
                )
                builder = pyramid.LevelBuilder(plans, codecs, names)
            with SaveProgress(
                _saving(path, plans),
                len(digests) + sum(plan.chunk_count for plan in plans),
                data.nbytes,
                count_keys(storage, array_path, *(f"{path}/{n}" for n in names)),
            ):
                write_chunks(
                    ChunkCodec(array, storage), data, grid, workers=workers, levels=builder
                )
            checkpoint("save.written")
            if not _array_present(storage, path):
                continue  # removed under us by something outside the protocol: write again
            return _commit(
                storage,
                path,
                name,
                content_hash,
                data.shape,
                dtype,
                chunk_shape,
                digests,
                spec=spec,
                base=data,
                levels=None if builder is None else builder.records(),
                array_checked=True,
            )
    raise _gone_error(storage, path)


def _array_present(storage: Storage, path: str) -> bool:
    present = storage.get_json(f"{path}/{ARRAY_PATH}/zarr.json") is not None
    if not present:
        logger.warning(
            "The array of result %s in store %s was removed while it was being written "
            "(by hand, or by a cpr_zarr too old to respect write leases); writing it again.",
            path,
            storage.url,
        )
    return present


def _gone_error(storage: Storage, path: str) -> StoreError:
    return StoreError(
        f"Result {path!r} in store {storage.url!r} was removed {_ATTEMPTS} times while it was "
        "being written, so it was not committed. Something outside cpr_zarr (a script, a "
        "lifecycle rule, an old cpr_zarr's gc) is deleting folders of this store: stop it, "
        "then run the task again."
    )


def digest_chunks(data: np.ndarray, regions: list[tuple[slice, ...]], *, workers: int) -> list[str]:
    """The digest of each chunk region of an in-memory array, hashed on ``workers`` threads.

    Each thread copies a non-contiguous region into one reused buffer: a fresh 8 MiB
    allocation per chunk costs more in page faults than the hash itself.
    """
    local = threading.local()

    def one(region: tuple[slice, ...]) -> str:
        view = data[region]
        if view.flags.c_contiguous:
            return chunk_digest(view)
        buf = getattr(local, "buf", None)
        if buf is None or buf.shape != view.shape:
            buf = local.buf = np.empty(view.shape, dtype=view.dtype)
        np.copyto(buf, view)
        return chunk_digest(buf)

    return list(thread_map(one, regions, workers))


def write_chunks(
    codec: ChunkCodec,
    data: np.ndarray,
    grid: list[tuple[tuple[int, ...], tuple[slice, ...]]],
    *,
    workers: int,
    levels: pyramid.LevelBuilder | None = None,
) -> None:
    """Encode and store every chunk of in-memory ``data`` on ``workers`` threads.

    With ``levels``, each stored chunk is also passed on to the pyramid levels (the same
    copy, still in cache), in the order that keeps few level chunks open at once.
    """
    if levels is not None:
        regions = dict(grid)
        grid = [(index, regions[index]) for index in levels.order(list(regions))]

    def one(item: tuple[tuple[int, ...], tuple[slice, ...]]) -> None:
        index, region = item
        block = np.ascontiguousarray(data[region])
        codec.write(index, block)
        if levels is not None:
            levels.add(index, block)

    list(thread_map(one, grid, workers))


def _save_dask(
    storage: Storage,
    data: da.Array,
    name: str,
    *,
    chunks: Any,
    compressor: Any,
    spec: labels.SaveSpec,
) -> ZarrTarget:
    if any(np.isnan(s) for s in data.shape):
        raise UnsupportedResultError(
            f"Cannot store Dask array result {name!r} with unknown chunk sizes {data.chunks}: "
            "call .compute_chunk_sizes() on it before returning it."
        )
    dtype = canonical_dtype(data.dtype, what=f"result {name!r}")
    check_ndim(data.shape, f"result {name!r}")
    if data.size == 0:
        (small,) = compute(data)
        return _save_numpy(storage, small, name, chunks=chunks, compressor=compressor, spec=spec)
    chunk_shape = parse_chunks(
        chunks, data.shape, dtype, where=f"result {name!r} in store {storage.url!r}"
    )
    known = _already_stored(storage, data, dtype, chunk_shape, name, spec)
    if known is not None:
        return known
    graph_key = _graph_key(storage, data, dtype, chunk_shape)
    if data.dtype != dtype:
        data = data.astype(dtype)
    aligned = da.core.normalize_chunks(chunk_shape, data.shape)
    if data.chunks != aligned:
        data = data.rechunk(aligned)
    token = uuid.uuid4().hex
    staging = f"{STAGING}/{name}-{token}"
    staging_lease = Lease(storage, staging)  # keeps the staging folder live for gc
    try:
        _make_staging_dir(storage, staging)
        staging_lease.acquire()
        array = _create_array(
            storage,
            f"{staging}/{ARRAY_PATH}",
            data.shape,
            dtype,
            chunk_shape,
            compressor,
            dimension_names=spec.dimension_names,
        )
        plans = spec.level_plans(tuple(int(s) for s in data.shape), chunk_shape, dtype)
        staged_levels: list[str] = []
        level_digests: list[list[str]] = []
        if plans:  # pyramid levels in the same graph, made from the blocks as they are written
            staged_levels, level_codecs = pyramid.open_levels(
                storage, staging, plans, dtype, array.compressors, spec.dimension_names
            )
            work: Any = pyramid.pyramid_graph(
                data, ChunkCodec(array, storage), plans, level_codecs, token
            )
        else:
            work = da.map_blocks(
                write_block,
                data,
                codec=ChunkCodec(array, storage),
                chunks=tuple((1,) * len(c) for c in data.chunks),
                dtype=object,
                meta=np.empty((0,) * data.ndim, dtype=object),
                name=f"cpr-zarr-write-{token}",
            )
        with SaveProgress(
            _saving(f"{name} (streaming)", plans),
            math.prod(len(c) for c in data.chunks) + sum(plan.chunk_count for plan in plans),
            int(data.nbytes),
            count_keys(
                storage,
                f"{staging}/{ARRAY_PATH}",
                *(f"{staging}/{level}" for level in staged_levels),
            ),
        ):
            (computed,) = compute(work)
        if plans:
            digests, *level_digests = computed
        else:
            digests = [str(d) for d in np.asarray(computed).ravel(order="C")]
        content_hash = combine_digests(data.shape, dtype, chunk_shape, digests)
        path = spec.path(name, content_hash)
        _remember(graph_key, content_hash)
        found = spec.find(storage, content_hash, path)
        if found is not None:
            return found
        checkpoint("save.hashed")
        with Lease(storage, path):
            _move(storage, f"{staging}/{ARRAY_PATH}", f"{path}/{ARRAY_PATH}")
            levels = None
            if plans:
                levels = pyramid.move_levels(
                    storage,
                    staging,
                    path,
                    plans,
                    staged_levels,
                    level_digests,
                    spec.dimension_names,
                )
            checkpoint("save.written")
            return _commit(
                storage,
                path,
                name,
                content_hash,
                data.shape,
                dtype,
                chunk_shape,
                digests,
                spec=spec,
                levels=levels,
            )
    finally:
        staging_lease.release()
        try:
            remove_prefix(storage, staging)
        except Exception as exc:  # never hide the save's own error; gc removes leftovers
            logger.warning(
                "Could not remove staging folder %s of %s: %s", staging, storage.url, exc
            )


_READ_NAME = re.compile(rf"cpr-zarr-([0-9a-f]{{{HASH_HEX_LENGTH}}})(?:-unverified)?")
_SAVED_GRAPHS: OrderedDict[tuple[Any, ...], str] = OrderedDict()
_SAVED_GRAPHS_MAX = 4096
_SAVED_GRAPHS_LOCK = threading.Lock()


def _graph_key(
    storage: Storage, data: da.Array, dtype: np.dtype, chunk_shape: tuple[int, ...]
) -> tuple[Any, ...]:
    """What identifies a save of a Dask array in this process: its name (Dask's identity of
    its values), the stored dtype, shape and chunk shape (the hash depends on them), the store."""
    shape = tuple(int(s) for s in data.shape)
    return (storage.url, str(data.name), dtype.str, shape, tuple(chunk_shape))


def _remember(key: tuple[Any, ...], content_hash: str) -> None:
    with _SAVED_GRAPHS_LOCK:
        _SAVED_GRAPHS[key] = content_hash
        _SAVED_GRAPHS.move_to_end(key)
        while len(_SAVED_GRAPHS) > _SAVED_GRAPHS_MAX:
            _SAVED_GRAPHS.popitem(last=False)


def _known_hash(
    storage: Storage, data: da.Array, dtype: np.dtype, chunks: tuple[int, ...]
) -> str | None:
    """The content hash of a Dask array: from its name if it was read from a result, or if
    an array of this name was saved before in this process (see :func:`_already_stored`)."""
    match = _READ_NAME.fullmatch(str(data.name))
    if match is not None:
        return match[1]
    with _SAVED_GRAPHS_LOCK:
        return _SAVED_GRAPHS.get(_graph_key(storage, data, dtype, chunks))


def _already_stored(
    storage: Storage,
    data: da.Array,
    dtype: np.dtype,
    chunk_shape: tuple[int, ...],
    name: str,
    spec: labels.SaveSpec,
) -> ZarrTarget | None:
    """The committed result a lazy array is known to hold, if any: a lookup, no compute.

    Known are (1) a result read lazily (``target.get_data()``): a Dask array named after
    its content hash (:meth:`~cpr_zarr.core.reader.ChunkReader.to_dask`), saved again
    unchanged; (2) a Dask array whose name was saved before in this process, into this
    store, with the same dtype and chunk shape. A Dask name is Dask's own identity of the
    values (``tokenize`` of the graph's inputs: Dask computes one key once and shares it
    between collections), so this holds exactly as far as Dask's does; random arrays are
    covered too (``da.random`` draws its seeds into the graph, so one array object always
    computes the same values; a new call gives a new name). It cannot hold for block
    functions that are not pure (unseeded randomness, reading files that change under the
    same name, e.g. ``da.from_zarr`` of an array rewritten in place): such an array saved
    twice in one process gets the first save's result. Names are not trusted across
    processes, and the result must still be committed in the store (one read of its
    marker), else the array is computed. Any other graph is computed, because only its
    values can tell its hash.
    """
    content_hash = _known_hash(storage, data, dtype, chunk_shape)
    if content_hash is None:
        return None
    found = spec.find(storage, content_hash, spec.path(name, content_hash))
    if (
        found is None
        or found.dtype != dtype.name
        or tuple(found.chunks) != tuple(chunk_shape)
        or tuple(found.shape) != tuple(int(s) for s in data.shape)
    ):
        return None
    return found


def write_block(block: np.ndarray, *, codec: ChunkCodec, block_info: dict[Any, Any]) -> np.ndarray:
    """Store one chunk-aligned Dask block and return its digest (as a 1-element object array)."""
    out = np.empty((1,) * block.ndim, dtype=object)
    out.flat[0] = store_chunk(codec, tuple(block_info[0]["chunk-location"]), block)
    return out


def _create_array(
    storage: Storage,
    path: str,
    shape: tuple[int, ...],
    dtype: np.dtype,
    chunks: tuple[int, ...],
    compressor: Any,
    *,
    dimension_names: list[str] | None = None,
) -> zarr.Array[Any]:
    """Write the array metadata (no parent group documents) and open the array for writing.

    If a crashed or concurrent writer already wrote metadata here, it is reused: the path
    names the content hash, which fixes shape, dtype and chunks, so its chunks are ours too.
    """
    array = claim_array(
        storage, path, shape, dtype, chunks, compressor, dimension_names=dimension_names
    )
    if array is None:
        found = zarr.open_array(storage.zarr_store, path=path, mode="r", zarr_format=3)
        raise StoreError(
            f"Array metadata at {path!r} in store {storage.url!r} (shape {found.shape}, dtype "
            f"{found.dtype}, chunks {found.chunks}) does not match the result being saved "
            f"(shape {shape}, dtype {dtype}, chunks {chunks}). Something other than cpr_zarr "
            f"wrote there: delete {path!r} and save again."
        )
    return array


def _commit(
    storage: Storage,
    path: str,
    name: str,
    content_hash: str,
    shape: tuple[int, ...],
    dtype: np.dtype,
    chunks: tuple[int, ...],
    digests: list[str],
    *,
    spec: labels.SaveSpec | None = None,
    base: np.ndarray | None = None,
    levels: list[LevelRecord] | None = None,
    array_checked: bool = False,
) -> ZarrTarget:
    """Write the NGFF metadata and pyramid levels, then the commit marker.

    ``base`` is the in-memory base array when there is one: levels are then computed from
    it rather than read back from the store. ``array_checked``: the caller has just seen
    the base array's metadata, after writing its chunks.
    """
    # never commit a group whose base array is missing (removed under the writer)
    if not array_checked and storage.get_json(f"{path}/{ARRAY_PATH}/zarr.json") is None:
        raise StoreError(
            f"Not committing result {path!r} in store {storage.url!r}: its array metadata "
            f"{path}/{ARRAY_PATH}/zarr.json disappeared while the result was being written "
            "(deleted by something that ignores cpr_zarr's write leases, e.g. a script, a "
            "lifecycle rule or an old cpr_zarr's gc). Stop that, then run the task again."
        )
    record = ArrayRecord(
        content_hash=content_hash,
        name=name,
        shape=tuple(shape),
        dtype=dtype.name,
        chunks=tuple(chunks),
        chunk_digests=tuple(digests),
    )
    # NGFF metadata and pyramid levels (written now, before the commit marker)
    ome, record = (spec or labels.SaveSpec(None)).group_attributes(
        storage, path, record, base=base, made=levels
    )
    # a killed writer's commit is listed all the same: listings check pending saves
    journal.note_pending(storage, path)
    # seals the record (record_digest), writes its copy, then the marker
    write_marker(storage, path, ResultDocument(record=record, ome=ome))
    checkpoint("save.committed")
    if spec is not None:
        spec.after_commit(storage)  # label images: list it in the image's labels group
    return catalog.target_for(storage, path, record)


def _move(storage: Storage, src: str, dst: str) -> None:
    """Move the staged array ``src`` to ``dst`` (an atomic rename on local disk).

    If a concurrent or crashed writer of the same content already created ``dst`` with
    other array metadata (another compressor), ``dst`` keeps its metadata and our chunks
    are re-encoded with its codecs: replacing its ``zarr.json`` under a writer still
    storing chunks would leave chunks in two codecs.
    """
    existing = storage.get_json(f"{dst}/zarr.json")
    if existing is not None and existing != storage.get_json(f"{src}/zarr.json"):
        _reencode(storage, src, dst)
        return
    try:
        storage.move_tree(src, dst)
    except FileExistsError:  # another writer's metadata won after the check above
        _reencode(storage, src, dst)


def _reencode(storage: Storage, src: str, dst: str) -> None:
    """Copy every chunk of array ``src`` into the existing array ``dst``, in ``dst``'s codecs."""
    source = ChunkCodec(
        zarr.open_array(storage.zarr_store, path=src, mode="r", zarr_format=3), storage
    )
    target = _create_array(storage, dst, source.shape, source.dtype, source.chunks, compressor=None)
    codec = ChunkCodec(target, storage)
    logger.info(
        "Result array %s in store %s was created by another writer with other codecs; "
        "storing this save's chunks in its codecs.",
        dst,
        storage.url,
    )

    def one(index: tuple[int, ...]) -> None:
        codec.write(index, source.read(index, writeable=False))

    grid = [index for index, _ in chunk_grid(source.shape, source.chunks)]
    list(thread_map(one, grid, worker_count(remote=storage.remote)))


def _make_staging_dir(storage: Storage, staging: str) -> None:
    """Create this save's own staging folder (local disk), so that ``_staging`` stays.

    Another process may remove ``_staging`` between creating it and creating our folder
    in it (see :func:`remove_prefix`): then create both again. Once our folder exists,
    ``_staging`` is not empty and nobody removes it until we remove our folder.
    """
    storage.make_folder(f"{staging}/{ARRAY_PATH}")


def remove_prefix(storage: Storage, prefix: str) -> None:
    """Remove everything under ``prefix``; an emptied ``_staging`` folder goes too.

    An empty ``_staging/`` folder at the store root would make plain zarr warn when it lists
    the root's members ("not recognized as a component of a Zarr hierarchy"). ``rmdir``
    removes it only while it is empty, so a save that is staging concurrently keeps its
    folder (it created that folder first, and recreates ``_staging`` if it vanished).
    """
    storage.delete_tree(prefix)
    if prefix.startswith(f"{STAGING}/"):
        storage.remove_empty_folder(STAGING)  # not empty (another save is staging): stays
