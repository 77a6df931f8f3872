"""Peak memory and throughput of streaming a lazily generated volume into a store.

    python benchmarks/streaming_peak_memory.py [--gib 8] [--repeat 1] [--variants ...]

Each variant runs in a fresh process (so peak RSS is its own) on the same Dask graph, a
uint16 volume generated block by block (blobs on a noisy background, 64 x 256 x 256 chunks
of 8 MiB), with the threaded scheduler on all cores:

* ``cpr_zarr``: ``ResultStore.save(lazy)`` with the default pyramid: each block hashed and
  written by the task that computes it, into staging, then renamed and committed, then the
  pyramid levels;
* ``cpr_zarr_base_only``: the same with ``levels=1`` (the base array only);
* ``da.to_zarr``: ``da.to_zarr(lazy, zarr_array)`` into a plain zarr v3 array with the same
  codec (Blosc zstd-1 + shuffle) and chunks: what a user would otherwise write;
* ``generate_only``: the graph computed and every block dropped (``da.store`` into a sink
  that keeps nothing): the floor, what making the data costs on its own.

It prints one row per variant: seconds, MB/s, peak RSS, and peak RSS as a fraction of the
volume. ``benchmarks/bench_streaming.py`` runs the same variants from asv at 1, 4 and 16 GiB
(:func:`run_in_subprocess`).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHUNKS = (64, 256, 256)
VARIANTS = ("cpr_zarr", "cpr_zarr_base_only", "da.to_zarr", "generate_only")


def lazy_volume(gib: float, chunks: tuple[int, int, int] = CHUNKS):  # type: ignore[no-untyped-def]
    """A uint16 volume of about ``gib`` GiB, each block made when it is computed."""
    import dask.array as da
    import numpy as np

    yx = 2048 if gib >= 1 else chunks[1]
    z = max(chunks[0], round(gib * 2**30 / (2 * yx * yx) / chunks[0]) * chunks[0])
    shape = (z, yx, yx)
    zz, yy, xx = np.ogrid[: chunks[0], : chunks[1], : chunks[2]]
    centre = [c // 2 for c in chunks]
    radius2 = 2 * (min(chunks) / 3.2) ** 2
    blob = 800 * np.exp(
        -((zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2) / radius2
    )

    def block(block_id: tuple[int, int, int]) -> np.ndarray:
        rng = np.random.default_rng(hash(block_id) % 2**32)
        noise = rng.integers(90, 110, size=chunks, dtype=np.uint16)
        shift = rng.integers(0, chunks[1] // 2, size=3)
        return noise + np.roll(blob, shift, axis=(0, 1, 2)).astype(np.uint16)

    return da.map_blocks(
        block,
        dtype=np.uint16,
        chunks=tuple((c,) * (s // c) for c, s in zip(chunks, shape, strict=False)),
    )


class _Sink:
    """A ``da.store`` target that keeps nothing."""

    def __setitem__(self, key: object, value: object) -> None:
        pass


def run_variant(
    variant: str, gib: float, workdir: Path, chunks: tuple[int, int, int] = CHUNKS
) -> dict[str, float]:
    import dask
    import dask.array as da
    import zarr
    from zarr.codecs import BloscCodec

    import cpr_zarr

    lazy = lazy_volume(gib, chunks)
    start = time.perf_counter()
    with dask.config.set(scheduler="threads"):
        if variant == "cpr_zarr":
            cpr_zarr.ResultStore(workdir / "results.zarr").save(lazy, name="volume", chunks=chunks)
        elif variant == "cpr_zarr_base_only":
            store = cpr_zarr.ResultStore(workdir / "results.zarr")
            store.save(lazy, name="volume", chunks=chunks, levels=1)
        elif variant == "generate_only":
            da.store(lazy, _Sink(), lock=False)
        elif variant == "da.to_zarr":
            array = zarr.create_array(
                str(workdir / "plain.zarr"),
                shape=lazy.shape,
                chunks=chunks,
                dtype=lazy.dtype,
                compressors=BloscCodec(cname="zstd", clevel=1, shuffle="shuffle"),
                fill_value=0,
            )
            da.to_zarr(lazy, array)
        else:
            raise ValueError(f"unknown variant {variant!r}: use one of {VARIANTS}")
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"seconds": seconds, "nbytes": float(lazy.nbytes), "peak_rss": float(peak)}


def run_in_subprocess(
    variant: str, gib: float, folder: Path, chunks: tuple[int, int, int] = CHUNKS
) -> dict[str, float]:
    """:func:`run_variant` in a fresh Python process and a new folder under ``folder``
    (removed after): its peak RSS is that save's alone."""
    # the cpr_zarr of this checkout, as in the asv suite (benchmarks/common.py)
    paths = [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        out = subprocess.run(
            [sys.executable, __file__, "--variant", variant, "--gib", str(gib), "--workdir", tmp,
             "--chunks", *map(str, chunks)],
            check=True, capture_output=True, text=True, env=env,
        ).stdout  # fmt: skip
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gib", type=float, default=8.0, help="volume size in GiB")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--variants", nargs="+", default=["cpr_zarr", "da.to_zarr"],
                        choices=VARIANTS)  # fmt: skip
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--chunks", type=int, nargs=3, default=list(CHUNKS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        chunks = tuple(args.chunks)
        print(json.dumps(run_variant(args.variant, args.gib, Path(args.workdir), chunks)))  # type: ignore[arg-type]
        return
    rows = [  # interleaved, fresh process and folder each
        (variant, run_in_subprocess(variant, args.gib, Path.cwd()))
        for _ in range(args.repeat)
        for variant in args.variants
    ]
    print(
        f"{'variant':18s} {'GiB':>6s} {'seconds':>8s} {'MB/s':>7s} {'peak RSS GiB':>13s} {'RSS/size':>9s}"
    )
    for variant, r in rows:
        gib = r["nbytes"] / 2**30
        print(
            f"{variant:18s} {gib:6.2f} {r['seconds']:8.1f} {r['nbytes'] / 1e6 / r['seconds']:7.0f} "
            f"{r['peak_rss'] / 2**30:13.2f} {r['peak_rss'] / r['nbytes']:9.3f}"
        )


if __name__ == "__main__":
    main()
