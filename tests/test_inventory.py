"""Garbage-collection plans, path keys and provenance redaction (Python API)."""

from __future__ import annotations

import json
import shutil
import time
from typing import TYPE_CHECKING

import numpy as np
import pytest

import cpr_zarr
from cpr_zarr.cache import content_token
from cpr_zarr.core.inventory import plan_gc, rebuild_catalog
from cpr_zarr.core.provenance import render
from tests.conftest import microscopy_volume

if TYPE_CHECKING:
    from pathlib import Path


def test_gc_keeps_an_image_whose_label_is_referenced(
    local_store: cpr_zarr.ResultStore, tmp_path: Path
) -> None:
    image = local_store.save(microscopy_volume(), "img")
    labels = local_store.save(
        cpr_zarr.Labels((microscopy_volume() > 300).astype(np.uint8), image=image), "lab"
    )
    other = local_store.save(microscopy_volume(seed=5), "other")
    records = tmp_path / "records"
    records.mkdir()
    (records / "r1").write_text(json.dumps({"result": labels.content_hash}))
    plan = plan_gc(local_store.storage, keep_referenced=records, grace=0)
    assert [r.path for r in plan] == [other.group_path]


def test_results_without_provenance_are_never_removed_by_age(
    local_store: cpr_zarr.ResultStore,
) -> None:
    fresh = local_store.save(microscopy_volume(), "fresh")
    # a result whose provenance record was never written (or is lost): its catalog row,
    # rebuilt from the groups, has no production time
    shutil.rmtree(f"{local_store.url}/{fresh.group_path}/cpr_zarr/provenance")
    assert rebuild_catalog(local_store.storage) == 1
    assert plan_gc(local_store.storage, older_than=0.0) == []
    aged = local_store.save(microscopy_volume(seed=3), "aged")
    assert [r.path for r in plan_gc(local_store.storage, older_than=0.0)] == [aged.group_path]


def test_folder_inputs_key_on_their_files(tmp_path: Path) -> None:
    folder = tmp_path / "stack"
    folder.mkdir()
    (folder / "a.tif").write_bytes(b"1")
    key = content_token(folder)
    assert content_token(folder) == key
    (folder / "b.tif").write_bytes(b"22")
    assert content_token(folder) != key


def test_provenance_never_holds_credentials() -> None:
    rendered = json.dumps(
        render(
            {
                "url": "s3://AKIAX:s3cr3t@bucket/x.zarr",
                "storage_options": {"secret": "s3cr3t"},
                "source": cpr_zarr.ZarrSource("s3://AKIAX:s3cr3t@bucket/img.zarr"),
            }
        )
    )
    assert "s3cr3t" not in rendered
    assert "AKIAX" not in rendered
    assert "s3://bucket/x.zarr" in rendered


def test_commit_refuses_a_group_without_its_array(local_store: cpr_zarr.ResultStore) -> None:
    import dask.array as da

    def sabotage(block: np.ndarray) -> np.ndarray:  # a gc removing staging under the writer
        for meta in (Path(local_store.url) / "_staging").glob("*/0/zarr.json"):
            meta.unlink(missing_ok=True)  # both blocks may run at once
        return block

    from pathlib import Path

    lazy = da.from_array(np.arange(100, dtype=np.int32), chunks=50).map_blocks(sabotage)
    with pytest.raises(
        cpr_zarr.StoreError,
        match=r"array metadata .* disappeared while the result was being written",
    ):
        local_store.save(lazy, "broken", chunks=50)
    assert list(local_store.targets()) == []


def test_leftovers_are_aged_on_every_store_kind(store: cpr_zarr.ResultStore) -> None:
    from cpr_zarr.core.inventory import leftovers

    store.storage.set_json(
        "_staging/v-0123abcd/0/zarr.json", {"zarr_format": 3, "node_type": "array"}
    )
    assert leftovers(store.storage, min_age_seconds=3600) == []  # a writer may still be at work
    time.sleep(2.5)  # object stores keep modification times in whole seconds
    assert [r.path for r in leftovers(store.storage, min_age_seconds=1)] == ["_staging/v-0123abcd"]
