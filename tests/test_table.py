"""Tables (pandas DataFrames) as content-hashed results, and metadata carried through tasks."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pytest
import scipy.ndimage as ndi
from prefect import flow

import cpr_zarr
from cpr_zarr.core import table
from tests.conftest import microscopy_volume

if TYPE_CHECKING:
    from pathlib import Path

    from cpr_zarr import ResultStore


def measurements() -> pd.DataFrame:
    df = pd.DataFrame(
        {
            "label": np.arange(1, 6, dtype=np.uint32),
            "area": [1.5, 2.0, 3.0, 4.0, np.nan],
            "name": ["a", "b", None, "d", "e"],
            "phase": pd.Categorical(["G1", "S", "G1", "G2", "S"], ordered=True),
            "when": pd.date_range("2024-01-01", periods=5, freq="h"),
            "count": pd.array([1, None, 3, 4, 5], dtype="Int64"),
            "edge": [True, False, True, True, False],
            "note": pd.Series(["p", "q", None, "s", "t"], dtype=object),
            "flag": pd.array([True, None, False, True, True], dtype="boolean"),
        }
    )
    return df.set_index("label")


@pytest.mark.parametrize(
    "df",
    [
        measurements(),
        measurements().iloc[:0],
        measurements().reset_index().set_index(["label", "phase"]),
        pd.DataFrame({"x": [1.0, 2.0]}, index=pd.RangeIndex(10, 14, 2, name="row")),
        pd.DataFrame({1: [1, 2], 2: ["a", "b"]}),
    ],
    ids=["mixed", "empty", "multiindex", "rangeindex", "int-columns"],
)
def test_round_trip_is_exact(store: ResultStore, df: pd.DataFrame) -> None:
    target = cpr_zarr.save_table(store, df, "measure")
    assert target.dtype == "table"
    assert target.shape == df.shape
    back = cpr_zarr.read_table(store.open(target.content_hash))
    pd.testing.assert_frame_equal(back, df, check_exact=True)
    assert type(back.index) is type(df.index)
    # same table, same group; stored once
    assert cpr_zarr.save_table(store, df.copy(), "measure") == target
    assert [t.group_path for t in store.targets()] == [target.group_path]


def test_content_hash_changes_with_values_dtype_and_index(store: ResultStore) -> None:
    df = measurements()
    base = cpr_zarr.save_table(store, df, "m").content_hash
    changed = df.copy()
    changed.loc[3, "area"] = 3.5
    assert cpr_zarr.save_table(store, changed, "m").content_hash != base
    assert cpr_zarr.save_table(store, df.astype({"area": "float32"}), "m").content_hash != base
    assert cpr_zarr.save_table(store, df.reset_index(), "m").content_hash != base


def test_damaged_table_fails_verification(local_store: ResultStore) -> None:
    target = cpr_zarr.save_table(local_store, measurements(), "m")
    group = local_store.storage.root / target.group_path  # type: ignore[operator]
    other = cpr_zarr.save_table(local_store, measurements().assign(area=7.0), "m")
    src = local_store.storage.root / other.group_path / "table.parquet"  # type: ignore[operator]
    (group / "table.parquet").write_bytes(src.read_bytes())
    with pytest.raises(
        cpr_zarr.ChunkVerificationError, match=r"column 'area' \(array 'c0/values'\)"
    ):
        cpr_zarr.read_table(target)
    assert cpr_zarr.read_table(target, verify=False)["area"].iloc[0] == 7.0


def test_csv_export(store: ResultStore, tmp_path: Path) -> None:
    target = cpr_zarr.save_table(store, measurements(), "m")
    table.to_csv(target, tmp_path / "m.csv")
    back = pd.read_csv(tmp_path / "m.csv", index_col="label")
    assert list(back.columns) == list(measurements().columns)
    assert back["area"].iloc[:4].tolist() == [1.5, 2.0, 3.0, 4.0]


def test_unsupported_tables_raise(store: ResultStore) -> None:
    with pytest.raises(cpr_zarr.UnsupportedResultError, match="unique and one level deep"):
        cpr_zarr.save_table(store, pd.DataFrame([[1, 2]], columns=["a", "a"]), "t")
    with pytest.raises(cpr_zarr.UnsupportedResultError, match="of dtype"):
        cpr_zarr.save_table(store, pd.DataFrame({"a": [object(), 1]}), "t")
    with pytest.raises(TypeError, match="not a table"):
        cpr_zarr.read_table(store.save(np.zeros((2, 2)), "arr"))
    assert [t.dtype for t in store.targets()] == ["float64"]


@pytest.mark.usefixtures("prefect_server")
def test_flow_carries_units_to_labels_and_measures_a_table(
    tmp_path: Path, result_storage: Path
) -> None:
    """denoise -> threshold -> label -> measure keeps physical units and ends in a table."""
    store_url = str(tmp_path / "results.zarr")
    task = cpr_zarr.task(store=store_url, result_storage=result_storage)

    @task
    def load() -> cpr_zarr.Image:
        return cpr_zarr.Image(microscopy_volume(), scale=(2.0, 0.65, 0.65), units="micrometer")

    @task
    def denoise(image: np.ndarray) -> np.ndarray:
        return ndi.gaussian_filter(image.astype(np.float32), 1.0)

    @task
    def threshold(image):  # type: ignore[no-untyped-def]
        return image > 300

    @task
    def label(mask: np.ndarray, image) -> cpr_zarr.Labels:  # type: ignore[no-untyped-def]
        labels, _ = ndi.label(mask)
        return cpr_zarr.Labels(labels.astype(np.uint32), image=image)

    @task
    def measure(labels: np.ndarray, image: np.ndarray) -> cpr_zarr.Table:
        index = np.arange(1, int(labels.max()) + 1)
        df = pd.DataFrame(
            {
                "voxels": ndi.sum_labels(np.ones_like(labels), labels, index).astype(np.int64),
                "mean_intensity": ndi.mean(image, labels, index),
            },
            index=pd.Index(index, name="label"),
        )
        return cpr_zarr.Table(df, labels=labels)  # the input array names its label image

    @task
    def count(table: pd.DataFrame) -> int:
        return len(table)

    @flow
    def pipeline() -> dict[str, object]:
        raw = load()
        smooth = denoise(raw)
        mask = threshold(smooth)
        labels = label(mask, raw)
        measured = measure(labels, raw)
        return {
            "raw": raw,
            "smooth": smooth,
            "mask": mask,
            "labels": labels,
            "table": measured,
            "n": count(measured),
        }

    out = pipeline()
    store = cpr_zarr.ResultStore(store_url, mode="r")
    for key in ("raw", "smooth", "mask", "labels"):
        target = out[key]
        assert isinstance(target, cpr_zarr.ZarrTarget)
        doc = store.storage.get_json(f"{target.group_path}/zarr.json")["attributes"]
        ome = doc["ome"]["multiscales"][0]
        assert [a.get("unit") for a in ome["axes"]] == ["micrometer"] * 3, key
        scale = ome["datasets"][0]["coordinateTransformations"][0]["scale"]
        assert scale == [2.0, 0.65, 0.65], key
    labels = out["labels"]
    assert isinstance(labels, cpr_zarr.ZarrTarget)
    raw = out["raw"]
    assert isinstance(raw, cpr_zarr.ZarrTarget)
    assert labels.group_path.startswith(f"{raw.group_path}/labels/label-")
    listing = store.storage.get_json(f"{raw.group_path}/labels/zarr.json")
    assert json.dumps(listing["attributes"]["ome"]["labels"]) == json.dumps(
        [labels.group_path.rsplit("/", 1)[1]]
    )
    measured = out["table"]
    assert isinstance(measured, cpr_zarr.ZarrTarget)
    assert measured.dtype == "table"
    # stored with the image, listed in its tables, linked to the label image (Fractal/ngio)
    assert measured.group_path.startswith(f"{raw.group_path}/tables/measure-")
    listing = store.storage.get_json(f"{raw.group_path}/tables/zarr.json")["attributes"]
    assert listing == {"tables": [measured.group_path.rsplit("/", 1)[1]]}
    attrs = store.storage.get_json(f"{measured.group_path}/zarr.json")["attributes"]
    assert attrs["type"] == "feature_table"
    assert attrs["region"] == {"path": f"../labels/{labels.group_path.rsplit('/', 1)[1]}"}
    df = cpr_zarr.read_table(measured)
    assert out["n"] == len(df) == int(labels.to_numpy().max()) > 0
    assert df.index.name == "label"
    assert df["voxels"].dtype == np.int64


def image_with_labels(store: ResultStore) -> tuple[cpr_zarr.ZarrTarget, cpr_zarr.ZarrTarget]:
    image = store.save(cpr_zarr.Image(microscopy_volume((2, 16, 16)), units="micrometer"), "raw")
    seg = np.zeros((2, 16, 16), np.uint16)
    seg[0, :4, :4], seg[1, 8:, 8:] = 1, 2
    return image, store.save(cpr_zarr.Labels(seg, image=image), "seg")


def test_a_feature_table_is_listed_verified_and_removed_with_its_image(
    local_store: ResultStore, tmp_path: Path
) -> None:
    from cpr_zarr.core.inventory import plan_gc

    image, seg = image_with_labels(local_store)
    df = pd.DataFrame({"area": [16.0, 128.0]}, index=pd.Index([1, 2], name="label"))
    table_target = local_store.save(cpr_zarr.Table(df, labels=seg), "m")
    assert table_target.group_path.startswith(f"{image.group_path}/tables/m-")
    # the same table of the same label image is stored once; of another, it is another table
    assert local_store.save(cpr_zarr.Table(df.copy(), labels=seg), "m") == table_target
    listed = local_store.list().set_index("group_path")
    assert listed.loc[table_target.group_path, "kind"] == "table"
    assert local_store.open(table_target.content_hash[:10]) == table_target
    assert local_store.verify().problems == []
    # gc takes the table with its image (not as a removal of its own)
    (tmp_path / "records").mkdir()
    plan = plan_gc(local_store.storage, keep_referenced=tmp_path / "records", grace=0)
    assert [r.path for r in plan] == [image.group_path]
    index = f"{image.group_path}/tables/zarr.json"
    # a changed link to the label image is refused (what ngio reads is what the record says)
    marker = local_store.storage.root / table_target.group_path / "zarr.json"  # type: ignore[operator]
    original = marker.read_text()
    doc = json.loads(original)
    doc["attributes"]["region"] = {"path": "../labels/other"}
    marker.write_text(json.dumps(doc))
    with pytest.raises(cpr_zarr.IntegrityError, match=r"attributes\.region"):
        cpr_zarr.ResultStore(local_store.url).open(table_target.group_path)
    marker.write_text(original)
    # removing the table keeps the image's list of tables true; removing the image takes them
    local_store.delete(table_target)
    assert local_store.storage.get_json(index)["attributes"] == {"tables": []}
    again = local_store.save(cpr_zarr.Table(df, labels=seg), "m")
    local_store.delete(image)
    assert [t.group_path for t in local_store.targets()] == []
    assert not local_store.storage.exists(f"{again.group_path}/table.parquet")


def test_a_feature_table_must_be_keyed_by_label_and_name_a_label_image(
    local_store: ResultStore,
) -> None:
    image, seg = image_with_labels(local_store)
    keyed = pd.DataFrame({"area": [1.0]}, index=pd.Index([1], name="label"))
    with pytest.raises(cpr_zarr.UnsupportedResultError, match="named 'label' of integers"):
        local_store.save(cpr_zarr.Table(pd.DataFrame({"area": [1.0]}), labels=seg), "m")
    with pytest.raises(cpr_zarr.InvalidArgumentError, match="must be a label image"):
        local_store.save(cpr_zarr.Table(keyed, labels=image), "m")
    mixed = keyed.assign(note=pd.Series(["a"], dtype=object, index=keyed.index))
    mixed.loc[1, "note"] = 3
    with pytest.raises(cpr_zarr.UnsupportedResultError, match=r"parquet .* does not hold"):
        local_store.save(cpr_zarr.Table(mixed, labels=seg), "m")
    # a label column works as well as a label index
    table_target = local_store.save(cpr_zarr.Table(keyed.reset_index(), labels=seg), "m")
    pd.testing.assert_frame_equal(cpr_zarr.read_table(table_target), keyed.reset_index())


def test_tables_parquet_cannot_hold_exactly_keep_the_column_layout(
    local_store: ResultStore,
) -> None:
    """Parquet for every table it holds exactly (read back by pandas); the 0.1 column layout
    for the rest, which round-trips them."""
    plain = local_store.save(measurements(), "m")
    group = local_store.storage.root / plain.group_path  # type: ignore[operator]
    stored = pd.read_parquet(group / "table.parquet")
    pd.testing.assert_frame_equal(stored, measurements(), check_exact=True)
    mixed = pd.DataFrame({"x": pd.Series([1, "a", None], dtype=object)})
    target = local_store.save(mixed, "mixed")
    assert (local_store.storage.root / target.group_path / "c0").is_dir()  # type: ignore[operator]
    pd.testing.assert_frame_equal(cpr_zarr.read_table(target), mixed)
