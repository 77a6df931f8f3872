"""Print the suite's results as Markdown tables, with the ratios the targets are about.

    .venv/bin/python benchmarks/report.py [results.json [older-results.json ...]]

Benchmarks missing from the first file are taken from the next ones (after a partial re-run
with ``asv run -b ...``; the header names their commit). Without an argument it reads the
newest results file under ``.asv/results/`` (written by
``asv run ... --set-commit-hash=$(git rev-parse HEAD)``; ``--quick`` runs in the current
environment save nothing unless a commit hash is set). All ratios come from the same run.

Targets: saving >= 0.9x the raw zarr write with the same codec and >= 4x Prefect's pickle
record; a cache key for any input size <= 10 ms; verified reads >= 0.9x unverified.
"""

from __future__ import annotations

import ast
import itertools
import json
import math
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def load(path: Path | None) -> tuple[dict, dict]:
    if path is None:
        files = [
            f
            for f in (REPO / ".asv" / "results").glob("*/*.json")
            if f.name not in ("machine.json", "benchmarks.json")
        ]
        if not files:
            sys.exit("No results under .asv/results: run asv with --set-commit-hash first.")
        path = max(files, key=lambda f: f.stat().st_mtime)
    doc = json.loads(path.read_text())
    columns = doc["result_columns"]
    out: dict[tuple[str, tuple[str, ...]], float] = {}
    for name, row in doc["results"].items():
        entry = dict(zip(columns, row, strict=False))
        values, params = entry["result"], entry["params"]
        if values is None:
            continue
        combos = list(itertools.product(*params)) if params else [()]
        for combo, value in zip(combos, values, strict=False):
            if value is None or (isinstance(value, float) and math.isnan(value)):
                continue  # failed or skipped
            key = tuple(ast.literal_eval(p) for p in combo)
            out[(name, key)] = value
    return doc, out


def fmt_time(t: float | None) -> str:
    if t is None:
        return "n/a"
    if t < 1e-3:
        return f"{t * 1e6:.0f} µs"
    if t < 1:
        return f"{t * 1e3:.1f} ms"
    return f"{t:.2f} s"


def fmt_bytes(b: float | None) -> str:
    return "n/a" if b is None else f"{b / 2**30:.2f} GiB" if b >= 2**30 else f"{b / 2**20:.0f} MiB"


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def verdict(value: float | None, ok: bool) -> str:
    return "n/a" if value is None else f"{value:.2f} {'✅' if ok else '❌'}"


