"""The napari reader of a store root (npe2 manifest), and ``cpr-zarr open`` of several results."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import cpr_zarr
from cpr_zarr.cli import main
from cpr_zarr.layers import napari_get_reader, read_path
from tests.conftest import microscopy_volume

MANIFEST = Path(cpr_zarr.__file__).parent / "napari.yaml"
SCALE = (2.0, 0.5, 0.25)
ORIGIN = (10.0, -4.0, 0.0)


@pytest.fixture
def made(tmp_path: Path) -> tuple[cpr_zarr.ResultStore, dict[str, cpr_zarr.ZarrTarget]]:
    """A store as a pipeline leaves it: an image (3 levels) with labels, a mask, a table..."""
    store = cpr_zarr.ResultStore(tmp_path / "results.zarr")
    volume = microscopy_volume((16, 200, 180))
    out = {}
    out["old_raw"] = store.save(
        cpr_zarr.Image(volume // 2, axes="zyx", scale=SCALE, units="micrometer"), "raw"
    )
    out["raw"] = store.save(
        cpr_zarr.Image(
            volume, axes="zyx", scale=SCALE, units="micrometer", translation=ORIGIN, levels=2
        ),
        "raw",
    )
    labels = (volume > np.percentile(volume, 95)).astype(np.uint16)
    out["nuclei"] = store.save(cpr_zarr.Labels(labels, image=out["raw"]), "nuclei")
    out["mask"] = store.save(volume > 500, "mask")
    out["profile"] = store.save(volume[:, 0, 0], "profile")  # 1-D: no layer
    out["stats"] = store.save(pd.DataFrame({"a": [1, 2]}), "stats")  # a table: no layer
    return store, out


def test_store_root_opens_as_the_newest_images_with_their_labels(made: tuple) -> None:  # type: ignore[type-arg]
    store, out = made
    reader = napari_get_reader(store.url)
    assert reader is not None
    layers = reader(store.url)
    names = [(kwargs["name"], kind) for _, kwargs, kind in layers]
    # the newest "raw" only (old_raw has the same name), its labels right after it
    assert names == [
        (f"raw {out['raw'].content_hash[:8]}", "image"),
        (f"nuclei {out['nuclei'].content_hash[:8]}", "labels"),
        (f"mask {out['mask'].content_hash[:8]}", "image"),
    ]
    raw, raw_kwargs, _ = layers[0]
    assert raw_kwargs["scale"] == list(SCALE)
    assert raw_kwargs["translate"] == list(ORIGIN)
    assert raw_kwargs["units"] == ["micrometer"] * 3
    assert raw_kwargs["axis_labels"] == ["z", "y", "x"]
    # multiscale: every level, base first, lazily read
    assert raw_kwargs["multiscale"] is True
    assert [level.shape for level in raw] == [(16, 200, 180), (16, 200, 90)]
    np.testing.assert_array_equal(np.asarray(raw[0][3]), microscopy_volume((16, 200, 180))[3])
    labels, labels_kwargs, _ = layers[1]
    assert labels_kwargs["scale"] == list(SCALE)
    assert labels_kwargs["translate"] == list(ORIGIN)
    assert labels[0].dtype == np.uint16
    assert labels_kwargs["metadata"]["cpr_zarr"]["group_path"] == out["nuclei"].group_path
    mask, mask_kwargs, _ = layers[2]  # no metadata given: the pixel grid
    assert mask_kwargs["scale"] == [1.0, 1.0, 1.0]
    assert (mask[0] if mask_kwargs.get("multiscale") else mask).shape == (16, 200, 180)


def test_a_result_inside_a_store_opens_alone(made: tuple) -> None:  # type: ignore[type-arg]
    store, out = made
    path = f"{store.url}/{out['old_raw'].group_path}"
    assert napari_get_reader(path) is not None
    layers = read_path(path)
    assert [kwargs["name"] for _, kwargs, _ in layers] == [f"raw {out['old_raw'].content_hash[:8]}"]


def test_other_folders_are_left_to_other_readers(tmp_path: Path, made: tuple) -> None:  # type: ignore[type-arg]
    import zarr

    store, _ = made
    zarr.open_group(tmp_path / "plain.zarr", mode="w")
    (tmp_path / "empty").mkdir()
    assert napari_get_reader(str(tmp_path / "plain.zarr")) is None
    assert napari_get_reader(str(tmp_path / "empty")) is None
    assert napari_get_reader(f"{store.url}/provenance") is None


def test_napari_opens_a_store_through_the_manifest(made: tuple) -> None:  # type: ignore[type-arg]
    # real napari, headless: the viewer model without a window, the plugin found by npe2
    import npe2
    from napari.components import ViewerModel

    store, out = made
    manifest = npe2.PluginManifest.from_file(MANIFEST)
    manifest.validate_imports()
    manager = npe2.PluginManager.instance()
    if manifest.name not in manager:  # the installed distribution may have registered it
        manager.register(manifest)
    viewer = ViewerModel()
    viewer.open(store.url, plugin="cpr-zarr")
    kinds = {layer.name: type(layer).__name__ for layer in viewer.layers}
    assert kinds == {
        f"raw {out['raw'].content_hash[:8]}": "Image",
        f"nuclei {out['nuclei'].content_hash[:8]}": "Labels",
        f"mask {out['mask'].content_hash[:8]}": "Image",
    }
    raw, nuclei = viewer.layers[0], viewer.layers[1]
    for layer in (raw, nuclei):
        np.testing.assert_allclose(layer.scale, SCALE)
        np.testing.assert_allclose(layer.translate, ORIGIN)
        assert layer.multiscale
        assert [str(u) for u in layer.units] == ["micrometer"] * 3
    # in world coordinates the image sits at its origin, 16 planes 2 um apart along z
    low, high = raw.extent.world
    assert (low[0], high[0]) == pytest.approx((ORIGIN[0], ORIGIN[0] + 15 * SCALE[0]))


def test_open_command_takes_several_results(made: tuple, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[type-arg]
    store, out = made
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    refs = [out["mask"].content_hash[:10], out["old_raw"].content_hash[:10]]
    result = CliRunner().invoke(main, ["open", store.url, *refs])
    assert result.exit_code == 0, result.output
    assert "To view these results:" in result.output
    for key in ("mask", "old_raw"):
        assert f"napari --plugin cpr-zarr {store.url}/{out[key].group_path}" in result.output
    whole = CliRunner().invoke(main, ["open", store.url])
    assert "To view this store:" in whole.output
    assert f"{store.url}/{out['raw'].group_path}" in whole.output
    assert out["old_raw"].group_path not in whole.output


def test_napari_builtin_reader_opens_a_result_group(made: tuple) -> None:  # type: ignore[type-arg]
    """napari's own zarr reader (plugin "napari", no cpr_zarr code) opens result groups.

    Layout 2 keeps cpr_zarr's data out of the zarr hierarchy, so a result group's members are
    its arrays (and ``labels/``, which napari's reader enters instead: an image with label
    images still fails there). It reads no OME metadata: scale 1, an Image layer even for a
    label image (napari-ome-zarr and the cpr-zarr plugin give both).
    """
    from napari.components import ViewerModel
    from napari.plugins import _initialize_plugins
    from zarr.errors import ZarrUserWarning

    _initialize_plugins()  # registers napari's built-in readers (npe2), as the app does
    store, out = made
    viewer = ViewerModel()
    for key in ("nuclei", "mask"):
        with pytest.warns(ZarrUserWarning, match="Object at cpr_zarr"):
            viewer.open(f"{store.url}/{out[key].group_path}", plugin="napari")
        layer = viewer.layers[-1]
        data = layer.data[0] if layer.multiscale else layer.data
        np.testing.assert_array_equal(np.asarray(data), out[key].to_numpy())
        np.testing.assert_allclose(layer.scale, (1.0, 1.0, 1.0))
    assert [type(layer).__name__ for layer in viewer.layers] == ["Image", "Image"]
