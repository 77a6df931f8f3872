"""Every kind of result opens in readers nobody here wrote, with the right values and geometry.

Kinds: a 2-D image (one level), a 3-D image with a pyramid, scale, units and translation,
a channel image (``czyx``), a mask (bool), and label images saved from numpy and from Dask.
Readers: the strict NGFF 0.5 JSON schemas published with the spec (jsonschema),
ome-zarr-models, napari-ome-zarr, ngio (Fractal's I/O library), ngff-zarr, bioio
(bioio-ome-zarr) and xarray. Tables (a feature table stored with its image, and a table of
its own) open in ngio, without cpr_zarr imported, and in pandas/pyarrow. The README's table
of tools points at the tests here.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dask.array as da
import jsonschema
import numpy as np
import pandas as pd
import pytest
import referencing
import zarr

import cpr_zarr
from cpr_zarr.core import pyramid
from cpr_zarr.model import ngff
from cpr_zarr.model.records import ResultDocument
from tests.conftest import microscopy_volume

if TYPE_CHECKING:
    from cpr_zarr import ResultStore, ZarrTarget

SCHEMAS = Path(__file__).parent / "data" / "ngff_schemas"
# every reader opens the images with a table stored beside them (``tables/``), as a
# measuring flow leaves them
pytestmark = pytest.mark.usefixtures("tables")


def schema_validator(version: str, name: str) -> jsonschema.protocols.Validator:
    """A validator for ``<version>/schemas/<name>.schema`` (the spec's, loaded offline)."""
    resources = []
    for file in (SCHEMAS / version).glob("*.schema"):
        schema = json.loads(file.read_text())
        resource = referencing.Resource.from_contents(
            schema, default_specification=referencing.jsonschema.DRAFT202012
        )
        resources.append((schema["$id"], resource))
    registry: referencing.Registry[Any] = referencing.Registry().with_resources(resources)
    schema = json.loads((SCHEMAS / version / f"{name}.schema").read_text())
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    return cls(schema, registry=registry)  # type: ignore[no-any-return]


def attributes(target: ZarrTarget) -> dict[str, Any]:
    group = zarr.open_group(target.store.url, path=target.group_path, mode="r")
    return dict(group.attrs)


@dataclass(frozen=True)
class Kind:
    """One kind of result, its values and the geometry a reader must report."""

    target: ZarrTarget
    values: np.ndarray
    axes: str
    scale: tuple[float, ...]
    units: tuple[str | None, ...]
    translation: tuple[float, ...]
    levels: int
    label: bool = False


KINDS = ["image-2d", "image-3d-pyramid", "image-czyx", "mask", "labels", "labels-dask"]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Kind]:
    store = cpr_zarr.ResultStore(tmp_path_factory.mktemp("readers") / "results.zarr")
    out: dict[str, Kind] = {}
    flat = microscopy_volume((1, 48, 64))[0]
    out["image-2d"] = Kind(
        store.save(cpr_zarr.Image(flat, scale=0.5, units="micrometer"), "flat"),
        flat, "yx", (0.5, 0.5), ("micrometer",) * 2, (0.0, 0.0), 1,
    )  # fmt: skip
    volume = microscopy_volume((8, 40, 36))
    meta = {"scale": (2.0, 0.5, 0.5), "units": "micrometer", "translation": (0.0, 3.0, 4.0)}
    image = store.save(cpr_zarr.Image(volume, levels=3, **meta), "raw", chunks=(4, 16, 16))
    out["image-3d-pyramid"] = Kind(
        image, volume, "zyx", (2.0, 0.5, 0.5), ("micrometer",) * 3, (0.0, 3.0, 4.0), 3
    )
    channels = np.stack([volume[:4], volume[4:]])
    out["image-czyx"] = Kind(
        store.save(cpr_zarr.Image(channels, axes="czyx", scale=(1, 2.0, 0.5, 0.5)), "chan"),
        channels, "czyx", (1.0, 2.0, 0.5, 0.5), (None,) * 4, (0.0,) * 4, 1,
    )  # fmt: skip
    mask = volume[0] > 300
    out["mask"] = Kind(
        store.save(cpr_zarr.Image(mask, scale=0.5), "mask"),
        mask, "yx", (0.5, 0.5), (None, None), (0.0, 0.0), 1,
    )  # fmt: skip
    nuclei = (volume // 200).astype(np.uint16)
    out["labels"] = Kind(
        store.save(cpr_zarr.Labels(nuclei, image=image), "nuclei"),
        nuclei, "zyx", (2.0, 0.5, 0.5), ("micrometer",) * 3, (0.0, 3.0, 4.0), 3, label=True,
    )  # fmt: skip
    cells = (flat // 150).astype(np.uint8)
    out["labels-dask"] = Kind(
        store.save(cpr_zarr.Labels(da.from_array(cells, chunks=16), image=out["image-2d"].target),
                   "cells"),
        cells, "yx", (0.5, 0.5), ("micrometer",) * 2, (0.0, 0.0), 1, label=True,
    )  # fmt: skip
    return out


def local_path(target: ZarrTarget) -> Path:
    return Path(target.store.url) / target.group_path


@pytest.mark.parametrize("kind", KINDS)
def test_every_result_kind_passes_the_strict_ngff_05_schemas(
    results: dict[str, Kind], kind: str
) -> None:
    case = results[kind]
    attrs = attributes(case.target)
    schema_validator("0.5", "strict_image").validate(attrs)
    if case.label:
        schema_validator("0.5", "strict_label").validate(attrs)
    (multiscale,) = attrs["ome"]["multiscales"]
    assert multiscale["type"] == ("nearest" if case.label or kind == "mask" else "mean")
    assert multiscale["metadata"]["method"] == ngff.DOWNSAMPLE_METHOD
    steps = multiscale["metadata"]["kwargs"]["steps"]
    assert len(steps) == case.levels - 1
    recorded = case.target.store.reader(case.target).attrs.get("levels", [])
    assert steps == [r["step"] for r in recorded]


def test_the_strict_schemas_refuse_what_they_ask_for() -> None:
    """The vendored schemas are the strict ones: the fields added for them are required."""
    meta = ngff.parse_meta(2)
    old = ngff.multiscales_attrs("x", meta, complete=False)
    with pytest.raises(jsonschema.ValidationError, match="'metadata' is a required property"):
        schema_validator("0.5", "strict_image").validate({"ome": old})
    schema_validator("0.5", "image").validate({"ome": old})
    label = {"ome": {**old, "image-label": ngff.image_label_attrs(None)}}
    with pytest.raises(jsonschema.ValidationError, match="'colors' is a required property"):
        schema_validator("0.5", "strict_label").validate(label)


def test_label_images_get_a_colour_for_every_value_up_to_a_bound(
    results: dict[str, Kind], local_store: ResultStore
) -> None:
    for kind in ("labels", "labels-dask"):  # max from memory, and read back from the store
        case = results[kind]
        colors = attributes(case.target)["ome"]["image-label"]["colors"]
        assert [c["label-value"] for c in colors] == list(range(int(case.values.max()) + 1))
        assert colors[0]["rgba"] == [0, 0, 0, 0]  # background transparent
        assert all(c["rgba"][3] == 255 for c in colors[1:])
        assert len({tuple(c["rgba"]) for c in colors}) == len(colors)  # distinct colours
    image = local_store.save(np.zeros((4, 3000), np.uint16), "wide")
    many = np.arange(4 * 3000, dtype=np.uint32).reshape(4, 3000)
    target = local_store.save(cpr_zarr.Labels(many, image=image), "many")
    colors = attributes(target)["ome"]["image-label"]["colors"]
    assert len(colors) == ngff.MAX_DEFAULT_COLORS
    assert len(json.dumps(colors)) < 56_000
    given = local_store.save(cpr_zarr.Labels(many % 3, image=image, colors={2: "#00ff00"}), "g")
    colors = attributes(given)["ome"]["image-label"]["colors"]
    assert colors == [{"label-value": 2, "rgba": [0, 255, 0, 255]}]


def test_results_saved_before_the_complete_metadata_still_open_and_verify(
    local_store: ResultStore,
) -> None:
    """A store written without multiscales ``metadata``, single-level ``type`` or colours."""
    image = local_store.save(cpr_zarr.Image(microscopy_volume((2, 24, 20)), levels=1), "old")
    seg = local_store.save(cpr_zarr.Labels(np.ones((2, 24, 20), np.uint8), image=image), "seg")
    root = Path(local_store.url)
    for target in (image, seg):
        marker = root / target.group_path / "zarr.json"
        doc = json.loads(marker.read_text())
        ome = doc["attributes"]["ome"]
        del ome["multiscales"][0]["metadata"]
        del ome["multiscales"][0]["type"]
        ome.get("image-label", {}).pop("colors", None)
        marker.write_text(json.dumps(ResultDocument.from_dict(doc).sealed().to_dict()))
    reopened = cpr_zarr.ResultStore(local_store.url)
    assert reopened.damaged() == []
    for target in (image, seg):
        np.testing.assert_array_equal(
            reopened.check(reopened.open(target.group_path)).to_numpy(), target.to_numpy()
        )
    # a changed field is still refused: the old form is accepted as it was written, exactly
    marker = root / image.group_path / "zarr.json"
    doc = json.loads(marker.read_text())
    doc["attributes"]["ome"]["multiscales"][0]["type"] = "gaussian"
    marker.write_text(json.dumps(ResultDocument.from_dict(doc).sealed().to_dict()))
    assert [d.group_path for d in cpr_zarr.ResultStore(local_store.url).damaged()] == [
        image.group_path
    ]


@pytest.mark.parametrize("kind", KINDS)
def test_ome_zarr_models_validates_every_kind(results: dict[str, Kind], kind: str) -> None:
    from ome_zarr_models.v05 import Image as ImageModel
    from ome_zarr_models.v05.image_label import ImageLabel

    case = results[kind]
    group = zarr.open_group(case.target.store.url, path=case.target.group_path, mode="r")
    model = (ImageLabel if case.label else ImageModel).from_zarr(group)
    (multiscale,) = model.ome_attributes.multiscales
    assert "".join(a.name for a in multiscale.axes) == case.axes
    assert [a.unit for a in multiscale.axes] == list(case.units)
    assert len(multiscale.datasets) == case.levels
    assert [d.path for d in multiscale.datasets] == [str(i) for i in range(case.levels)]


def _napari_layers(path: Path) -> list[tuple[Any, dict[str, Any], str]]:
    from napari_ome_zarr._reader import napari_get_reader

    read = napari_get_reader(str(path))
    assert read is not None
    return read(str(path))  # type: ignore[no-any-return]


@pytest.mark.parametrize("kind", KINDS)
def test_napari_ome_zarr_opens_every_kind(
    results: dict[str, Kind], kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    case = results[kind]
    layers = _napari_layers(local_path(case.target))
    capsys.readouterr()  # napari-ome-zarr prints the attributes
    if case.label:  # opening a label image opens its image with all its labels
        layer = next(
            layer
            for layer in layers
            if layer[2] == "labels"
            and layer[1]["name"].endswith(case.target.group_path.rsplit("/", 1)[1])
        )
    else:
        (layer,) = (layer for layer in layers if layer[2] == "image")
    data, meta, _ = layer
    assert len(data) == case.levels
    np.testing.assert_array_equal(np.asarray(data[0]), case.values)
    if "c" in case.axes:  # one channel axis: split into channels, the rest is the image
        assert meta["channel_axis"] == 0
        assert meta["scale"] == pytest.approx(case.scale[1:])
        return
    assert meta["scale"] == pytest.approx(case.scale)
    assert meta["axis_labels"] == tuple(case.axes)
    if case.units[0] is not None:
        assert meta["units"] == case.units
    if case.label:  # the generated colour table colours every label present
        colormap = meta["colormap"]
        present = np.unique(case.values)
        assert all(colormap[int(v)][3] == 1.0 for v in present if v)
        assert colormap[0][3] == 0.0


@pytest.mark.parametrize("kind", KINDS)
def test_ngio_opens_every_kind(results: dict[str, Kind], kind: str) -> None:
    import ngio

    case = results[kind]
    if case.label:
        image_path, _, name = case.target.group_path.rpartition("/labels/")
        container = ngio.open_ome_zarr_container(Path(case.target.store.url) / image_path)
        assert name in container.list_labels()
        opened = container.get_label(name)
        levels = container.get_label(name).meta.paths
    else:
        container = ngio.open_ome_zarr_container(local_path(case.target))
        opened = container.get_image()
        levels = opened.meta.paths
    assert levels == [str(i) for i in range(case.levels)]
    assert opened.axes == tuple(case.axes)
    np.testing.assert_array_equal(np.asarray(opened.get_as_numpy()), case.values)
    size = opened.pixel_size
    for axis, value in zip(case.axes, case.scale, strict=True):
        if axis in "zyx":
            assert getattr(size, axis) == pytest.approx(value)
    if case.units[-1] is not None:
        assert opened.space_unit == case.units[-1]
    if case.levels > 1:
        top = (
            container.get_label(name, path=str(case.levels - 1))
            if case.label
            else container.get_image(path=str(case.levels - 1))
        )
        np.testing.assert_array_equal(
            np.asarray(top.get_as_numpy()),
            pyramid.read_level(case.target, case.levels - 1).compute(),
        )
        assert top.pixel_size.x == pytest.approx(case.scale[-1] * 2 ** (case.levels - 1))


@pytest.mark.parametrize("kind", KINDS)
def test_napari_builtin_zarr_reader_opens_result_groups_without_label_images(
    results: dict[str, Kind], kind: str
) -> None:
    """napari's own reader (no plugin) opens a result group: its arrays as a pyramid.

    cpr_zarr's own data is in ``cpr_zarr/``, a folder that is no zarr node, so the group's
    only subgroup, if any, is ``labels/``. The reader opens the first subgroup when there
    is one (napari PR #8355), so an image with label images still fails there: it opens
    ``labels/``, which holds groups, not arrays. Listing the group, zarr 3.1 warns once
    that ``cpr_zarr`` is no zarr node (ZarrUserWarning); nothing else changes. The reader
    reads no OME metadata: the layer has scale 1 (napari-ome-zarr or cpr_zarr's plugin
    give the physical scale).
    """
    from napari_builtins.io import read_zarr_dataset
    from zarr.errors import ZarrUserWarning

    case = results[kind]
    path = local_path(case.target)
    data, shape = read_zarr_dataset(str(path / "0"))
    assert shape == case.values.shape
    np.testing.assert_array_equal(np.asarray(data), case.values)
    warned = pytest.warns(ZarrUserWarning, match="Object at cpr_zarr is not recognized")
    if (path / "labels").is_dir():
        with warned, pytest.raises(ValueError, match="No arrays found in zarr group"):
            read_zarr_dataset(str(path))
        return
    with warned:
        levels, shape = read_zarr_dataset(str(path))
    assert shape == case.values.shape
    assert len(levels) == case.levels
    np.testing.assert_array_equal(np.asarray(levels[0]), case.values)
    for number, level in enumerate(levels[1:], start=1):
        np.testing.assert_array_equal(
            np.asarray(level), pyramid.read_level(case.target, number).compute()
        )


# -- ngff-zarr, bioio, xarray ----------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_ngff_zarr_opens_every_kind(results: dict[str, Kind], kind: str) -> None:
    import ngff_zarr

    case = results[kind]
    multiscales = ngff_zarr.from_ngff_zarr(str(local_path(case.target)))
    assert len(multiscales.images) == case.levels
    image = multiscales.images[0]
    assert image.dims == tuple(case.axes)
    np.testing.assert_array_equal(np.asarray(image.data), case.values)
    assert image.scale == dict(zip(case.axes, case.scale, strict=True))
    assert image.translation == pytest.approx(dict(zip(case.axes, case.translation, strict=True)))
    units = {a: u for a, u in zip(case.axes, case.units, strict=True) if u is not None}
    assert {a: u for a, u in (image.axes_units or {}).items() if u} == units
    top = multiscales.images[-1]
    np.testing.assert_array_equal(
        np.asarray(top.data), pyramid.read_level(case.target, case.levels - 1).compute()
    )


@pytest.mark.parametrize("kind", KINDS)
def test_bioio_opens_every_kind(results: dict[str, Kind], kind: str) -> None:
    import bioio_ome_zarr
    from bioio import BioImage

    case = results[kind]
    image = BioImage(str(local_path(case.target)), reader=bioio_ome_zarr.Reader)
    order = case.axes.upper()
    np.testing.assert_array_equal(image.get_image_data(order), case.values)
    assert image.resolution_levels == tuple(range(case.levels))
    sizes = image.physical_pixel_sizes
    for axis, value in zip(order, case.scale, strict=True):
        if axis in "ZYX":
            assert getattr(sizes, axis) == pytest.approx(value)
    properties = image.dimension_properties
    for axis, unit in zip(order, case.units, strict=True):
        got = getattr(properties, axis).unit  # pint units; no unit: None or dimensionless
        assert (str(got) if got is not None and str(got) != "dimensionless" else None) == unit
    if case.levels > 1:
        image.set_resolution_level(case.levels - 1)
        np.testing.assert_array_equal(
            image.get_image_data(order),
            pyramid.read_level(case.target, case.levels - 1).compute(),
        )


@pytest.mark.parametrize("kind", KINDS)
def test_xarray_opens_each_level_of_every_kind(results: dict[str, Kind], kind: str) -> None:
    """``xr.open_zarr(group, drop_variables=<the other levels>)``: one level as a DataArray
    with the axes as dimensions and the NGFF metadata in the attributes (the README's call;
    a whole pyramid does not open: its levels share dimension names with other sizes).
    Listing the group's arrays, zarr warns once about cpr_zarr's non-node ``cpr_zarr/``."""
    import xarray as xr
    from zarr.errors import ZarrUserWarning

    case = results[kind]
    levels = [str(n) for n in range(case.levels)]
    for number, level in enumerate(levels):
        with pytest.warns(ZarrUserWarning, match="Object at cpr_zarr is not recognized"):
            ds = xr.open_zarr(
                case.target.store.url,
                group=case.target.group_path,
                drop_variables=[other for other in levels if other != level],
                consolidated=False,
            )
        array = ds[level]
        assert array.dims == tuple(case.axes)
        expected = case.values if number == 0 else pyramid.read_level(case.target, number).compute()
        np.testing.assert_array_equal(array.values, expected)
    (multiscale,) = ds.attrs["ome"]["multiscales"]
    assert [a.get("unit") for a in multiscale["axes"]] == list(case.units)
    transforms = multiscale["datasets"][0]["coordinateTransformations"]
    assert transforms[0]["scale"] == pytest.approx(case.scale)


# -- tables ----------------------------------------------------------------------------------


def measurements(labels: np.ndarray) -> pd.DataFrame:
    values = np.unique(labels[labels > 0]).astype(np.int64)
    return pd.DataFrame(
        {"voxels": [int((labels == v).sum()) for v in values], "mean_z": values * 0.5},
        index=pd.Index(values, name="label"),
    )


@pytest.fixture(scope="module")
def tables(results: dict[str, Kind]) -> dict[str, tuple[ZarrTarget, pd.DataFrame]]:
    case = results["labels"]
    store = case.target.store
    features = measurements(case.values)
    own = pd.DataFrame({"sample": ["a", "b", "c"], "dose": [0.5, 1.0, 2.0]})
    return {
        "feature": (store.save(cpr_zarr.Table(features, labels=case.target), "measure"), features),
        "own": (store.save(own, "plate"), own),
    }


NGIO_WITHOUT_CPR_ZARR = """
    import json, sys
    import ngio
    image, expected = sys.argv[1], json.loads(sys.argv[2])
    container = ngio.open_ome_zarr_container(image)
    assert container.list_tables() == [expected["table"]], container.list_tables()
    assert container.list_tables(filter_types="feature_table") == [expected["table"]]
    table = container.get_table(expected["table"])
    assert type(table).__name__ == "FeatureTableV1", type(table)
    assert table.reference_label == expected["labels"], table.reference_label
    assert table.reference_label in container.list_labels()
    df = table.dataframe
    assert df.index.name == "label", df.index.name
    assert df.index.tolist() == expected["label"], df.index.tolist()
    assert list(df.columns) == list(expected["columns"]), list(df.columns)
    for column, values in expected["columns"].items():
        assert df[column].tolist() == values, column
    assert "cpr_zarr" not in sys.modules
    print("ok", len(df))
"""


def ngio_reads_feature_table(image: Path, table: str, labels: str, df: pd.DataFrame) -> None:
    """ngio, in a process that never imports cpr_zarr, reads ``table`` of ``image`` as a
    feature table of ``labels`` with the values of ``df``."""
    expected = {
        "table": table,
        "labels": labels,
        "label": df.index.tolist(),
        "columns": {str(c): df[c].tolist() for c in df.columns},
    }
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(NGIO_WITHOUT_CPR_ZARR), str(image),
         json.dumps(expected)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("ok"), proc.stdout


def test_ngio_reads_a_feature_table_of_its_label_image_without_cpr_zarr(
    results: dict[str, Kind], tables: dict[str, tuple[ZarrTarget, pd.DataFrame]]
) -> None:
    target, df = tables["feature"]
    image_path, _, name = target.group_path.rpartition("/tables/")
    assert image_path == results["image-3d-pyramid"].target.group_path
    labels = results["labels"].target.group_path.rsplit("/", 1)[1]
    ngio_reads_feature_table(Path(target.store_url) / image_path, name, labels, df)
    # and cpr_zarr reads it back as the same DataFrame, verified
    pd.testing.assert_frame_equal(cpr_zarr.read_table(target), df, check_exact=True)


def test_ngio_pandas_and_pyarrow_read_a_table_of_its_own(
    tables: dict[str, tuple[ZarrTarget, pd.DataFrame]],
) -> None:
    from ngio.tables import open_table

    target, df = tables["own"]
    group = Path(target.store_url) / target.group_path
    table = open_table(str(group), mode="r")
    assert type(table).__name__ == "GenericTable"
    pd.testing.assert_frame_equal(table.dataframe, df, check_exact=True)
    pd.testing.assert_frame_equal(pd.read_parquet(group / "table.parquet"), df, check_exact=True)


def test_the_readme_table_of_tools_has_a_row_per_reader_each_backed_by_tests() -> None:
    """Every reader this file tests has a row in the README's table, and every row names
    tests that exist (``file::test``)."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("## Viewers: OME-NGFF images, pyramids, labels and tables")[1]
    rows = [
        line
        for line in section.split("\n## ")[0].splitlines()
        if line.startswith("| ") and not line.startswith(("| Tool", "| ---"))
    ]
    tools = [row.split(" | ")[0] for row in rows]
    for reader in ("ngio", "ngff-zarr", "bioio", "xarray", "napari-ome-zarr", "pandas"):
        assert any(reader in tool for tool in tools), (reader, tools)
    for row in rows:
        named = re.findall(r"`(test_\w+\.py)::(\w+)`", row)
        assert named, row
        for file, name in named:
            assert f"def {name}(" in (Path(__file__).parent / file).read_text(), (file, name)
