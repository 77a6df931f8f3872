"""CONTENT_INPUTS: keys from content, never from pickling array data."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import dask.array as da
import numpy as np
import pytest
from prefect.cache_policies import INPUTS, TASK_SOURCE

import cpr_zarr
from cpr_zarr.cache import content_token
from tests.conftest import microscopy_volume

if TYPE_CHECKING:
    from pathlib import Path


class Unpicklable(np.ndarray):
    """An array whose data cannot be pickled: hashing it must not try."""

    def __reduce__(self) -> object:
        raise AssertionError("the cache policy pickled the array")


def key(**inputs: object) -> str | None:
    return cpr_zarr.CONTENT_INPUTS.compute_key(None, inputs, {})  # type: ignore[arg-type]


def test_numpy_inputs_hash_by_content_without_pickling() -> None:
    data = microscopy_volume()
    unpicklable = data.view(Unpicklable)
    assert key(image=unpicklable, sigma=2.0) == key(image=data.copy(), sigma=2.0)
    changed = data.copy()
    changed[3, 4, 5] += 1
    assert key(image=changed, sigma=2.0) != key(image=data, sigma=2.0)
    assert key(image=data, sigma=2.5) != key(image=data, sigma=2.0)
    assert key(image=data.astype(np.int32)) != key(image=data)  # same values, other dtype
    assert key(image=data.reshape(40, 80, 96)) != key(image=data)
    with pytest.raises(ValueError, match="the cache policy pickled the array"):  # Prefect's does
        INPUTS.compute_key(None, {"image": unpicklable}, {})  # type: ignore[arg-type]


def test_targets_hash_by_content_hash(local_store: cpr_zarr.ResultStore) -> None:
    a = local_store.save(microscopy_volume(seed=1), name="a")
    b = local_store.save(microscopy_volume(seed=2), name="b")
    same_as_a = local_store.save(microscopy_volume(seed=1), name="a")
    assert key(x=a) == key(x=same_as_a) != key(x=b)
    assert key(x=[a, 1]) != key(x=(a, 1))


def test_dask_inputs_hash_by_name_without_computing(local_store: cpr_zarr.ResultStore) -> None:
    def explode(block: np.ndarray) -> np.ndarray:
        raise AssertionError("the cache policy computed the graph")

    lazy = da.zeros((10, 10), chunks=5).map_blocks(explode, dtype=float)
    assert key(x=lazy) == key(x=lazy)
    target = local_store.save(microscopy_volume(), name="v")
    assert key(x=target.get_data()) == key(x=local_store.open(target.content_hash).get_data())


def test_path_inputs_change_with_the_file(tmp_path: Path) -> None:
    path = tmp_path / "image.tif"
    path.write_bytes(b"one")
    first = key(path=path)
    assert key(path=path) == first
    path.write_bytes(b"three")
    os.utime(path, ns=(1, 1))
    assert key(path=path) != first


def test_exclude_and_compose() -> None:
    policy = cpr_zarr.CONTENT_INPUTS - "verbose"
    assert policy.compute_key(None, {"x": 1, "verbose": True}, {}) == policy.compute_key(  # type: ignore[arg-type]
        None,
        {"x": 1, "verbose": False},
        {},  # type: ignore[arg-type]
    )
    composed = cpr_zarr.CONTENT_INPUTS + TASK_SOURCE
    # Prefect swaps Inputs subclasses for Inputs() inside compound policies; ours survives
    assert any(isinstance(p, cpr_zarr.ContentInputs) for p in composed.policies)


def test_unhashable_inputs_name_the_parameter_and_the_fix() -> None:
    import threading

    with pytest.raises(
        ValueError, match=r"(?s)cannot hash the task input\(s\) \['lock'\].*CONTENT_INPUTS - 'lock'"
    ):
        key(lock=threading.Lock(), x=1)


def test_key_covers_every_byte_of_a_big_array() -> None:
    data = np.zeros(64 * 2**20, dtype=np.uint8)
    base = key(x=data)
    data[-1] = 1
    assert key(x=data) != base


def test_keys_are_prefects_hash_of_the_same_tokens(tmp_path: Path) -> None:
    """Keys computed without Prefect's serializer are the very keys Prefect's hashing gives
    (records cached by earlier releases stay hits), JSON-native or not."""
    import datetime
    import uuid

    from prefect.utilities.hashing import hash_objects

    (tmp_path / "f.tif").write_bytes(b"x")
    cases = [
        {"x": 1, "y": 2.5, "s": "é", "n": None, "b": True},
        {"nested": {"b": [1, (2, 3)], "a": {"z": 1, "y": float("nan")}}, "i": np.int64(3)},
        {"image": microscopy_volume(), "lazy": da.zeros((4, 4), chunks=2)},
        {"path": tmp_path / "f.tif", "folder": tmp_path, "f": np.float32(0.5)},
        {"when": datetime.date(2026, 12, 1), "id": uuid.UUID(int=7)},  # Prefect's encoder
        {"objects": np.array(["a", "b"], dtype=object)},  # pickled by Prefect
    ]
    for inputs in cases:
        tokens = {k: content_token(v) for k, v in inputs.items()}
        expected = hash_objects({**tokens}, raise_on_failure=True)
        assert key(**inputs) == expected, inputs
