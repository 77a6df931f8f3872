"""Thumbnails and the store index of ``cpr-zarr serve``, without a browser."""

from __future__ import annotations

import io
import shutil
from typing import TYPE_CHECKING

import numpy as np
import pytest

import cpr_zarr
from cpr_zarr.web.catalog import Catalog, Filter
from cpr_zarr.web.thumbnail import ThumbnailCache, encode_png, render_thumbnail

if TYPE_CHECKING:
    from pathlib import Path


def decode(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)))


def test_png_round_trips_through_pillow() -> None:
    grey = np.arange(12 * 7, dtype=np.uint8).reshape(12, 7)
    rgb = np.random.default_rng(0).integers(0, 256, (5, 9, 3), dtype=np.uint8)
    np.testing.assert_array_equal(decode(encode_png(grey)), grey)
    np.testing.assert_array_equal(decode(encode_png(rgb)), rgb)
    with pytest.raises(ValueError, match="uint8"):
        encode_png(grey.astype(np.uint16))


def test_thumbnail_of_a_big_volume_reads_only_its_smallest_level(tmp_path: Path) -> None:
    store = cpr_zarr.ResultStore(tmp_path / "results.zarr")
    yy, xx = np.mgrid[:1100, :1100]
    volume = np.zeros((4, 1100, 1100), dtype=np.uint8)
    volume[1] = (yy // 100 + xx // 100) % 2 * 200  # a checkerboard in one plane
    target = store.save(volume, name="big", chunks=(4, 256, 256))
    # without the base level's chunks (and level 1's), only the smallest level can be read
    for level in ("0", "1"):
        shutil.rmtree(tmp_path / "results.zarr" / target.group_path / level / "c")
    pixels = decode(render_thumbnail(store, target))
    assert max(pixels.shape) <= 256
    assert pixels.std() > 50  # the checkerboard, not a blank


@pytest.mark.parametrize(
    "value",
    [np.arange(50.0), np.zeros((0, 5, 5), np.uint16), np.full((3, 8), np.nan), np.eye(6) > 0],
    ids=["1-D", "zero-size", "all-NaN", "bool"],
)
def test_thumbnail_of_any_array(tmp_path: Path, value: np.ndarray) -> None:
    store = cpr_zarr.ResultStore(tmp_path / "results.zarr")
    pixels = decode(render_thumbnail(store, store.save(value, name="odd")))
    assert pixels.ndim == 2
    assert pixels.size >= 1


def test_label_thumbnail_is_coloured_over_its_image_and_cached(tmp_path: Path) -> None:
    store = cpr_zarr.ResultStore(tmp_path / "results.zarr")
    image = store.save(np.full((3, 40, 40), 100, dtype=np.uint16), name="raw")
    labels = np.zeros((3, 40, 40), dtype=np.uint32)
    labels[:, 5:15, 5:15] = 1
    labels[:, 20:30, 20:35] = 2
    label_target = store.save(cpr_zarr.Labels(labels, image=image), name="cells")
    cache = ThumbnailCache(tmp_path / "cache")
    png = cache.get(store, label_target)
    rgb = decode(png).astype(int)
    assert rgb.shape == (40, 40, 3)
    background, one, two = rgb[0, 0], rgb[10, 10], rgb[25, 25]
    assert background[0] == background[1] == background[2]  # the grey image
    assert len({tuple(one), tuple(two), tuple(background)}) == 3  # one colour per label
    # cached on disk, under a key of the content hashes: the second request reads the file
    path = cache.path_for(label_target)
    assert path.read_bytes() == png
    path.write_bytes(b"cached")
    assert cache.get(store, label_target) == b"cached"


def test_catalog_filters_and_lineage(tmp_path: Path) -> None:
    store = cpr_zarr.ResultStore(tmp_path / "results.zarr")
    a = store.save(np.ones((4, 4)), name="first", provenance={"task_name": "make"})
    b = store.save(
        np.zeros((4, 4)),
        name="second",
        provenance={"task_name": "smooth", "flow_name": "f", "inputs": [a.content_hash]},
    )
    c = store.save(
        np.eye(4), name="third", provenance={"task_name": "smooth", "inputs": [b.content_hash]}
    )
    catalog = Catalog(store)
    catalog.refresh()
    assert [s.name for s in catalog.all()] == ["third", "second", "first"]  # newest first
    assert [s.name for s in catalog.search(Filter(task="smooth"))] == ["third", "second"]
    assert [s.name for s in catalog.search(Filter(flow="f"))] == ["second"]
    assert [s.name for s in catalog.search(Filter(text=a.content_hash[:8]))] == ["first"]
    lineage = catalog.lineage(b.group_path)
    assert [s.name for s in lineage["inputs"]] == ["first"]
    assert [s.name for s in lineage["outputs"]] == ["third"]
    assert [s.name for s in catalog.lineage(c.group_path)["inputs"]] == ["second", "first"]
    # a refresh reads only new results and drops removed ones
    store.delete(c)
    d = store.save(np.full((2, 2), 7), name="fourth")
    catalog.refresh()
    assert {s.group_path for s in catalog.all()} == {a.group_path, b.group_path, d.group_path}
