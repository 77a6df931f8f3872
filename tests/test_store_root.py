"""Plain zarr lists a store's hierarchy: after saves, and after a crash and gc.

An empty ``_staging/`` folder at the root (or any folder without a ``zarr.json``) makes
zarr warn "Object at _staging is not recognized as a component of a Zarr hierarchy" when a
tool lists the hierarchy (``members``, ``tree``, consolidating metadata). Inside a result
group (layout 2), cpr_zarr's own ``cpr_zarr/`` folder is such a folder on purpose (it keeps
the record copy, digests and provenance out of the hierarchy that viewers walk): zarr warns
once per result group listed, about that name only.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import dask.array as da
import numpy as np
import pandas as pd
import pytest
import zarr
from click.testing import CliRunner

import cpr_zarr
from cpr_zarr.cli import main
from tests.conftest import microscopy_volume

REPO = Path(__file__).parents[1]


def plain_zarr_members(root: Path) -> list[str]:
    """Every node under the root, listed by plain zarr with warnings as errors (but the
    ones about each result group's own ``cpr_zarr/`` folder and a table's ``table.parquet``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings(
            "ignore", message="Object at (cpr_zarr|table.parquet) is not recognized as a comp"
        )
        group = zarr.open_group(root, mode="r")
        return sorted(path for path, _ in group.members(max_depth=None))


def test_plain_zarr_lists_the_root_cleanly_after_every_kind_of_save(tmp_path: Path) -> None:
    root = tmp_path / "results.zarr"
    store = cpr_zarr.ResultStore(root)
    image = microscopy_volume((24, 64, 48))
    raw = store.save(image, name="raw")
    # streamed saves go through _staging: a new result, and one that already exists
    doubled = store.save(da.from_array(image // 2, chunks=(8, 32, 48)), name="half")
    assert store.save(da.from_array(image, chunks=(8, 32, 48)), name="raw") == raw
    labels = store.save(cpr_zarr.Labels((image > 300).astype(np.uint32), image=raw), name="mask")
    table = cpr_zarr.save_table(store, pd.DataFrame({"area": [1.5, 2.0]}), name="measure")

    assert sorted(os.listdir(root)) == sorted(
        ["zarr.json", raw.group_path, doubled.group_path, table.group_path]
    )
    members = plain_zarr_members(root)
    for target in (raw, doubled, labels, table):
        assert target.group_path in members
    # a result group's members are its arrays and labels/ only (no cpr_zarr node)
    assert sorted(m for m in members if m.startswith(f"{raw.group_path}/")) == [
        f"{raw.group_path}/0",
        f"{raw.group_path}/labels",
        f"{labels.group_path}",
        f"{labels.group_path}/0",
    ]


def start_streaming_writer(store: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *sys.path])}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.writer_proc", str(store), "dask", *map(str, range(10))],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )


def test_crashed_streaming_save_then_gc_leaves_a_clean_root(tmp_path: Path) -> None:
    root = tmp_path / "results.zarr"
    cpr_zarr.ResultStore(root)
    writer = start_streaming_writer(root)
    staging = root / "_staging"
    try:  # kill the writer while a save has chunks in staging
        deadline = time.monotonic() + 120
        while not any(staging.glob("*/0/c/*")):
            assert writer.poll() is None, "the writer ended before staging anything"
            assert time.monotonic() < deadline, "the writer staged nothing in 120 s"
            time.sleep(0.005)
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.communicate()
    leftovers = list(staging.iterdir())
    assert leftovers
    with pytest.warns(UserWarning, match="not recognized as a component"):
        zarr.open_group(root, mode="r").members(max_depth=None)

    # gc removes leftovers older than an hour: age them
    old = time.time() - 2 * 3600
    for path in staging.rglob("*"):
        os.utime(path, (old, old))
    result = CliRunner().invoke(main, ["gc", str(root), "--yes"])
    assert result.exit_code == 0, result.output
    assert "staging leftover" in result.output
    assert not staging.exists()
    assert "_staging" not in " ".join(plain_zarr_members(root))
