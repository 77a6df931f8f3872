"""Shared test suites for people who write storage backends or build on cpr_zarr.

For test code only (it imports pytest; ``import cpr_zarr`` never imports this module).

- :class:`StorageTests`: what every :class:`~cpr_zarr.storage.Storage` must do. Subclass it
  and give a ``storage`` fixture that returns a fresh, empty, writable storage::

      class TestMyStorage(StorageTests):
          @pytest.fixture
          def storage(self, tmp_path):
              return MyStorage(...)

- :class:`ResultStoreTests`: save / open / list / verify / delete round trips of a
  :class:`~cpr_zarr.ResultStore`. Subclass it and give a ``store`` fixture (parametrise it
  over store kinds, as cpr_zarr's own tests do).
- :func:`raise_if_dask_computes`: fails when a Dask graph is computed inside it (xarray's
  guard of the same name), for read paths that must stay lazy.

The suites follow zarr-python's ``StoreTests`` and fsspec's abstract test mixins.
"""

from __future__ import annotations

import contextlib
import pickle
import threading
from typing import TYPE_CHECKING, Any, ClassVar

import dask
import dask.array as da
import numpy as np
import pytest
from dask.callbacks import Callback

if TYPE_CHECKING:
    from collections.abc import Iterator

    from cpr_zarr.storage import Storage
    from cpr_zarr.store import ResultStore

__all__ = ["ResultStoreTests", "StorageTests", "raise_if_dask_computes"]


# -- the Dask guard ---------------------------------------------------------------------------


class _ComputeGuard(Callback):
    """Counts Dask graphs started inside the guard, and fails past ``max_computes``.

    Two doors: the default scheduler is replaced by a counting one (so computes that go to
    the default, a distributed client included, are seen), and a local-scheduler callback
    sees graphs run with an explicit local scheduler (``scheduler="threads"``, ...).
    """

    def __init__(self, max_computes: int) -> None:
        super().__init__()
        self.max_computes = max_computes
        self.total_computes = 0
        self._lock = threading.Lock()
        self._inside = threading.local()  # our own scheduler runs the local one below

    def count(self) -> None:
        with self._lock:
            self.total_computes += 1
            total = self.total_computes
        if total > self.max_computes:
            raise RuntimeError(
                f"Too many Dask computes: {total} > max_computes={self.max_computes}. A read "
                "path computed a Dask graph where it should have stayed lazy (or counted "
                "more graphs than allowed); raise max_computes if the compute is intended."
            )

    def scheduler(self, dsk: Any, keys: Any, **kwargs: Any) -> Any:
        self.count()
        self._inside.active = True
        try:
            return dask.threaded.get(dsk, keys, **kwargs)
        finally:
            self._inside.active = False

    def _start(self, dsk: Any) -> None:
        if not getattr(self._inside, "active", False):
            self.count()


@contextlib.contextmanager
def raise_if_dask_computes(max_computes: int = 0) -> Iterator[_ComputeGuard]:
    """Fail (``RuntimeError``) if more than ``max_computes`` Dask graphs are computed inside.

    Building graphs, slicing and reading metadata are fine; ``.compute()``,
    ``np.asarray(dask_array)``, ``dask.compute``, ``persist`` are what count. The guard's
    ``total_computes`` says how many ran.

    Raises
    ------
    RuntimeError
        At the compute that goes past ``max_computes``.
    """
    guard = _ComputeGuard(max_computes)
    with guard, dask.config.set(scheduler=guard.scheduler):
        yield guard


# -- storage backends -------------------------------------------------------------------------


