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
    with pytest.raises(cpr_zarr.ChunkVerificationError, match="column 'area' .array 'c0/values'"):
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
    def measure(labels: np.ndarray, image: np.ndarray) -> pd.DataFrame:
        index = np.arange(1, int(labels.max()) + 1)
        return pd.DataFrame(
            {
                "voxels": ndi.sum_labels(np.ones_like(labels), labels, index).astype(np.int64),
                "mean_intensity": ndi.mean(image, labels, index),
            },
            index=pd.Index(index, name="label"),
        )

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
    df = cpr_zarr.read_table(measured)
    assert out["n"] == len(df) == int(labels.to_numpy().max()) > 0
    assert df.index.name == "label"
    assert df["voxels"].dtype == np.int64
