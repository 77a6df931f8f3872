"""Pyramid levels are made in the same pass as the base level, with the values and digests
that downsampling the whole array level by level gives, whatever the chunk grid."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import dask.array as da
import numpy as np
import pytest

import cpr_zarr
from cpr_zarr.core import pyramid
from cpr_zarr.model.hashing import block_digest, chunk_digest, digest_tree
from cpr_zarr.model.layout import chunk_grid
from tests.conftest import microscopy_volume

if TYPE_CHECKING:
    from pathlib import Path


def expected_levels(
    image: np.ndarray, steps: list[tuple[int, ...]], method: str
) -> list[np.ndarray]:
    """Each level downsampled from the whole level below (what a read-back pass computes)."""
    levels, current = [], image
    for step in steps:
        current = pyramid.downsample(current, step, method)
        levels.append(current)
    return levels


def digests_of(values: np.ndarray, chunks: tuple[int, ...]) -> tuple[str, ...]:
    return tuple(
        chunk_digest(np.ascontiguousarray(values[region]))
        for _, region in chunk_grid(values.shape, chunks)
    )


def digest_root_of(values: np.ndarray, chunks: tuple[int, ...]) -> str:
    """The root of the digest tree over the chunk digests of ``values`` (layout 2)."""
    leaves = b"".join(bytes.fromhex(d) for d in digests_of(values, chunks))
    return block_digest(digest_tree(leaves)[-1][0]).hex()


def sample(dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    image = microscopy_volume(shape, seed=5)
    if dtype == "bool":
        return image > np.median(image)
    if dtype == "float32":
        return image.astype(np.float32) / 7
    return image.astype(dtype)


@pytest.mark.parametrize("kind", ["numpy", "dask"])
@pytest.mark.parametrize(
    ("shape", "chunks", "scale", "dtype"),
    [
        ((8, 64, 48), (4, 16, 16), None, "uint16"),  # aligned: level chunks tile 2x2x2 sources
        ((9, 61, 47), (3, 15, 16), None, "uint16"),  # odd chunks: boxes straddle chunks
        ((7, 50, 41), (7, 13, 9), (2.0, 1.0, 1.0), "float32"),  # anisotropic, odd, floats
        ((5, 40, 37), (2, 8, 10), (1.0, 0.5, 0.5), "int64"),  # exact 64-bit means
        ((6, 33, 34), (5, 11, 16), None, "bool"),  # nearest sampling, straddling
    ],
)
def test_levels_made_in_pass_equal_the_whole_array_downsampled(
    store: cpr_zarr.ResultStore,
    kind: str,
    shape: tuple[int, ...],
    chunks: tuple[int, ...],
    scale: Any,
    dtype: str,
) -> None:
    image = sample(dtype, shape)
    data = da.from_array(image, chunks=(3, 20, 17)) if kind == "dask" else image
    target = store.save(cpr_zarr.Image(data, scale=scale, levels=4), "img", chunks=chunks)
    records = store.reader(target).record.levels
    assert len(records) == 3
    method = "nearest" if dtype == "bool" else "mean"
    wanted = expected_levels(image, [r.step for r in records], method)
    for number, (record, values) in enumerate(zip(records, wanted, strict=True), start=1):
        assert record.shape == values.shape
        assert record.chunks == tuple(
            max(1, min(c, s)) for c, s in zip(chunks, values.shape, strict=True)
        )
        # the digests (hence the record, hence a cached result's identity) are what they
        # were when levels were downsampled from the whole stored level below
        assert record.digest_root == digest_root_of(values, record.chunks)
        np.testing.assert_array_equal(cpr_zarr.read_level(target, number).compute(), values)


@pytest.mark.parametrize("kind", ["numpy", "dask"])
def test_a_save_with_levels_reads_no_chunk_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """No level is made by reading a stored level (the base or level 1) back."""
    from tests.counting_fs import LOG_ENV

    log = tmp_path / "reads.log"
    monkeypatch.setenv(LOG_ENV, str(log))
    store = cpr_zarr.ResultStore(f"countfile://{tmp_path}/results.zarr")
    image = microscopy_volume((16, 96, 80))
    data = da.from_array(image, chunks=(8, 32, 40)) if kind == "dask" else image
    target = store.save(cpr_zarr.Image(data, levels=3), "img", chunks=(4, 32, 20))
    assert cpr_zarr.read_level(target, 2).shape == (4, 24, 20)
    reads = log.read_text().splitlines() if log.exists() else []
    assert [line for line in reads if "/c/" in line] == []


def test_level_builder_keeps_few_level_chunks_open() -> None:
    """Base chunks are visited so that each level chunk's sources come together: a level
    chunk is finished (and released) before the next one is started."""
    shape, chunks = (32, 128, 128), (4, 16, 16)
    plans = pyramid.plan_pyramid(shape, chunks, [(2, 2, 2), (2, 2, 2), (2, 2, 2)], "mean")

    class Open(pyramid.LevelBuilder):
        peak = 0

        def add(self, source: tuple[int, ...], block: np.ndarray, level: int = 0) -> None:
            super().add(source, block, level)
            Open.peak = max(Open.peak, sum(len(p) for p in self._pending))

    class Sink:
        def write(self, index: tuple[int, ...], block: np.ndarray) -> None:
            pass

    builder = Open(plans, [Sink()] * 3, ["1", "2", "3"])  # type: ignore[list-item]
    image = microscopy_volume(shape)
    for index in builder.order([i for i, _ in chunk_grid(shape, chunks)]):
        region = tuple(slice(i * c, (i + 1) * c) for i, c in zip(index, chunks, strict=True))
        builder.add(index, image[region])
    assert [len(r.chunk_digests) for r in builder.records()] == [64, 8, 1]
    assert Open.peak <= 3  # one open chunk per level (C order would hold 16 of level 1)


def test_a_dask_save_moves_its_levels_past_another_writers_levels(
    store: cpr_zarr.ResultStore,
) -> None:
    """Levels staged by a Dask save go to a free path, or complete the same level (same
    steps) in its codecs; a level of another plan is never touched."""
    import zarr
    from zarr.codecs import ZstdCodec

    from cpr_zarr.core.codec import ChunkCodec

    image = microscopy_volume((8, 40, 40))
    chunks = (4, 16, 16)
    probe = store.save(image, "img", chunks=chunks, levels=1)
    path = probe.group_path
    store.delete(probe)
    # another writer of this content, not committed: level 1 of another plan (y, x halved)
    # at "1", and level 2 of our plan, in other codecs, half written, at "2"
    (theirs,) = pyramid.plan_pyramid(image.shape, chunks, [(1, 2, 2)], "mean")
    _, array = pyramid.claim_level(
        store.storage, path, theirs, [(1, 2, 2)], image.dtype, None, ["z", "y", "x"]
    )
    other = pyramid.downsample(image, (1, 2, 2), "mean")
    ChunkCodec(array).write((0, 0, 0), other[:4, :16, :16])
    ours = pyramid.plan_pyramid(image.shape, chunks, [(2, 2, 2), (2, 2, 2)], "mean")
    _, second = pyramid.claim_level(
        store.storage, path, ours[1], [p.step for p in ours], image.dtype, ZstdCodec(level=3),
        ["z", "y", "x"],
    )  # fmt: skip
    wanted = expected_levels(image, [(2, 2, 2), (2, 2, 2)], "mean")
    ChunkCodec(second).write((0, 0, 0), wanted[1])

    target = store.save(
        cpr_zarr.Image(da.from_array(image, chunks=(4, 20, 20)), levels=3), "img", chunks=chunks
    )
    records = store.reader(target).record.levels
    assert [r.path for r in records] == ["1-2x2x2", "2"]
    for number, values in enumerate(wanted, start=1):
        np.testing.assert_array_equal(cpr_zarr.read_level(target, number).compute(), values)
    level2 = zarr.open_array(store.storage.zarr_store, path=f"{path}/2", mode="r")
    assert isinstance(level2.compressors[0], ZstdCodec)  # completed in its own codecs
    mine = zarr.open_array(store.storage.zarr_store, path=f"{path}/1", mode="r")
    np.testing.assert_array_equal(mine[:4, :16, :16], other[:4, :16, :16])  # untouched
    assert [k for k in store.storage.list_dir("") if k.startswith("_staging")] == []
