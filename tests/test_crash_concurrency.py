"""Writers killed with SIGKILL, and many writers and readers at once, on one local store."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import cpr_zarr
from tests.writer_proc import CHUNKS, volume

ROOT = Path(__file__).parents[1]


def start(
    store: Path, kind: str, *seeds: int, go_file: Path | None = None
) -> subprocess.Popen[str]:
    args = [sys.executable, "-m", "tests.writer_proc", str(store), kind, *map(str, seeds)]
    if go_file is not None:
        args += ["--go-file", str(go_file)]
    proc = subprocess.Popen(
        args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    return proc


def wait_ready(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "ready", line + (proc.stderr.read() if proc.stderr else "")


def check_store(store: cpr_zarr.ResultStore) -> list[cpr_zarr.ZarrTarget]:
    """Every result verifies completely; nothing else is returned by open or listing."""
    committed = list(store.targets())
    for target in committed:
        np.testing.assert_array_equal(target.to_numpy(), volume(int(target.name[1:])))
    paths = {t.group_path for t in committed}
    for entry in os.listdir(store.url):
        if entry in paths or entry == "zarr.json":
            continue
        # an incomplete group or staging leftover: never a result
        with pytest.raises(cpr_zarr.ResultNotFoundError):
            store.open(entry)
        assert entry not in store
    return committed


def test_sigkilled_writers_leave_nothing_that_reads_as_a_result(tmp_path: Path) -> None:
    store_path = tmp_path / "results.zarr"
    cpr_zarr.ResultStore(store_path)
    rng = random.Random(20261123)
    attempted, saved = 0, 0
    for round_ in range(9):
        seeds = [
            (round_ * 3 + k) % 10 for k in range(3)
        ]  # seeds recur: later rounds redo killed work
        proc = start(store_path, "mixed", *seeds)
        wait_ready(proc)
        time.sleep(rng.uniform(0.0, 0.9))
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate()
        attempted += len(seeds)
        saved += out.count("saved ")
        check_store(cpr_zarr.ResultStore(store_path, mode="r"))
    assert attempted >= 20
    assert saved < attempted  # kills landed in the middle of saves

    # saving everything again completes normally, as numpy and as dask
    store = cpr_zarr.ResultStore(store_path)
    import dask.array as da

    for seed in range(10):
        data = volume(seed)
        target = store.save(data, name=f"v{seed}", chunks=CHUNKS)
        assert (
            store.save(da.from_array(data, chunks=(10, 100, 256)), name=f"v{seed}", chunks=CHUNKS)
            == target
        )
        np.testing.assert_array_equal(target.to_numpy(), data)
    assert len(check_store(store)) == 10


def test_many_processes_saving_at_once_with_readers(tmp_path: Path) -> None:
    store_path = tmp_path / "results.zarr"
    cpr_zarr.ResultStore(store_path)
    go = tmp_path / "go"
    same = [start(store_path, ("numpy", "dask")[i % 2], 100, go_file=go) for i in range(8)]
    different = [start(store_path, ("numpy", "dask")[i % 2], 200 + i, go_file=go) for i in range(8)]
    readers = [start(store_path, "read", go_file=go) for _ in range(2)]
    for proc in same + different + readers:
        wait_ready(proc)
    go.touch()  # every writer starts now

    outputs = []
    for proc in same + different:
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err
        outputs.append(out)
    (tmp_path / "stop").touch()
    for proc in readers:
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err  # a reader never saw a broken result
        assert out.startswith("verified ")
        assert int(out.split()[1]) > 0

    same_paths = {
        line.split()[2]
        for out in outputs[:8]
        for line in out.splitlines()
        if line.startswith("saved")
    }
    assert len(same_paths) == 1  # all eight callers got an equal target
    store = cpr_zarr.ResultStore(store_path, mode="r")
    committed = check_store(store)
    assert sorted(t.name for t in committed) == ["v100"] + [f"v{200 + i}" for i in range(8)]
