"""The storage layer: every backend passes cpr_zarr.testing's suites; backend choice, zarr
Store instances as the store, and the s3fs-style options obstore accepts."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import zarr
from obstore.store import MemoryStore as ObstoreMemoryStore
from obstore.store import S3Store

import cpr_zarr
from cpr_zarr.storage import LocalStorage, default_backend, open_storage
from cpr_zarr.storage._fsspec import FsspecStorage
from cpr_zarr.storage._obstore import ObjectStorage, obstore_options
from cpr_zarr.storage._zarrstore import ZarrStoreStorage
from cpr_zarr.testing import ResultStoreTests, StorageTests, raise_if_dask_computes

if TYPE_CHECKING:
    from cpr_zarr.storage import Storage
    from tests.s3_server import S3Server

ROOT = Path(__file__).parents[1]


class TestLocalStorage(StorageTests):
    has_folders = True

    @pytest.fixture
    def storage(self, tmp_path: Path) -> Storage:
        return LocalStorage(tmp_path / "store")


class TestFsspecMemoryStorage(StorageTests):
    atomic_create = False  # fsspec: check, then write

    @pytest.fixture
    def storage(self) -> Storage:
        return FsspecStorage(f"memory://cpr-zarr-tests/{uuid.uuid4().hex}")


class TestObstoreMemoryStorage(StorageTests):
    @pytest.fixture
    def storage(self) -> Storage:
        return ObjectStorage(f"memory://cpr-zarr-tests/{uuid.uuid4().hex}")


class TestZarrMemoryStoreStorage(StorageTests):
    atomic_create = False  # zarr's MemoryStore: check, then write

    @pytest.fixture
    def storage(self) -> Storage:
        return open_storage(zarr.storage.MemoryStore())


class TestS3FsspecStorage(StorageTests):
    atomic_create = False  # s3fs: HEAD, then PUT

    @pytest.fixture
    def storage(self, s3_url: str) -> Storage:
        return open_storage(s3_url, backend="fsspec", reuse=False)


class TestS3ObstoreStorage(StorageTests):
    @pytest.fixture
    def storage(self, s3_url: str) -> Storage:
        return open_storage(s3_url, backend="obstore", reuse=False)


class TestResultStore(ResultStoreTests):
    """The ResultStore suite on every kind of the `store` fixture (tests/conftest.py)."""


class TestResultStoreOnZarrStores(ResultStoreTests):
    @pytest.fixture(params=["MemoryStore", "LocalStore", "FsspecStore", "ObjectStore"])
    def store(self, request: pytest.FixtureRequest, tmp_path: Path) -> cpr_zarr.ResultStore:
        kind = request.param
        if kind == "MemoryStore":
            return cpr_zarr.ResultStore(zarr.storage.MemoryStore())
        if kind == "LocalStore":
            return cpr_zarr.ResultStore(zarr.storage.LocalStore(tmp_path / "results.zarr"))
        if kind == "FsspecStore":
            url = f"memory://cpr-zarr-tests/{uuid.uuid4().hex}/results.zarr"
            return cpr_zarr.ResultStore(zarr.storage.FsspecStore.from_url(url))
        return cpr_zarr.ResultStore(zarr.storage.ObjectStore(ObstoreMemoryStore()))


# -- backend choice -----------------------------------------------------------------------------


def test_default_backend_is_obstore_for_s3_and_fsspec_elsewhere(s3_url: str) -> None:
    assert default_backend("s3://bucket/results.zarr") == "obstore"
    assert default_backend("memory://x/results.zarr") == "fsspec"
    assert default_backend("gs://bucket/results.zarr") == "fsspec"
    assert isinstance(cpr_zarr.ResultStore(s3_url).storage, ObjectStorage)
    fsspec_store = cpr_zarr.ResultStore(s3_url, backend="fsspec")
    assert isinstance(fsspec_store.storage, FsspecStorage)
    obstore_store = cpr_zarr.ResultStore(s3_url, backend="obstore")
    assert isinstance(obstore_store.storage, ObjectStorage)
    # both backends read what the other wrote: same objects, same layout
    data = np.arange(6000, dtype=np.uint16).reshape(20, 300)
    target = fsspec_store.save(data, name="x")
    np.testing.assert_array_equal(obstore_store.open(target.content_hash).to_numpy(), data)


def test_without_obstore_s3_uses_fsspec_without_error(s3_server: S3Server) -> None:
    code = (
        "import sys; sys.modules['obstore'] = None\n"
        "import cpr_zarr\n"
        "from cpr_zarr.storage import default_backend\n"
        "store = cpr_zarr.ResultStore(sys.argv[1])\n"
        "print(default_backend(sys.argv[1]), type(store.storage).__name__)\n"
    )
    url = f"s3://cpr-zarr-tests/{uuid.uuid4().hex}/results.zarr"
    out = subprocess.run(
        [sys.executable, "-c", code, url], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["fsspec", "FsspecStorage"]


def test_unknown_backend_and_unserved_urls_are_refused(tmp_path: Path) -> None:
    with pytest.raises(cpr_zarr.StoreError, match=r"Unknown storage backend 'boto'.*'obstore'"):
        cpr_zarr.ResultStore("s3://bucket/results.zarr", backend="boto")  # type: ignore[arg-type]
    with pytest.raises(cpr_zarr.StoreError, match=r"obstore serves s3://.*backend='fsspec'"):
        cpr_zarr.ResultStore("ftp://host/results.zarr", backend="obstore")
    # local folders are plain file operations whatever the backend
    local = cpr_zarr.ResultStore(tmp_path / "results.zarr", backend="obstore")
    assert isinstance(local.storage, LocalStorage)


def test_s3fs_style_options_become_obstore_config() -> None:
    options = obstore_options(
        "s3://bucket/x",
        {
            "key": "AKIA",
            "secret": "s3cr3t",
            "token": "tok",
            "client_kwargs": {"endpoint_url": "http://127.0.0.1:9000", "region_name": "eu-1"},
            "anon": False,
            "config_kwargs": {"retries": {"max_attempts": 3, "mode": "standard"}},
            "max_concurrency": 1,  # an s3fs tuning knob: ignored
        },
    )
    assert options == {
        "access_key_id": "AKIA",
        "secret_access_key": "s3cr3t",
        "session_token": "tok",
        "endpoint": "http://127.0.0.1:9000",
        "region": "eu-1",
        "skip_signature": False,
        "retry_config": {"max_retries": 2},
        "client_options": {"allow_http": True},
    }
    with pytest.raises(ValueError, match=r"client_kwargs option 'verify'.*backend='fsspec'"):
        obstore_options("s3://bucket/x", {"client_kwargs": {"verify": False}})


def test_explicit_credentials_open_s3_through_obstore(s3_server: S3Server, s3_url: str) -> None:
    saved = {k: os.environ.pop(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    try:
        store = cpr_zarr.ResultStore(
            s3_url,
            backend="obstore",
            key=s3_server.ACCESS_KEY,
            secret=s3_server.SECRET_KEY,
            endpoint_url=s3_server.proxy.url,
        )
        target = store.save(np.ones((8, 8), dtype=np.uint8), name="creds")
        assert target.to_numpy().sum() == 64
        assert s3_server.SECRET_KEY.encode() not in pickle.dumps(store.storage)
        assert s3_server.SECRET_KEY.encode() not in pickle.dumps(target)
    finally:
        os.environ.update(saved)


# -- zarr Store instances -----------------------------------------------------------------------


def test_zarr_stores_are_named_by_a_url_that_reopens_them(tmp_path: Path, s3_url: str) -> None:
    local = cpr_zarr.ResultStore(zarr.storage.LocalStore(tmp_path / "results.zarr"))
    assert local.url == str((tmp_path / "results.zarr").resolve())
    assert isinstance(local.storage, LocalStorage)

    memory_url = f"memory://cpr-zarr-tests/{uuid.uuid4().hex}/results.zarr"
    fsspec_store = cpr_zarr.ResultStore(zarr.storage.FsspecStore.from_url(memory_url))
    assert fsspec_store.url == memory_url

    bucket, prefix = s3_url.removeprefix("s3://").split("/", 1)
    s3 = S3Store(bucket, prefix=prefix, client_options={"allow_http": True})
    object_store = cpr_zarr.ResultStore(zarr.storage.ObjectStore(s3))
    assert object_store.url == s3_url
    target = object_store.save(np.arange(100, dtype=np.int32), name="named")
    assert target.store_url == s3_url
    # another process re-opens it by its URL, with its own credentials (the environment)
    code = (
        "import pickle, sys; t = pickle.load(open(sys.argv[1], 'rb'));"
        "print(int(t.to_numpy().sum()))"
    )
    path = tmp_path / "target.pickle"
    path.write_bytes(pickle.dumps(target))
    out = subprocess.run(
        [sys.executable, "-c", code, str(path)], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(sum(range(100)))


def test_a_store_without_url_is_named_for_this_process_only(tmp_path: Path) -> None:
    store = cpr_zarr.ResultStore(zarr.storage.MemoryStore())
    assert store.url.startswith("zarrstore://")
    assert isinstance(store.storage, ZarrStoreStorage)
    target = store.save(np.arange(50, dtype=np.uint8), name="here")
    again = pickle.loads(pickle.dumps(target))  # this process: found by its name
    np.testing.assert_array_equal(again.to_numpy(), np.arange(50, dtype=np.uint8))
    assert cpr_zarr.open_store(store.url) is store

    code = "import pickle, sys; pickle.load(open(sys.argv[1], 'rb')).to_numpy()"
    path = tmp_path / "target.pickle"
    path.write_bytes(pickle.dumps(target))
    out = subprocess.run(
        [sys.executable, "-c", code, str(path)], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode != 0
    assert f"Result store {store.url!r} is a zarr Store instance" in out.stderr
    assert "give ResultStore a URL or folder path instead" in out.stderr


# -- the Dask guard -----------------------------------------------------------------------------


def test_raise_if_dask_computes_fails_on_any_scheduler() -> None:
    import dask
    import dask.array as da

    lazy = da.ones((4, 4), chunks=2) + 1
    with raise_if_dask_computes() as guard:
        lazy[1:3]  # building graphs is fine
    assert guard.total_computes == 0
    for scheduler in (None, "threads", "sync"):
        with (
            pytest.raises(RuntimeError, match=r"Too many Dask computes: 1 > max_computes=0"),
            raise_if_dask_computes(),
        ):
            lazy.compute(scheduler=scheduler)
    with raise_if_dask_computes(max_computes=2) as guard:
        lazy.compute()
        dask.compute(lazy, scheduler="threads")
    assert guard.total_computes == 2
