"""Exports: OME-TIFF and an NGFF 0.4 / zarr v2 copy that v2-only viewers open."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pytest
import tifffile
import zarr

import cpr_zarr
from cpr_zarr.core.export import to_ngff_v04, to_ome_tiff

if TYPE_CHECKING:
    from pathlib import Path


@pytest.fixture
def image(local_store: cpr_zarr.ResultStore) -> tuple[cpr_zarr.ZarrTarget, np.ndarray]:
    data = (np.arange(20 * 600 * 300) % 1000).astype("uint16").reshape(20, 600, 300)
    target = local_store.save(
        data, "img", axes="zyx", scale=(2.0, 0.5, 0.5), units="micrometer", chunks=(8, 256, 256)
    )
    return target, data


def test_ome_tiff_keeps_values_axes_and_pixel_size(image: tuple, tmp_path: Path) -> None:  # type: ignore[type-arg]
    target, data = image
    path = to_ome_tiff(target, tmp_path / "img.ome.tif")
    with tifffile.TiffFile(path) as tif:
        assert tif.is_ome
        assert tif.series[0].axes == "ZYX"
        np.testing.assert_array_equal(tif.asarray(), data)
        xml = tif.ome_metadata
    assert 'PhysicalSizeX="0.5"' in xml
    assert 'PhysicalSizeZ="2.0"' in xml
    assert 'PhysicalSizeXUnit="µm"' in xml
    assert not list(tmp_path.glob("*.partial"))


def test_ngff_04_zarr_v2_copy_with_levels(image: tuple, tmp_path: Path) -> None:  # type: ignore[type-arg]
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    target, data = image
    out = to_ngff_v04(target, tmp_path / "img-v2.zarr")
    group = zarr.open_group(str(out), mode="r")
    assert group.metadata.zarr_format == 2
    (multiscale,) = group.attrs["multiscales"]
    assert multiscale["version"] == "0.4"
    assert [a["unit"] for a in multiscale["axes"]] == ["micrometer"] * 3
    assert len(multiscale["datasets"]) == cpr_zarr.core.pyramid.level_count(target) >= 2
    base = multiscale["datasets"][0]
    assert base["coordinateTransformations"][0] == {"type": "scale", "scale": [2.0, 0.5, 0.5]}
    np.testing.assert_array_equal(group[base["path"]][:], data)
    (node, *_) = Reader(parse_url(str(out)))()
    assert node.data[0].shape == data.shape
    with pytest.raises(cpr_zarr.StoreError, match="already exists"):
        to_ngff_v04(target, out)


def test_tables_are_not_images(local_store: cpr_zarr.ResultStore, tmp_path: Path) -> None:
    import pandas as pd

    table = local_store.save(pd.DataFrame({"a": [1, 2]}), "t")
    with pytest.raises(cpr_zarr.UnsupportedResultError, match="to_csv"):
        to_ome_tiff(table, tmp_path / "t.tif")


def test_cli_export(image: tuple, tmp_path: Path) -> None:  # type: ignore[type-arg]
    import subprocess
    import sys
    from pathlib import Path as P

    target, data = image
    cli = str(P(sys.executable).with_name("cpr-zarr"))
    dest = tmp_path / "cli.ome.tif"
    out = subprocess.run(
        [cli, "export", target.store_url, target.content_hash[:8], str(dest)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert f"exported {target.group_path} to {dest} (ome-tiff)" in out
    np.testing.assert_array_equal(tifffile.imread(dest), data)
