"""Saving a 3D uint16 microscopy volume: cpr_zarr against what users would otherwise do.

Every writer gets the same in-memory volume (see ``common.microscopy_volume``) and writes
to a new location on local disk in each timed call (cpr_zarr never rewrites content it
already holds, so a second save into the same store would measure nothing):

* ``cpr_zarr``        ``ResultStore(path).save(data, chunks=C, compressor=Blosc zstd-1)``:
                      hash every chunk, write, commit - with whatever the default save
                      writes besides the base array (multiscale pyramid levels, if the
                      version has them).
* ``cpr_zarr_base_only``  the same with ``levels=1`` (base array only): the same work as
                      the raw zarr write (identical to ``cpr_zarr`` on versions without pyramids).
* ``zarr``            the ceiling: ``zarr.create_array(path, chunks=C, compressors=<same codec>)``
                      then ``a[...] = data`` (numpy) or ``da.store(data, a, lock=False)`` (dask).
* ``prefect_pickle``  what a plain ``@task(persist_result=True)`` does with the result:
                      ``prefect.results.ResultStore(result_storage=LocalFileSystem(...),
                      serializer=PickleSerializer()).write(data)`` (cloudpickle -> base64 ->
                      JSON record -> file). Dask input is computed first (pickling a Dask
                      array would store its graph, not a result).
* ``tifffile_zlib``   ``tifffile.imwrite(path, data, compression="zlib")``, what the older cpr
                      project did (Dask input computed first).
* ``np_save``         ``np.save(path, data)``, uncompressed (Dask input computed first).
* ``ceiling``         (numpy only) the machine's ceiling for this codec: every chunk copied out
                      of the array, Blosc-encoded and written as a plain file, one thread per
                      core (``common.ceiling_save``). ``track_ceiling_over_base_only`` is
                      ceiling time / base-only save time, the two interleaved in one process
                      (target >= 0.9).

``SaveNumpy`` hands the writers a numpy array; ``SaveDask`` a Dask array over the same
numpy array, chunked like the store (``da.from_array(data, chunks=C)``, built in ``setup``).

``track_cpu_cores_*`` report the average number of busy cores during one save
(process CPU seconds / wall seconds; 2.0 = both cores of a 2-core machine).
"""

from __future__ import annotations

import inspect
import os
import time
import uuid

import dask.array as da
import numpy as np
import prefect.filesystems
import prefect.results
import prefect.serializers
import tifffile
import zarr

import cpr_zarr
from benchmarks import common  # first: sets Prefect's environment before prefect is imported

try:  # the package layout since the storage seam; older versions had cpr_zarr.writer
    from cpr_zarr.core import writer as _writer
except ImportError:  # pragma: no cover - benchmarking an older commit
    from cpr_zarr import writer as _writer  # type: ignore[no-redef]

SIZES = ["small", "large"]
# cpr_zarr versions with multiscale pyramids take save(..., levels=N) (via **metadata)
_HAS_LEVELS = "levels" in inspect.signature(_writer.save).parameters


def _cpu_cores_during(fn) -> float:
    """Average busy cores while ``fn()`` runs (CPU time of this process / wall time).

    ``time.process_time`` (user + system time of all threads, nanosecond clock) rather than
    ``psutil`` CPU times, which count 10 ms ticks and read 0 for a save of a few ms.
    """
    cpu_start, start = time.process_time(), time.perf_counter()
    fn()
    return (time.process_time() - cpu_start) / (time.perf_counter() - start)


