"""gc of every leftover kind, concurrent gc runs, gc/delete on a read-only file system, and
references that would leave the store."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

import cpr_zarr
from cpr_zarr.core import journal
from cpr_zarr.core.collector import collect
from cpr_zarr.core.integrity import RECORD_COPY
from cpr_zarr.core.inventory import plan_gc

if TYPE_CHECKING:
    from cpr_zarr.storage import Storage

ROOT = Path(__file__).parents[1]
CLI = str(Path(sys.executable).with_name("cpr-zarr"))
HOUR = 3600.0


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PREFECT_API_URL": "http://127.0.0.1:9/api"}
    return subprocess.run([CLI, *args], capture_output=True, text=True, env=env, timeout=180)


def age(path: Path, seconds: float = 2 * HOUR) -> None:
    then = time.time() - seconds
    for dirpath, _, files in os.walk(path):
        for name in [*files, "."]:
            os.utime(os.path.join(dirpath, name), (then, then))


def uncommit(group: Path) -> None:
    """Make a saved group what a writer killed before its commit leaves: no marker, no copy,
    and nothing in the store's catalog (such a writer never journals it)."""
    (group / "zarr.json").unlink()
    (group / RECORD_COPY).unlink()
    unjournal(cpr_zarr.ResultStore(group.parent).storage, group.name)


def unjournal(storage: Storage, path: str) -> None:
    """Void a result's catalog entry and index key, as if it had never been journalled."""
    journal.note_removing(storage, path)
    journal.note_removed(storage, path)


def image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 1000, size=(16, 32, 32), dtype=np.uint16)


KILLED_LABEL_SAVE = """
import os, sys, numpy as np, cpr_zarr
from cpr_zarr.core import lease
store = cpr_zarr.ResultStore(sys.argv[1])
img = store.open(sys.argv[2])
lease.set_checkpoint_hook(lambda step: os.kill(os.getpid(), 9) if step == "save.written" else None)
store.save(cpr_zarr.Labels((img.to_numpy() > 500).astype(np.uint8), image=img), "seg")
"""


def test_a_killed_label_save_leaves_a_folder_gc_removes(tmp_path: Path) -> None:
    store = cpr_zarr.ResultStore(tmp_path / "results.zarr")
    target = store.save(image(), "img", axes="zyx")
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_LABEL_SAVE, store.url, target.group_path],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -9, proc.stderr  # killed with its label data written
    labels_dir = Path(store.url) / target.group_path / "labels"
    (leftover,) = [p for p in labels_dir.iterdir() if p.is_dir()]
    assert (leftover / "0" / "zarr.json").exists()
    assert not (leftover / "zarr.json").exists()

    assert plan_gc(store.storage, leftover_age=HOUR) == []  # young: its writer may be alive
    age(leftover)
    plan = plan_gc(store.storage, leftover_age=HOUR)
    assert [(r.path, r.reason) for r in plan] == [
        (f"{target.group_path}/labels/{leftover.name}", "incomplete label image (never committed)")
    ]
    assert [o.status for o in collect(store.storage, plan, leftover_age=HOUR)] == ["removed"]
    assert not leftover.exists()
    np.testing.assert_array_equal(store.open(target.group_path).to_numpy(), image())
    # and the label saves normally afterwards
    labels = store.save(cpr_zarr.Labels((image() > 500).astype(np.uint8), image=target), "seg")
    assert labels.group_path == f"{target.group_path}/labels/{leftover.name}"


def test_empty_staging_folders_are_aged_and_removed(tmp_path: Path) -> None:
    store = cpr_zarr.ResultStore(tmp_path / "results.zarr")
    empty = Path(store.url) / "_staging" / "v-0123456789abcdef"
    (empty / "0").mkdir(parents=True)  # a writer killed right after creating its folders
    assert plan_gc(store.storage, leftover_age=HOUR) == []
    age(empty)
    plan = plan_gc(store.storage, leftover_age=HOUR)
    assert [r.path for r in plan] == ["_staging/v-0123456789abcdef"]
    assert [o.status for o in collect(store.storage, plan, leftover_age=HOUR)] == ["removed"]
    assert not empty.exists()


