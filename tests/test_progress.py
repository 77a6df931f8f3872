"""Progress of long saves: reported while writing, silent for short saves."""

from __future__ import annotations

import logging
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
    monkeypatch.setenv("CPR_ZARR_PROGRESS_SECONDS", "0.01")
    image = microscopy_volume((8, 1100, 600))  # level 1: 4 x 550 x 300 in 4 x 18 x 10 chunks
    with caplog.at_level(logging.INFO, logger="cpr_zarr"):
        target = local_store.save(image, name="big", chunks=(1, 32, 32))
    levels = [r.getMessage() for r in caplog.records if " level 1" in r.getMessage()]
    assert any(m.startswith(f"saving {target.group_path} level 1: ") for m in levels), caplog.text
    assert any(m.startswith(f"saved {target.group_path} level 1: 720 chunks") for m in levels)
