"""The store's catalog (cpr_zarr.core.journal): lookups and listings at a cost that does not
grow with the store, writers killed at every step, many writers at once, and rebuilding."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import cpr_zarr
from cpr_zarr.cli import main
from cpr_zarr.core import catalog, journal
from cpr_zarr.core.inventory import plan_gc
from cpr_zarr.model.hashing import combine_digests

if TYPE_CHECKING:
    from tests.s3_server import S3Server

ROOT = Path(__file__).parents[1]


def tiny(i: int) -> np.ndarray:
    """A 2 x 3 result with content of its own for every ``i``."""
    return np.arange(6, dtype=np.uint16).reshape(2, 3) + np.uint16(i)


def listed(store: cpr_zarr.ResultStore) -> list[str]:
    return list(store.list()["group_path"])


def truth(store: cpr_zarr.ResultStore) -> set[str]:
    """Committed results, found by reading every group (what the catalog is derived from)."""
    found, damaged = catalog.scan(store.storage)
    assert damaged == []
    return {t.group_path for t in found}


# -- cost -------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["fsspec", "obstore"])
def test_lookups_and_listings_cost_the_same_requests_at_any_store_size(
    s3_server: S3Server, s3_url: str, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Open by hash prefix, open by hash, a save's dedup check and store.list() make the same
    requests (counted at the S3 server) with 3 and with 15 results in the store."""
    monkeypatch.setattr(journal, "COMPACT_AFTER", 4)
    store = cpr_zarr.ResultStore(s3_url, backend=backend)  # type: ignore[arg-type]
    proxy = s3_server.proxy
    absent = combine_digests((2, 3), np.dtype("uint16"), (2, 3), ["0" * 32])
    saved: list[cpr_zarr.ZarrTarget] = []
    costs: dict[tuple[int, str], dict[str, int]] = {}
    for size in (3, 15):
        while len(saved) < size:
            saved.append(store.save(tiny(len(saved)), f"r{len(saved)}"))
        journal.compact(store.storage)  # as a writable listing does past COMPACT_AFTER
        probe = saved[size // 2]
        operations = {
            "open by prefix": lambda p=probe: store.open(p.content_hash[:8]),
            "open by hash": lambda p=probe: store.open(p.content_hash),
            "dedup check": lambda: catalog.find(store.storage, absent, preferred=f"x-{absent}"),
            "list": lambda: store.list(),
        }
        for name, operation in operations.items():
            proxy.reset_counts()
            operation()
            costs[size, name] = {m: proxy.count(m) for m in ("GET", "HEAD", "PUT", "DELETE")}
        assert len(store.list()) == size
    for name in ("open by prefix", "open by hash", "dedup check"):
        assert costs[3, name] == costs[15, name], name
        assert sum(costs[15, name].values()) <= 8, (name, costs[15, name])
    # a listing: two LISTs and the snapshot, plus each journal segment written since the last
    # compaction (a writable listing compacts past COMPACT_AFTER)
    bound = 3 + journal.COMPACT_AFTER
    for size in (3, 15):
        assert costs[size, "list"]["GET"] <= bound
        assert costs[size, "list"]["PUT"] == 0
    for i in range(2 * journal.COMPACT_AFTER):
        store.save(tiny(100 + i), f"late{i}")
        proxy.reset_counts()
        store.list()
        # at most COMPACT_AFTER + 2 segments (a save writes two: its pending event before
        # the commit, its row after), then its compaction lists the snapshots
        assert proxy.count("GET") <= bound + 3, i


# -- compaction -------------------------------------------------------------------------------


def test_compaction_folds_the_journal_into_one_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal, "COMPACT_AFTER", 3)
    store = cpr_zarr.ResultStore(tmp_path / "results.zarr")
    targets = [store.save(tiny(i), f"r{i}") for i in range(10)]
    store.save(tiny(3), "r3")  # a second record of the same result
    store.delete(targets[0])
    frame = store.list()  # compacts: more than 3 segments
    assert set(frame["group_path"]) == {t.group_path for t in targets[1:]} == truth(store)
    assert dict(zip(frame["name"], frame["records"], strict=True))["r3"] == 2
    log = Path(store.url) / journal.LOG
    snaps = Path(store.url) / journal.SNAP
    assert len(list(snaps.iterdir())) <= 2
    for i in range(10, 20):  # more saves: a compaction deletes what the previous one merged
        store.save(tiny(i), f"r{i}")
        store.list()
    assert len(list(log.iterdir())) <= 2 * 3 + 2
    assert len(list(snaps.iterdir())) <= 2
    assert sorted(listed(store)) == sorted(truth(store))
    # a read-only listing of the same store sees the same
    assert sorted(listed(cpr_zarr.ResultStore(store.url, mode="r"))) == sorted(truth(store))


# -- crashes ----------------------------------------------------------------------------------

KILLED_SAVE = """
import os, sys, numpy as np, cpr_zarr
from cpr_zarr.core import lease
store = cpr_zarr.ResultStore(sys.argv[1])
i, step = int(sys.argv[2]), sys.argv[3]
lease.set_checkpoint_hook(lambda s: os.kill(os.getpid(), 9) if s == step else None)
if sys.argv[4] == "save":
    store.save(np.arange(6, dtype=np.uint16).reshape(2, 3) + np.uint16(i), f"r{i}")
else:
    store.delete(f"r{i}")
"""


