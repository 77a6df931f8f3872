"""A writer process for the crash and concurrency tests.

    python -m tests.writer_proc STORE KIND SEED [SEED ...] [--go-file PATH]

Saves ``volume(seed)`` for each seed, as numpy (KIND=numpy), as a Dask array
(KIND=dask), or alternating (KIND=mixed); prints "ready" once imported and
"saved <seed> <group_path>" after each save, flushing every line. With
``--go-file`` it waits for that file to exist before saving, so that many
processes start writing at the same instant.

KIND=read is a reader: until the go-file's sibling ``stop`` exists, it lists the
store and verifies every result it sees, then prints "verified <n>".
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import dask
import dask.array as da
import numpy as np

import cpr_zarr

SHAPE = (64, 256, 256)  # 8 MiB of uint16
CHUNKS = (16, 64, 64)  # 64 chunks


def volume(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 30, size=SHAPE, dtype=np.uint16)
    return np.cumsum(base, axis=2, dtype=np.uint16)  # compressible, not constant


def read_until(store: cpr_zarr.ResultStore, stop: Path) -> None:
    verified = 0
    while not stop.exists():
        for target in store.targets():
            seed = int(target.name[1:])
            np.testing.assert_array_equal(target.to_numpy(), volume(seed))
            verified += 1
    print(f"verified {verified}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("store")
    parser.add_argument("kind", choices=["numpy", "dask", "mixed", "read"])
    parser.add_argument("seeds", type=int, nargs="*")
    parser.add_argument("--go-file", type=Path)
    args = parser.parse_args()
    store = cpr_zarr.ResultStore(args.store)
    arrays = {seed: volume(seed) for seed in args.seeds}
    print("ready", flush=True)
    while args.go_file is not None and not args.go_file.exists():
        time.sleep(0.001)
    if args.kind == "read":
        read_until(store, args.go_file.parent / "stop")
        return
    with dask.config.set(scheduler="threads"):
        for i, seed in enumerate(args.seeds):
            data = arrays[seed]
            lazy = args.kind == "dask" or (args.kind == "mixed" and (seed + i) % 2)
            value = da.from_array(data, chunks=(10, 100, 256)) if lazy else data
            target = store.save(value, name=f"v{seed}", chunks=CHUNKS)
            print(f"saved {seed} {target.group_path}", flush=True)


if __name__ == "__main__":
    main()
