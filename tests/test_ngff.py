"""Every array result is an OME-NGFF 0.5 image viewers open: metadata, pyramids, labels.

Each kind of result is checked three ways: strict validation with ome-zarr-models, the
ome-zarr-py Reader, and napari-ome-zarr's reader function (headless, no window).
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

import dask.array as da
import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from ome_zarr.io import parse_url
from ome_zarr.reader import Reader
from ome_zarr_models.v05 import Image as ImageModel

import cpr_zarr
from cpr_zarr.core import pyramid
from cpr_zarr.model import ngff
from tests.conftest import microscopy_volume

if TYPE_CHECKING:
    from pathlib import Path

    from cpr_zarr import ResultStore, ZarrTarget


def save(store: ResultStore, data: Any, name: str, chunks: Any = None, **meta: Any) -> ZarrTarget:
    """``store.save`` of an array with NGFF metadata (``cpr_zarr.Image``)."""
    return store.save(cpr_zarr.Image(data, **meta), name, chunks=chunks)


def group_doc(target: ZarrTarget) -> dict[str, Any]:
    doc = target.store.storage.get_json(f"{target.group_path}/zarr.json")
    assert isinstance(doc, dict)
    return doc["attributes"]


def validate(target: ZarrTarget) -> ImageModel:
    """Strict NGFF 0.5 validation of the group (and of its labels, if any)."""
    group = zarr.open_group(target.store.storage.zarr_store, path=target.group_path, mode="r")
    return ImageModel.from_zarr(group)


def ome_zarr_nodes(path: Path) -> list[Any]:
    location = parse_url(str(path))
    assert location is not None
    return list(Reader(location)())


def napari_layers(path: Path) -> list[tuple[Any, dict[str, Any], str]]:
    from napari_ome_zarr._reader import napari_get_reader

    read = napari_get_reader(str(path))
    assert read is not None
    return read(str(path))  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("shape", "axes"),
    [
        ((64, 48), "yx"),
        ((6, 40, 32), "zyx"),
        ((2, 6, 40, 32), "czyx"),
        ((2, 2, 4, 16, 16), "tczyx"),
    ],
)
def test_default_metadata_validates_and_opens(
    local_store: ResultStore, shape: tuple[int, ...], axes: str, capsys: pytest.CaptureFixture[str]
) -> None:
    data = (np.arange(np.prod(shape)) % 251).astype(np.uint8).reshape(shape)
    target = local_store.save(data, "plain")
    model = validate(target)
    (multiscale,) = model.ome_attributes.multiscales
    assert "".join(a.name for a in multiscale.axes) == axes
    assert [a.unit for a in multiscale.axes] == [None] * len(shape)
    zarr_array = target.zarr_array()
    assert zarr_array.metadata.dimension_names == tuple(axes)  # type: ignore[union-attr]

    path = local_store.storage.root / target.group_path  # type: ignore[operator]
    (node,) = ome_zarr_nodes(path)
    np.testing.assert_array_equal(np.asarray(node.data[0]), data)
    (layer,) = [lyr for lyr in napari_layers(path) if lyr[2] == "image"]
    capsys.readouterr()
    assert layer[2] == "image"
    if "c" not in axes:
        assert layer[1]["axis_labels"] == tuple(axes)
        np.testing.assert_array_equal(np.asarray(layer[0][0]), data)


def test_scale_units_translation_reach_viewers(local_store: ResultStore) -> None:
    data = microscopy_volume((8, 40, 32))
    target = save(
        local_store,
        data,
        "raw",
        axes="zyx",
        scale=(2.0, 0.65, 0.65),
        units="micrometer",
        translation=(0.0, 10.0, 20.0),
    )
    (multiscale,) = validate(target).ome_attributes.multiscales
    assert [a.unit for a in multiscale.axes] == ["micrometer"] * 3
    transforms = group_doc(target)["ome"]["multiscales"][0]["datasets"][0]
    assert transforms["coordinateTransformations"] == [
        {"type": "scale", "scale": [2.0, 0.65, 0.65]},
        {"type": "translation", "translation": [0.0, 10.0, 20.0]},
    ]
    assert group_doc(target)["cpr_zarr"]["image"]["scale"] == [2.0, 0.65, 0.65]

    (node,) = ome_zarr_nodes(local_store.storage.root / target.group_path)  # type: ignore[operator]
    assert node.metadata["coordinateTransformations"][0][0]["scale"] == [2.0, 0.65, 0.65]
    (layer,) = napari_layers(local_store.storage.root / target.group_path)  # type: ignore[operator]
    assert layer[1]["scale"] == pytest.approx([2.0, 0.65, 0.65])
    assert layer[1]["units"] == ("micrometer",) * 3
    # napari-ome-zarr 0.10 applies only the first (scale) transform of dataset 0: the
    # translation is in the metadata (validated above) but not in the layer
    assert node.metadata["coordinateTransformations"][0][1] == {
        "type": "translation",
        "translation": [0.0, 10.0, 20.0],
    }


def test_metadata_does_not_change_the_content_hash(store: ResultStore) -> None:
    data = microscopy_volume((4, 24, 24))
    plain = store.save(data, "a")
    store.delete(plain)
    with_meta = save(store, data, "a", scale=(2.0, 1.0, 1.0), units="micrometer")
    assert with_meta.content_hash == plain.content_hash


def test_same_values_other_metadata_returns_first_and_warns(
    store: ResultStore, caplog: pytest.LogCaptureFixture
) -> None:
    data = microscopy_volume((4, 24, 24))
    first = save(store, data, "raw", scale=(2.0, 0.5, 0.5), units="micrometer")
    with caplog.at_level(logging.WARNING, logger="cpr_zarr"):
        again = save(store, data, "raw", scale=(1.0, 0.5, 0.5), units="micrometer")
    assert again == first
    assert "already holds these values" in caplog.text
    assert group_doc(first)["cpr_zarr"]["image"]["scale"] == [2.0, 0.5, 0.5]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cpr_zarr"):
        assert save(store, data, "raw", scale=(2.0, 0.5, 0.5), units="micrometer") == first
        assert store.save(data, "raw") == first  # no metadata given: nothing to conflict
    assert caplog.text == ""


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"axes": "yxc"}, "order time, channel, space"),
        ({"axes": "zy"}, "give 3 names"),
        ({"scale": (1.0, -1.0, 1.0)}, "positive"),
        ({"scale": (1.0, 1.0)}, "one value per axis"),
        ({"units": "micron"}, "Invalid unit 'micron'"),
        ({"axes": "cyx", "units": ("micrometer", "micrometer", "micrometer")}, "channel axes"),
        ({"levels": 0}, "Invalid levels"),
    ],
)
def test_invalid_metadata_raises_before_writing(
    store: ResultStore, kwargs: dict[str, Any], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        save(store, np.zeros((4, 8, 8), np.uint8), "bad", **kwargs)
    assert list(store.targets()) == []


def test_image_wrapper_and_one_d_results(store: ResultStore) -> None:
    target = store.save(cpr_zarr.Image(np.zeros((3, 8, 8), np.uint8), axes="cyx"), "img")
    assert [a["type"] for a in group_doc(target)["ome"]["multiscales"][0]["axes"]] == [
        "channel",
        "space",
        "space",
    ]
    line = store.save(np.arange(10), "line")  # NGFF has no 1-D images: no ome, still a result
    assert "ome" not in group_doc(line)
    with pytest.raises(ValueError, match="2-D to 5-D"):
        save(store, np.arange(10), "line", units="micrometer")


# -- pyramids ------------------------------------------------------------------------------


def test_pyramid_levels_mean_for_images_nearest_for_labels(local_store: ResultStore) -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 1000, size=(5, 37, 42), dtype=np.uint16)
    target = save(
        local_store,
        image,
        "img",
        scale=(1.0, 0.5, 0.5),
        units="micrometer",
        levels=3,
        chunks=(2, 8, 10),
    )
    assert pyramid.level_count(target) == 3
    level1 = cpr_zarr.read_level(target, 1).compute()
    # anisotropic z (1.0 vs 0.5): only y and x are halved first
    assert level1.shape == (5, 19, 21)
    expected = pyramid.downsample(image, (1, 2, 2), "mean")
    np.testing.assert_array_equal(level1, expected)
    assert level1[0, 0, 0] == np.rint(image[0, :2, :2].mean())
    level2 = cpr_zarr.read_level(target, 2).compute()
    assert level2.shape == (3, 10, 11)  # now z (1.0) is as fine as y, x (1.0): all halved
    datasets = group_doc(target)["ome"]["multiscales"][0]["datasets"]
    assert [d["coordinateTransformations"][0]["scale"] for d in datasets] == [
        [1.0, 0.5, 0.5],
        [1.0, 1.0, 1.0],
        [2.0, 2.0, 2.0],
    ]
    validate(target)
    layers = napari_layers(local_store.storage.root / target.group_path)  # type: ignore[operator]
    assert [lvl.shape for lvl in layers[0][0]] == [(5, 37, 42), (5, 19, 21), (3, 10, 11)]

    labels = (image > 500).astype(np.uint32) * np.arange(42, dtype=np.uint32)
    label_target = local_store.save(cpr_zarr.Labels(labels, image=target), "seg")
    np.testing.assert_array_equal(
        cpr_zarr.read_level(label_target, 1).compute(), labels[:, ::2, ::2]
    )
    np.testing.assert_array_equal(
        cpr_zarr.read_level(label_target, 2).compute(), labels[::2, ::4, ::4]
    )
    with pytest.raises(IndexError, match="level 3 does not exist"):
        cpr_zarr.read_level(target, 3)


def _reference_mean(block: np.ndarray, step: tuple[int, ...]) -> np.ndarray:
    """The textbook block mean: edge-pad, reshape, float64 mean, round half to even."""
    pad = [(0, (-s) % f) for s, f in zip(block.shape, step, strict=True)]
    block = np.pad(block, pad, mode="edge")
    split = [v for s, f in zip(block.shape, step, strict=True) for v in (s // f, f)]
    mean = block.reshape(split).mean(axis=tuple(range(1, 2 * block.ndim, 2)), dtype=np.float64)
    return (np.rint(mean) if block.dtype.kind in "iu" else mean).astype(block.dtype)


@settings(max_examples=150, deadline=None)
@given(
    block=hnp.arrays(
        dtype=st.sampled_from([np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32]),
        shape=hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=9),
    ),
    data=st.data(),
)
def test_downsample_mean_is_the_exact_rounded_block_mean(block: np.ndarray, data: Any) -> None:
    step = tuple(data.draw(st.sampled_from([1, 2])) for _ in block.shape)
    result = pyramid.downsample(block, step, "mean")
    np.testing.assert_array_equal(result, _reference_mean(block, step))
    assert result.dtype == block.dtype


def test_downsample_of_big_blocks_in_slabs_is_the_same_mean() -> None:
    image = microscopy_volume((37, 300, 301))  # 6.4 MiB: reduced in slabs, odd sizes
    for step in [(2, 2, 2), (1, 2, 2), (2, 1, 1)]:
        np.testing.assert_array_equal(
            pyramid.downsample(image, step, "mean"), _reference_mean(image, step)
        )
    floats = image.astype(np.float32) / 7
    np.testing.assert_allclose(
        pyramid.downsample(floats, (2, 2, 2), "mean"),
        _reference_mean(floats, (2, 2, 2)),
        rtol=1e-6,
    )


def test_read_region_assembles_any_region_from_stored_chunks(local_store: ResultStore) -> None:
    from cpr_zarr.core.codec import ChunkCodec

    image = microscopy_volume((9, 37, 41))
    target = local_store.save(image, "img", chunks=(4, 16, 16), levels=1)
    codec = ChunkCodec(target.zarr_array())
    regions = [
        (slice(0, 9), slice(0, 37), slice(0, 41)),  # everything, edge chunks included
        (slice(3, 5), slice(15, 17), slice(31, 41)),  # across chunk borders
        (slice(8, 9), slice(36, 37), slice(40, 41)),  # the last voxel
        (slice(4, 8), slice(16, 32), slice(16, 32)),  # exactly one chunk
    ]
    for region in regions:
        np.testing.assert_array_equal(pyramid.read_region(codec, region), image[region])


def test_pyramid_is_automatic_above_512_pixels(store: ResultStore) -> None:
    small = store.save(np.zeros((4, 512, 300), np.uint8), "small")
    assert pyramid.level_count(small) == 1
    big = store.save(np.ones((2, 1100, 600), np.uint8), "big")
    assert pyramid.level_count(big) == 3  # 1100 -> 550 -> 275
    assert cpr_zarr.read_level(big, 2).shape == (1, 275, 150)


def test_pyramid_from_dask_matches_numpy_and_verifies(store: ResultStore) -> None:
    image = microscopy_volume((6, 70, 66))
    from_numpy = save(store, image, "a", levels=3, chunks=(3, 16, 16))
    doc_numpy = json.dumps(group_doc(from_numpy), sort_keys=True)
    store.delete(from_numpy)
    from_dask = save(
        store, da.from_array(image, chunks=(2, 30, 17)), "a", levels=3, chunks=(3, 16, 16)
    )
    assert from_dask == from_numpy
    # the group document is a pure function of content and metadata, however it was written
    assert json.dumps(group_doc(from_dask), sort_keys=True) == doc_numpy

    # damage one chunk of level 1: reading that level fails verification
    key = f"{from_dask.group_path}/1/c/0/0/0"
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    raw = sync(store.storage.zarr_store.get(key, default_buffer_prototype()))
    other = zarr.create_array(
        zarr.storage.MemoryStore(),
        shape=(3, 16, 16),
        chunks=(3, 16, 16),
        dtype=np.uint16,
        compressors=cpr_zarr.core.arrays.default_compressor(),
    )
    other[...] = 7
    bad = sync(other.store.get("c/0/0/0", default_buffer_prototype()))
    assert raw is not None
    assert bad is not None
    sync(store.storage.zarr_store.set(key, bad))
    with pytest.raises(cpr_zarr.ChunkVerificationError, match="chunk \\(0, 0, 0\\)"):
        cpr_zarr.read_level(from_dask, 1).compute()
    assert cpr_zarr.read_level(from_dask, 1, verify=False).compute()[0, 0, 0] == 7


# -- labels --------------------------------------------------------------------------------


def test_labels_attach_to_their_image_and_viewers_overlay_them(
    local_store: ResultStore, capsys: pytest.CaptureFixture[str]
) -> None:
    image = microscopy_volume((6, 40, 48))
    target = save(local_store, image, "raw", scale=(2.0, 0.65, 0.65), units="micrometer")
    nuclei = (image > 300).astype(np.uint16) * 3
    cells = (image > 150).astype(np.uint8)
    nuclei_t = local_store.save(
        cpr_zarr.Labels(nuclei, image=target, colors={3: (255, 0, 0)}), "nuclei"
    )
    cells_t = local_store.save(
        cpr_zarr.Labels(da.from_array(cells, chunks=5), image=target), "cells"
    )
    assert nuclei_t.group_path.startswith(f"{target.group_path}/labels/nuclei-")
    np.testing.assert_array_equal(nuclei_t.to_numpy(), nuclei)
    assert local_store.open(nuclei_t.group_path) == nuclei_t
    # the image is still the only top-level result; listings show its labels under it
    assert [t.group_path for t in local_store.targets()] == [
        target.group_path, cells_t.group_path, nuclei_t.group_path,
    ]  # fmt: skip
    assert local_store.open(nuclei_t.content_hash[:10]) == nuclei_t
    assert local_store.open("cells") == cells_t

    model = validate(target)
    assert model.labels is not None
    assert sorted(model.labels.label_paths) == sorted(
        [nuclei_t.group_path.rsplit("/", 1)[1], cells_t.group_path.rsplit("/", 1)[1]]
    )
    label_attrs = group_doc(nuclei_t)["ome"]
    assert label_attrs["image-label"]["colors"] == [{"label-value": 3, "rgba": [255, 0, 0, 255]}]
    assert label_attrs["multiscales"][0]["axes"][1]["unit"] == "micrometer"

    path = local_store.storage.root / target.group_path  # type: ignore[operator]
    nodes = ome_zarr_nodes(path)
    assert sum(1 for n in nodes if n.load(__import__("ome_zarr.reader").reader.Label)) == 2

    layers = napari_layers(path)
    capsys.readouterr()
    kinds = sorted(kind for _, _, kind in layers)
    assert kinds == ["image", "labels", "labels"]
    for data, meta, kind in layers:
        if kind == "labels":
            assert meta["scale"] == pytest.approx([2.0, 0.65, 0.65])
            assert meta["units"] == ("micrometer",) * 3
            assert data[0].shape == image.shape
    # saving the same labels again is a no-op returning the same pointer
    assert (
        local_store.save(cpr_zarr.Labels(nuclei, image=target, colors={3: (255, 0, 0)}), "nuclei")
        == nuclei_t
    )


def test_labels_follow_the_image_pyramid(local_store: ResultStore) -> None:
    image = microscopy_volume((4, 600, 64))
    target = local_store.save(image, "raw")
    assert pyramid.level_count(target) == 2
    seg = local_store.save(cpr_zarr.Labels((image > 300).astype(np.uint8), image=target), "seg")
    assert pyramid.level_count(seg) == 2
    validate(target)  # ome-zarr-models checks label and image level counts agree


def test_labels_listing_is_repaired_after_a_crash(local_store: ResultStore) -> None:
    image = microscopy_volume((4, 32, 32))
    target = local_store.save(image, "raw")
    seg = local_store.save(cpr_zarr.Labels((image > 300).astype(np.uint8), image=target), "seg")
    # a writer killed between committing the label and listing it
    listing = local_store.storage.root / target.group_path / "labels" / "zarr.json"  # type: ignore[operator]
    listing.unlink()
    assert (
        local_store.save(cpr_zarr.Labels((image > 300).astype(np.uint8), image=target), "seg")
        == seg
    )
    assert json.loads(listing.read_text())["attributes"]["ome"]["labels"] == [
        seg.group_path.rsplit("/", 1)[1]
    ]


@pytest.mark.parametrize(
    ("labels", "error", "match"),
    [
        (np.zeros((4, 32, 32), np.float32), cpr_zarr.UnsupportedResultError, "integer arrays"),
        (np.zeros((4, 32, 32), bool), cpr_zarr.UnsupportedResultError, "integer arrays"),
        (np.zeros((4, 32, 31), np.uint8), ValueError, "do not fit image"),
    ],
)
def test_bad_labels_raise(
    store: ResultStore, labels: np.ndarray, error: type[Exception], match: str
) -> None:
    target = store.save(microscopy_volume((4, 32, 32)), "raw")
    with pytest.raises(error, match=match):
        store.save(cpr_zarr.Labels(labels, image=target), "seg")
    with pytest.raises(TypeError, match="must be the image result"):
        store.save(cpr_zarr.Labels(labels, image=np.zeros(3)), "seg")


def test_parse_meta_defaults() -> None:
    meta = ngff.parse_meta(3)
    assert meta.axes == ("z", "y", "x")
    assert meta.scale == (1.0, 1.0, 1.0)
    assert meta.units == (None, None, None)
    assert meta.translation == (0.0, 0.0, 0.0)
    assert ngff.parse_meta(4, scale=(2.0, 1.0, 1.0), units="micrometer").scale == (
        1.0,
        2.0,
        1.0,
        1.0,
    )
    assert (
        ngff.parse_meta(5, units=("second", None, "micrometer", "micrometer", "micrometer")).units[
            0
        ]
        == "second"
    )


def test_a_level_of_another_pyramid_plan_is_never_overwritten(store: ResultStore) -> None:
    from cpr_zarr.core.codec import ChunkCodec
    from cpr_zarr.core.writer import _create_array
    from cpr_zarr.model.layout import chunk_grid

    image = microscopy_volume((8, 40, 40))
    chunks = (4, 16, 16)
    probe = store.save(image, "img", chunks=chunks, levels=1)
    path = probe.group_path
    store.delete(probe)

    # another writer of the same content, planning levels for z anisotropic (y, x halved
    # only), has written the base and its level 1 but not committed yet
    base = ChunkCodec(
        _create_array(store.storage, f"{path}/0", image.shape, image.dtype, chunks, None)
    )
    for index, region in chunk_grid(image.shape, chunks):
        base.write(index, image[region])
    theirs = pyramid.write_levels(store.storage, path, [(1, 2, 2)], "mean", ["z", "y", "x"])
    assert theirs[0].path == "1"

    ours = save(store, image, "img", chunks=chunks, levels=2)  # isotropic: halves z too
    record = store.reader(ours).record.levels[0]
    assert record.path == "1-2x2x2"
    assert record.step == (2, 2, 2)
    np.testing.assert_array_equal(
        cpr_zarr.read_level(ours, 1).compute(), pyramid.downsample(image, (2, 2, 2), "mean")
    )
    # the other writer's level is intact: it can still commit a consistent group
    other = zarr.open_array(store.storage.zarr_store, path=f"{path}/1", mode="r")
    np.testing.assert_array_equal(other[...], pyramid.downsample(image, (1, 2, 2), "mean"))
    validate(ours)
