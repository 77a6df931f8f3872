"""ChunkCodec: cpr_zarr's direct chunk writes and reads match zarr's own, chunk for chunk."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, ZstdCodec

from cpr_zarr.core.codec import ChunkCodec, thread_map
from cpr_zarr.model.layout import chunk_grid
from tests.conftest import microscopy_volume


def _keys(store: zarr.storage.MemoryStore) -> set[str]:
    return {k for k in store._store_dict if k != "zarr.json"}


def _pair(
    shape: tuple[int, ...], chunks: tuple[int, ...], dtype: str, compressors: Any
) -> tuple[zarr.Array[Any], zarr.Array[Any]]:
    def make() -> zarr.Array[Any]:
        return zarr.create_array(
            zarr.storage.MemoryStore(),
            shape=shape,
            chunks=chunks,
            dtype=dtype,
            compressors=compressors,
            fill_value=0,
        )

    return make(), make()


def _with_special_chunks(data: np.ndarray) -> np.ndarray:
    """Zero the first chunk row and put -0.0 / NaN chunks in float data (fill-value edge cases)."""
    data = data.copy()
    data[:2] = 0
    if data.dtype.kind == "f":
        data[2:4, :8] = -0.0
        data[2:4, 8:16] = np.nan
    return data


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int32", "float32", "float64", "bool"])
@pytest.mark.parametrize(
    "compressors",
    [BloscCodec(cname="zstd", clevel=1, shuffle="shuffle"), ZstdCodec(level=1), None],
    ids=["blosc", "zstd", "none"],
)
def test_writes_the_same_chunks_as_zarr(dtype: str, compressors: Any) -> None:
    rng = np.random.default_rng(3)
    data = (rng.normal(50, 20, size=(9, 21, 19)) * (1 if dtype != "bool" else 0.01)).astype(dtype)
    data = _with_special_chunks(data)
    ours, theirs = _pair(data.shape, (2, 8, 8), dtype, compressors)
    codec = ChunkCodec(ours)
    assert codec.fast
    grid = list(chunk_grid(data.shape, (2, 8, 8)))
    for index, region in grid:
        codec.write(index, data[region])
    theirs[...] = data

    # the same keys: edge chunks written padded, all-fill chunks skipped (-0.0 and NaN kept)
    assert _keys(ours.store) == _keys(theirs.store)  # type: ignore[arg-type]
    np.testing.assert_array_equal(ours[...], data)  # zarr reads what we wrote
    for index, region in grid:  # and we read what zarr wrote, sign bits included
        block = ChunkCodec(theirs).read(index)
        assert block.flags.writeable
        np.testing.assert_array_equal(
            block.view(np.uint8), np.ascontiguousarray(data[region]).view(np.uint8)
        )


def test_arrays_zarr_cannot_encode_synchronously_fall_back_to_zarr() -> None:
    data = microscopy_volume((8, 32, 32))
    sharded = zarr.create_array(
        zarr.storage.MemoryStore(),
        shape=data.shape,
        chunks=(4, 16, 16),
        shards=(8, 32, 32),
        dtype=data.dtype,
        fill_value=0,
    )
    codec = ChunkCodec(sharded)
    assert not codec.fast
    for index, region in chunk_grid(data.shape, (4, 16, 16)):
        codec.write(index, data[region])
    np.testing.assert_array_equal(sharded[...], data)
    np.testing.assert_array_equal(codec.read((1, 1, 0)), data[4:8, 16:32, 0:16])


def test_thread_map_keeps_order_and_raises_the_first_error() -> None:
    assert list(thread_map(lambda x: x * 2, range(50), 4)) == list(range(0, 100, 2))

    def fail_on_7(x: int) -> int:
        if x == 7:
            raise ValueError("seven")
        return x

    with pytest.raises(ValueError, match="seven"):
        list(thread_map(fail_on_7, range(20), 2))


def test_a_blosc_frame_of_the_wrong_size_is_an_error_not_garbage() -> None:
    from numcodecs import Blosc
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    data = microscopy_volume((8, 32, 32))
    array, _ = _pair(data.shape, (4, 16, 16), "uint16", BloscCodec(cname="zstd", clevel=1))
    codec = ChunkCodec(array)
    for index, region in chunk_grid(data.shape, (4, 16, 16)):
        codec.write(index, data[region])
    np.testing.assert_array_equal(codec.read((1, 1, 1)), data[4:, 16:, 16:])
    # a valid Blosc frame holding half a chunk, where a whole chunk belongs
    half = Blosc(cname="zstd", clevel=1).encode(np.ascontiguousarray(data[:2, :16, :16]))
    buffer = default_buffer_prototype().buffer.from_bytes(half)
    sync(array.store_path.store.set("c/1/1/1", buffer))
    with pytest.raises(ValueError, match=r"chunk \(1, 1, 1\) declares 1024 bytes.*2048"):
        codec.read((1, 1, 1))


@pytest.mark.parametrize(
    "compressors",
    [BloscCodec(cname="zstd", clevel=1, shuffle="shuffle"), ZstdCodec(level=1)],
    ids=["blosc", "zstd"],
)
def test_chunks_through_local_storage_are_zarrs_chunks(tmp_path: Any, compressors: Any) -> None:
    """With a Storage, chunks go through its get/set (plain files here, no event loop): zarr
    reads them back, and no temporary file stays behind."""
    from cpr_zarr.storage._local import LocalStorage

    storage = LocalStorage(tmp_path / "s.zarr")
    data = _with_special_chunks(microscopy_volume((9, 21, 19)))
    array = zarr.create_array(
        storage.zarr_store,
        name="a/0",
        shape=data.shape,
        chunks=(2, 8, 8),
        dtype=data.dtype,
        compressors=compressors,
        fill_value=0,
    )
    codec = ChunkCodec(array, storage)
    grid = list(chunk_grid(data.shape, (2, 8, 8)))
    for index, region in grid:
        codec.write(index, data[region])
    np.testing.assert_array_equal(zarr.open_array(storage.zarr_store, path="a/0")[...], data)
    files = [p for p in (tmp_path / "s.zarr" / "a" / "0" / "c").rglob("*") if p.is_file()]
    assert files
    assert not [p for p in files if "partial" in p.name]
    assert codec.load((0, 0, 0)) is None  # an all-zero chunk is not stored, like zarr
    scratch = np.empty((2, 8, 8), dtype=data.dtype)
    for index, region in grid:
        np.testing.assert_array_equal(codec.read(index), data[region])
        block = codec.load(index, out=scratch)
        if block is not None:  # decoded into the caller's buffer (Blosc) or its own
            np.testing.assert_array_equal(block, data[region])