def run_killed(store: Path, i: int, step: str, what: str = "save") -> None:
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_SAVE, str(store), str(i), step, what],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == -9, proc.stderr  # killed at that step


def test_sigkill_at_every_step_lists_exactly_the_committed_results(tmp_path: Path) -> None:
    """A writer killed before, at and after its commit, and a removal killed after its
    journal entry: listings never list what is not committed, and list every committed
    result at once but the one whose removal began (listed again after a refresh: a gc
    plan)."""
    path = tmp_path / "results.zarr"
    store = cpr_zarr.ResultStore(path)
    store.save(tiny(100), "r100")
    steps = ["save.hashed", "save.written", "save.committed", "catalog.journalled"]
    for i, step in enumerate(steps):
        run_killed(path, i, step)
        reader = cpr_zarr.ResultStore(path, mode="r")
        # never an uncommitted one, never a committed one missed
        assert sorted(listed(reader)) == sorted(truth(reader)), step
        assert sorted(t.group_path for t in reader.targets()) == sorted(truth(reader)), step
    run_killed(path, 100, "catalog.dropped", "delete")  # removal killed before removing
    reader = cpr_zarr.ResultStore(path, mode="r")
    committed = truth(reader)
    # committed: the writers killed after their commit, and the result whose removal died
    assert {p.split("-")[0] for p in committed} == {"r2", "r3", "r100"}
    hidden = committed - set(listed(reader))
    assert {p.split("-")[0] for p in hidden} == {"r100"}  # its removal was journalled
    # killed between its commit and its journal segment: listed, and found by name
    r2 = next(p for p in committed if p.startswith("r2-"))
    assert reader.open("r2").group_path == r2
    assert r2 not in journal.read(reader.storage).rows  # from its pending event
    # killed after its journal entry but before its index key: found by prefix all the same
    r3 = next(p for p in committed if p.startswith("r3-"))
    assert reader.open(r3[-32:-20]).group_path == r3

    plan_gc(cpr_zarr.ResultStore(path).storage)  # the refresh
    for fresh in (cpr_zarr.ResultStore(path, mode="r"), cpr_zarr.ResultStore(path)):
        assert sorted(listed(fresh)) == sorted(committed) == sorted(truth(fresh))
        for group in committed:
            assert fresh.open(group[-32:-24]).group_path == group
    # saving the killed ones again completes them, each listed once
    for i in range(4):
        store.save(tiny(i), f"r{i}")
    assert sorted(listed(store)) == sorted(truth(store))
    assert len(truth(store)) == 5


def test_a_listing_journals_a_killed_writers_commit_once_it_settled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "results.zarr"
    store = cpr_zarr.ResultStore(path)
    run_killed(path, 7, "save.committed")
    r7 = next(iter(truth(store)))
    # young: listed, but its writer may still be journalling it, so nothing is written
    assert listed(store) == [r7]
    assert r7 in journal.read(store.storage).pending
    # read-only: listed, never written
    monkeypatch.setattr(journal, "SETTLE_SECONDS", 0.0)
    reader = cpr_zarr.ResultStore(path, mode="r")
    assert [t.group_path for t in reader.targets()] == [r7]
    assert r7 not in journal.read(store.storage).rows
    # writable and settled: journalled, with the row its save would have written
    assert listed(store) == [r7]
    state = journal.read(store.storage)
    assert r7 in state.rows
    assert r7 not in state.pending
    assert store.list().loc[0, "stored_bytes"] > 0
    # its next save adds nothing twice
    store.save(tiny(7), "r7")
    assert listed(store) == [r7]
    assert int(store.list().loc[0, "records"]) == 1


# -- many writers -----------------------------------------------------------------------------

WRITER = """
import sys, time, numpy as np, cpr_zarr
from pathlib import Path
from cpr_zarr.core import journal
journal.COMPACT_AFTER, journal.COMPACT_CHANCE = 2, 1  # compact all the time, concurrently
store = cpr_zarr.ResultStore(sys.argv[1])
w, go = int(sys.argv[2]), Path(sys.argv[3])
print("ready", flush=True)
while not go.exists():
    time.sleep(0.005)
for k in range(2):
    store.save(np.arange(6, dtype=np.uint16).reshape(2, 3) + np.uint16(10 * w + k), f"w{w}k{k}")
store.save(np.zeros((2, 3), dtype=np.uint16), "shared")  # the same result from everyone
store.list()
"""


