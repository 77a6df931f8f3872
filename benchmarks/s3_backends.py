"""fsspec (s3fs) against obstore on the S3 server on loopback (moto behind the test proxy).

    PYTHONPATH=. python benchmarks/s3_backends.py [--mib 128] [--repeat 3]

Not an asv benchmark (it needs the test S3 server): prints the README's "Storage backends"
table. Requests are counted at the proxy in front of moto; times are medians of
``--repeat`` interleaved runs, each on a fresh store URL and fresh store objects.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
import uuid
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from collections import Counter


def _volume(mib: int) -> np.ndarray:
    shape = (mib // 8 * 16, 512, 512)  # uint16: 0.5 MiB per plane
    rng = np.random.default_rng(0)
    base = rng.integers(0, 30, size=shape, dtype=np.uint16)
    return np.cumsum(base, axis=2, dtype=np.uint16)  # compressible, not constant


def _fmt(c: Counter[str]) -> str:
    total = sum(c.values())
    parts = ", ".join(f"{n} {m}" for m, n in sorted(c.items()))
    return f"{total} ({parts})"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    from tests.s3_server import S3Server

    server = S3Server()
    os.environ.update(server.env)
    server.make_bucket("cpr-zarr-bench")
    import cpr_zarr

    big = _volume(args.mib)
    small = big[:2, :512, :512].copy()  # 1 MiB, one chunk
    rows: dict[str, dict[str, list[Any]]] = {}
    for _ in range(args.repeat):
        for backend in ("fsspec", "obstore"):
            row = rows.setdefault(backend, {})
            url = f"s3://cpr-zarr-bench/{uuid.uuid4().hex}/results.zarr"
            store = cpr_zarr.ResultStore(url, backend=backend)  # type: ignore[arg-type]
            for i in range(9):  # a listing of 10 results
                store.save(small + i, name=f"s{i}")

            server.proxy.reset_counts()
            store.save(small + 100, name="small")
            row.setdefault("save 1 MiB", []).append(server.proxy.by_method())

            server.proxy.reset_counts()
            start = time.perf_counter()
            target = store.save(big, name="big", levels=1)
            row.setdefault("save_s", []).append(time.perf_counter() - start)
            row.setdefault("save big", []).append(server.proxy.by_method())

            reader = cpr_zarr.ResultStore(url, backend=backend, mode="r")
            server.proxy.reset_counts()
            start = time.perf_counter()
            out = reader.open(target.content_hash).to_numpy()
            row.setdefault("read_s", []).append(time.perf_counter() - start)
            row.setdefault("read big", []).append(server.proxy.by_method())
            if not np.array_equal(out, big):
                raise SystemExit(f"{backend}: read back other values")

            server.proxy.reset_counts()
            listed = cpr_zarr.ResultStore(url, backend=backend, mode="r").list()
            row.setdefault("list 11 results", []).append(server.proxy.by_method())
            if len(listed) != 11:
                raise SystemExit(f"{backend}: listed {len(listed)} results")
    server.stop()

    mb = big.nbytes / 1e6
    print(f"{platform.node()} {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}, {args.mib} MiB")
    print("| | fsspec (s3fs) | obstore |")
    print("|---|---|---|")
    for label in ("save 1 MiB", "save big", "read big", "list 11 results"):
        cells = [_fmt(rows[b][label][-1]) for b in ("fsspec", "obstore")]
        print(f"| requests: {label} | {cells[0]} | {cells[1]} |")
    for label, key in (("save", "save_s"), ("read", "read_s")):
        cells = [
            f"{mb / statistics.median(rows[b][key]):.0f} MB/s ({statistics.median(rows[b][key]):.2f} s)"
            for b in ("fsspec", "obstore")
        ]
        print(f"| {label} {args.mib} MiB | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
