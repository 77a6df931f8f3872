from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.s3_server import S3Server

import cpr_zarr

# Prefect reads its settings at import: point it at a throwaway home before anything imports it
_PREFECT_HOME = (
    Path(os.environ.get("CPR_ZARR_TEST_TMP", "/tmp")) / f"cpr-zarr-prefect-{uuid.uuid4().hex[:8]}"
)
os.environ["PREFECT_HOME"] = str(_PREFECT_HOME)
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[str]:
    """A temporary Prefect server; its URL is exported so Dask worker processes use it too."""
    import prefect.settings
    from prefect.testing.utilities import prefect_test_harness

    # a busy machine (CI, xdist workers) can take longer than Prefect's default 20 s to start it
    with prefect_test_harness(server_startup_timeout=180):
        url = prefect.settings.PREFECT_API_URL.value()
        os.environ["PREFECT_API_URL"] = url
        try:
            yield url
        finally:
            os.environ.pop("PREFECT_API_URL", None)


@pytest.fixture
def result_storage(tmp_path: Path) -> Path:
    """A folder for Prefect result records of one test."""
    path = tmp_path / "records"
    path.mkdir()
    return path


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto on 127.0.0.1 behind a counting, fault-injecting proxy; credentials in the env."""
    from tests.s3_server import S3Server

    server = S3Server()
    saved = {k: os.environ.get(k) for k in server.env}
    os.environ.update(server.env)  # Dask worker processes inherit these
    server.make_bucket("cpr-zarr-tests")
    try:
        yield server
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


@pytest.fixture
def s3_url(s3_server: S3Server) -> str:
    """A fresh store URL in the test bucket."""
    s3_server.proxy.inject()
    s3_server.proxy.always_fail = ""
    return f"s3://cpr-zarr-tests/{uuid.uuid4().hex}/results.zarr"


@pytest.fixture(params=["local", "memory", "s3", "s3-obstore"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> cpr_zarr.ResultStore:
    """The same store tests run on every store kind: a folder, memory, S3 on loopback through
    fsspec (s3fs) and through obstore."""
    if request.param == "local":
        return cpr_zarr.ResultStore(tmp_path / "results.zarr")
    if request.param == "s3":
        return cpr_zarr.ResultStore(request.getfixturevalue("s3_url"), backend="fsspec")
    if request.param == "s3-obstore":
        return cpr_zarr.ResultStore(request.getfixturevalue("s3_url"), backend="obstore")
    return cpr_zarr.ResultStore(f"memory://cpr-zarr-tests/{uuid.uuid4().hex}/results.zarr")


@pytest.fixture
def local_store(tmp_path: Path) -> cpr_zarr.ResultStore:
    return cpr_zarr.ResultStore(tmp_path / "results.zarr")


def microscopy_volume(shape: tuple[int, ...] = (40, 96, 80), seed: int = 0) -> np.ndarray:
    """Blobs on a noisy background: compressible like real stacks, not constant."""
    rng = np.random.default_rng(seed)
    grids = np.ogrid[tuple(slice(0, s) for s in shape)]
    image = rng.normal(100, 5, size=shape)
    for _ in range(6):
        center = [rng.uniform(0, s) for s in shape]
        dist2 = sum((g - c) ** 2 for g, c in zip(grids, center, strict=True))
        image += 800 * np.exp(-dist2 / (2 * 6.0**2))
    return image.clip(0, 65535).astype(np.uint16)


def store_files(store: cpr_zarr.ResultStore) -> dict[str, bytes]:
    """Every key of a store with its bytes (to check what changed)."""
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    async def _all() -> dict[str, bytes]:
        out = {}
        async for key in store.storage.zarr_store.list():
            buf = await store.storage.zarr_store.get(key, default_buffer_prototype())
            if buf is not None:
                out[key] = buf.to_bytes()
        return out

    return sync(_all())


def task_run_states(flow_run_id: object) -> dict[str, list[str]]:
    """State names of a flow run's task runs, by task name (what the UI would show)."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    out: dict[str, list[str]] = {}
    for run in runs:
        out.setdefault(run.name.rsplit("-", 1)[0], []).append(run.state.name)
    return out