class StorageTests:
    """What every :class:`~cpr_zarr.storage.Storage` backend must do.

    Subclasses provide a ``storage`` fixture returning a fresh, empty, writable storage and
    may set the class attributes below to their backend's documented differences.
    """

    #: whether of concurrent ``set_if_not_exists`` callers exactly one creates the key
    #: (local files, obstore); ``False`` for check-then-write backends (s3fs, zarr's
    #: ``MemoryStore``), where at least one does and the key holds one of the values
    atomic_create: ClassVar[bool] = True
    #: whether the backend has real folders (local disk): ``delete_tree`` then removes the
    #: folder whole (``first``/``keep`` are object-store semantics) and ``move_tree``
    #: renames
    has_folders: ClassVar[bool] = False

    def test_get_of_a_missing_key_is_none(self, storage: Storage) -> None:
        assert storage.get("nothing/here") is None
        assert storage.get_json("nothing/here.json") is None
        assert not storage.exists("nothing/here")

    def test_set_then_get_returns_the_bytes_and_set_replaces(self, storage: Storage) -> None:
        storage.set("a/b/c", b"first")
        assert storage.get("a/b/c") == b"first"
        assert storage.exists("a/b/c")
        storage.set("a/b/c", b"second, longer")
        assert storage.get("a/b/c") == b"second, longer"

    def test_json_documents_round_trip(self, storage: Storage) -> None:
        doc = {"zarr_format": 3, "node_type": "group", "attributes": {"x": [1, 2.5, None]}}
        storage.set_json("g/zarr.json", doc)
        assert storage.get_json("g/zarr.json") == doc
        storage.set("g/not-json", b"\x00\xff")
        assert storage.get_json("g/not-json") is None

    def test_set_if_not_exists_creates_once_and_never_replaces(self, storage: Storage) -> None:
        assert storage.set_if_not_exists("k/zarr.json", b"one") is True
        assert storage.set_if_not_exists("k/zarr.json", b"two") is False
        assert storage.get("k/zarr.json") == b"one"
        assert storage.set_json_if_not_exists("k/zarr.json", {"x": 1}) is False

    def test_concurrent_set_if_not_exists(self, storage: Storage) -> None:
        n = 8
        barrier = threading.Barrier(n)
        created: list[bool] = [False] * n

        def one(i: int) -> None:
            barrier.wait()
            created[i] = storage.set_if_not_exists("race/zarr.json", f"writer {i}".encode())

        threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        stored = storage.get("race/zarr.json")
        winners = [i for i in range(n) if created[i]]
        if self.atomic_create:
            assert len(winners) == 1, winners
            assert stored == f"writer {winners[0]}".encode()
        else:
            assert winners
            assert stored in {f"writer {i}".encode() for i in winners}

    def test_set_in_an_existing_folder(self, storage: Storage) -> None:
        storage.set("grp/zarr.json", b"{}")
        storage.make_folder("grp")
        storage.set_in_folder("grp/leases/one", b"stamp", "grp")
        assert storage.get("grp/leases/one") == b"stamp"

    def test_delete_removes_one_key_and_a_missing_one_is_fine(self, storage: Storage) -> None:
        storage.set("d/a", b"1")
        storage.set("d/b", b"2")
        storage.delete("d/a")
        storage.delete("d/a")
        storage.delete("never/was")
        assert storage.get("d/a") is None
        assert storage.get("d/b") == b"2"

    def test_list_dir_names_objects_and_prefixes_directly_under(self, storage: Storage) -> None:
        storage.set("top/zarr.json", b"{}")
        storage.set("top/x-1/zarr.json", b"{}")
        storage.set("top/x-1/0/c/0/0", b"chunk")
        storage.set("top/y-2/zarr.json", b"{}")
        assert sorted(storage.list_dir("top")) == ["x-1", "y-2", "zarr.json"]
        assert sorted(storage.list_dir("top", fresh=True)) == ["x-1", "y-2", "zarr.json"]
        assert "top" in storage.list_dir("")
        assert storage.list_dir("missing") == []

    def test_walk_gives_every_object_with_size_relative_to_the_prefix(
        self, storage: Storage
    ) -> None:
        storage.set("w/g/zarr.json", b"{}")
        storage.set("w/g/0/c/0/0", b"12345")
        storage.set("w/g/0/c/0/1", b"123")
        storage.set("w/other", b"x")
        entries = {e.key: e for e in storage.walk("w/g")}
        assert {k: e.size for k, e in entries.items()} == {
            "zarr.json": 2,
            "0/c/0/0": 5,
            "0/c/0/1": 3,
        }
        assert storage.size("w/g") == 10
        assert storage.key_counter("w/g/0/c")() == 2
        assert storage.walk("missing") == []
        assert storage.newest_time("w/g") > 0

    def test_delete_tree(self, storage: Storage) -> None:
        for key in ("zarr.json", "cpr_zarr_record/zarr.json", "0/c/0", "0/c/1", ".leases/a"):
            storage.set(f"t/g/{key}", b"x")
        storage.set("t/keep-me", b"y")
        batches: list[int] = []
        present = storage.delete_tree(
            "t/g",
            first=("cpr_zarr_record/zarr.json", "zarr.json"),
            keep=lambda rel: rel.startswith(".leases/"),
            on_batch=lambda: batches.append(1),
        )
        assert present is True
        left = {e.key for e in storage.walk("t/g")}
        if self.has_folders:
            assert left == set()  # the folder goes whole
        else:
            assert left == {".leases/a"}  # kept, everything else gone
            assert batches
        assert storage.get("t/keep-me") == b"y"  # outside the prefix
        storage.delete("t/g/.leases/a")
        assert storage.delete_tree("t/g") is False
        assert storage.delete_tree("never/was") is False

    def test_move_tree_keeps_existing_metadata_and_replaces_the_rest(
        self, storage: Storage
    ) -> None:
        storage.set("src/a/zarr.json", b"src meta")
        storage.set("src/a/c/0", b"src chunk 0")
        storage.set("src/a/c/1", b"src chunk 1")
        storage.move_tree("src/a", "dst/a")
        assert storage.get("dst/a/zarr.json") == b"src meta"
        assert storage.get("dst/a/c/1") == b"src chunk 1"

        storage.set("src/b/zarr.json", b"new meta")
        storage.set("src/b/c/0", b"new chunk")
        storage.set("dst/b/zarr.json", b"old meta")
        storage.set("dst/b/c/0", b"old chunk")
        storage.move_tree("src/b", "dst/b")
        assert storage.get("dst/b/zarr.json") == b"old meta"  # metadata: create-if-absent
        assert storage.get("dst/b/c/0") == b"new chunk"

    def test_zarr_store_sees_the_same_objects(self, storage: Storage) -> None:
        from zarr.core.buffer import default_buffer_prototype
        from zarr.core.sync import sync

        storage.set("z/zarr.json", b"{}")
        buf = sync(storage.zarr_store.get("z/zarr.json", default_buffer_prototype()))
        assert buf is not None
        assert buf.to_bytes() == b"{}"

    def test_pickles_without_options_to_the_same_location(self, storage: Storage) -> None:
        storage.set("p/zarr.json", b"pickled")
        again = pickle.loads(pickle.dumps(storage))
        assert again.url == storage.url
        assert again.get("p/zarr.json") == b"pickled"


