"""gc against live writers: every gc step against every save step, in a chosen order, on the
real code paths (paused with cpr_zarr.core.lease's checkpoint hook), plus random interleavings.

A run is lost if the save returned a target that does not read back afterwards, or failed.
"""

from __future__ import annotations

import itertools
import os
import random
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dask.array as da
import numpy as np
import pytest

import cpr_zarr
from cpr_zarr.core import lease
from cpr_zarr.core.collector import collect
from cpr_zarr.core.integrity import RECORD_COPY
from cpr_zarr.core.inventory import plan_gc

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

GC_STEPS = ["gc.begin", "gc.start", "gc.checked", "gc.claimed", "gc.verified", "gc.removed"]
SAVE_STEPS = [
    "save.hashed",
    "save.leased",
    "save.written",
    "save.committed",
    "save.recorded",
    "save.returned",
]
TIMEOUT = 60.0


def data_for(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 5000, size=(12, 40, 40), dtype=np.uint16)


@dataclass
class Pause:
    step: str
    reached: threading.Event = field(default_factory=threading.Event)
    resume: threading.Event = field(default_factory=threading.Event)


class Scheduler:
    """Pauses a named thread at one checkpoint until told to go on."""

    def __init__(self, pauses: dict[str, Pause], jitter: random.Random | None = None) -> None:
        self.pauses = pauses
        self.jitter = jitter
        self.waiting = {name: threading.Event() for name in ("writer", "gc")}
        self.done = {name: threading.Event() for name in ("writer", "gc")}
        self.seen: dict[str, list[str]] = {"writer": [], "gc": []}

    def hook(self, step: str) -> None:
        role = threading.current_thread().name
        if role not in self.seen:
            return
        self.seen[role].append(step)
        if step == "save.waiting":
            self.waiting[role].set()
        if self.jitter is not None:
            time.sleep(self.jitter.uniform(0, 0.004))
        pause = self.pauses.get(role)
        if pause is not None and pause.step == step and not pause.reached.is_set():
            pause.reached.set()
            assert pause.resume.wait(TIMEOUT), f"{role} never resumed after {step}"

    def until_stopped(self, role: str) -> None:
        """Wait until ``role`` is paused, blocked by the protocol, or finished."""
        pause = self.pauses.get(role)
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            if self.done[role].is_set() or self.waiting[role].is_set():
                return
            if pause is not None and pause.reached.is_set():
                return
            time.sleep(0.002)
        raise AssertionError(f"{role} neither paused nor finished")


@pytest.fixture
def checkpoints() -> Iterator[None]:
    yield
    lease.set_checkpoint_hook(None)


@dataclass
class Race:
    """One writer and one gc run on one store; what the writer got."""

    store: cpr_zarr.ResultStore
    writer: Callable[[], cpr_zarr.ZarrTarget]
    gc: Callable[[], Any]
    data: np.ndarray
    target: cpr_zarr.ZarrTarget | None = None
    error: BaseException | None = None
    gc_error: BaseException | None = None

    def run(self, scheduler: Scheduler, first: str) -> None:
        lease.set_checkpoint_hook(scheduler.hook)

        def writer() -> None:
            try:
                self.target = self.writer()
            except BaseException as exc:
                self.error = exc
            finally:
                scheduler.done["writer"].set()

        def gc() -> None:
            try:
                lease.checkpoint("gc.begin")
                self.gc()
            except BaseException as exc:
                self.gc_error = exc
            finally:
                scheduler.done["gc"].set()

        threads = {
            "writer": threading.Thread(target=writer, name="writer"),
            "gc": threading.Thread(target=gc, name="gc"),
        }
        second = "gc" if first == "writer" else "writer"
        threads[first].start()
        scheduler.until_stopped(first)
        threads[second].start()
        scheduler.until_stopped(second)
        # the first goes on until it ends or waits for the second, then the second goes on
        if first in scheduler.pauses:
            scheduler.pauses[first].resume.set()
        deadline = time.monotonic() + TIMEOUT
        while not (scheduler.done[first].is_set() or scheduler.waiting[first].is_set()):
            assert time.monotonic() < deadline, f"{first} hangs"
            time.sleep(0.002)
        for pause in scheduler.pauses.values():
            pause.resume.set()
        for role, thread in threads.items():
            thread.join(TIMEOUT)
            assert not thread.is_alive(), f"{role} hangs after {scheduler.seen[role][-5:]}"
        lease.set_checkpoint_hook(None)

    def lost(self) -> bool:
        """Whether the save failed, or returned a target that does not read back."""
        if self.error is not None:
            return True
        assert self.target is not None
        try:
            fresh = cpr_zarr.ResultStore(self.store.url, mode="r")
            np.testing.assert_array_equal(fresh.open(self.target.group_path).to_numpy(), self.data)
        except Exception:
            return True
        return False