class _SaveBase:
    """Shared set-up; subclasses choose the input (numpy or Dask)."""

    params = SIZES
    param_names = ["size"]
    number = 1  # one save per sample: every save writes 64 MiB .. 1 GiB
    repeat = (1, 3, 60.0)  # 1 to 3 samples, stop after 60 s
    rounds = 1
    warmup_time = 0.0
    timeout = 1200

    def setup_cache(self):
        # generated once per asv run; each benchmark process reads it back (about 0.5 s/GiB)
        return {size: str(common.cached_volume(size, os.getcwd())) for size in SIZES}

    def setup(self, volumes, size):
        self.data = common.load_volume(volumes[size])
        self.chunks = common.chunks()
        self.out = common.scratch_dir("save")

    def teardown(self, volumes, size):
        common.remove(self.out)

    def source(self):
        """The value handed to every writer."""
        raise NotImplementedError

    def materialize(self):
        """What writers without a streaming path get: an in-memory numpy array."""
        value = self.source()
        return value.compute() if isinstance(value, da.Array) else value

    # -- the writers ------------------------------------------------------------------------

    def save_cpr_zarr(self, **options):
        store = cpr_zarr.ResultStore(common.fresh_path(self.out, "cpr.zarr"))
        target = store.save(
            self.source(), name="volume", chunks=self.chunks, compressor=common.codec(), **options
        )
        return store, target

    def save_cpr_zarr_base_only(self):
        """The same work as the raw zarr write: no multiscale pyramid (``levels=1``)."""
        if not _HAS_LEVELS:
            return self.save_cpr_zarr()  # versions without pyramids write the base only
        return self.save_cpr_zarr(levels=1)

    def save_zarr(self):
        path = common.fresh_path(self.out, "plain.zarr")
        array = zarr.create_array(
            str(path),
            shape=self.data.shape,
            chunks=self.chunks,
            dtype=self.data.dtype,
            compressors=common.codec(),
            fill_value=0,
        )
        value = self.source()
        if isinstance(value, da.Array):
            da.store(value, array, lock=False)
        else:
            array[...] = value
        return path

    def save_prefect_pickle(self):
        folder = common.fresh_path(self.out, "prefect-records")
        folder.mkdir()
        results = prefect.results.ResultStore(
            result_storage=prefect.filesystems.LocalFileSystem(basepath=str(folder)),
            serializer=prefect.serializers.PickleSerializer(),  # Prefect's default
            cache_result_in_memory=False,
        )
        results.write(self.materialize(), key="result")
        return folder

    def save_tifffile_zlib(self):
        path = common.fresh_path(self.out, "volume").with_suffix(".tif")
        tifffile.imwrite(path, self.materialize(), compression="zlib")
        return path

    def save_np_save(self):
        path = common.fresh_path(self.out, "volume").with_suffix(".npy")
        np.save(path, self.materialize())
        return path

    # -- time ---------------------------------------------------------------------------------

    def time_cpr_zarr(self, volumes, size):
        self.save_cpr_zarr()

    def time_cpr_zarr_base_only(self, volumes, size):
        self.save_cpr_zarr_base_only()

    def time_zarr(self, volumes, size):
        self.save_zarr()

    def time_prefect_pickle(self, volumes, size):
        self.save_prefect_pickle()

    def time_tifffile_zlib(self, volumes, size):
        self.save_tifffile_zlib()

    time_tifffile_zlib.repeat = 1  # single-threaded zlib: slow at 1 GiB; one sample is enough

    def time_np_save(self, volumes, size):
        self.save_np_save()

    # -- memory (peak RSS of the process; includes the input volume itself) ------------------

    def peakmem_cpr_zarr(self, volumes, size):
        self.save_cpr_zarr()

    def peakmem_zarr(self, volumes, size):
        self.save_zarr()

    def peakmem_prefect_pickle(self, volumes, size):
        self.save_prefect_pickle()

    # -- both cores busy? ---------------------------------------------------------------------

    def track_cpu_cores_cpr_zarr(self, volumes, size):
        return _cpu_cores_during(self.save_cpr_zarr)

    track_cpu_cores_cpr_zarr.unit = "cores"

    def track_cpu_cores_cpr_zarr_base_only(self, volumes, size):
        return _cpu_cores_during(self.save_cpr_zarr_base_only)

    track_cpu_cores_cpr_zarr_base_only.unit = "cores"

    def track_cpu_cores_zarr(self, volumes, size):
        return _cpu_cores_during(self.save_zarr)

    track_cpu_cores_zarr.unit = "cores"