# -- result stores ----------------------------------------------------------------------------


def _volume(shape: tuple[int, ...] = (20, 48, 40), seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.cumsum(rng.integers(0, 30, size=shape, dtype=np.uint16), axis=-1, dtype=np.uint16)


class ResultStoreTests:
    """Save / open / list / verify / delete round trips of a :class:`~cpr_zarr.ResultStore`.

    Subclasses (or a ``conftest.py``) provide a ``store`` fixture returning a fresh, empty,
    writable store.
    """

    def test_numpy_round_trip(self, store: ResultStore) -> None:
        data = _volume()
        target = store.save(data, name="img", chunks=(10, 24, 20))
        assert target.shape == data.shape
        np.testing.assert_array_equal(target.to_numpy(), data)
        np.testing.assert_array_equal(store.open(target.content_hash).to_numpy(), data)
        np.testing.assert_array_equal(store.open(target.content_hash[:12]).to_numpy(), data)

    def test_dask_round_trip_equals_the_numpy_save(self, store: ResultStore) -> None:
        data = _volume(seed=1)
        lazy = store.save(da.from_array(data, chunks=(7, 24, 40)), name="img", chunks=(10, 24, 20))
        eager = store.save(data, name="img", chunks=(10, 24, 20))
        assert lazy == eager  # the content hash is the identity
        np.testing.assert_array_equal(lazy.to_numpy(), data)

    def test_same_content_twice_is_one_result(self, store: ResultStore) -> None:
        data = _volume(seed=2)
        assert store.save(data, name="a") == store.save(data.copy(), name="a")
        assert len(list(store.targets())) == 1

    def test_list_targets_and_verify(self, store: ResultStore) -> None:
        first = store.save(_volume(seed=3), name="first")
        second = store.save(_volume(seed=4), name="second")
        assert {t.group_path for t in store.targets()} == {first.group_path, second.group_path}
        listed = store.list()
        assert sorted(listed["name"]) == ["first", "second"]
        report = store.verify()
        assert report.ok, report

    def test_delete_then_open_raises(self, store: ResultStore) -> None:
        from cpr_zarr.errors import ResultNotFoundError

        target = store.save(_volume(seed=5), name="gone")
        assert store.delete(target) == target
        with pytest.raises(ResultNotFoundError, match="gone"):
            store.open(target.group_path)
        assert list(store.targets()) == []

    def test_pointer_pickles_and_reads(self, store: ResultStore) -> None:
        data = _volume(seed=6)
        target = store.save(data, name="p")
        again = pickle.loads(pickle.dumps(target))
        assert again == target
        np.testing.assert_array_equal(again.to_numpy(), data)

    def test_opening_and_slicing_computes_no_graph(self, store: ResultStore) -> None:
        data = _volume(seed=7)
        target = store.save(data, name="lazy", chunks=(10, 24, 20))
        with raise_if_dask_computes():
            region = store.open(target.content_hash).get_data()[3:15, 5:30, ::2]
        with raise_if_dask_computes(max_computes=1):
            np.testing.assert_array_equal(region.compute(), data[3:15, 5:30, ::2])
