"""Every Prefect task feature works on ``cpr_zarr.task`` as on ``prefect.task`` (real server)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from datetime import timedelta
from typing import TYPE_CHECKING

import numpy as np
import prefect
import pytest
from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

import cpr_zarr
from tests.conftest import microscopy_volume, task_run_states

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = pytest.mark.usefixtures("prefect_server")


def _results(store_url: str | Path) -> list[cpr_zarr.ZarrTarget]:
    return list(cpr_zarr.ResultStore(store_url, mode="r").targets())


@pytest.fixture
def prefect_task_warnings() -> Iterator[list[str]]:
    """Warnings Prefect logs on its ``prefect.tasks`` logger while a test runs."""
    seen: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    handler = Collect(level=logging.WARNING)
    logger = logging.getLogger("prefect.tasks")
    logger.addHandler(handler)
    try:
        yield seen
    finally:
        logger.removeHandler(handler)


def test_async_task_saves_its_array_off_the_event_loop(
    tmp_path: Path, result_storage: Path
) -> None:
    store_url = str(tmp_path / "results.zarr")
    big = np.random.default_rng(0).integers(0, 60000, size=(64, 512, 512), dtype=np.uint16)
    ticks: list[float] = []

    @cpr_zarr.task(store=store_url, result_storage=result_storage)
    async def load() -> np.ndarray:
        await asyncio.sleep(0)
        return big

    @cpr_zarr.task(store=store_url, result_storage=result_storage)
    async def half(image) -> np.ndarray:  # lazy input, as for sync tasks
        return (await asyncio.to_thread(image.compute)) // 2

    async def ticker(done: asyncio.Event) -> None:
        while not done.is_set():
            ticks.append(time.perf_counter())
            await asyncio.sleep(0.005)

    @flow
    async def pipeline() -> object:
        done = asyncio.Event()
        tick = asyncio.create_task(ticker(done))
        start = time.perf_counter()
        raw = await load()
        elapsed = time.perf_counter() - start
        done.set()
        await tick
        return raw, await half(raw), elapsed

    raw, halved, elapsed = asyncio.run(pipeline())
    assert isinstance(raw, cpr_zarr.ZarrTarget)
    assert isinstance(halved, cpr_zarr.ZarrTarget)
    np.testing.assert_array_equal(halved.to_numpy(), big // 2)
    # the loop kept running while 128 MiB were hashed, compressed and written
    gaps = np.diff(ticks)
    assert len(ticks) > 3
    assert gaps.max() < 0.6 * elapsed, (gaps.max(), elapsed)
    assert len(list(result_storage.iterdir())) == 2


def test_fn_is_the_plain_function_and_the_saving_body_stays_reachable(tmp_path: Path) -> None:
    store_url = tmp_path / "results.zarr"

    @cpr_zarr.task(store=store_url)
    def double(image: np.ndarray) -> np.ndarray:
        return image * 2

    out = double.fn(np.arange(4))
    assert type(out) is np.ndarray
    np.testing.assert_array_equal(out, [0, 2, 4, 6])
    assert not store_url.exists()  # nothing stored by a unit-test call
    assert double.user_fn(np.arange(2)).tolist() == [0, 2]
    assert double.saving_fn is double.fn


def test_with_options_name_and_store(tmp_path: Path, result_storage: Path) -> None:
    @cpr_zarr.task(store=tmp_path / "a.zarr", result_storage=result_storage)
    def make(seed: int) -> np.ndarray:
        return microscopy_volume((4, 16, 16), seed=seed)

    renamed = make.with_options(name="raw_volume", store=tmp_path / "b.zarr", retries=1)
    assert isinstance(renamed, cpr_zarr.ZarrTask)
    assert renamed.retries == 1

    @flow
    def pipeline() -> tuple[object, object]:
        return make(0), renamed(1)

    first, second = pipeline()
    assert first.group_path.startswith("make-")
    assert second.group_path.startswith("raw_volume-")
    assert [t.group_path for t in _results(tmp_path / "a.zarr")] == [first.group_path]
    assert [t.group_path for t in _results(tmp_path / "b.zarr")] == [second.group_path]


def test_cache_options_are_honoured_without_extra_warnings(
    tmp_path: Path, prefect_task_warnings: list[str]
) -> None:
    store_url = str(tmp_path / "results.zarr")

    @cpr_zarr.task(store=store_url, cache_key_fn=lambda ctx, params: f"k-{params['seed']}")
    def keyed(seed: int) -> np.ndarray:
        return np.full(8, seed)

    @cpr_zarr.task(store=store_url, persist_result=False)
    def unpersisted(seed: int) -> np.ndarray:
        return np.full(8, seed + 1)

    assert prefect_task_warnings == []
    assert keyed.cache_key_fn is not None
    # the same options on a plain prefect.task with a cache_policy do warn: the capture works
    prefect.task(cache_policy=cpr_zarr.CONTENT_INPUTS, cache_key_fn=lambda c, p: "x")(lambda: None)
    assert any("cache_key_fn" in m for m in prefect_task_warnings)

    @flow
    def pipeline() -> tuple[object, object]:
        return keyed(3), unpersisted(3)

    first = pipeline(return_state=True)
    second = pipeline(return_state=True)
    assert first.result()[1].to_numpy().tolist() == [4] * 8
    assert task_run_states(second.state_details.flow_run_id) == {
        "keyed": ["Cached"],
        "unpersisted": ["Completed"],
    }
    assert not any("Ignoring" in m for m in prefect_task_warnings)


def test_default_no_cache_setting_and_refresh_cache_and_expiration(tmp_path: Path) -> None:
    from prefect.settings import PREFECT_TASKS_DEFAULT_NO_CACHE, temporary_settings

    store_url = str(tmp_path / "results.zarr")
    with temporary_settings({PREFECT_TASKS_DEFAULT_NO_CACHE: True}):

        @cpr_zarr.task(store=store_url)
        def uncached(seed: int) -> np.ndarray:
            return np.full(4, seed)

    @cpr_zarr.task(store=store_url, refresh_cache=True)
    def refreshed(seed: int) -> np.ndarray:
        return np.full(4, seed + 1)

    @cpr_zarr.task(store=store_url, cache_expiration=timedelta(seconds=8))
    def expiring(seed: int) -> np.ndarray:
        return np.full(4, seed + 2)

    @cpr_zarr.task(store=store_url)
    def default(seed: int) -> np.ndarray:
        return np.full(4, seed + 3)

    @flow
    def pipeline() -> list[object]:
        return [uncached(1), refreshed(1), expiring(1), default(1)]

    pipeline()
    cached_until = time.monotonic() + 8
    second = pipeline(return_state=True)
    assert task_run_states(second.state_details.flow_run_id) == {
        "uncached": ["Completed"],
        "refreshed": ["Completed"],
        "expiring": ["Cached"],
        "default": ["Cached"],
    }
    time.sleep(max(0.0, cached_until - time.monotonic()) + 0.5)
    third = pipeline(return_state=True)
    assert task_run_states(third.state_details.flow_run_id)["expiring"] == ["Completed"]


def test_the_same_task_on_another_store_is_not_a_cache_hit(tmp_path: Path) -> None:
    # the key holds the store: a pointer cached for store A is not a result in store B
    first, second = str(tmp_path / "a.zarr"), str(tmp_path / "b.zarr")

    @cpr_zarr.task(store=first)
    def smooth(seed: int) -> np.ndarray:
        return np.full((4, 4), seed, dtype=np.uint8)

    def pipeline_on(store: str) -> tuple[object, object]:
        @flow
        def pipeline() -> object:
            return smooth.with_options(store=store)(7)

        state = pipeline(return_state=True)
        return state.result(), task_run_states(state.state_details.flow_run_id)["smooth"]

    a, a_states = pipeline_on(first)
    b, b_states = pipeline_on(second)
    again, again_states = pipeline_on(first)
    assert (a_states, b_states, again_states) == (["Completed"], ["Completed"], ["Cached"])
    assert b.store_url == cpr_zarr.ResultStore(second).url  # type: ignore[attr-defined]
    assert again == a
    assert len(list(cpr_zarr.ResultStore(second).targets())) == 1


def test_retries_hooks_subflows_and_thread_pool_map(tmp_path: Path, result_storage: Path) -> None:
    store_url = str(tmp_path / "results.zarr")
    attempts: list[int] = []
    completed: list[object] = []

    @cpr_zarr.task(
        store=store_url,
        result_storage=result_storage,
        retries=2,
        retry_delay_seconds=0,
        on_completion=[lambda task, run, state: completed.append(state.result())],
    )
    def flaky(seed: int) -> np.ndarray:
        attempts.append(seed)
        if attempts.count(seed) < 2:
            raise RuntimeError("transient")
        return np.full((4, 4), seed, dtype=np.uint8)

    @flow
    def inner(seed: int) -> object:
        return flaky(seed)

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=3))
    def outer() -> list[object]:
        mapped = flaky.map([10, 11, 12])
        return [f.result() for f in mapped] + [inner(13)]

    out = outer()
    assert all(isinstance(t, cpr_zarr.ZarrTarget) for t in out)
    assert [int(t.to_numpy()[0, 0]) for t in out] == [10, 11, 12, 13]
    assert sorted(attempts) == [10, 10, 11, 11, 12, 12, 13, 13]
    assert sorted(t.group_path for t in completed) == sorted(t.group_path for t in out)
    assert len(list(result_storage.iterdir())) == 4


def test_rollback_hook_reaches_and_deletes_what_the_task_wrote(tmp_path: Path) -> None:
    from prefect.transactions import transaction

    store_url = str(tmp_path / "results.zarr")
    seen: list[list[cpr_zarr.ZarrTarget]] = []

    @cpr_zarr.task(
        store=store_url,
        on_rollback=[lambda txn: seen.append(cpr_zarr.written_targets(txn)),
                     cpr_zarr.delete_on_rollback],
    )  # fmt: skip
    def write(seed: int) -> np.ndarray:
        return np.full((8, 8), seed, dtype=np.uint16)

    @cpr_zarr.task(store=store_url)
    def check(image) -> None:
        raise ValueError("validation failed")

    @flow
    def pipeline(seed: int) -> None:
        with transaction():
            check(write(seed))

    kept = cpr_zarr.ResultStore(store_url).save(np.full((8, 8), 2, dtype=np.uint16), "other")
    with pytest.raises(ValueError, match="validation failed"):
        pipeline(1)
    assert len(seen) == 1
    assert len(seen[0]) == 1
    assert seen[0][0].group_path.startswith("write-")
    assert [t.group_path for t in _results(store_url)] == [kept.group_path]

    # content another run also produced is kept: a committed record may still point to it
    with pytest.raises(ValueError, match="validation failed"):
        pipeline(2)
    assert {t.content_hash for t in _results(store_url)} == {kept.content_hash}


def test_delay_with_array_arguments_runs_on_a_task_worker(tmp_path: Path) -> None:
    from prefect.task_worker import StopTaskWorker, TaskWorker

    store_url = str(tmp_path / "results.zarr")
    data = microscopy_volume((4, 32, 32))

    @cpr_zarr.task(store=store_url)
    def invert(image: np.ndarray, offset: int) -> np.ndarray:
        return (image.max() - image + offset).astype(np.uint16)

    workers: list[TaskWorker] = []
    loop = asyncio.new_event_loop()

    async def serve() -> None:  # a task worker must be made inside its event loop
        workers.append(TaskWorker(invert))
        with contextlib.suppress(StopTaskWorker):
            await workers[0].start()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),))
    thread.start()
    try:
        for _ in range(300):
            if workers and workers[0].started:
                break
            time.sleep(0.1)
        time.sleep(1)  # subscribed
        future = invert.delay(data, offset=1)
        future.wait(timeout=120)
        result = future.result(timeout=1)
    finally:
        with contextlib.suppress(StopTaskWorker):  # how a task worker stops
            asyncio.run_coroutine_threadsafe(workers[0].astop(), loop).result(timeout=60)
        thread.join(timeout=60)
        if not thread.is_alive():
            loop.close()
    assert isinstance(result, cpr_zarr.ZarrTarget)
    np.testing.assert_array_equal(result.to_numpy(), data.max() - data + 1)
    names = sorted(t.name for t in _results(store_url))
    assert names == ["invert", "invert.input.image"]


def test_cpr_zarr_warnings_reach_the_run_logs(tmp_path: Path) -> None:
    # Prefect ships what its run loggers log to the API (the UI shows it), tagged with the
    # run ids; records of other loggers never get there.
    store_url = str(tmp_path / "results.zarr")
    seen: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    @cpr_zarr.task(store=store_url)
    def make() -> np.ndarray:
        logging.getLogger("cpr_zarr").warning(
            "a cpr_zarr warning inside a task run, about s3://AKIDEXAMPLE:s3cr3t%2Fpart@host/b"
        )
        return np.zeros(4)

    @flow
    def pipeline() -> object:
        return make()

    handler = Collect(level=logging.WARNING)
    run_logger = logging.getLogger("prefect.task_runs")
    run_logger.addHandler(handler)
    try:
        state = pipeline(return_state=True)
    finally:
        run_logger.removeHandler(handler)
    ours = [r for r in seen if "a cpr_zarr warning inside a task run" in r.getMessage()]
    assert len(ours) == 1, [r.getMessage() for r in seen]
    assert ours[0].flow_run_id == str(state.state_details.flow_run_id)  # type: ignore[attr-defined]
    assert ours[0].task_run_id  # type: ignore[attr-defined]
    assert "s3cr3t" not in ours[0].getMessage()  # redacted on the way

    # outside a run, the record stays on the cpr_zarr logger
    seen.clear()
    run_logger.addHandler(handler)
    try:
        logging.getLogger("cpr_zarr").warning("a cpr_zarr warning outside any run")
    finally:
        run_logger.removeHandler(handler)
    assert seen == []


def test_a_leaked_finished_transaction_does_not_swallow_the_record(
    tmp_path: Path, result_storage: Path
) -> None:
    # What the secede leak did on Dask workers, made directly: the task starts in a context
    # whose active transaction belongs to a task that already ended.
    from prefect.transactions import Transaction, transaction

    @cpr_zarr.task(store=tmp_path / "results.zarr", result_storage=result_storage)
    def make() -> np.ndarray:
        return np.arange(6)

    @flow
    def pipeline() -> object:
        return make()

    with transaction() as ended:
        pass
    token = Transaction.__var__.set(ended)
    try:
        target = pipeline()
    finally:
        Transaction.__var__.reset(token)
    assert isinstance(target, cpr_zarr.ZarrTarget)
    assert len(list(result_storage.iterdir())) == 1