class SaveNumpy(_SaveBase):
    """Save a numpy volume."""

    def source(self):
        return self.data

    # -- the machine's ceiling: encode the same chunks on all cores, write them as files -----

    def save_ceiling(self):
        return common.ceiling_save(self.data, self.chunks, self.out)

    def time_ceiling(self, volumes, size):
        self.save_ceiling()

    def track_ceiling_over_base_only(self, volumes, size):
        """Ceiling time / ``save(..., levels=1)`` time, interleaved in one process (>= 0.9)."""

        def cpr_zarr_base_only():
            return self.save_cpr_zarr_base_only()[0].url

        return common.interleaved_ratio(
            self.save_ceiling, cpr_zarr_base_only, cleanup=common.remove
        )

    track_ceiling_over_base_only.unit = "ceiling/cpr"

    # -- on-disk size (only once: the ratio does not depend on numpy vs Dask input) ---------

    def track_compression_ratio_cpr_zarr(self, volumes, size):
        # the base array only (level "0"), like the single-resolution TIFF
        store, target = self.save_cpr_zarr()
        return self.data.nbytes / common.tree_bytes(os.path.join(store.url, target.group_path, "0"))

    track_compression_ratio_cpr_zarr.unit = "raw/stored"

    def track_compression_ratio_tifffile_zlib(self, volumes, size):
        return self.data.nbytes / common.tree_bytes(self.save_tifffile_zlib())

    track_compression_ratio_tifffile_zlib.unit = "raw/stored"

    def track_compression_ratio_prefect_pickle(self, volumes, size):
        return self.data.nbytes / common.tree_bytes(self.save_prefect_pickle())

    track_compression_ratio_prefect_pickle.unit = "raw/stored"


class SaveDask(_SaveBase):
    """Save a Dask array (chunked like the store) over the same volume."""

    def setup(self, volumes, size):
        super().setup(volumes, size)
        # built once, outside the timings: da.from_array tokenizes (hashes) the whole numpy
        # array, about 1 s per GiB here, which would inflate every writer's time alike
        self.lazy = da.from_array(self.data, chunks=self.chunks)

    def source(self):
        return self.lazy


class ResaveLazyRead:
    """Saving again a result read lazily from the same store, unchanged (``target.get_data()``
    passed on to another task and returned): cpr_zarr knows its content hash from the Dask
    name, so the save is a lookup. ``resave_saved_graph``: saving again a computed Dask
    array (``lazy + 0``) that was saved before in this process: known by its Dask name, a
    lookup too. ``recompute`` is the save of a graph never saved before (``lazy + 0`` under
    a new name, same values): every chunk is read, verified and hashed before deduplication
    finds the stored result - what every re-save cost before."""

    params = SIZES
    param_names = ["size"]
    number = 1
    repeat = (1, 3, 60.0)
    rounds = 1
    warmup_time = 0.0
    timeout = 1200

    def setup_cache(self):
        return {size: str(common.cached_volume(size, os.getcwd())) for size in SIZES}

    def setup(self, volumes, size):
        self.chunks = common.chunks()
        self.out = common.scratch_dir("resave")
        self.store = cpr_zarr.ResultStore(common.fresh_path(self.out, "cpr.zarr"))
        data = common.load_volume(volumes[size])
        target = self.store.save(data, "raw", chunks=self.chunks)
        self.lazy = target.get_data()
        self.computed = self.lazy + 0
        self.store.save(self.computed, "raw", chunks=self.chunks)

    def teardown(self, volumes, size):
        common.remove(self.out)

    def time_cpr_zarr_resave(self, volumes, size):
        self.store.save(self.lazy, "raw", chunks=self.chunks)

    def time_cpr_zarr_resave_saved_graph(self, volumes, size):
        self.store.save(self.computed, "raw", chunks=self.chunks)

    def time_recompute(self, volumes, size):
        # a name never saved: cpr_zarr versions that know saved names would look it up
        fresh = da.map_blocks(np.add, self.lazy, 0, name=f"recompute-{uuid.uuid4().hex}")
        self.store.save(fresh, "raw", chunks=self.chunks)
