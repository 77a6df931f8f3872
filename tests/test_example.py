"""The README's example: a real flow, run twice in two processes; the second run is all Cached."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import tifffile

import cpr_zarr

EXAMPLE = Path(__file__).parents[1] / "examples" / "nuclei_flow.py"
TASKS = ("load_nuclei", "denoise", "threshold", "label", "measure")


def run_example(cwd: Path, prefect_home: Path) -> str:
    env = {
        **os.environ,
        "PREFECT_HOME": str(prefect_home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "INFO",
    }
    env.pop("PREFECT_API_URL", None)  # each run starts its own temporary server, as a user's would
    env.pop("CPR_ZARR_STORE", None)
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc.stdout + proc.stderr


def final_states(log: str) -> dict[str, str]:
    return {
        m["task"]: m["state"]
        for m in re.finditer(
            r"Task run '(?P<task>\w+)-\w+' - Finished in state (?P<state>\w+)", log
        )
    }


def test_example_runs_twice_in_two_processes_second_all_cached(tmp_path: Path) -> None:
    home = tmp_path / "prefect-home"
    first = run_example(tmp_path, home)
    assert final_states(first) == dict.fromkeys(TASKS, "Completed"), first[-3000:]
    assert "All results are in the Zarr store" in first
    second = run_example(tmp_path, home)
    assert final_states(second) == dict.fromkeys(TASKS, "Cached"), second[-3000:]

    # the results are where the example says, and readable without Prefect
    store = cpr_zarr.ResultStore(tmp_path / "results.zarr", mode="r")
    paths = dict(re.findall(r"^  (raw|denoised|mask|labels|table) +(\S+)  ", second, re.M))
    by_name = {key: store.open(path) for key, path in paths.items()}
    assert set(by_name) == {"raw", "denoised", "mask", "labels", "table"}
    assert by_name["labels"].group_path.startswith(f"{by_name['raw'].group_path}/labels/")
    labels = by_name["labels"].to_numpy()
    assert labels.shape == (60, 256, 256)
    count = int(re.search(r"Found (\d+) nuclei", second)[1])  # type: ignore[index]
    assert labels.max() == count
    assert 15 <= count <= 25  # the ground truth has 20 nuclei
    # physical units flowed from the raw image to every result
    for key in ("denoised", "mask", "labels"):
        ome = store._get_json(f"{by_name[key].group_path}/zarr.json")["attributes"]["ome"]
        axes = ome["multiscales"][0]["axes"]
        assert [a.get("unit") for a in axes] == ["micrometer"] * 3, key
    table = cpr_zarr.read_table(by_name["table"])
    assert len(table) == count
    assert (table["volume_um3"] > 0).all()
    csv = tmp_path / "nuclei_measurements.csv"
    assert len(csv.read_text().splitlines()) == count + 1
    assert f"napari --plugin napari-ome-zarr {store.url}/{by_name['raw'].group_path}" in second
    # the stored raw image is the shipped TIFF, bit for bit
    sys.path.insert(0, str(EXAMPLE.parent))
    try:
        from nuclei_flow import sample_path
    finally:
        sys.path.remove(str(EXAMPLE.parent))
    np.testing.assert_array_equal(by_name["raw"].to_numpy(), tifffile.imread(sample_path()))
