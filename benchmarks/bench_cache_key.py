"""Cache-key cost: ``cpr_zarr.CONTENT_INPUTS`` against Prefect's ``INPUTS`` for array inputs.

Both policies are called exactly as Prefect calls them for a task run with one input ``x``:
``policy.compute_key(None, {"x": value}, {})``. Inputs (same volume in every form):

* ``numpy``        the in-memory array. CONTENT_INPUTS: xxh3-128 of its bytes; INPUTS: JSON
                   fails, so cloudpickle of the whole array, then md5.
* ``dask``         ``da.from_array(volume, chunks=C)``. CONTENT_INPUTS: the Dask name (dask
                   already hashed the data when the collection was created, outside the
                   timing); INPUTS: cloudpickle of the graph, which embeds the array.
* ``zarr_target``  the ``ZarrTarget`` of the saved volume, what cpr_zarr tasks pass around.
                   CONTENT_INPUTS: its content hash; INPUTS: cloudpickle of the pointer.
"""

from __future__ import annotations

import os

import dask.array as da
import prefect.cache_policies

import cpr_zarr
from benchmarks import common  # first: sets Prefect's environment before prefect is imported

SIZES = ["small", "large"]
INPUTS = ["numpy", "dask", "zarr_target"]


class CacheKey:
    params = (SIZES, INPUTS)
    param_names = ["size", "input"]
    repeat = (1, 10, 20.0)
    rounds = 1
    warmup_time = 0.0
    timeout = 900

    def setup_cache(self):
        folder = os.getcwd()
        store = cpr_zarr.ResultStore(os.path.join(folder, "cache-key.zarr"))
        out = {"store": store.url}
        for size in SIZES:
            path = common.cached_volume(size, folder)
            target = store.save(
                common.load_volume(path), name=f"volume-{size}", chunks=common.chunks()
            )
            out[size] = {"volume": str(path), "group": target.group_path}
        return out

    def setup(self, cache, size, kind):
        if kind == "zarr_target":
            self.value = cpr_zarr.ResultStore(cache["store"], mode="r").open(cache[size]["group"])
        else:
            data = common.load_volume(cache[size]["volume"])
            self.value = data if kind == "numpy" else da.from_array(data, chunks=common.chunks())
        self.inputs = {"x": self.value}

    def time_content_inputs(self, cache, size, kind):
        cpr_zarr.CONTENT_INPUTS.compute_key(None, self.inputs, {})

    def time_prefect_inputs(self, cache, size, kind):
        prefect.cache_policies.INPUTS.compute_key(None, self.inputs, {})

    def peakmem_content_inputs(self, cache, size, kind):
        cpr_zarr.CONTENT_INPUTS.compute_key(None, self.inputs, {})

    def peakmem_prefect_inputs(self, cache, size, kind):
        prefect.cache_policies.INPUTS.compute_key(None, self.inputs, {})