def make_leftover(store: cpr_zarr.ResultStore, seed: int, *, age: float | None) -> str:
    """A leftover of a killed writer of ``data_for(seed)``: the whole array, no marker (and
    no record copy: the writer died before its commit step)."""
    from zarr.core.sync import sync

    target = store.save(data_for(seed), name="v", chunks=(6, 20, 20))
    sync(store.storage.zarr_store.delete(f"{target.group_path}/zarr.json"))
    sync(store.storage.zarr_store.delete(f"{target.group_path}/{RECORD_COPY}"))
    rejournal(store, target.group_path)  # a killed writer never journals it
    if age is not None and store.storage.root is not None:
        then = time.time() - age
        for dirpath, _, files in os.walk(store.storage.root / target.group_path):
            for name in [*files, "."]:
                os.utime(os.path.join(dirpath, name), (then, then))
    return target.group_path


def make_old_result(store: cpr_zarr.ResultStore, seed: int) -> str:
    """A committed result of ``data_for(seed)`` last produced two hours ago."""
    from datetime import UTC, datetime, timedelta

    target = store.save(data_for(seed), name="v", chunks=(6, 20, 20))
    base = f"{target.group_path}/cpr_zarr/provenance"
    for entry in store.storage.list_dir(base):
        doc = store.storage.get_json(f"{base}/{entry}")
        doc["created"] = (datetime.now(UTC) - timedelta(hours=2)).isoformat()
        store.storage.set_json(f"{base}/{entry}", doc)
    rejournal(store, target.group_path)
    return target.group_path


def rejournal(store: cpr_zarr.ResultStore, path: str) -> None:
    """Make the store's catalog say what the group now says (what a rebuild would)."""
    from cpr_zarr.core import catalog, journal
    from cpr_zarr.core.inventory import catalog_entry

    journal.note_removing(store.storage, path)
    journal.note_removed(store.storage, path)
    record = catalog.committed(store.storage, path)
    if record is not None:
        target = catalog.target_for(store.storage, path, record)
        journal.note_row(store.storage, catalog_entry(store.storage, target))


def leftover_race(
    store: cpr_zarr.ResultStore, seed: int, path: str, age_limit: float, *, lazy: bool
) -> Race:
    """Plain gc against a save completing the leftover ``path`` of the same content."""
    data = data_for(seed)

    def writer() -> cpr_zarr.ZarrTarget:
        value = da.from_array(data, chunks=(6, 20, 20)) if lazy else data
        return store.save(value, name="v", chunks=(6, 20, 20))

    def gc() -> None:
        plan = [r for r in plan_gc(store.storage, leftover_age=age_limit) if r.path == path]
        list(collect(store.storage, plan, leftover_age=age_limit))

    return Race(store, writer, gc, data)


def dedup_race(store: cpr_zarr.ResultStore, seed: int, path: str, records: Path) -> Race:
    """gc --keep-referenced (nothing referenced, an hour's grace) against a save reusing the
    committed result ``path``, last produced two hours ago, that gc wants gone."""
    data = data_for(seed)

    def writer() -> cpr_zarr.ZarrTarget:
        return store.save(data, name="v", chunks=(6, 20, 20))

    def gc() -> None:
        plan = plan_gc(store.storage, keep_referenced=records, grace=3600, leftover_age=3600)
        list(collect(store.storage, [r for r in plan if r.path == path], leftover_age=3600))

    return Race(store, writer, gc, data)


def orders() -> Iterator[tuple[str, str, str]]:
    for gc_step, save_step in itertools.product(GC_STEPS, SAVE_STEPS):
        for first in ("gc", "writer"):
            yield gc_step, save_step, first


