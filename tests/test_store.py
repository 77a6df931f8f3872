"""The result store: round trips, dedup, commit marker, verification, references, bad input."""

from __future__ import annotations

import json
import os
import pickle
import threading
from pathlib import Path

import dask
import dask.array as da
import dask.callbacks
import numpy as np
import pytest
import zarr

import cpr_zarr
import cpr_zarr.core.provenance
from cpr_zarr.errors import (
    AmbiguousReferenceError,
    ChunkVerificationError,
    InvalidNameError,
    ResultNotFoundError,
    StoreError,
    UnsupportedResultError,
)
from tests.conftest import microscopy_volume, store_files
from tests.test_gc_leftovers import uncommit

DTYPES = [
    "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float16", "float32", "float64", "complex64", "complex128",
]  # fmt: skip


def _sample(dtype: str, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    if dt.kind == "b":
        return rng.random(shape) > 0.5
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return rng.integers(info.min, info.max, size=shape, dtype=dt, endpoint=True)
    values = rng.normal(0, 1000, size=shape)
    if dt.kind == "c":
        values = values + 1j * rng.normal(size=shape)
    return values.astype(dt)


@pytest.mark.parametrize("dtype", DTYPES)
def test_round_trip_every_dtype(store: cpr_zarr.ResultStore, dtype: str) -> None:
    data = _sample(dtype, (7, 33, 20))
    target = store.save(data, name="r", chunks=(4, 16, 16))
    assert target.dtype == np.dtype(dtype).name
    assert target.shape == data.shape
    lazy = target.get_data()
    assert isinstance(lazy, da.Array)
    assert lazy.dtype == data.dtype
    np.testing.assert_array_equal(lazy.compute(), data)
    np.testing.assert_array_equal(target.to_numpy(), data)


@pytest.mark.parametrize("shape", [(50,), (30, 40), (5, 30, 40), (2, 3, 10, 12), (2, 2, 3, 10, 12)])
def test_round_trip_1d_to_5d(store: cpr_zarr.ResultStore, shape: tuple[int, ...]) -> None:
    data = _sample("float32", shape)
    target = store.save(data, name="nd", chunks=tuple(max(1, s // 2) for s in shape))
    np.testing.assert_array_equal(target.to_numpy(), data)
    np.testing.assert_array_equal(target.get_data().compute(), data)


def test_big_endian_and_non_contiguous_input_hash_like_native(store: cpr_zarr.ResultStore) -> None:
    data = microscopy_volume()
    native = store.save(data, name="a")
    swapped = store.save(data.astype(">u2"), name="a")
    fortran = store.save(np.asfortranarray(data), name="a")
    assert native == swapped == fortran
    assert native.to_numpy().dtype == np.dtype("uint16")


def test_group_layout_codec_and_attributes(local_store: cpr_zarr.ResultStore) -> None:
    data = microscopy_volume((70, 300, 260))
    target = local_store.save(data, name="denoised")
    assert target.group_path == f"denoised-{target.content_hash}"
    assert target.chunks == (64, 256, 256)  # about 8 MiB of uint16
    group = zarr.open_group(local_store.url, path=target.group_path, mode="r")
    meta = group.attrs["cpr_zarr"]
    assert meta["layout"] == 2
    assert meta["algorithm"] == "xxh3_128-per-chunk+blake2b-128-tree1024"
    assert "chunk_digests" not in meta  # beside the data, as one binary block of 8 digests
    assert len(meta["digest_root"]) == 32
    block = local_store.storage.get(f"{target.group_path}/cpr_zarr/digests/0/0/0")
    assert block is not None
    assert len(block) == 2 * 2 * 2 * 16
    array = group["0"]
    assert array.metadata.zarr_format == 3
    blosc = array.metadata.to_dict()["codecs"][-1]
    assert blosc["name"] == "blosc"
    assert blosc["configuration"]["cname"] == "zstd"
    assert blosc["configuration"]["clevel"] == 1
    assert blosc["configuration"]["shuffle"] == "shuffle"
    # the root is never consolidated and holds only the store marker
    root = json.loads((Path(local_store.url) / "zarr.json").read_text())
    assert root == {
        "zarr_format": 3,
        "node_type": "group",
        "attributes": {"cpr_zarr": {"store_layout": 1}},
    }


def test_codec_and_chunks_are_configurable_and_do_not_change_the_hash(
    local_store: cpr_zarr.ResultStore, tmp_path: Path
) -> None:
    data = microscopy_volume()
    default = local_store.save(data, name="x", chunks=(10, 32, 32))
    other = cpr_zarr.ResultStore(tmp_path / "other.zarr")
    lz4 = other.save(
        data, name="x", chunks=(10, 32, 32),
        compressor=zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle"),
    )  # fmt: skip
    assert lz4.content_hash == default.content_hash
    codecs = zarr.open_array(other.url, path=f"{lz4.group_path}/0").metadata.to_dict()["codecs"]
    assert codecs[-1]["configuration"]["cname"] == "lz4"
    rechunked = local_store.save(data, name="x", chunks=(20, 32, 32))
    assert rechunked.content_hash != default.content_hash  # chunk shape is part of the identity


def test_same_hash_with_1_and_4_threads(tmp_path: Path) -> None:
    import numcodecs.blosc

    data = microscopy_volume((64, 256, 256))
    hashes = []
    try:
        for n, threads in enumerate((1, 4)):
            numcodecs.blosc.set_nthreads(threads)
            with zarr.config.set({"threading.max_workers": threads, "async.concurrency": threads}):
                store = cpr_zarr.ResultStore(tmp_path / f"s{n}.zarr")
                target = store.save(data, name="v", chunks=(16, 128, 128))
                with dask.config.set(scheduler="threads", num_workers=threads):
                    streamed = store.save(
                        da.from_array(data, chunks=(8, 64, 100)), name="d", chunks=(16, 128, 128)
                    )
                hashes += [target.content_hash, streamed.content_hash]
    finally:
        numcodecs.blosc.set_nthreads(os.cpu_count() or 1)
    assert len(set(hashes)) == 1, hashes


def test_saving_stored_content_again_writes_no_chunk(local_store: cpr_zarr.ResultStore) -> None:
    data = microscopy_volume()
    first = local_store.save(data, name="nuclei", chunks=(10, 48, 40))
    before = data_files(local_store)
    again = local_store.save(data.copy(), name="nuclei", chunks=(10, 48, 40))
    renamed = local_store.save(data.copy(), name="other-name", chunks=(10, 48, 40))
    streamed = local_store.save(
        da.from_array(data, chunks=(5, 48, 40)), name="nuclei", chunks=(10, 48, 40)
    )
    after = data_files(local_store)
    assert first == again == renamed == streamed  # identical content is stored once
    assert after == before  # not a chunk nor a metadata document was rewritten
    # each save left its own provenance record
    records = cpr_zarr.core.provenance.read_records(local_store.storage, first.group_path)
    assert [r["output"] for r in records] == ["nuclei", "nuclei", "other-name", "nuclei"]


def test_dedup_writes_no_data(store: cpr_zarr.ResultStore) -> None:
    data = microscopy_volume()
    first = store.save(data, name="a")
    snapshot = store_files(store)
    assert store.save(data, name="a") == first
    added = set(store_files(store)) - set(snapshot)
    assert {k for k, v in store_files(store).items() if snapshot.get(k) not in (None, v)} == set()
    # one provenance record and its catalog journal segment, nothing else
    assert len(added) == 2
    assert {key.split("/")[0] for key in added} == {first.group_path, "_catalog"}
    assert next(k for k in added if k.startswith(first.group_path)).startswith(
        f"{first.group_path}/cpr_zarr/provenance/"
    )
    assert next(k for k in added if k.startswith("_catalog")).startswith("_catalog/log/")


def test_flipped_byte_in_a_chunk_is_detected_with_store_group_and_chunk(
    local_store: cpr_zarr.ResultStore,
) -> None:
    data = microscopy_volume((40, 96, 80))
    target = local_store.save(data, name="img", chunks=(20, 48, 40))
    chunk_file = Path(local_store.url) / target.group_path / "0" / "c" / "1" / "0" / "1"
    raw = bytearray(chunk_file.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    chunk_file.write_bytes(bytes(raw))

    lazy = target.get_data()
    pattern = rf"chunk \(1, 0, 1\) of result '{target.group_path}' in store '{local_store.url}'"
    with pytest.raises(ChunkVerificationError, match=pattern) as info:
        lazy.compute()
    assert info.value.chunk_index == (1, 0, 1)
    assert info.value.group_path == target.group_path
    with pytest.raises(ChunkVerificationError, match=pattern):
        target.to_numpy()
    # the other chunks stay readable
    np.testing.assert_array_equal(lazy[:20].compute(), data[:20])
    np.testing.assert_array_equal(lazy[20:, :, :40].compute(), data[20:, :, :40])


def test_decodable_but_wrong_chunk_is_caught_only_when_verifying(
    local_store: cpr_zarr.ResultStore,
) -> None:
    data = microscopy_volume((40, 96, 80))
    target = local_store.save(data, name="img", chunks=(20, 48, 40))
    chunks = Path(local_store.url) / target.group_path / "0" / "c"
    (chunks / "1" / "1" / "1").write_bytes((chunks / "0" / "0" / "0").read_bytes())
    with pytest.raises(ChunkVerificationError, match=r"chunk \(1, 1, 1\).*hash to"):
        target.get_data().compute()
    unverified = target.get_data(verify=False).compute()  # verification can be switched off
    np.testing.assert_array_equal(unverified[20:, 48:, 40:], data[:20, :48, :40])


def test_a_missing_chunk_never_reads_as_zeros_even_unverified(
    store: cpr_zarr.ResultStore,
) -> None:
    from cpr_zarr.core.writer import remove_prefix

    data = microscopy_volume((8, 40, 40)) + 1
    data[:4, :16, :16] = 0  # one all-zero chunk: zarr does not store it, reads fill it in
    target = store.save(data, name="img", chunks=(4, 16, 16))
    np.testing.assert_array_equal(target.get_data(verify=False).compute(), data)
    np.testing.assert_array_equal(target.to_numpy(), data)

    # another process deletes the chunks while this one still holds the opened result
    remove_prefix(store.storage, f"{target.group_path}/0/c")
    where = rf"chunk \(\d, \d, \d\) of result '{target.group_path}'.*not in the store"
    for verify in (False, True):
        with pytest.raises(ChunkVerificationError, match=where):
            target.get_data(verify=verify).compute()
        with pytest.raises(ChunkVerificationError, match=where):
            target.to_numpy(verify=verify)
    # the all-zero chunk was never stored: it still reads
    np.testing.assert_array_equal(target.get_data(verify=False)[:4, :16, :16].compute(), 0)


def data_files(store: cpr_zarr.ResultStore) -> dict[Path, int]:
    """Modification times of every file but provenance records, staging and the catalog
    (every save journals itself there)."""
    return {
        p: p.stat().st_mtime_ns
        for p in Path(store.url).rglob("*")
        if not {"provenance", "_staging", "_catalog"} & set(p.parts)
    }


def test_lazy_array_is_named_after_content_hash(store: cpr_zarr.ResultStore) -> None:
    target = store.save(microscopy_volume(), name="x")
    assert target.get_data().name == f"cpr-zarr-{target.content_hash}"
    assert target.get_data().name == target.get_data().name
    assert dask.base.tokenize(target) == dask.base.tokenize(store.open(target.content_hash))


class _CountTasks(dask.callbacks.Callback):
    """Counts the Dask tasks executed while it is active (reads of stored chunks included)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def _pretask(self, key: object, dsk: object, state: object) -> None:
        self.count += 1


class _TaskResults(dask.callbacks.Callback):
    """Keeps the result of every Dask task executed while it is active."""

    def __init__(self) -> None:
        super().__init__()
        self.results: list[object] = []

    def _posttask(self, key: object, result: object, *args: object) -> None:
        self.results.append(result)


def test_a_whole_lazy_read_decodes_into_one_array_not_a_concatenation(
    local_store: cpr_zarr.ResultStore,
) -> None:
    data = microscopy_volume((20, 50, 45))
    data[:10, :16, :16] = 0  # an all-zero chunk, not stored
    target = local_store.save(data, name="img", chunks=(10, 16, 16))  # 2 x 4 x 3 chunks
    lazy = target.get_data()
    with _TaskResults() as tasks:
        whole = lazy.compute()
    np.testing.assert_array_equal(whole, data)
    blocks = [r for r in tasks.results if isinstance(r, np.ndarray) and r.shape != whole.shape]
    assert len(blocks) == 24  # one read per chunk, each a view of the result: nothing copied
    assert all(np.shares_memory(block, whole) for block in blocks)
    again = lazy.compute()
    assert not np.shares_memory(again, whole)  # every compute has its own output
    # other schedulers, other graphs: the same values (blocks from other processes are copied)
    np.testing.assert_array_equal(lazy.compute(scheduler="sync"), data)
    np.testing.assert_array_equal(lazy.compute(scheduler="processes", num_workers=2), data)
    both, plus = dask.compute(lazy, lazy + 1)
    np.testing.assert_array_equal(both, data)
    np.testing.assert_array_equal(plus, data + 1)
    np.testing.assert_array_equal(dask.compute(lazy, optimize_graph=False)[0], data)
    np.testing.assert_array_equal(lazy[5:15, 10:40].compute(), data[5:15, 10:40])


def test_saving_a_lazy_read_again_computes_nothing(tmp_path: Path) -> None:
    store = cpr_zarr.ResultStore(tmp_path / "r.zarr")
    volume = microscopy_volume((16, 64, 64))
    first = store.save(da.from_array(volume, chunks=(8, 32, 32)), "raw", chunks=(8, 32, 32))
    lazy = first.get_data()
    with _CountTasks() as counted:
        assert store.save(lazy, "raw", chunks=(8, 32, 32)) == first
        assert store.save(lazy, "copy", chunks=(8, 32, 32)) == first  # any name: same content
    assert counted.count == 0
    # anything else is computed: a changed graph, another chunk shape, another store
    with _CountTasks() as counted:
        again = store.save(lazy + 0, "raw", chunks=(8, 32, 32))
    assert counted.count > 0
    assert again == first
    with _CountTasks() as counted:
        rechunked = store.save(lazy, "raw", chunks=(16, 64, 64))
    assert counted.count > 0
    assert rechunked.content_hash != first.content_hash
    other = cpr_zarr.ResultStore(tmp_path / "other.zarr")
    copied = other.save(lazy, "raw", chunks=(8, 32, 32))
    assert copied.content_hash == first.content_hash
    assert copied.store_url == other.url
    np.testing.assert_array_equal(copied.to_numpy(), volume)


def test_a_dask_array_saved_before_in_this_process_is_not_computed_again(tmp_path: Path) -> None:
    """Its Dask name identifies its values (Dask's own contract): the second save is a
    lookup of the committed result, with the same metadata or another name."""
    store = cpr_zarr.ResultStore(tmp_path / "r.zarr")
    volume = microscopy_volume((16, 64, 64))
    lazy = da.from_array(volume, chunks=(8, 32, 32)) * 2 + 1  # a computation, not a read
    random = da.random.default_rng(7).integers(0, 9, size=(8, 40), chunks=(4, 20))
    first, first_random = store.save(lazy, "a", chunks=(8, 32, 32)), store.save(random, "r")
    with _CountTasks() as counted:
        assert store.save(lazy, "a", chunks=(8, 32, 32)) == first
        assert store.save(lazy, "b", chunks=(8, 32, 32)).content_hash == first.content_hash
        assert store.save(random, "r") == first_random  # one array object: its seeds are fixed
    assert counted.count == 0
    np.testing.assert_array_equal(first.to_numpy(), volume * 2 + 1)
    # what the name does not fix is computed: another chunk shape, dtype, store, or a
    # result removed since
    for save in (
        lambda: store.save(lazy, "a", chunks=(16, 32, 32)),
        lambda: store.save(lazy.astype("float32"), "a", chunks=(8, 32, 32)),
        lambda: cpr_zarr.ResultStore(tmp_path / "other.zarr").save(lazy, "a", chunks=(8, 32, 32)),
    ):
        with _CountTasks() as counted:
            save()
        assert counted.count > 0
    store.delete(first)
    with _CountTasks() as counted:
        again = store.save(lazy, "a", chunks=(8, 32, 32))
    assert counted.count > 0
    assert again == first
    np.testing.assert_array_equal(again.to_numpy(), volume * 2 + 1)


def test_incomplete_groups_are_never_returned(local_store: cpr_zarr.ResultStore) -> None:
    data = microscopy_volume()
    target = local_store.save(data, name="ok", chunks=(10, 48, 40))
    # simulate a writer that died before its commit marker: data and array metadata, no group
    # doc, never journalled in the catalog
    other = local_store.save(data + 1, name="dead", chunks=(10, 48, 40))
    uncommit(Path(local_store.url) / other.group_path)
    assert list(local_store.targets()) == [target]
    with pytest.raises(ResultNotFoundError, match="No committed result"):
        local_store.open(other.group_path)
    with pytest.raises(ResultNotFoundError):
        local_store.open(other.content_hash)
    assert other.group_path not in local_store
    # saving again completes the dead writer's group
    again = local_store.save(data + 1, name="dead", chunks=(10, 48, 40))
    assert again == other
    np.testing.assert_array_equal(again.to_numpy(), data + 1)


def test_open_by_hash_prefix_and_group_path(store: cpr_zarr.ResultStore) -> None:
    targets = [store.save(microscopy_volume(seed=i), name=f"img{i}") for i in range(3)]
    for t in targets:
        assert store.open(t.content_hash) == t
        assert store.open(t.content_hash[:8]) == t
        assert store.open(t.content_hash.upper()[:10]) == t
        assert store.open(t.group_path) == t
        assert store.open(t) == t
    assert sorted(store.targets(), key=lambda t: t.group_path) == sorted(
        targets, key=lambda t: t.group_path
    )
    assert store.open("img1") == targets[1]  # a result name works when it is unique
    store.save(microscopy_volume(seed=9), name="img1")
    with pytest.raises(AmbiguousReferenceError, match="'img1' matches 2 results"):
        store.open("img1")
    with pytest.raises(ResultNotFoundError, match="at least 6 hex"):
        store.open("abc")
    with pytest.raises(
        ResultNotFoundError, match="No committed result named or hashed 'ffffffffff'"
    ):
        store.open("ffffffffff")


def test_ambiguous_prefix_names_the_candidates(local_store: cpr_zarr.ResultStore) -> None:
    from cpr_zarr.model.hashing import chunk_digest, combine_digests

    def would_be_hash(value: np.ndarray) -> str:
        return combine_digests(value.shape, value.dtype, value.shape, [chunk_digest(value)])

    seen: dict[str, np.ndarray] = {}
    for seed in range(100_000):  # two 1-element arrays whose hashes share 6 hex digits
        value = np.array([seed], dtype=np.int64)
        prefix = would_be_hash(value)[:6]
        if prefix in seen:
            break
        seen[prefix] = value
    first = local_store.save(seen[prefix], name="n")
    second = local_store.save(value, name="n")
    assert first.content_hash[:6] == second.content_hash[:6] == prefix
    with pytest.raises(
        AmbiguousReferenceError, match=rf"Reference '{prefix}' matches 2 results"
    ) as info:
        local_store.open(prefix)
    assert first.group_path in str(info.value)
    assert second.group_path in str(info.value)
    assert local_store.open(first.content_hash[:12]) == first


def test_target_is_a_small_json_and_pickle_value(store: cpr_zarr.ResultStore) -> None:
    target = store.save(microscopy_volume(), name="denoised")
    as_json = target.to_json()
    assert len(as_json.encode()) < 2048
    assert len(pickle.dumps(target)) < 2048
    assert cpr_zarr.ZarrTarget.from_dict(json.loads(as_json)) == target
    assert pickle.loads(pickle.dumps(target)) == target
    assert set(json.loads(as_json)) == {
        "store_url",
        "group_path",
        "content_hash",
        "shape",
        "dtype",
        "chunks",
    }
    with pytest.raises(ValueError, match="expected keys"):
        cpr_zarr.ZarrTarget.from_dict({"store_url": "x"})


def test_credentials_never_enter_the_pointer() -> None:
    from cpr_zarr.store import normalize_url

    assert normalize_url("s3://key:secret@bucket/results.zarr")[0] == "s3://bucket/results.zarr"
    assert normalize_url("https://user:pw@host:9000/a.zarr/")[0] == "https://host:9000/a.zarr"


def test_opening_an_existing_store_changes_nothing(local_store: cpr_zarr.ResultStore) -> None:
    local_store.save(microscopy_volume(), name="a")
    snapshot = store_files(local_store)
    root_stat = (Path(local_store.url) / "zarr.json").stat().st_mtime_ns
    reopened = cpr_zarr.ResultStore(local_store.url)
    cpr_zarr.ResultStore(local_store.url, mode="r")
    list(reopened.targets())
    assert store_files(local_store) == snapshot
    assert (Path(local_store.url) / "zarr.json").stat().st_mtime_ns == root_stat


def test_concurrent_writers_of_the_same_result_both_succeed(
    local_store: cpr_zarr.ResultStore,
) -> None:
    data = microscopy_volume((40, 96, 80))
    results: list[object] = []
    barrier = threading.Barrier(4)

    def write(i: int) -> None:
        barrier.wait()
        try:
            results.append(
                local_store.save(
                    data if i % 2 else da.from_array(data, chunks=20),
                    name="same",
                    chunks=(10, 48, 40),
                )
            )
        except Exception as exc:  # pragma: no cover - reported below
            results.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(isinstance(r, cpr_zarr.ZarrTarget) for r in results), results
    assert len(set(results)) == 1
    assert [t.group_path for t in local_store.targets()] == [results[0].group_path]  # type: ignore[attr-defined]
    np.testing.assert_array_equal(results[0].to_numpy(), data)  # type: ignore[attr-defined]


def test_concurrent_first_saves_into_a_new_store_all_succeed(tmp_path: Path) -> None:
    # the first writers of a new store race to create its root: one that finds another's
    # first result in the folder must not take it for foreign data (seen on CI: a thread
    # pool's first mapped tasks failed with "the folder is not empty")
    failures: list[BaseException] = []
    for trial in range(60):
        url = str(tmp_path / f"trial{trial}" / "results.zarr")
        barrier = threading.Barrier(4)

        def write(seed: int, url: str = url, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            try:
                cpr_zarr.ResultStore(url).save(np.full((4, 4), seed, dtype=np.uint8), "first")
            except Exception as exc:  # reported below
                failures.append(exc)

        threads = [threading.Thread(target=write, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(list(cpr_zarr.ResultStore(url, mode="r").targets())) == 4
    assert failures == []


BAD_VALUES = [
    (np.array(["a", "b"]), UnsupportedResultError, "dtype"),
    (np.array([object(), 1], dtype=object), UnsupportedResultError, "dtype"),
    (np.zeros(3, dtype=[("x", "i4"), ("y", "f4")]), UnsupportedResultError, "dtype"),
    (np.array(3.0), UnsupportedResultError, "0-D"),
    (np.zeros((1,) * 6), UnsupportedResultError, "6-D"),
    ([1, 2, 3], UnsupportedResultError, "numpy or Dask array"),
    ({"a": 1}, UnsupportedResultError, "numpy or Dask array"),
]


@pytest.mark.parametrize(("value", "error", "match"), BAD_VALUES)
def test_bad_values_raise_clearly_and_leave_the_store_unchanged(
    store: cpr_zarr.ResultStore, value: object, error: type[Exception], match: str
) -> None:
    store.save(microscopy_volume(), name="keep")
    snapshot = store_files(store)
    with pytest.raises(error, match=match):
        store.save(value, name="bad")
    assert store_files(store) == snapshot


@pytest.mark.parametrize("name", ["", "-x", "a/b", "../up", "a b", "_staging", "x" * 101, 3])
def test_bad_names_raise_clearly_and_leave_the_store_unchanged(
    store: cpr_zarr.ResultStore, name: object
) -> None:
    snapshot = store_files(store)
    with pytest.raises(InvalidNameError, match="name"):
        store.save(np.zeros(3), name=name)  # type: ignore[arg-type]
    assert store_files(store) == snapshot


def test_bad_chunks_raise_clearly(store: cpr_zarr.ResultStore) -> None:
    with pytest.raises(ValueError, match=r"Invalid chunks \(0, 4\).*one positive integer per axis"):
        store.save(np.zeros((4, 4)), name="x", chunks=(0, 4))
    with pytest.raises(ValueError, match="Invalid chunks"):
        store.save(np.zeros((4, 4)), name="x", chunks=(2,))


def test_store_locations_that_cannot_be_opened(tmp_path: Path) -> None:
    a_file = tmp_path / "file.txt"
    a_file.write_text("hello")
    with pytest.raises(StoreError, match="is a file, not a folder"):
        cpr_zarr.ResultStore(a_file)
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_text("meow")
    with pytest.raises(StoreError, match=r"not empty \(it holds .*\) and is not a Zarr store"):
        cpr_zarr.ResultStore(tmp_path / "photos")
    assert sorted(os.listdir(tmp_path / "photos")) == ["cat.jpg"]
    with pytest.raises(StoreError, match="Protocol not known: nosuch"):
        cpr_zarr.ResultStore("nosuch://bucket/results.zarr")
    with pytest.raises(StoreError, match="No result store at"):
        cpr_zarr.ResultStore(tmp_path / "missing.zarr", mode="r")
    assert not (tmp_path / "missing.zarr").exists()
    zarr.create_group(str(tmp_path / "foreign.zarr"))
    with pytest.raises(StoreError, match="cpr_zarr did not create"):
        cpr_zarr.ResultStore(tmp_path / "foreign.zarr")
    with pytest.raises(StoreError, match="folder path or a URL string"):
        cpr_zarr.ResultStore(42)  # type: ignore[arg-type]


def test_read_only_store_refuses_writes(local_store: cpr_zarr.ResultStore) -> None:
    ro = cpr_zarr.ResultStore(local_store.url, mode="r")
    with pytest.raises(StoreError, match="read-only"):
        ro.save(np.zeros(3), name="x")


def test_delete_uncommits_first(local_store: cpr_zarr.ResultStore) -> None:
    target = local_store.save(microscopy_volume(), name="gone")
    local_store.delete(target.content_hash)
    assert not (Path(local_store.url) / target.group_path).exists()
    with pytest.raises(ResultNotFoundError):
        local_store.open(target.content_hash)
    with pytest.raises(ResultNotFoundError, match="not \\(or no longer\\) committed"):
        target.get_data()


def test_slicing_reads_only_overlapping_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.counting_fs import LOG_ENV, chunk_reads

    log = tmp_path / "reads.log"
    monkeypatch.setenv(LOG_ENV, str(log))
    store = cpr_zarr.ResultStore(f"countfile://{tmp_path}/results.zarr")
    data = microscopy_volume((40, 96, 80))
    target = store.save(data, name="img", chunks=(10, 32, 40))  # 4 x 3 x 2 chunks
    assert chunk_reads(str(log), target.group_path) == []  # saving reads no chunk
    lazy = store.open(target.content_hash).get_data()
    np.testing.assert_array_equal(lazy[12:25, 40:50, 45:].compute(), data[12:25, 40:50, 45:])
    assert sorted(chunk_reads(str(log), target.group_path)) == ["c/1/1/1", "c/2/1/1"]


@pytest.mark.parametrize("dtype", ["bool", "uint16", "float32"])
def test_streamed_dask_round_trip(store: cpr_zarr.ResultStore, dtype: str) -> None:
    data = _sample(dtype, (30, 50, 40), seed=3)
    lazy = da.from_array(data, chunks=(7, 20, 40))  # not aligned with the stored chunks
    target = store.save(lazy, name="lazy", chunks=(10, 25, 20))
    assert target == store.save(data, name="lazy", chunks=(10, 25, 20))
    np.testing.assert_array_equal(target.to_numpy(), data)
    np.testing.assert_array_equal(store.open(target.content_hash).get_data().compute(), data)
    leftovers = [k for k in store_files(store) if k.startswith("_staging/")]
    assert leftovers == []  # staging is cleaned up after the commit


@pytest.mark.parametrize("kind", ["numpy", "dask"])
def test_a_concurrent_writer_with_another_compressor_never_mixes_codecs(
    store: cpr_zarr.ResultStore, kind: str
) -> None:
    from zarr.codecs import ZstdCodec

    from cpr_zarr.core.codec import ChunkCodec
    from cpr_zarr.core.writer import _create_array
    from cpr_zarr.model.layout import chunk_grid

    data = microscopy_volume((8, 40, 40))
    chunks = (4, 16, 16)
    # the content hash does not depend on the compressor: learn this save's group path
    probe = store.save(data, "v", chunks=chunks)
    path = probe.group_path
    store.delete(probe)

    # another writer of the same content starts first, with Zstd, and writes half its chunks
    other = ChunkCodec(
        _create_array(
            store.storage, f"{path}/0", data.shape, data.dtype, chunks, ZstdCodec(level=3)
        )
    )
    grid = list(chunk_grid(data.shape, chunks))
    for index, region in grid[::2]:
        other.write(index, data[region])

    value = data if kind == "numpy" else da.from_array(data, chunks=(3, 20, 40))
    ours = store.save(value, "v", chunks=chunks)  # default compressor: Blosc
    assert ours.group_path == path
    for index, region in grid[1::2]:  # the other writer finishes after us
        other.write(index, data[region])

    array = zarr.open_array(store.storage.zarr_store, path=f"{path}/0", mode="r")
    assert [type(c).__name__ for c in array.compressors] == ["ZstdCodec"]
    np.testing.assert_array_equal(array[...], data)
    np.testing.assert_array_equal(ours.to_numpy(verify=True), data)
