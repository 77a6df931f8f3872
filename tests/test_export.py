"""Exports: OME-TIFF and an NGFF 0.4 / zarr v2 copy that v2-only viewers open."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import ome_types
import pytest
import tifffile
import zarr

import cpr_zarr
from cpr_zarr.core.export import TIFF_PYRAMID_MIN, to_ngff_v04, to_ome_tiff
from cpr_zarr.core.pyramid import level_count, read_level
from tests.test_readers import schema_validator


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


def test_ome_tiff_of_a_big_image_is_a_pyramid_of_valid_ome_xml(
    image: tuple, tmp_path: Path
) -> None:  # type: ignore[type-arg]
    """Sub-resolutions as SubIFDs, halved in y and x like the stored levels; OME-XML intact."""
    target, data = image
    path = to_ome_tiff(target, tmp_path / "img.ome.tif")
    with tifffile.TiffFile(path) as tif:
        (series,) = tif.series
        assert series.axes == "ZYX"
        assert [level.shape for level in series.levels] == [(20, 600, 300), (20, 300, 150)]
        assert tif.pages[0].is_tiled
        assert len(tif.pages[0].subifds) == 1
        np.testing.assert_array_equal(series.levels[0].asarray(), data)
        # the same values as the store's own level 1 (halved in y and x by the mean)
        np.testing.assert_array_equal(series.levels[1].asarray(), read_level(target, 1).compute())
        ome = tifffile.xml2dict(tif.ome_metadata)["OME"]
        xml = tif.ome_metadata
    # ome-types parses and validates the OME-XML against the OME schema
    (parsed,) = ome_types.from_xml(xml, validate=True).images
    assert (parsed.pixels.size_z, parsed.pixels.size_y, parsed.pixels.size_x) == (20, 600, 300)
    assert (parsed.pixels.physical_size_z, parsed.pixels.physical_size_x) == (2.0, 0.5)
    assert parsed.pixels.physical_size_x_unit.value == "µm"
    pixels = ome["Image"]["Pixels"]
    assert (pixels["SizeZ"], pixels["SizeY"], pixels["SizeX"]) == (20, 600, 300)
    assert pixels["PhysicalSizeX"] == 0.5
    assert pixels["PhysicalSizeZ"] == 2.0
    assert pixels["Type"] == "uint16"
    tiff_data = pixels["TiffData"]
    assert (
        sum(
            int(t.get("PlaneCount", 1))
            for t in (tiff_data if isinstance(tiff_data, list) else [tiff_data])
        )
        == 20
    )

    small = target.store.save(data[:2, :TIFF_PYRAMID_MIN, :64], "small")
    with tifffile.TiffFile(to_ome_tiff(small, tmp_path / "small.ome.tif")) as tif:
        assert len(tif.series[0].levels) == 1
        assert not tif.pages[0].subifds
    with tifffile.TiffFile(to_ome_tiff(target, tmp_path / "flat.tif", pyramid=False)) as tif:
        assert len(tif.series[0].levels) == 1


def test_ome_tiff_pyramid_of_labels_keeps_label_values(
    local_store: cpr_zarr.ResultStore, tmp_path: Path
) -> None:
    image = local_store.save(np.zeros((700, 40), np.uint8), "img")
    labels = (np.arange(700 * 40) % 13).astype(np.uint16).reshape(700, 40)
    seg = local_store.save(cpr_zarr.Labels(labels, image=image), "seg")
    with tifffile.TiffFile(to_ome_tiff(seg, tmp_path / "seg.ome.tif")) as tif:
        half = tif.series[0].levels[1].asarray()
    np.testing.assert_array_equal(half, labels[::2, ::2])  # nearest: no invented values


def test_ngff_04_copy_keeps_paths_type_omero_and_labels(
    local_store: cpr_zarr.ResultStore, tmp_path: Path
) -> None:
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Reader
    from ome_zarr_models.v04 import Image as Image04
    from ome_zarr_models.v04.image_label import ImageLabel as ImageLabel04

    data = (np.arange(2 * 4 * 600 * 40) % 1000).astype("uint16").reshape(2, 4, 600, 40)
    target = local_store.save(
        cpr_zarr.Image(data, axes="czyx", scale=(1, 2.0, 0.5, 0.5), units="micrometer"), "img"
    )
    nuclei = (data[0] // 100).astype(np.uint8)
    seg = local_store.save(cpr_zarr.Labels(np.stack([nuclei] * 2), image=target), "seg")
    cells = local_store.save(
        cpr_zarr.Labels(np.stack([nuclei % 2] * 2), image=target, colors={1: "#ff0000"}), "cells"
    )
    out = to_ngff_v04(target, tmp_path / "img-v2.zarr")

    group = zarr.open_group(str(out), mode="r")
    assert group.metadata.zarr_format == 2
    model = Image04.from_zarr(group)  # strict 0.4 validation of the image group
    (multiscale,) = group.attrs["multiscales"]
    original = zarr.open_group(local_store.url, path=target.group_path, mode="r").attrs["ome"]
    (source,) = original["multiscales"]
    assert [d["path"] for d in multiscale["datasets"]] == ["0", "1"]
    assert multiscale["datasets"] == source["datasets"]
    assert multiscale["type"] == "mean"
    assert multiscale["metadata"] == source["metadata"]
    for number, dataset in enumerate(multiscale["datasets"]):
        array = group[dataset["path"]]
        assert array.metadata.compressor.get_config() == {  # what Java zarr v2 readers decode
            "id": "blosc", "cname": "lz4", "clevel": 5, "shuffle": 1, "blocksize": 0,
        }  # fmt: skip
        assert array.metadata.dimension_separator == "/"
        np.testing.assert_array_equal(array[:], read_level(target, number).compute())
    schema_validator("0.4", "strict_image").validate(dict(group.attrs))
    omero = model.attributes.omero
    assert omero is not None
    assert [c.label for c in omero.channels] == ["img 0", "img 1"]
    assert omero.channels[0].window.max == 65535

    assert model.labels is not None
    names = [seg.group_path.rsplit("/", 1)[1], cells.group_path.rsplit("/", 1)[1]]
    assert sorted(model.labels.attributes.labels) == sorted(names)
    for label in (seg, cells):
        name = label.group_path.rsplit("/", 1)[1]
        label_group = group[f"labels/{name}"]
        ImageLabel04.from_zarr(label_group)
        attrs = dict(label_group.attrs)
        schema_validator("0.4", "strict_image").validate(attrs)
        schema_validator("0.4", "strict_label").validate(attrs)
        assert attrs["image-label"]["version"] == "0.4"
        assert attrs["multiscales"][0]["type"] == "nearest"
        assert "omero" not in attrs
        for number in range(level_count(label)):
            np.testing.assert_array_equal(
                label_group[str(number)][:], read_level(label, number).compute()
            )
    assert dict(group[f"labels/{names[1]}"].attrs)["image-label"]["colors"] == [
        {"label-value": 1, "rgba": [255, 0, 0, 255]}
    ]
    nodes = list(Reader(parse_url(str(out)))())
    assert sum(1 for n in nodes if n.load(Label)) == 2

    bare = to_ngff_v04(target, tmp_path / "bare.zarr", labels=False, compressor="zlib")
    bare_group = zarr.open_group(str(bare), mode="r")
    assert "labels" not in bare_group
    assert bare_group["0"].metadata.compressor.get_config()["id"] == "zlib"
    with pytest.raises(cpr_zarr.InvalidArgumentError, match=r"Invalid compressor 'zstd'"):
        to_ngff_v04(target, tmp_path / "z.zarr", compressor="zstd")


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


def test_ngff_04_copy_keeps_the_images_ngio_tables(
    local_store: cpr_zarr.ResultStore, tmp_path: Path
) -> None:
    """A feature table ngio stored with the image (parquet) is in the 0.4 copy, still linked."""
    import ngio
    import pandas as pd
    from ngio.tables import FeatureTable

    image = local_store.save(
        cpr_zarr.Image(np.arange(32 * 24, dtype=np.uint16).reshape(32, 24)), "img"
    )
    labels = (np.arange(32 * 24) % 4).astype(np.uint8).reshape(32, 24)
    seg = local_store.save(cpr_zarr.Labels(labels, image=image), "seg")
    seg_name = seg.group_path.rsplit("/", 1)[1]
    features = pd.DataFrame({"label": [1, 2, 3], "area": [192.0, 192.0, 192.0]})
    container = ngio.open_ome_zarr_container(Path(local_store.url) / image.group_path)
    container.add_table(
        "nuclei", FeatureTable(table_data=features, reference_label=seg_name), backend="parquet"
    )
    container.add_table(
        "summary",
        FeatureTable(table_data=features.iloc[:1], reference_label=seg_name),
        backend="csv",
    )
    assert local_store.damaged() == []  # tables beside the levels leave the result intact

    out = to_ngff_v04(image, tmp_path / "img-v2.zarr")
    copy = ngio.open_ome_zarr_container(out)
    assert sorted(copy.list_tables()) == ["nuclei", "summary"]
    assert copy.list_labels() == [seg_name]
    for name, expected in (("nuclei", features), ("summary", features.iloc[:1])):
        table = copy.get_table(name)
        assert table.reference_label == seg_name
        pd.testing.assert_frame_equal(
            table.dataframe.reset_index(), expected, check_dtype=False, check_index_type=False
        )
    assert zarr.open_group(str(out), mode="r")["tables/nuclei"].metadata.zarr_format == 2


def test_ngff_04_copy_keeps_cpr_zarr_feature_tables_beside_ngios(
    local_store: cpr_zarr.ResultStore, tmp_path: Path
) -> None:
    """A ``cpr_zarr.Table`` and a table ngio added to the same image are both listed, read
    by ngio as feature tables of the label image, and copied to the 0.4 export."""
    import ngio
    import pandas as pd
    from ngio.tables import FeatureTable

    image = local_store.save(
        cpr_zarr.Image(np.arange(32 * 24, dtype=np.uint16).reshape(32, 24)), "img"
    )
    labels = (np.arange(32 * 24) % 4).astype(np.uint8).reshape(32, 24)
    seg = local_store.save(cpr_zarr.Labels(labels, image=image), "seg")
    seg_name = seg.group_path.rsplit("/", 1)[1]
    features = pd.DataFrame(
        {"area": [192.0, 190.0, 191.0]}, index=pd.Index([1, 2, 3], name="label")
    )
    ours = local_store.save(cpr_zarr.Table(features, labels=seg), "measure")
    ours_name = ours.group_path.rsplit("/", 1)[1]
    container = ngio.open_ome_zarr_container(Path(local_store.url) / image.group_path)
    container.add_table(
        "nuclei", FeatureTable(table_data=features, reference_label=seg_name), backend="parquet"
    )
    # a later cpr_zarr table keeps ngio's in the list
    other = local_store.save(cpr_zarr.Table(features * 2, labels=seg), "measure")
    names = [ours_name, other.group_path.rsplit("/", 1)[1]]
    assert sorted(container.list_tables()) == sorted([*names, "nuclei"])
    assert local_store.damaged() == []

    out = to_ngff_v04(image, tmp_path / "img-v2.zarr")
    copy = ngio.open_ome_zarr_container(out)
    assert sorted(copy.list_tables()) == sorted([*names, "nuclei"])
    for name, expected in ((names[0], features), (names[1], features * 2), ("nuclei", features)):
        table = copy.get_table(name)
        assert type(table).__name__ == "FeatureTableV1"
        assert table.reference_label == seg_name
        pd.testing.assert_frame_equal(table.dataframe, expected, check_index_type=False)
