"""The example's flow with empty task bodies: what Prefect, Dask and the process cost alone.

    python benchmarks/example_empty_tasks.py

Everything of ``examples/nuclei_flow.py`` but the work: the same imports and quiet logging,
the same Prefect API (``prefect_api()``: one temporary server for the flow and its workers),
the same ``DaskTaskRunner`` of 2 worker processes, the same five tasks submitted in the same
order, each a plain Prefect task that returns at once (no caching, no result stored).
``bench_flow.ExampleRun`` compares the example's runs with this one.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# isort: off
# the example first: it sets Prefect's and Dask's logging before they are imported
from examples import nuclei_flow as example
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
# isort: on


@task(cache_policy=NO_CACHE, persist_result=False)
def load_nuclei(path: Path) -> None:
    return None


@task(cache_policy=NO_CACHE, persist_result=False)
def denoise(image: None, sigma: float) -> None:
    return None


@task(cache_policy=NO_CACHE, persist_result=False)
def threshold(image: None) -> None:
    return None


@task(cache_policy=NO_CACHE, persist_result=False)
def label(mask: None, image: None) -> tuple[None, int]:
    return None, 0


@task(cache_policy=NO_CACHE, persist_result=False)
def measure(labels: None, image: None) -> None:
    return None


@flow(name="nuclei-empty", task_runner=example.dask_runner(2))
def empty_flow(sigma: float = 2.0) -> None:
    raw = load_nuclei.submit(example.sample_path())
    smooth = denoise.submit(raw, sigma)
    mask = threshold.submit(smooth)
    labels, _ = label.submit(mask, raw).result()
    measure.submit(labels, raw).result()


if __name__ == "__main__":
    with example.prefect_api():
        empty_flow()
    print("empty flow done")