def run_all(make: Callable[[int], Race]) -> tuple[int, int, list[str]]:
    tried, lost, failures = 0, 0, []
    for i, (gc_step, save_step, first) in enumerate(orders()):
        race = make(i)
        scheduler = Scheduler({"gc": Pause(gc_step), "writer": Pause(save_step)})
        race.run(scheduler, first)
        assert race.gc_error is None, race.gc_error
        if not (
            scheduler.pauses["gc"].reached.is_set() and scheduler.pauses["writer"].reached.is_set()
        ):
            continue  # that step is not on this run's path (e.g. no write for a reuse)
        tried += 1
        if race.lost():
            lost += 1
            failures.append(f"{first} first, gc at {gc_step}, save at {save_step}: {race.error!r}")
    return tried, lost, failures


def test_every_gc_step_against_every_save_step_on_a_leftover(
    tmp_path: Path, checkpoints: None
) -> None:
    tried = lost = 0
    failures: list[str] = []
    for lazy in (False, True):
        store = cpr_zarr.ResultStore(tmp_path / f"results-{lazy}.zarr")

        def make(i: int, store: cpr_zarr.ResultStore = store, lazy: bool = lazy) -> Race:
            shutil.rmtree(store.storage.root / "_staging", ignore_errors=True)
            seed = 1000 * lazy + i
            path = make_leftover(store, seed, age=7200)
            return leftover_race(store, seed, path, 3600, lazy=lazy)

        t, n, f = run_all(make)
        tried, lost, failures = tried + t, lost + n, failures + f
    print(f"leftover interleavings tried: {tried}, results lost: {lost}")
    assert tried >= 40
    assert lost == 0, failures


def test_every_gc_step_against_every_reusing_save(tmp_path: Path, checkpoints: None) -> None:
    store = cpr_zarr.ResultStore(tmp_path / "results.zarr")
    records = tmp_path / "records"
    records.mkdir()

    def make(i: int) -> Race:
        return dedup_race(store, i, make_old_result(store, i), records)

    tried, lost, failures = run_all(make)
    print(f"reuse interleavings tried: {tried}, results lost: {lost}")
    assert tried >= 20
    assert lost == 0, failures


def test_random_interleavings(tmp_path: Path, checkpoints: None) -> None:
    rng = random.Random(13)
    store = cpr_zarr.ResultStore(tmp_path / "results.zarr")
    records = tmp_path / "records"
    records.mkdir()
    trials, lost = 0, 0
    for i in range(40):
        if i % 2:
            race = dedup_race(store, 5000 + i, make_old_result(store, 5000 + i), records)
        else:
            path = make_leftover(store, 5000 + i, age=7200)
            race = leftover_race(store, 5000 + i, path, 3600, lazy=bool(i % 4))
        race.run(Scheduler({}, jitter=rng), first=rng.choice(["gc", "writer"]))
        assert race.gc_error is None, race.gc_error
        trials += 1
        lost += race.lost()
    print(f"random interleavings: {trials}, results lost: {lost}")
    assert lost == 0


