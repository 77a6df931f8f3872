"""Progress of long saves: reported while writing, silent for short saves."""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import dask.array as da
import numpy as np

from tests.conftest import microscopy_volume

if TYPE_CHECKING:
    import pytest

    import cpr_zarr


def _slow(block: np.ndarray) -> np.ndarray:
    import time

    time.sleep(0.05)
    return block


def test_long_saves_report_progress_and_rate(
    local_store: cpr_zarr.ResultStore,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CPR_ZARR_PROGRESS_SECONDS", "0.2")
    lazy = da.from_array(microscopy_volume((40, 96, 80)), chunks=(4, 48, 40)).map_blocks(_slow)
    with caplog.at_level(logging.INFO, logger="cpr_zarr"):
        target = local_store.save(lazy, name="slow", chunks=(4, 48, 40))
    progress = [r.getMessage() for r in caplog.records if "chunks written" in r.getMessage()]
    assert progress, caplog.text
    assert all(m.startswith("saving slow (streaming): ") for m in progress)
    assert any("/40 chunks written" in m for m in progress)
    assert "saved slow (streaming): 40 chunks" in caplog.text
    assert "MB/s" in caplog.text
    np.testing.assert_array_equal(target.to_numpy(), microscopy_volume((40, 96, 80)))


def test_short_saves_report_nothing(
    local_store: cpr_zarr.ResultStore, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="cpr_zarr"):
        local_store.save(microscopy_volume(), name="quick")
        local_store.save(da.from_array(microscopy_volume(seed=1), chunks=20), name="quick")
    assert caplog.text == ""


def test_pyramid_levels_report_progress_too(
    local_store: cpr_zarr.ResultStore,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Levels are made in the same pass as the base: the save's progress counts their
    chunks too, so it reaches 100% when the last level chunk is written."""
    monkeypatch.setenv("CPR_ZARR_PROGRESS_SECONDS", "0.01")
    image = microscopy_volume((8, 1100, 600))  # base: 8 x 35 x 19 chunks = 5320
    with caplog.at_level(logging.INFO, logger="cpr_zarr"):
        target = local_store.save(image, name="big", chunks=(1, 32, 32))
    record = local_store.reader(target).record
    assert record.levels, "an image result is saved with pyramid levels"
    level_chunks = sum(
        math.prod(-(-s // c) for s, c in zip(level.shape, level.chunks, strict=True))
        for level in record.levels
    )
    assert level_chunks >= 720  # level 1 alone: 4 x 18 x 10
    total = 5320 + level_chunks
    what = f"{target.group_path} with {len(record.levels)} pyramid levels"
    messages = [r.getMessage() for r in caplog.records]
    saving = [m for m in messages if m.startswith(f"saving {what}: ")]
    assert saving, caplog.text
    assert all(f"/{total} chunks written" in m for m in saving), saving
    assert f"saved {what}: {total} chunks" in caplog.text