@pytest.mark.parametrize("where", ["local", "s3-obstore", "s3"])
def test_16_concurrent_writers_every_result_listed_exactly_once(
    where: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    env = dict(os.environ)
    if where == "local":
        url = str(tmp_path / "results.zarr")
    else:
        server: S3Server = request.getfixturevalue("s3_server")
        url = request.getfixturevalue("s3_url")
        env |= server.env
    backend = {"s3-obstore": "obstore", "s3": "fsspec"}.get(where)
    store = cpr_zarr.ResultStore(url, backend=backend)  # type: ignore[arg-type]
    go = tmp_path / "go"
    script = WRITER
    if backend is not None:
        script = script.replace(
            "cpr_zarr.ResultStore(sys.argv[1])",
            f"cpr_zarr.ResultStore(sys.argv[1], backend={backend!r})",
        )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, url, str(w), str(go)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in range(16)
    ]
    for proc in procs:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read() if proc.stderr else ""
    go.touch()
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
    for reader in (store, cpr_zarr.ResultStore(url, mode="r", backend=backend)):  # type: ignore[arg-type]
        frame = reader.list()
        assert frame["group_path"].is_unique
        assert set(frame["group_path"]) == truth(reader)
        assert len(frame) == 16 * 2 + 1
        records = dict(zip(frame["name"], frame["records"], strict=True))
        assert records["shared"] == 16
        assert all(records[f"w{w}k{k}"] == 1 for w in range(16) for k in range(2))


# -- rebuilding -------------------------------------------------------------------------------


def test_catalog_rebuild_restores_what_the_groups_hold(tmp_path: Path) -> None:
    store = cpr_zarr.ResultStore(tmp_path / "results.zarr")
    image = store.save(np.arange(4 * 8 * 8, dtype=np.uint16).reshape(4, 8, 8), "img", axes="zyx")
    store.save(cpr_zarr.Labels(np.ones((4, 8, 8), dtype=np.uint8), image=image), "seg")
    store.save(pd.DataFrame({"area": [1.5, 2.0]}), "measure")
    store.save(tiny(1), "derived", provenance={"inputs": [image.content_hash]})
    # stored bytes are counted at each result's commit, by a scan when it is read: not compared
    before = store.list().drop(columns=["ratio", "stored_bytes"])
    lineage = store.lineage(image)
    assert [t.name for t in lineage["outputs"]] == ["derived"]

    shutil.rmtree(Path(store.url) / journal.CATALOG)  # a store without catalog: groups only
    old = cpr_zarr.ResultStore(store.url)
    assert not journal.enabled(old.storage)  # holds results: no empty catalog over them
    pd.testing.assert_frame_equal(old.list().drop(columns=["ratio", "stored_bytes"]), before)

    result = CliRunner().invoke(main, ["catalog", "rebuild", store.url])
    assert result.exit_code == 0, result.output
    assert "catalog rebuilt: 4 results" in result.output
    fresh = cpr_zarr.ResultStore(store.url, mode="r")
    assert journal.enabled(fresh.storage)
    pd.testing.assert_frame_equal(fresh.list().drop(columns=["ratio", "stored_bytes"]), before)
    assert fresh.list()["stored_bytes"].sum() == old.list()["stored_bytes"].sum()
    assert fresh.lineage(image) == lineage
    assert fresh.open(image.content_hash[:7]) == image
    ls = CliRunner().invoke(main, ["ls", store.url])
    assert "4 results" in ls.output


def test_a_new_store_keeps_a_catalog_that_plain_zarr_lists_as_one_node(tmp_path: Path) -> None:
    import zarr

    store = cpr_zarr.ResultStore(tmp_path / "results.zarr")
    target = store.save(tiny(0), "r0")
    group = zarr.open_group(store.url, mode="r")
    assert sorted(group.keys()) == sorted([journal.CATALOG, target.group_path])
    assert group[journal.CATALOG].shape == (0,)
    assert (Path(store.url) / journal.index_key(target.content_hash, target.group_path)).exists()
    assert listed(store) == [target.group_path]


def test_rows_read_from_a_snapshot_behave_as_a_dict_of_rows() -> None:
    """journal.Rows keeps a snapshot's columns and builds a row only when looked up: every
    change through it reads back as it would from a plain dict of rows."""
    import random

    from cpr_zarr.model.records import CATALOG_COLUMNS

    width = len(CATALOG_COLUMNS)
    snap = {f"r{i}-{i:032x}": [f"r{i}-{i:032x}", *range(1, width)] for i in range(50)}
    columns = [[row[c] for row in snap.values()] for c in range(width)]
    rows, model = journal.Rows(columns), {p: list(r) for p, r in snap.items()}
    rng = random.Random(7)
    for step in range(400):
        path = f"r{rng.randrange(70)}-{rng.randrange(70):032x}"
        path = rng.choice([path, *snap])
        op = rng.choice(["get", "set", "del", "mutate"])
        if op == "set":
            rows[path] = model[path] = [path, *([step] * (width - 1))]
        elif op == "del" and path in model:
            del rows[path], model[path]
        elif op == "mutate" and path in model:
            rows[path][1] = model[path][1] = -step  # a merge changes a row in place
        else:
            assert rows.get(path) == model.get(path)
        assert (path in rows) == (path in model)
        assert len(rows) == len(model)
    assert sorted(rows) == sorted(model)
    assert sorted(rows.items()) == sorted(model.items())
    by_path = sorted(zip(*rows.columns(), strict=True))
    assert [list(r) for r in by_path] == sorted(model.values())
    with pytest.raises(KeyError):
        del rows["absent"]
