"""Object storage: an S3-compatible server on 127.0.0.1 (moto behind a counting proxy).

The shared store suite (tests/test_store.py) also runs on S3 through the ``store`` fixture;
these tests cover what is specific to object storage.
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import dask
import dask.array as da
import numpy as np
import pytest

import cpr_zarr
from tests.conftest import microscopy_volume, task_run_states
from tests.writer_proc import CHUNKS, volume

if TYPE_CHECKING:
    from tests.s3_server import S3Server

ROOT = Path(__file__).parents[1]
BUCKET = "cpr-zarr-tests"


def key_prefix(url: str) -> str:
    return url.removeprefix(f"s3://{BUCKET}/")


def test_region_read_gets_only_the_needed_chunks(s3_server: S3Server, s3_url: str) -> None:
    store = cpr_zarr.ResultStore(s3_url)
    data = microscopy_volume((40, 96, 80))
    target = store.save(data, name="img", chunks=(10, 32, 40))  # 4 x 3 x 2 chunks
    s3_server.proxy.reset_counts()
    region = cpr_zarr.open_store(s3_url).open(target.content_hash).get_data()[12:25, 40:50, 45:]
    np.testing.assert_array_equal(region.compute(), data[12:25, 40:50, 45:])
    chunk_gets = s3_server.proxy.keys("GET", f"{target.group_path}/0/c/")
    assert [k.rsplit("/0/c/", 1)[1] for k in chunk_gets] == ["1/1/1", "2/1/1"]
    assert s3_server.proxy.count("GET", f"{target.group_path}/0/c/") == 2  # one GET each
    assert s3_server.proxy.count("HEAD", "/0/c/") == 0  # no HEAD before each GET


def test_credentials_are_never_written(
    s3_server: S3Server, s3_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # explicit storage options carry the credentials; nothing persisted may contain them
    with caplog.at_level(logging.DEBUG, logger="cpr_zarr"):
        store = cpr_zarr.ResultStore(
            s3_url.replace("s3://", f"s3://{s3_server.ACCESS_KEY}:{s3_server.SECRET_KEY}@"),
            key=s3_server.ACCESS_KEY,
            secret=s3_server.SECRET_KEY,
        )
        target = store.save(microscopy_volume(), name="secretless")
        streamed = store.save(da.from_array(microscopy_volume(seed=2), chunks=20), name="s")
    assert store.url == s3_url
    assert target.store_url == s3_url
    texts = [
        target.to_json(),
        streamed.to_json(),
        caplog.text,
        json.dumps(store.provenance(target)),
    ]
    texts += [v.decode(errors="replace") for v in s3_server.all_objects(BUCKET).values()]
    for text in texts:
        assert s3_server.SECRET_KEY not in text
        assert s3_server.ACCESS_KEY not in text


def test_transient_failures_are_retried(s3_server: S3Server, s3_url: str) -> None:
    store = cpr_zarr.ResultStore(s3_url)
    data = microscopy_volume((40, 96, 80))
    s3_server.proxy.inject("503", "reset", "503", "reset", where="PUT")
    target = store.save(data, name="flaky", chunks=(10, 48, 40))
    assert s3_server.proxy.faults == []  # all four faults were hit
    s3_server.proxy.inject("reset", "503", where="GET")
    np.testing.assert_array_equal(
        cpr_zarr.open_store(s3_url).open(target.content_hash).to_numpy(), data
    )
    assert s3_server.proxy.faults == []


def test_a_write_that_finally_fails_commits_nothing(s3_server: S3Server, s3_url: str) -> None:
    # few, quick retries so that giving up takes seconds here, not the default minutes
    store = cpr_zarr.ResultStore(
        s3_url, config_kwargs={"retries": {"max_attempts": 2, "mode": "standard"}}
    )
    s3_server.proxy.always_fail = "/0/c/"  # every chunk PUT gets 503, retries included
    try:
        for value in (microscopy_volume(), da.from_array(microscopy_volume(seed=1), chunks=20)):
            with pytest.raises(
                cpr_zarr.StoreError,
                match=rf"Saving result 'doomed' to store '{s3_url}' failed.*Nothing was committed",
            ):
                store.save(value, name="doomed")
    finally:
        s3_server.proxy.always_fail = ""
    assert list(store.targets()) == []
    assert store.save(microscopy_volume(), name="doomed").to_numpy().shape == (40, 96, 80)


def _start(url: str, kind: str, *seeds: int, go_file: Path | None = None) -> subprocess.Popen[str]:
    args = [sys.executable, "-m", "tests.writer_proc", url, kind, *map(str, seeds)]
    if go_file is not None:
        args += ["--go-file", str(go_file)]
    return subprocess.Popen(
        args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_concurrent_and_killed_writers_on_s3(
    s3_server: S3Server, s3_url: str, tmp_path: Path
) -> None:
    cpr_zarr.ResultStore(s3_url)
    go = tmp_path / "go"
    same = [_start(s3_url, ("numpy", "dask")[i % 2], 300, go_file=go) for i in range(6)]
    killed = [_start(s3_url, "mixed", 400 + i, 410 + i, go_file=go) for i in range(3)]
    for proc in same + killed:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
    go.touch()
    time.sleep(0.3)
    for proc in killed:
        proc.send_signal(signal.SIGKILL)
    paths = set()
    for proc in same:
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err
        paths.update(line.split()[2] for line in out.splitlines() if line.startswith("saved"))
    for proc in killed:
        proc.communicate(timeout=60)
    assert len(paths) == 1  # six concurrent writers, one result, equal targets

    store = cpr_zarr.ResultStore(s3_url)
    committed = list(store.targets())
    for target in committed:  # whatever reads as a result verifies completely
        np.testing.assert_array_equal(target.to_numpy(), volume(int(target.name[1:])))
    assert "v300" in {t.name for t in committed}
    for seed in (400, 410):  # and saving again completes normally
        assert (
            store.save(volume(seed), name=f"v{seed}", chunks=CHUNKS).to_numpy().sum()
            == volume(seed).sum()
        )


@pytest.mark.usefixtures("prefect_server")
def test_dask_runner_flow_on_s3(
    s3_server: S3Server, s3_url: str, result_storage: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.flows_dask import make_region_flow

    # the Prefect UI preview of each result reads its smallest level: off, to count only the
    # reads of the tasks themselves (workers inherit the environment)
    monkeypatch.setenv("CPR_ZARR_ARTIFACTS", "0")

    flow = make_region_flow(s3_url, result_storage)
    s3_server.proxy.reset_counts()
    state = flow(return_state=True)
    out = state.result()
    volume_target = out["volume"]
    expected = np.random.default_rng(0).integers(0, 4000, size=(128, 512, 512), dtype=np.uint16)
    assert out["sum"] == int(expected[70:90, 10:200, 300:500].sum())
    # the region task on a worker fetched one chunk of eight, with one GET
    assert s3_server.proxy.count("GET", f"{volume_target.group_path}/0/c/") == 1
    assert s3_server.proxy.keys("GET", f"{volume_target.group_path}/0/c/")[0].endswith("/0/c/1/0/1")

    again = flow(return_state=True)
    assert again.result()["volume"] == volume_target
    assert task_run_states(again.state_details.flow_run_id) == {
        "make_volume": ["Cached"],
        "region_sum": ["Cached"],
    }
    with dask.config.set(scheduler="threads"):
        np.testing.assert_array_equal(
            volume_target.get_data()[:2, :3, :4].compute(), expected[:2, :3, :4]
        )