def test_interleavings_on_s3(
    s3_url: str, tmp_path: Path, checkpoints: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # leases are refreshed every 0.3 s, so an age limit of 3 s means "no writer for 3 s"
    monkeypatch.setattr(lease, "REFRESH_SECONDS", 0.3)
    store = cpr_zarr.ResultStore(s3_url)
    combos = [c for c in orders() if c[0] in ("gc.checked", "gc.claimed", "gc.verified")]
    combos = [c for c in combos if c[1] in ("save.hashed", "save.leased", "save.committed")]
    paths = [make_leftover(store, 7000 + i, age=None) for i in range(len(combos))]
    time.sleep(3.5)  # object stores keep modification times in whole seconds
    tried = lost = 0
    failures = []
    for i, (gc_step, save_step, first) in enumerate(combos):
        race = leftover_race(store, 7000 + i, paths[i], 3.0, lazy=False)
        scheduler = Scheduler({"gc": Pause(gc_step), "writer": Pause(save_step)})
        race.run(scheduler, first)
        assert race.gc_error is None, race.gc_error
        tried += 1
        if race.lost():
            lost += 1
            failures.append(f"{first} first, gc at {gc_step}, save at {save_step}: {race.error!r}")
    print(f"S3 leftover interleavings tried: {tried}, results lost: {lost}")
    assert lost == 0, failures

    # a save reusing an old unreferenced result while gc --keep-referenced removes it
    records = tmp_path / "records"
    records.mkdir()
    reuse = [c for c in orders() if c[0] in ("gc.checked", "gc.claimed", "gc.verified")]
    reuse = [c for c in reuse if c[1] in ("save.recorded", "save.returned")]
    tried = lost = 0
    for i, (gc_step, save_step, first) in enumerate(reuse):
        race = dedup_race(store, 8000 + i, make_old_result(store, 8000 + i), records)
        scheduler = Scheduler({"gc": Pause(gc_step), "writer": Pause(save_step)})
        race.run(scheduler, first)
        assert race.gc_error is None, race.gc_error
        tried += 1
        if race.lost():
            lost += 1
            failures.append(f"{first} first, gc at {gc_step}, save at {save_step}: {race.error!r}")
    print(f"S3 reuse interleavings tried: {tried}, results lost: {lost}")
    assert lost == 0, failures


SAVER = """
import sys, dask.array as da, cpr_zarr
from tests.test_gc_races import data_for
store = cpr_zarr.ResultStore(sys.argv[1])
for seed in map(int, sys.argv[2:]):
    data = data_for(seed)
    value = da.from_array(data, chunks=(6, 20, 20)) if seed % 2 else data
    print(seed, store.save(value, name="v", chunks=(6, 20, 20)).group_path, flush=True)
"""


def test_processes_saving_while_gc_processes_run(tmp_path: Path) -> None:
    """Writer processes complete old leftovers and reuse old unreferenced results while
    `cpr-zarr gc --yes` runs (plain, and with --keep-referenced) in other processes."""
    import subprocess
    import sys

    store = cpr_zarr.ResultStore(tmp_path / "results.zarr")
    records = tmp_path / "records"
    records.mkdir()
    seeds = list(range(9000, 9024))
    for seed in seeds[:12]:
        make_leftover(store, seed, age=7200)
    for seed in seeds[12:]:
        make_old_result(store, seed)
    root = Path(__file__).parents[1]
    env = {**os.environ, "PREFECT_API_URL": "http://127.0.0.1:9/api"}
    cli = str(Path(sys.executable).with_name("cpr-zarr"))
    rng = random.Random(7)
    rng.shuffle(seeds)
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", SAVER, store.url, *map(str, seeds[i::4])],
            cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        for i in range(4)
    ]  # fmt: skip
    gcs = [
        subprocess.Popen(
            [cli, "gc", store.url, "--yes", *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        for extra in ([], ["--keep-referenced", str(records)], [], ["--keep-referenced", str(records)])
    ]  # fmt: skip
    saved = {}
    for proc in writers:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
        saved.update(line.split() for line in out.splitlines())
    for proc in gcs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
        assert "Traceback" not in err
    assert len(saved) == len(seeds)
    fresh = cpr_zarr.ResultStore(store.url, mode="r")
    lost = []
    for seed, path in saved.items():
        try:
            np.testing.assert_array_equal(fresh.open(path).to_numpy(), data_for(int(seed)))
        except Exception as exc:
            lost.append((seed, path, exc))
    print(f"process trials: {len(saved)} saves, results lost: {len(lost)}")
    assert lost == []


def test_held_leases_are_refreshed_by_one_thread_and_never_after_release(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lease, "REFRESH_SECONDS", 0.2)
    store = cpr_zarr.ResultStore(tmp_path / "r.zarr", mode="a")
    held = [lease.Lease(store.storage, f"held-{i}") for i in range(20)]
    released = lease.Lease(store.storage, "released")
    for one in [*held, released]:
        one.acquire()

    def mtime(one: lease.Lease) -> int:
        return (tmp_path / "r.zarr" / one.key).stat().st_mtime_ns

    before = {one.key: mtime(one) for one in held}
    released.release()
    assert not (tmp_path / "r.zarr" / released.key).exists()
    time.sleep(0.8)
    try:
        assert all(mtime(one) > before[one.key] for one in held)  # rewritten while held
        assert not (tmp_path / "r.zarr" / released.key).exists()  # never after its removal
        refreshers = [t for t in threading.enumerate() if t.name.startswith("cpr-zarr-lease")]
        assert len(refreshers) == 1, [t.name for t in refreshers]  # not one per lease
    finally:
        for one in held:
            one.release()
    assert not any((tmp_path / "r.zarr" / one.key).exists() for one in held)
