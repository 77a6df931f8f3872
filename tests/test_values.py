"""Values never silently change: exact integer pyramids, masked arrays, object table columns,
zero-size arrays, and readers that outlive a re-save of their result by another process."""

from __future__ import annotations

import itertools
import subprocess
import sys
import textwrap
import threading
from fractions import Fraction
from pathlib import Path

import dask.array as da
import numpy as np
import pandas as pd
import pytest
import zarr

import cpr_zarr
from cpr_zarr.core import pyramid
from cpr_zarr.core.export import to_ngff_v04, to_ome_tiff
from tests.conftest import microscopy_volume, store_files

ROOT = Path(__file__).parents[1]

# -- integer pyramids ----------------------------------------------------------------------


def exact_means(block: np.ndarray, step: tuple[int, ...]) -> np.ndarray:
    """Box means with Python integers (edge-padded), rounded half to even: the reference."""
    pad = [(0, (-s) % f) for s, f in zip(block.shape, step, strict=True)]
    padded = np.pad(block, pad, mode="edge")
    shape = tuple(s // f for s, f in zip(padded.shape, step, strict=True))
    out = np.empty(shape, dtype=block.dtype)
    for index in itertools.product(*(range(n) for n in shape)):
        box = padded[tuple(slice(i * f, (i + 1) * f) for i, f in zip(index, step, strict=True))]
        values = [int(v) for v in box.ravel()]
        out[index] = round(Fraction(sum(values), len(values)))  # round(): half to even
    return out


INT_DTYPES = ["int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64"]


@pytest.mark.parametrize("dtype", INT_DTYPES)
def test_integer_means_are_exact_at_the_limits_of_every_integer_dtype(dtype: str) -> None:
    info = np.iinfo(dtype)
    rng = np.random.default_rng(7)
    extremes = np.array(
        [info.min, info.min + 1, -1 if info.min else 1, 0, info.max - 1, info.max], dtype=dtype
    )
    for trial in range(12):
        shape = tuple(int(s) for s in rng.integers(1, 6, size=3))
        if trial % 2:
            block = rng.choice(extremes, size=shape)
        else:
            block = rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
        for step in [(2, 2, 2), (1, 2, 2), (2, 1, 1)]:
            got = pyramid.downsample(block, step, "mean")
            assert got.dtype == block.dtype
            np.testing.assert_array_equal(got, exact_means(block, step))
    # ties round half to even: mean of 2**63 - 2 and 2**63 - 1 is ...1.5 -> ...2 (even)
    if dtype in ("int64", "uint64"):
        top = np.array([[info.max - 1, info.max]], dtype=dtype)
        assert pyramid.downsample(top, (1, 2), "mean")[0, 0] == info.max - 1 + (info.max % 2 == 0)


def test_uint64_and_int64_pyramid_levels_keep_their_values(store: cpr_zarr.ResultStore) -> None:
    top = np.full((8, 8), 2**64 - 1, dtype=np.uint64)
    target = store.save(cpr_zarr.Image(top, levels=3), "u64")
    for level in (1, 2):
        assert (cpr_zarr.read_level(target, level).compute() == 2**64 - 1).all()
    signed = np.full((8, 8), -(2**63), dtype=np.int64)
    signed[::2] = 2**63 - 1
    target = store.save(cpr_zarr.Image(signed, levels=2), "i64")
    level1 = cpr_zarr.read_level(target, 1).compute()
    np.testing.assert_array_equal(level1, exact_means(signed, (2, 2)))
    assert (level1 == 0).all()  # (2 * (2**63 - 1) - 2 * 2**63) / 4 = -0.5: half to even, 0


# -- masked arrays -------------------------------------------------------------------------


def test_masked_arrays_are_refused_before_anything_is_written(
    local_store: cpr_zarr.ResultStore,
) -> None:
    local_store.save(np.arange(6), "keep")
    before = store_files(local_store)
    masked = np.ma.masked_array(np.arange(12.0).reshape(3, 4), mask=np.eye(3, 4, dtype=bool))
    pattern = r"masked array \(numpy.ma\).*3 of 12 values are masked.*numpy.ma.filled"
    with pytest.raises(cpr_zarr.UnsupportedResultError, match=pattern):
        local_store.save(masked, "m")
    with pytest.raises(cpr_zarr.UnsupportedResultError, match=pattern):
        local_store.save(cpr_zarr.Image(masked), "m")
    lazy = da.ma.masked_greater(da.arange(10, chunks=5), 5)
    with pytest.raises(cpr_zarr.UnsupportedResultError, match=r"masked Dask array"):
        local_store.save(lazy, "m")
    assert store_files(local_store) == before
    # a masked array that masks nothing loses nothing: stored as its values
    plain = local_store.save(np.ma.masked_array(np.arange(6)), "unmasked")
    np.testing.assert_array_equal(plain.to_numpy(), np.arange(6))


# -- object and nullable table columns -----------------------------------------------------


def object_table() -> pd.DataFrame:
    columns = {
        "strings_none": ["x", None, "y", None, "z"],
        "strings_all_missing_kinds": ["a", np.nan, pd.NA, None, pd.NaT],
        "floats_nan_na": [1.5, np.nan, pd.NA, None, -0.0],
        "mixed": [1, 2.5, True, "t", None],
        "numpy_scalars": [np.float32(1.5), np.int64(3), np.bool_(True), np.float64("nan"), 0],
        "big_ints": [2**70, np.uint64(2**64 - 1), -(2**65), np.uint8(7), np.int8(-3)],
        "only_missing": [None, np.nan, pd.NA, None, None],
        "plain_strings": ["a", "b", "c", "d", "e"],
    }
    df = pd.DataFrame({k: pd.Series(v, dtype=object) for k, v in columns.items()})
    df["nullable_float"] = pd.arrays.FloatingArray(
        np.array([1.0, np.nan, 0.0, 2.0, np.nan]), np.array([False, False, True, False, True])
    )
    df["nullable_int"] = pd.array([1, None, 3, None, 5], dtype="Int64")
    df["str_nan"] = pd.Series(["a", None, np.nan, "d", "e"], dtype="str")  # missing is NaN
    df["string_na"] = pd.Series(["a", None, pd.NA, "d", "e"], dtype="string")  # missing is NA
    df.index = pd.Index(["r", None, np.nan, pd.NA, "s"], dtype=object)
    return df


def same_object(a: object, b: object) -> bool:
    if type(a) is not type(b):
        return False
    if a is None or a is pd.NA or a is pd.NaT:
        return a is b
    if isinstance(a, (float, np.floating)) and np.isnan(a):
        return bool(np.isnan(b))  # type: ignore[arg-type]
    return bool(a == b) and (not isinstance(a, float) or np.signbit(a) == np.signbit(b))  # type: ignore[arg-type]


def test_object_columns_keep_none_nan_na_and_every_type(store: cpr_zarr.ResultStore) -> None:
    df = object_table()
    target = store.save(df, "objects")
    back = cpr_zarr.read_table(store.open(target.content_hash))
    pd.testing.assert_frame_equal(back, df, check_exact=True)
    for column in df.columns:
        assert back[column].dtype == df[column].dtype
        if df[column].dtype == object:
            for row, (a, b) in enumerate(zip(df[column], back[column], strict=True)):
                assert same_object(a, b), (column, row, a, b)
    for a, b in zip(df.index, back.index, strict=True):
        assert same_object(a, b), (a, b)
    # NaN vs NA in a nullable float column: the value array and the mask both survive
    floats = back["nullable_float"].array
    assert [bool(m) for m in floats._mask] == [False, False, True, False, True]
    assert np.isnan(floats._data[1])
    # what a value was is part of the content: None and NaN give different tables
    other = df.copy()
    other.loc["r", "strings_none"] = np.nan
    other.loc["r", "strings_none"] = "x"
    other.iloc[1, 0] = np.nan
    assert store.save(other, "objects").content_hash != target.content_hash


def test_object_column_values_that_cannot_be_stored_are_refused(
    local_store: cpr_zarr.ResultStore,
) -> None:
    import decimal

    before = store_files(local_store)
    df = pd.DataFrame({"price": pd.Series([1, decimal.Decimal("1.10")], dtype=object)})
    with pytest.raises(
        cpr_zarr.UnsupportedResultError,
        match=r"column 'price' of dtype object: row 1 holds Decimal\('1.10'\).*astype\(str\)",
    ):
        local_store.save(df, "t")
    assert store_files(local_store) == before


# -- zero-size arrays ----------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(0,), (0, 5), (3, 0, 4), (2, 3, 0), (0, 0)])
def test_zero_size_arrays_read_through_every_path(
    local_store: cpr_zarr.ResultStore, tmp_path: Path, shape: tuple[int, ...]
) -> None:
    from click.testing import CliRunner

    from cpr_zarr.cli import main

    empty = np.zeros(shape, dtype=np.uint16)
    target = local_store.save(empty, "empty")
    assert local_store.save(da.zeros(shape, dtype=np.uint16, chunks=2), "empty") == target
    for verify in (True, False):
        got = target.get_data(verify=verify)
        assert got.shape == shape
        assert got.dtype == np.uint16
        assert got.compute().shape == shape
        assert target.to_numpy(verify=verify).shape == shape
    assert cpr_zarr.read_level(target, 0).compute().shape == shape
    result = CliRunner().invoke(main, ["verify", local_store.url, target.group_path])
    assert result.exit_code == 0, result.output
    assert "OK: 0 chunks of 1 result verified" in result.output
    if len(shape) >= 2:
        exported = to_ngff_v04(target, tmp_path / "out.zarr")
        group = zarr.open_group(str(exported), mode="r")
        base = group.attrs["multiscales"][0]["datasets"][0]["path"]  # type: ignore[index]
        assert group[base].shape == shape
        with pytest.raises(cpr_zarr.UnsupportedResultError, match="a TIFF page cannot be empty"):
            to_ome_tiff(target, tmp_path / "out.tif")
        assert not (tmp_path / "out.tif").exists()


def test_zero_size_image_with_pyramid(local_store: cpr_zarr.ResultStore) -> None:
    target = local_store.save(cpr_zarr.Image(np.zeros((3, 0, 1030), np.uint8), axes="cyx"), "empty")
    assert pyramid.level_count(target) == 3  # x halved until at most 512: 1030, 515, 258
    assert cpr_zarr.read_level(target, 1).compute().shape == (3, 0, 515)
    assert cpr_zarr.read_level(target, 2).compute().shape == (3, 0, 258)


# -- a long-lived reader and a re-save by another process ----------------------------------

RESAVE = """
import sys
import numpy as np
import zarr
import cpr_zarr
from tests.conftest import microscopy_volume

store = cpr_zarr.ResultStore(sys.argv[1])
store.delete(sys.argv[2])
codec = zarr.codecs.GzipCodec(level=6) if sys.argv[3] == "gzip" else None
image = microscopy_volume((8, 40, 40))
store.save(
    image, "img", chunks=(4, 16, 16), compressor=codec, scale=(float(sys.argv[4]), 1, 1), levels=2
)
"""


def resave_elsewhere(store: cpr_zarr.ResultStore, ref: str, codec: str, z_scale: float) -> None:
    """Delete and save the same content again from another process."""
    subprocess.run(
        [sys.executable, "-c", textwrap.dedent(RESAVE), store.url, ref, codec, str(z_scale)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=120,
    )


def test_a_cached_reader_rechecks_after_another_process_resaves(
    local_store: cpr_zarr.ResultStore,
) -> None:
    image = microscopy_volume((8, 40, 40))
    target = local_store.save(image, "img", chunks=(4, 16, 16), levels=2)
    level1 = pyramid.downsample(image, (2, 2, 2), "mean")
    lazy = target.get_data()  # a graph built before the re-save, holding the cached reader
    np.testing.assert_array_equal(target.to_numpy(), image)
    np.testing.assert_array_equal(cpr_zarr.read_level(target, 1).compute(), level1)
    lazy_level = cpr_zarr.read_level(target, 1)

    # same content, another compressor and a z-anisotropic pyramid (level 1 halves y, x only)
    resave_elsewhere(local_store, target.group_path, "gzip", 4.0)
    doc = zarr.open_array(local_store.storage.zarr_store, path=f"{target.group_path}/0", mode="r")
    assert "gzip" in str(doc.compressors).lower()

    np.testing.assert_array_equal(target.to_numpy(), image)
    np.testing.assert_array_equal(lazy.compute(), image)
    np.testing.assert_array_equal(
        cpr_zarr.read_level(target, 1).compute(), pyramid.downsample(image, (1, 2, 2), "mean")
    )
    # a graph of the old level 1 (other shape): told to re-open, not "damaged"
    with pytest.raises(cpr_zarr.ResultNotFoundError, match="re-saved it with another pyramid"):
        lazy_level.compute()

    # and back to the default codec: still no false corruption
    resave_elsewhere(local_store, target.group_path, "default", 1.0)
    np.testing.assert_array_equal(target.get_data().compute(), image)
    np.testing.assert_array_equal(cpr_zarr.read_level(target, 1).compute(), level1)

    # real damage is still damage: the re-check finds nothing re-saved and reports the chunk
    chunks = Path(local_store.url) / target.group_path / "0" / "c"
    (chunks / "1" / "1" / "1").write_bytes((chunks / "0" / "0" / "0").read_bytes())
    with pytest.raises(cpr_zarr.ChunkVerificationError, match=r"chunk \(1, 1, 1\).*hash to"):
        target.to_numpy()


# -- concurrent saves of one content with different pyramid plans --------------------------


def test_concurrent_saves_with_different_pyramid_plans_all_succeed(tmp_path: Path) -> None:
    image = microscopy_volume((8, 48, 48))
    plans = [
        {"scale": (1.0, 1.0, 1.0), "levels": 3},  # (2, 2, 2) then (2, 2, 2)
        {"scale": (4.0, 1.0, 1.0), "levels": 3},  # (1, 2, 2) then (1, 2, 2)
        {"scale": (2.0, 1.0, 1.0), "levels": 3},  # (1, 2, 2) then (2, 2, 2)
        {"scale": (1.0, 1.0, 1.0), "levels": 2},  # a prefix of the first plan
    ]
    for round_ in range(6):
        store = cpr_zarr.ResultStore(tmp_path / f"round{round_}.zarr")
        barrier = threading.Barrier(len(plans) * 2)
        results: list[object] = [None] * (len(plans) * 2)

        def save(
            i: int,
            store: cpr_zarr.ResultStore = store,
            barrier: threading.Barrier = barrier,
            results: list[object] = results,
        ) -> None:
            barrier.wait()
            try:
                results[i] = store.save(image, "img", chunks=(4, 16, 16), **plans[i % len(plans)])
            except Exception as exc:  # collected, asserted below
                results[i] = exc

        threads = [threading.Thread(target=save, args=(i,)) for i in range(len(results))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        errors = [r for r in results if isinstance(r, Exception)]
        assert errors == []
        (target,) = set(results)  # type: ignore[arg-type]
        assert isinstance(target, cpr_zarr.ZarrTarget)
        # the committed group is consistent: every level verifies and holds its plan's means
        attrs = store.reader(target).attrs
        expected = image
        for level, record in enumerate(attrs["levels"], start=1):
            expected = pyramid.downsample(expected, tuple(record["step"]), "mean")
            np.testing.assert_array_equal(cpr_zarr.read_level(target, level).compute(), expected)


def test_a_level_reached_by_other_steps_is_never_shared(local_store: cpr_zarr.ResultStore) -> None:
    """Two plans can reach the same level shape by different steps, and so different values
    (means of rounded means): a z=2 stack halved (2, 2, 2) then (1, 2, 2) by one writer,
    (1, 2, 2) then (2, 2, 2) by another. The second writer must not complete the first's
    level 2 (same shape, same path) with its own values."""
    from cpr_zarr.core.codec import ChunkCodec
    from cpr_zarr.core.writer import _create_array
    from cpr_zarr.model.layout import chunk_grid

    image = microscopy_volume((2, 48, 48), seed=3)
    chunks = (2, 16, 16)
    a_steps, b_steps = [(2, 2, 2), (1, 2, 2)], [(1, 2, 2), (2, 2, 2)]
    a_level2 = pyramid.downsample(pyramid.downsample(image, a_steps[0], "mean"), a_steps[1], "mean")
    b_level2 = pyramid.downsample(pyramid.downsample(image, b_steps[0], "mean"), b_steps[1], "mean")
    assert a_level2.shape == b_level2.shape
    assert not np.array_equal(a_level2, b_level2)

    probe = local_store.save(image, "img", chunks=chunks, levels=1)
    path = probe.group_path
    local_store.delete(probe)
    # writer A (isotropic scale) wrote the base and its levels, and has not committed yet
    base = ChunkCodec(
        _create_array(local_store.storage, f"{path}/0", image.shape, image.dtype, chunks, None)
    )
    for index, region in chunk_grid(image.shape, chunks):
        base.write(index, image[region])
    theirs = pyramid.write_levels(local_store.storage, path, a_steps, "mean", ["z", "y", "x"])
    assert [r.path for r in theirs] == ["1", "2"]

    # writer B: z pixels twice as large, so y and x are halved first
    ours = local_store.save(image, "img", chunks=chunks, scale=(2.0, 1.0, 1.0), levels=3)
    records = local_store.reader(ours).record.levels
    assert [r.step for r in records] == [tuple(s) for s in b_steps]
    assert [r.path for r in records] == ["1-1x2x2", "2-2x4x4"]
    np.testing.assert_array_equal(cpr_zarr.read_level(ours, 2).compute(), b_level2)
    # A's level 2 still holds A's values, matching the digests A recorded
    np.testing.assert_array_equal(
        zarr.open_array(local_store.storage.zarr_store, path=f"{path}/2")[...], a_level2
    )
