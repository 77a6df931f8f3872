"""Smoke test of the asv suite in benchmarks/: every benchmark runs once at tiny size.

No timings are checked: this only makes sure that every ``setup_cache``/``setup``, every
``time_``/``peakmem_``/``track_`` method (for every parameter combination) and every
``teardown`` runs, and that ``track_`` values are positive numbers (finite ones for a
``track_`` marked ``signed``: a difference of two timings).
"""

from __future__ import annotations

import importlib
import inspect
import itertools
import math
import os
import pkgutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH_PREFIXES = ("time_", "peakmem_", "track_")

# sizes are read when the benchmark modules are imported
os.environ["CPR_ZARR_BENCH_SIZE"] = "tiny"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def _benchmark_modules() -> list[str]:
    """Every module under benchmarks/, as asv imports them all (helpers and scripts too)."""
    import benchmarks

    return sorted(name for _, name, _ in pkgutil.iter_modules(benchmarks.__path__, "benchmarks."))


def _benchmark_classes(module: object) -> list[type]:
    """Classes asv would collect: public, defined in the module, with benchmark methods."""
    return [
        cls
        for name, cls in vars(module).items()
        if inspect.isclass(cls)
        and not name.startswith("_")
        and cls.__module__ == module.__name__  # type: ignore[attr-defined]
        and any(m.startswith(BENCH_PREFIXES) for m in dir(cls))
    ]


def _param_combinations(cls: type) -> list[tuple[object, ...]]:
    params = getattr(cls, "params", [])
    if not params:
        return [()]
    if not isinstance(params[0], (list, tuple)):  # a single parameter
        params = [params]
    return list(itertools.product(*params))


CLASSES = [
    pytest.param(
        module,
        cls.__name__,
        id=f"{module.rsplit('.', 1)[1]}.{cls.__name__}",
        # a class that runs whole example flows says how long its tiny run may take
        marks=pytest.mark.timeout(getattr(cls, "smoke_timeout", 600)),
    )
    for module in _benchmark_modules()
    for cls in _benchmark_classes(importlib.import_module(module))
]


def test_every_module_imports() -> None:
    for module in _benchmark_modules():
        importlib.import_module(module)


def test_suite_is_found() -> None:
    names = {p.values[1] for p in CLASSES}
    assert {"SaveNumpy", "SaveDask", "Read", "CacheKey", "CachedFlowRerun"} <= names


@pytest.mark.filterwarnings("ignore::UserWarning")  # prefect server/harness start-up chatter
@pytest.mark.parametrize(("module", "class_name"), CLASSES)
def test_benchmark_class_runs(
    module: str, class_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cls = getattr(importlib.import_module(module), class_name)
    monkeypatch.chdir(tmp_path)  # asv runs setup_cache in a scratch folder too
    bench = cls()
    cache = bench.setup_cache() if hasattr(bench, "setup_cache") else None
    lead = () if cache is None else (cache,)
    methods = sorted(m for m in dir(cls) if m.startswith(BENCH_PREFIXES))
    ran = 0
    for combo in _param_combinations(cls):
        wanted = [
            m
            for m in methods
            if combo not in [tuple(s) for s in getattr(getattr(cls, m), "skip_params", [])]
        ]
        if not wanted:
            continue
        if hasattr(bench, "setup"):
            bench.setup(*lead, *combo)
        try:
            for name in wanted:
                value = getattr(bench, name)(*lead, *combo)
                if name.startswith("track_"):
                    assert isinstance(value, (int, float)), (name, combo, value)
                    assert math.isfinite(value), (name, combo, value)
                    # a difference of two timings (``signed``) may come out below zero
                    signed = getattr(getattr(cls, name), "signed", False)
                    assert signed or value > 0, (name, combo, value)
                ran += 1
        finally:
            if hasattr(bench, "teardown"):
                bench.teardown(*lead, *combo)
    assert ran > 0
