"""Streaming saves of lazily generated volumes: time per GiB and peak memory, flat with size.

A uint16 volume of 1, 4 and 16 GiB is generated block by block by a Dask graph (chunks
64 x 256 x 256 of 8 MiB, blobs on noise; ``streaming_peak_memory.lazy_volume``) and never
held whole. Each (size, writer) pair is one save in a fresh Python process
(``streaming_peak_memory.run_in_subprocess``), threaded scheduler on all cores, into a new
folder removed after, so the peak RSS is that save's own (interpreter and imports included,
~0.2-0.3 GiB). Writers:

* ``cpr_zarr``: ``ResultStore.save(lazy)``, default options: with the default pyramid;
* ``cpr_zarr_base_only``: ``save(lazy, levels=1)``, the base array only;
* ``da.to_zarr``: plain zarr v3 array, same codec (Blosc zstd-1 + shuffle) and chunks;
* ``generate_only``: the graph computed, every block dropped: what making the data costs.

``track_seconds_per_gib`` and ``track_peak_rss`` should be flat across sizes (streaming:
memory bounded by a few chunks per thread, time linear in the bytes).

All saves run once, in ``setup_cache`` (16 GiB: a few minutes per writer on 2 cores, and up
to ~6 GiB of scratch space on disk at a time, under ``CPR_ZARR_BENCH_TMP`` or the temporary
folder). ``CPR_ZARR_BENCH_STREAM_GIB=1,4`` runs other sizes (e.g. without the 16 GiB). At
``CPR_ZARR_BENCH_SIZE=small`` the sizes are 1/64, 1/16 and 1/4 GiB; at ``tiny``, 2 MiB with
tiny chunks.
"""

from __future__ import annotations

import os

from benchmarks import common  # first: sets Prefect's environment before prefect is imported
from benchmarks import streaming_peak_memory as streaming

GIB_ENV = "CPR_ZARR_BENCH_STREAM_GIB"
_SIZES = {"full": [1, 4, 16], "small": [1 / 64, 1 / 16, 1 / 4], "tiny": [1 / 512]}
WRITERS = ["cpr_zarr", "cpr_zarr_base_only", "da.to_zarr", "generate_only"]


def sizes_gib() -> list[float]:
    chosen = os.environ.get(GIB_ENV, "").strip()
    if chosen:
        return [float(v) for v in chosen.split(",")]
    return _SIZES[common.size_mode()]


class StreamingSave:
    """One streaming save per (size, writer), each in its own process."""

    params = (sizes_gib(), WRITERS)
    param_names = ["gib", "writer"]
    timeout = 4 * 3600  # setup_cache runs every save: 16 GiB x 4 writers on 2 cores

    def setup_cache(self):
        folder = common.scratch_dir("streaming")
        try:
            return {
                (gib, writer): streaming.run_in_subprocess(writer, gib, folder, common.chunks())
                for gib in self.params[0]
                for writer in self.params[1]
            }
        finally:
            common.remove(folder)

    def track_seconds_per_gib(self, results, gib, writer):
        r = results[(gib, writer)]
        return r["seconds"] / (r["nbytes"] / 2**30)

    track_seconds_per_gib.unit = "s/GiB"

    def track_peak_rss(self, results, gib, writer):
        """Peak resident memory of the process that saved (GiB)."""
        return results[(gib, writer)]["peak_rss"] / 2**30

    track_peak_rss.unit = "GiB"

    def track_peak_rss_over_volume(self, results, gib, writer):
        r = results[(gib, writer)]
        return r["peak_rss"] / r["nbytes"]

    track_peak_rss_over_volume.unit = "RSS/volume"