def main() -> None:
    paths = [Path(a) for a in sys.argv[1:]] or [None]
    doc, r = load(paths[0])
    older = []
    for path in paths[1:]:  # fill benchmarks the first run did not re-run
        other_doc, other = load(path)
        have = {name for name, _ in r}
        missing = {k: v for k, v in other.items() if k[0] not in have}
        if missing:
            older.append(
                f"{other_doc['commit_hash'][:10]} ({len({n for n, _ in missing})} benchmarks)"
            )
        r = {**missing, **r}
    get = r.get
    print(
        f"commit {doc['commit_hash'][:10]}"
        + (f" (not re-run there: from {', '.join(older)})" if older else "")
        + f", machine {doc['params'].get('machine')}: "
        f"{doc['params'].get('num_cpu')} CPUs, {doc['params'].get('cpu')}, "
        f"{int(doc['params'].get('ram', 0)) / 2**30:.0f} GiB RAM\n"
    )

    print("### Save (wall time per save; throughput ratios: >1 means cpr_zarr is faster)\n")
    print(
        "| source | size | cpr_zarr (default) | cpr_zarr base only | zarr (same codec) | Prefect pickle "
        "| tifffile zlib | np.save | zarr/cpr base only (≥ 0.9) | zarr/cpr default "
        "| Prefect/cpr default (≥ 4) | cores cpr base only / zarr |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for cls, source in (("SaveNumpy", "numpy"), ("SaveDask", "dask")):
        for size in ("small", "large"):
            b = f"bench_save.{cls}."
            t = {
                m: get((b + "time_" + m, (size,)))
                for m in (
                    "cpr_zarr",
                    "cpr_zarr_base_only",
                    "zarr",
                    "prefect_pickle",
                    "tifffile_zlib",
                    "np_save",
                )
            }
            zb = ratio(t["zarr"], t["cpr_zarr_base_only"])
            zd = ratio(t["zarr"], t["cpr_zarr"])
            pr = ratio(t["prefect_pickle"], t["cpr_zarr"])
            cores = (
                get((b + "track_cpu_cores_cpr_zarr_base_only", (size,))),
                get((b + "track_cpu_cores_zarr", (size,))),
            )
            cores_s = " / ".join("n/a" if c is None else f"{c:.2f}" for c in cores)
            print(
                f"| {source} | {size} | "
                + " | ".join(fmt_time(t[m]) for m in t)
                + f" | {verdict(zb, zb is not None and zb >= 0.9)} | {verdict(zd, zd is not None and zd >= 0.9)}"
                f" | {verdict(pr, pr is not None and pr >= 4)} | {cores_s} |"
            )

    print("\n### Peak memory during a save (RSS of the process, input volume included)\n")
    print("| source | size | cpr_zarr | zarr | Prefect pickle |")
    print("|---|---|---|---|---|")
    for cls, source in (("SaveNumpy", "numpy"), ("SaveDask", "dask")):
        for size in ("small", "large"):
            b = f"bench_save.{cls}.peakmem_"
            print(
                f"| {source} | {size} | "
                + " | ".join(
                    fmt_bytes(get((b + m, (size,)))) for m in ("cpr_zarr", "zarr", "prefect_pickle")
                )
                + " |"
            )

    print("\n### Compression ratio (raw bytes / bytes on disk) and pointer size\n")
    print(
        "| size | cpr_zarr (Blosc zstd-1 + shuffle) | tifffile zlib | Prefect pickle record | pointer JSON |"
    )
    print("|---|---|---|---|---|")
    for size in ("small", "large"):
        b = "bench_save.SaveNumpy.track_compression_ratio_"
        vals = [get((b + m, (size,))) for m in ("cpr_zarr", "tifffile_zlib", "prefect_pickle")]
        ptr = get(("bench_read.Read.track_pointer_json_bytes", (size, "whole")))
        print(
            f"| {size} | "
            + " | ".join("n/a" if v is None else f"{v:.2f}" for v in vals)
            + f" | {'n/a' if ptr is None else f'{ptr:.0f} B'} |"
        )

    print(
        "\n### Read (verified/unverified: unverified time / verified time, target ≥ 0.9; "
        "batches = from the time_ medians, interleaved = track_verify_ratio_*, one process)\n"
    )
    print(
        "| size | selection | zarr | get_data verified | get_data unverified | ratio (batches) "
        "| ratio (interleaved) | to_numpy verified | to_numpy unverified | ratio (batches) "
        "| ratio (interleaved) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for size in ("small", "large"):
        for sel in ("whole", "chunk", "region"):
            k = (size, sel)
            b = "bench_read.Read.time_"
            z, gv, gu = (
                get((b + "zarr", k)),
                get((b + "cpr_get_data", k)),
                get((b + "cpr_get_data_unverified", k)),
            )
            nv, nu = get((b + "cpr_to_numpy", k)), get((b + "cpr_to_numpy_unverified", k))
            g, n = ratio(gu, gv), ratio(nu, nv)
            t = "bench_read.Read.track_verify_ratio_"
            gi, ni = get((t + "get_data", k)), get((t + "to_numpy", k))
            print(
                f"| {size} | {sel} | {fmt_time(z)} | {fmt_time(gv)} | {fmt_time(gu)} | "
                f"{verdict(g, g is not None and g >= 0.9)} | "
                f"{verdict(gi, gi is not None and gi >= 0.9)} | {fmt_time(nv)} | "
                f"{fmt_time(nu)} | "
                f"{verdict(n, n is not None and n >= 0.9) if nv is not None else '-'} | "
                f"{verdict(ni, ni is not None and ni >= 0.9) if ni is not None else '-'} |"
            )

    print("\n### Cache key (`compute_key(None, {'x': value}, {})`, target ≤ 10 ms)\n")
    print(
        "| size | input | CONTENT_INPUTS | Prefect INPUTS | speed-up | peak RSS CONTENT_INPUTS | peak RSS INPUTS |"
    )
    print("|---|---|---|---|---|---|---|")
    for size in ("small", "large"):
        for kind in ("numpy", "dask", "zarr_target"):
            k = (size, kind)
            b = "bench_cache_key.CacheKey."
            c, p = get((b + "time_content_inputs", k)), get((b + "time_prefect_inputs", k))
            mark = "" if c is None else (" ✅" if c <= 0.010 else " ❌")
            s = ratio(p, c)
            print(
                f"| {size} | {kind} | {fmt_time(c)}{mark} | {fmt_time(p)} | "
                f"{'n/a' if s is None else f'{s:.0f}x'} | {fmt_bytes(get((b + 'peakmem_content_inputs', k)))} | "
                f"{fmt_bytes(get((b + 'peakmem_prefect_inputs', k)))} |"
            )

    print("\n### Fully cached re-run of the example flow (4 tasks, single process)\n")
    print("| data | cpr_zarr tasks | plain Prefect tasks | plain/cpr | cached tasks cpr / plain |")
    print("|---|---|---|---|---|")
    for data in ("nuclei", "synthetic"):
        b = "bench_flow.CachedFlowRerun."
        c, p = get((b + "time_cpr_zarr", (data,))), get((b + "time_plain_prefect", (data,)))
        if c is None and p is None:
            continue
        s = ratio(p, c)
        cc = get((b + "track_cached_tasks_cpr_zarr", (data,)))
        cp = get((b + "track_cached_tasks_plain_prefect", (data,)))
        print(
            f"| {data} | {fmt_time(c)} | {fmt_time(p)} | {'n/a' if s is None else f'{s:.2f}'} | "
            f"{'n/a' if cc is None else int(cc)} / {'n/a' if cp is None else int(cp)} |"
        )

    print("\n### Command-line start-up (wall time of a new process, median)\n")
    print("| command | time | target |")
    print("|---|---|---|")
    b = "bench_cli.CliStartup.track_"
    for name, label, target in (
        ("python_startup", "`python -c pass` (baseline)", None),
        ("import_cpr_zarr", "`python -c 'import cpr_zarr'`", None),
        ("version", "`cpr-zarr --version`", 0.3),
        ("help", "`cpr-zarr --help`", 0.3),
        ("ls_small_store", "`cpr-zarr ls` (3 results)", 1.0),
    ):
        t = get((b + name, ()))
        goal = (
            "" if target is None else verdict(t, t is not None and t < target) + f" (< {target} s)"
        )
        print(f"| {label} | {fmt_time(t)} | {goal} |")


if __name__ == "__main__":
    main()
