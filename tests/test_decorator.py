"""cpr_zarr.task and plain Prefect tasks returning targets, in real flows."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from typing import TYPE_CHECKING

import dask.array as da
import numpy as np
import pandas as pd
import prefect
import pytest
from prefect import flow

import cpr_zarr
from tests.conftest import microscopy_volume, task_run_states

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.usefixtures("prefect_server")


def test_arrays_in_containers_become_pointers_and_inputs_arrive_lazy_or_numpy(
    tmp_path: Path, result_storage: Path
) -> None:
    store_url = str(tmp_path / "results.zarr")
    seen: dict[str, type] = {}

    @cpr_zarr.task(store=store_url, result_storage=result_storage)
    def produce() -> tuple[np.ndarray, dict[str, object], list[object]]:
        image = microscopy_volume()
        return image, {"mask": image > 200, "count": np.int64(3), "label": "x"}, [image + 1, 2.5]

    @cpr_zarr.task(store=store_url, result_storage=result_storage)
    def consume(image, mask: np.ndarray, others: list) -> float:  # type: ignore[type-arg]
        seen["image"], seen["mask"], seen["other"] = type(image), type(mask), type(others[0])
        return float((others[0][mask].astype(float) - image[mask]).mean().compute())

    @flow
    def pipeline() -> tuple[object, float]:
        out = produce()
        image, extra, others = out
        return out, consume(image, extra["mask"], others)

    out, value = pipeline()
    image, extra, others = out
    assert isinstance(out, tuple)
    assert isinstance(image, cpr_zarr.ZarrTarget)
    assert isinstance(extra["mask"], cpr_zarr.ZarrTarget)
    assert extra["count"] == 3
    assert type(extra["count"]) is int
    assert extra["label"] == "x"
    assert isinstance(others[0], cpr_zarr.ZarrTarget)
    assert others[1] == 2.5
    assert image.group_path.startswith("produce.0-")
    assert extra["mask"].group_path.startswith("produce.1.mask-")
    assert others[0].group_path.startswith("produce.2.0-")
    # unannotated parameters get lazy, verified Dask arrays (a da.Array subclass)
    assert issubclass(seen["image"], da.Array)
    assert issubclass(seen["other"], da.Array)
    assert seen["mask"] is np.ndarray
    assert value == 1.0
    np.testing.assert_array_equal(image.to_numpy(), microscopy_volume())

    # a cached run returns exactly what the first returned (tuples stay tuples)
    state = pipeline(return_state=True)
    assert state.result() == (out, value)
    assert task_run_states(state.state_details.flow_run_id) == {
        "produce": ["Cached"],
        "consume": ["Cached"],
    }


def test_record_holds_only_the_pointer_and_loads_in_a_fresh_process(
    tmp_path: Path, result_storage: Path
) -> None:
    store_url = str(tmp_path / "results.zarr")

    @cpr_zarr.task(store=store_url, result_storage=result_storage)
    def big() -> np.ndarray:
        return np.arange(4 * 2**20, dtype=np.float64).reshape(64, 256, 256)  # 32 MiB

    @flow
    def f() -> cpr_zarr.ZarrTarget:
        return big()

    target = f()
    (record_file,) = result_storage.iterdir()
    assert record_file.stat().st_size < 2048
    record = json.loads(record_file.read_text())
    assert json.loads(record["result"])["__cpr_zarr_target__"] == target.to_dict()
    # the loading process imports nothing of cpr_zarr itself: Prefect finds it by dotted path
    code = (
        "import sys; from prefect.results import ResultRecord;"
        f"r = ResultRecord.deserialize(open({str(record_file)!r}, 'rb').read());"
        "assert 'cpr_zarr' in sys.modules;"
        "print(r.result.group_path, r.result.to_numpy()[3, 2, 1])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == [target.group_path, str(float(3 * 65536 + 2 * 256 + 1))]


def test_plain_prefect_task_returning_a_target_caches_by_content(
    tmp_path: Path, result_storage: Path
) -> None:
    store = cpr_zarr.ResultStore(tmp_path / "results.zarr")
    calls: list[str] = []

    @prefect.task(
        cache_policy=cpr_zarr.CONTENT_INPUTS + prefect.cache_policies.TASK_SOURCE,
        persist_result=True,
        result_storage=result_storage,
    )
    def smooth(image: cpr_zarr.ZarrTarget) -> cpr_zarr.ZarrTarget:
        calls.append(image.content_hash)
        data = image.get_data()
        return store.save((data // 2).astype(np.uint16), name="smooth")

    @flow
    def f(t: cpr_zarr.ZarrTarget) -> cpr_zarr.ZarrTarget:
        return smooth(t)

    raw = store.save(microscopy_volume(), name="raw")
    first = f(raw)
    second = f(store.open(raw.content_hash))
    assert first == second
    assert calls == [raw.content_hash]  # the second run was a cache hit
    np.testing.assert_array_equal(first.to_numpy(), microscopy_volume() // 2)


def test_non_array_return_fails_with_a_clear_error(tmp_path: Path, result_storage: Path) -> None:
    @cpr_zarr.task(store=str(tmp_path / "results.zarr"), result_storage=result_storage)
    def bad() -> object:
        return {"ok": np.zeros(3), "handle": object()}

    @flow
    def f() -> object:
        return bad()

    with pytest.raises(
        cpr_zarr.UnsupportedResultError,
        match=r"The return value of .*bad\['handle'\] is a builtins.object",
    ):
        f()
    # nothing of the return value was stored (the array next to the bad part included)
    assert list(cpr_zarr.ResultStore(tmp_path / "results.zarr").targets()) == []


def test_removed_result_is_a_logged_cache_miss_and_recomputes(
    tmp_path: Path, result_storage: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store_url = str(tmp_path / "results.zarr")
    calls = []

    @cpr_zarr.task(store=store_url, result_storage=result_storage)
    def make(seed: int) -> np.ndarray:
        calls.append(seed)
        return microscopy_volume(seed=seed)

    @flow
    def f() -> cpr_zarr.ZarrTarget:
        return make(1)

    target = f()
    cpr_zarr.ResultStore(store_url).delete(target)
    with caplog.at_level(logging.WARNING, logger="cpr_zarr"):
        again = f()
    assert again == target
    assert calls == [1, 1]
    assert "cannot be loaded" in caplog.text
    assert target.group_path in caplog.text
    np.testing.assert_array_equal(again.to_numpy(), microscopy_volume(seed=1))


def test_decorator_keeps_prefect_options_and_rejects_generators(tmp_path: Path) -> None:
    @cpr_zarr.task(store=str(tmp_path / "r.zarr"), name="renamed", retries=2)
    def f(x: int) -> int:
        return x

    assert isinstance(f, prefect.Task)
    assert f.name == "renamed"
    assert f.retries == 2
    assert "CompoundCachePolicy" in type(f.cache_policy).__name__

    with pytest.raises(TypeError, match="does not support generator functions"):

        @cpr_zarr.task(store=str(tmp_path / "r.zarr"))
        def g():  # type: ignore[no-untyped-def]
            yield np.zeros(3)


def test_any_task_name_gives_a_valid_result_name(tmp_path: Path) -> None:
    # a private helper, characters a result name cannot hold, and a name over 100 characters
    store = str(tmp_path / "r.zarr")

    @cpr_zarr.task(store=store)
    def _helper(x: int) -> np.ndarray:
        return np.full(3, x)

    @cpr_zarr.task(store=store, name="__Kernzählung / " + "x" * 150)
    def odd(image: np.ndarray) -> np.ndarray:
        return image + 1

    @flow
    def pipeline() -> list[cpr_zarr.ZarrTarget]:
        first = _helper(1)
        return [first, odd(first), odd(np.zeros(2))]

    helper, counted, from_input = pipeline()
    assert helper.name == "helper"
    assert counted.name.startswith("Kernz_hlung___xxx")
    assert len(counted.name) == 100
    assert from_input.name == counted.name
    assert len(list(cpr_zarr.ResultStore(store).targets())) == 3
    np.testing.assert_array_equal(counted.to_numpy(), [2, 2, 2])


def test_pil_images_are_stored_as_arrays_and_come_back_as_pil(
    tmp_path: Path, result_storage: Path
) -> None:
    from PIL import Image

    rgb = np.random.default_rng(0).integers(0, 255, size=(40, 60, 3), dtype=np.uint8)

    @cpr_zarr.task(store=str(tmp_path / "results.zarr"), result_storage=result_storage)
    def make() -> tuple[Image.Image, Image.Image]:
        return Image.fromarray(rgb, mode="RGB"), Image.fromarray(rgb[..., 0], mode="L")

    @cpr_zarr.task(store=str(tmp_path / "results.zarr"), result_storage=result_storage)
    def size(images: tuple) -> list:  # type: ignore[type-arg]
        return [[im.mode, list(im.size), int(np.asarray(im).sum())] for im in images]

    @flow
    def f() -> tuple[object, object]:
        images = make()
        return images, size(images)

    (color, gray), described = f()
    assert isinstance(color, cpr_zarr.target.PILTarget)
    assert color.shape == (3, 40, 60)  # channels first in the store
    assert described == [["RGB", [60, 40], int(rgb.sum())], ["L", [60, 40], int(rgb[..., 0].sum())]]
    np.testing.assert_array_equal(np.asarray(color.to_pil()), rgb)
    ome = color.store.storage.get_json(f"{color.group_path}/zarr.json")["attributes"]["ome"]
    assert [a["type"] for a in ome["multiscales"][0]["axes"]] == ["channel", "space", "space"]
    assert f()[0] == (color, gray)  # cached: the same pointers, still PIL targets


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (np.array(["a", "b"]), "dtype"),
        (np.zeros((1,) * 6), "6-D"),
        (np.array(1.5), "0-D"),
    ],
)
def test_bad_arrays_in_a_return_value_store_nothing(
    tmp_path: Path, result_storage: Path, value: np.ndarray, match: str
) -> None:
    @cpr_zarr.task(store=str(tmp_path / "results.zarr"), result_storage=result_storage)
    def bad() -> object:
        return np.ones(4), value  # the good array comes first: it must not be saved either

    @flow
    def f() -> object:
        return bad()

    with pytest.raises(cpr_zarr.UnsupportedResultError, match=match):
        f()
    assert list(cpr_zarr.ResultStore(tmp_path / "results.zarr").targets()) == []


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(np.ma.masked_array(np.arange(4), mask=[0, 1, 0, 0]), id="masked-array"),
        pytest.param(pd.DataFrame({"x": [b"bytes", b"are refused"]}, dtype=object), id="table"),
    ],
)
def test_a_bad_part_of_a_return_value_stores_no_part(
    tmp_path: Path, result_storage: Path, bad: object
) -> None:
    store_url = tmp_path / "results.zarr"

    @cpr_zarr.task(store=store_url, result_storage=result_storage)
    def two_outputs() -> tuple[np.ndarray, object]:
        return microscopy_volume((4, 16, 16)), bad

    @flow
    def pipeline() -> object:
        return two_outputs()

    with pytest.raises(cpr_zarr.UnsupportedResultError):
        pipeline()
    assert not store_url.exists() or list(cpr_zarr.ResultStore(store_url).targets()) == []
