"""Peak memory and throughput of streaming a lazily generated volume into a store.

    python benchmarks/streaming_peak_memory.py [--gib 8] [--repeat 1]

Each variant runs in a fresh process (so peak RSS is its own) on the same Dask graph, a
uint16 volume generated block by block (blobs on a noisy background, 64 x 256 x 256 chunks
of 8 MiB), with the threaded scheduler on all cores:

* ``cpr_zarr``: ``ResultStore.save(lazy)``: each block hashed and written by the task that
  computes it, into staging, then renamed and committed;
* ``da.to_zarr``: ``da.to_zarr(lazy, zarr_array)`` into a plain zarr v3 array with the same
  codec (Blosc zstd-1 + shuffle) and chunks: what a user would otherwise write.

It prints one row per variant: seconds, MB/s, peak RSS, and peak RSS as a fraction of the
volume. (Not an asv benchmark: asv runs in-process and cannot isolate peak RSS of 8 GiB runs.)
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHUNKS = (64, 256, 256)


def lazy_volume(gib: float):  # type: ignore[no-untyped-def]
    import dask.array as da
    import numpy as np

    yx = 2048 if gib >= 1 else 256
    z = max(CHUNKS[0], round(gib * 2**30 / (2 * yx * yx) / CHUNKS[0]) * CHUNKS[0])
    shape = (z, yx, yx)
    zz, yy, xx = np.ogrid[: CHUNKS[0], : CHUNKS[1], : CHUNKS[2]]
    blob = 800 * np.exp(-((zz - 32) ** 2 + (yy - 128) ** 2 + (xx - 128) ** 2) / (2 * 20.0**2))

    def block(block_id: tuple[int, int, int]) -> np.ndarray:
        rng = np.random.default_rng(hash(block_id) % 2**32)
        noise = rng.integers(90, 110, size=CHUNKS, dtype=np.uint16)
        return noise + np.roll(blob, rng.integers(0, 128, size=3), axis=(0, 1, 2)).astype(np.uint16)

    return da.map_blocks(
        block,
        dtype=np.uint16,
        chunks=tuple((c,) * (s // c) for c, s in zip(CHUNKS, shape, strict=False)),
    )


def run_variant(variant: str, gib: float, workdir: Path) -> dict[str, float]:
    import dask
    import dask.array as da
    import zarr
    from zarr.codecs import BloscCodec

    import cpr_zarr

    lazy = lazy_volume(gib)
    start = time.perf_counter()
    with dask.config.set(scheduler="threads"):
        if variant == "cpr_zarr":
            cpr_zarr.ResultStore(workdir / "results.zarr").save(lazy, name="volume", chunks=CHUNKS)
        else:
            array = zarr.create_array(
                str(workdir / "plain.zarr"),
                shape=lazy.shape,
                chunks=CHUNKS,
                dtype=lazy.dtype,
                compressors=BloscCodec(cname="zstd", clevel=1, shuffle="shuffle"),
                fill_value=0,
            )
            da.to_zarr(lazy, array)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"seconds": seconds, "nbytes": float(lazy.nbytes), "peak_rss": float(peak)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gib", type=float, default=8.0, help="volume size in GiB")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.gib, Path(args.workdir))))
        return
    rows = []
    for _ in range(args.repeat):
        for variant in ("cpr_zarr", "da.to_zarr"):  # interleaved, fresh process and folder each
            with tempfile.TemporaryDirectory(dir=Path.cwd()) as tmp:
                out = subprocess.run(
                    [sys.executable, __file__, "--variant", variant, "--gib", str(args.gib), "--workdir", tmp],
                    check=True, capture_output=True, text=True,
                ).stdout  # fmt: skip
            result = json.loads(out.strip().splitlines()[-1])
            rows.append((variant, result))
    print(
        f"{'variant':12s} {'GiB':>6s} {'seconds':>8s} {'MB/s':>7s} {'peak RSS GiB':>13s} {'RSS/size':>9s}"
    )
    for variant, r in rows:
        gib = r["nbytes"] / 2**30
        print(
            f"{variant:12s} {gib:6.2f} {r['seconds']:8.1f} {r['nbytes'] / 1e6 / r['seconds']:7.0f} "
            f"{r['peak_rss'] / 2**30:13.2f} {r['peak_rss'] / r['nbytes']:9.3f}"
        )


if __name__ == "__main__":
    main()