def test_concurrent_gc_runs_never_fail_because_the_other_removed_first(tmp_path: Path) -> None:
    store = cpr_zarr.ResultStore(tmp_path / "results.zarr")
    records = tmp_path / "records"
    records.mkdir()
    kept = store.save(image(99), "kept")
    (records / "r").write_text(kept.to_json())
    for seed in range(8):
        store.save(image(seed), f"gone{seed}")
        leftover = store.save(image(100 + seed), f"left{seed}")
        uncommit(Path(store.url) / leftover.group_path)
        age(Path(store.url) / leftover.group_path)
    args = ["gc", store.url, "--keep-referenced", str(records), "--grace", "0", "--yes"]
    env = {**os.environ, "PREFECT_API_URL": "http://127.0.0.1:9/api"}
    procs = [
        subprocess.Popen(
            [CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        for _ in range(3)
    ]
    outs = [p.communicate(timeout=180) for p in procs]
    for proc, (out, err) in zip(procs, outs, strict=True):
        assert proc.returncode == 0, out + err
        assert "Traceback" not in err
    assert [t.group_path for t in store.targets()] == [kept.group_path]
    assert sorted(os.listdir(store.url)) == sorted(["zarr.json", "_catalog", kept.group_path])
    removed = [line for out, _ in outs for line in out.splitlines() if line.startswith("remove ")]
    assert len(removed) == 16  # every entry removed exactly once, by one of the runs


@pytest.fixture
def read_only_store(tmp_path: Path) -> object:
    """A store on a read-only bind mount of its folder (needs mount rights: else skipped)."""
    source = tmp_path / "rw"
    source.mkdir()
    store = cpr_zarr.ResultStore(source / "results.zarr")
    target = store.save(image(), "img")
    leftover = store.save(image(1), "left")
    uncommit(source / "results.zarr" / leftover.group_path)
    age(source / "results.zarr" / leftover.group_path)
    mount = tmp_path / "ro"
    mount.mkdir()
    done = subprocess.run(["mount", "--bind", str(source), str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {done.stderr.decode().strip()}")
    try:
        ro = subprocess.run(
            ["mount", "-o", "remount,bind,ro", str(mount)], capture_output=True, check=False
        )
        if ro.returncode != 0:
            pytest.skip(f"cannot remount read-only: {ro.stderr.decode().strip()}")
        yield mount / "results.zarr", target
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_gc_and_delete_on_a_read_only_file_system_fail_cleanly(read_only_store: object) -> None:
    path, target = read_only_store  # type: ignore[misc]
    dry = cli("gc", str(path))
    assert dry.returncode == 0, dry.stderr
    assert "would remove" in dry.stdout
    done = cli("gc", str(path), "--yes")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "not writable" in done.stderr
    assert "Read-only file system" in done.stderr
    assert "read-write" in done.stderr  # how to fix it
    store = cpr_zarr.ResultStore(path)
    with pytest.raises(cpr_zarr.StoreError, match=r"not writable .*Read-only file system"):
        store.delete(target.content_hash)
    np.testing.assert_array_equal(store.open(target.content_hash).to_numpy(), image())


def test_references_never_leave_the_store(tmp_path: Path) -> None:
    a = cpr_zarr.ResultStore(tmp_path / "a.zarr")
    b = cpr_zarr.ResultStore(tmp_path / "b.zarr")
    victim = b.save(image(), "victim")
    h = victim.content_hash
    a.save(image(), "x")  # the same content in a: the traversal starts at a real group
    refs = [
        f"x-{h}/../../b.zarr/victim-{h}",
        f"/{tmp_path}/b.zarr/victim-{h}",
        f"x-{h}/labels/../../b.zarr/victim-{h}",
        f"x-{h}\\..\\..\\b.zarr\\victim-{h}",
        f"x-{h}//labels/victim-{h}",
        "..",
        f"./x-{h}",
    ]
    for ref in refs:
        with pytest.raises(cpr_zarr.InvalidReferenceError, match="not a result of store"):
            a.delete(ref)
        with pytest.raises(cpr_zarr.InvalidReferenceError):
            a.open(ref)
    np.testing.assert_array_equal(b.open(victim.group_path).to_numpy(), image())
    out = cli("info", a.url, refs[0])
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    assert "not a result of store" in out.stderr

    # a pointer naming a path outside its store is not followed
    evil = cpr_zarr.ZarrTarget.from_dict(
        {**victim.to_dict(), "store_url": a.url, "group_path": refs[0]}
    )
    with pytest.raises(cpr_zarr.ResultNotFoundError):
        evil.to_numpy()
    # a commit record naming an array outside its group is refused, never read
    own = a.open("x")
    doc = a.storage.get_json(f"{own.group_path}/zarr.json")
    doc["attributes"]["cpr_zarr"]["array"] = f"../../b.zarr/victim-{h}/0"
    a.storage.set_json(f"{own.group_path}/zarr.json", doc)
    fresh = cpr_zarr.ResultStore(a.url, mode="r")
    # (caught first by the record check: the record no longer hashes to its content hash)
    with pytest.raises(
        (cpr_zarr.InvalidReferenceError, cpr_zarr.IntegrityError), match=r"\.\./\.\./b\.zarr"
    ):
        fresh.open("x").to_numpy()


def test_collect_removes_leftovers_and_results_on_s3(s3_url: str) -> None:
    from zarr.core.sync import sync

    from tests.conftest import store_files

    store = cpr_zarr.ResultStore(s3_url)
    kept = store.save(image(0), "kept")
    gone = store.save(image(1), "gone")
    leftover = store.save(image(2), "left")
    sync(store.storage.zarr_store.delete(f"{leftover.group_path}/zarr.json"))
    sync(store.storage.zarr_store.delete(f"{leftover.group_path}/{RECORD_COPY}"))
    unjournal(store.storage, leftover.group_path)
    store.storage.set_json(
        "_staging/v-0123abcd/0/zarr.json", {"zarr_format": 3, "node_type": "array"}
    )
    time.sleep(2.5)  # object stores keep modification times in whole seconds
    plan = [r for r in plan_gc(store.storage, leftover_age=2.0) if r.content_hash is None]
    plan += [r for r in plan_gc(store.storage, older_than=0.0) if r.path == gone.group_path]
    assert sorted(r.path for r in plan) == sorted(
        ["_staging/v-0123abcd", leftover.group_path, gone.group_path]
    )
    assert [o.status for o in collect(store.storage, plan, leftover_age=2.0)] == ["removed"] * 3
    # a second run finds them gone and says so
    assert {o.status for o in collect(store.storage, plan, leftover_age=2.0)} == {
        "already removed (by another process)"
    }
    keys = store_files(store)
    assert {k.split("/")[0] for k in keys} == {"zarr.json", "_catalog", kept.group_path}
    np.testing.assert_array_equal(store.open(kept.group_path).to_numpy(), image(0))
