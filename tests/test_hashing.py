"""Content hash and layout invariants."""

from __future__ import annotations

from typing import TYPE_CHECKING

import dask
import dask.array as da
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cpr_zarr
from cpr_zarr.model.hashing import chunk_digest, combine_digests
from cpr_zarr.model.layout import (
    chunk_grid,
    default_chunks,
    group_path,
    parse_group_path,
    parse_name,
)

if TYPE_CHECKING:
    import pytest


def store_hash(data: np.ndarray, chunks: tuple[int, ...]) -> str:
    digests = [chunk_digest(data[s]) for _, s in chunk_grid(data.shape, chunks)]
    return combine_digests(data.shape, data.dtype, chunks, digests)


shapes = st.lists(st.integers(1, 12), min_size=1, max_size=4).map(tuple)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(shape=shapes, data=st.data())
def test_dask_chunking_and_scheduler_do_not_change_the_hash(
    shape: tuple[int, ...], data: st.DataObject, tmp_path_factory: pytest.TempPathFactory
) -> None:
    store_chunks = tuple(data.draw(st.integers(1, s)) for s in shape)
    dask_chunks = tuple(data.draw(st.integers(1, s)) for s in shape)
    values = np.arange(int(np.prod(shape)), dtype=np.int32).reshape(shape) * 7 % 13
    store = cpr_zarr.ResultStore(tmp_path_factory.mktemp("h") / "s.zarr")
    expected = store_hash(values, store_chunks)
    assert store.save(values, name="n", chunks=store_chunks).content_hash == expected
    scheduler = data.draw(st.sampled_from(["threads", "sync"]))
    with dask.config.set(scheduler=scheduler):
        streamed = store.save(
            da.from_array(values, chunks=dask_chunks), name="d", chunks=store_chunks
        )
    assert streamed.content_hash == expected


def test_shape_dtype_and_chunks_are_part_of_the_hash() -> None:
    data = np.arange(24, dtype=np.uint8)
    base = store_hash(data, (24,))
    assert store_hash(data.reshape(4, 6), (4, 6)) != base  # same bytes, other shape
    assert store_hash(data.view(np.int8), (24,)) != base  # same bytes, other dtype
    assert store_hash(data, (12,)) != base  # same values, other chunking
    assert store_hash(data.copy(), (24,)) == base


def test_digest_ignores_memory_layout_and_byte_order() -> None:
    data = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
    assert chunk_digest(data) == chunk_digest(np.asfortranarray(data))
    assert chunk_digest(data) == chunk_digest(data.astype(">f4"))
    assert chunk_digest(data[:, :2]) == chunk_digest(data[:, :2].copy())


def test_default_chunks_aim_at_a_few_mib() -> None:
    u16 = np.dtype("uint16")
    assert default_chunks((1000, 2048, 2048), u16) == (64, 256, 256)
    assert default_chunks((60, 256, 256), u16) == (60, 256, 256)
    assert default_chunks((60, 256, 256), np.dtype("float64")) == (16, 256, 256)
    assert default_chunks((10, 3, 500, 2048, 2048), u16) == (1, 1, 64, 256, 256)
    assert default_chunks((8192, 8192), u16) == (4096, 1024)
    assert default_chunks((10**8,), np.dtype("float32")) == (2**21,)
    for shape in [(7,), (5, 3), (1, 1, 1), (3, 0, 4)]:
        chunks = default_chunks(shape, u16)
        assert all(c >= 1 for c in chunks)


@given(name=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,30}", fullmatch=True))
def test_group_paths_round_trip(name: str) -> None:
    content_hash = "0123456789abcdef" * 2
    path = group_path(name, content_hash)
    assert parse_group_path(path) == (parse_name(name), content_hash)
