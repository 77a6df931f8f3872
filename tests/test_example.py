"""The README's example, as a new user runs it: twice, in two processes, in a fresh home.

The second run is all Cached; the output is short and free of errors; every command the
example prints and every ``cpr-zarr`` command of the README's console block works as printed.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

import cpr_zarr

ROOT = Path(__file__).parents[1]
EXAMPLE = ROOT / "examples" / "nuclei_flow.py"
TASKS = ("load_nuclei", "denoise", "threshold", "label", "measure")
# what a user's shell would not have: the test session's own Prefect and store settings
NOT_A_USERS = (
    "PREFECT_HOME",
    "PREFECT_API_URL",
    "PREFECT_LOGGING_LEVEL",
    "PREFECT_SERVER_ANALYTICS_ENABLED",
    "CPR_ZARR_STORE",
)


def user_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in NOT_A_USERS}
    env["HOME"] = str(home)  # Prefect's home and records: ~/.prefect, as for a new user
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *sys.path])
    return env


def run_example(cwd: Path, home: Path) -> str:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE)],
        cwd=cwd,
        env=user_env(home),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc.stdout + proc.stderr


def assert_quiet(log: str) -> None:
    for noise in ("Traceback", "database is locked", "ERROR", "analytics", "| INFO"):
        assert noise not in log, log
    assert len(log.splitlines()) <= 30, log


def run_shell(command: str, cwd: Path, home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command,
        shell=True,
        cwd=cwd,
        env=user_env(home),
        capture_output=True,
        text=True,
        timeout=300,
    )


# long by design (every document, every block, a whole flow): more than the
# suite's 600 s on a busy 2-core machine
@pytest.mark.timeout(1800)
def test_example_runs_twice_in_two_processes_second_all_cached(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    first = run_example(tmp_path, home)
    assert "ran 5 tasks (5 Completed) on 2 Dask worker processes" in first, first
    assert "All results are in the Zarr store" in first
    assert_quiet(first)
    second = run_example(tmp_path, home)
    assert "ran 5 tasks (5 Cached) on 2 Dask worker processes" in second, second
    assert_quiet(second)

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
        ome = store.storage.get_json(f"{by_name[key].group_path}/zarr.json")["attributes"]["ome"]
        axes = ome["multiscales"][0]["axes"]
        assert [a.get("unit") for a in axes] == ["micrometer"] * 3, key
    table = cpr_zarr.read_table(by_name["table"])
    assert len(table) == count
    assert (table["volume_um3"] > 0).all()
    # the measurements are a feature table of the label image, stored with the raw image:
    # ngio reads them there without cpr_zarr
    from tests.test_readers import ngio_reads_feature_table

    image_path, _, table_name = by_name["table"].group_path.rpartition("/tables/")
    assert image_path == by_name["raw"].group_path
    labels_name = by_name["labels"].group_path.rsplit("/", 1)[1]
    ngio_reads_feature_table(store.storage.root / image_path, table_name, labels_name, table)  # type: ignore[operator]
    csv = tmp_path / "nuclei_measurements.csv"
    assert len(csv.read_text().splitlines()) == count + 1
    # the stored raw image is the shipped TIFF, bit for bit
    sys.path.insert(0, str(EXAMPLE.parent))
    try:
        from nuclei_flow import sample_path
    finally:
        sys.path.remove(str(EXAMPLE.parent))
    np.testing.assert_array_equal(by_name["raw"].to_numpy(), tifffile.imread(sample_path()))

    # every command the example prints works exactly as printed
    printed = second.split("Open them without Prefect:\n")[1].split("\nRun this script")[0]
    commands = [line.strip() for line in printed.splitlines()]
    assert len(commands) == 5
    *shell_commands, napari = commands
    outputs = []
    for command in shell_commands:
        proc = run_shell(command, tmp_path, home)
        assert proc.returncode == 0, (command, proc.stdout, proc.stderr)
        outputs.append(proc.stdout)
    assert outputs[0].strip() == str(count)  # the label image's largest label
    assert f"[{count} rows x 7 columns]" in outputs[1]  # the table, read back
    assert "shape=(60, 256, 256)" in outputs[2]  # plain zarr
    assert "label.0" in outputs[3]  # cpr-zarr ls
    raw_url = f"{store.url}/{by_name['raw'].group_path}"
    assert napari.endswith(f"napari --plugin napari-ome-zarr {shlex.quote(raw_url)}")
    qt = any(importlib.util.find_spec(m) for m in ("PyQt5", "PyQt6", "PySide2", "PySide6"))
    if not qt:  # napari cannot open a window: the command installs Qt bindings first
        assert re.search(r"pip install .*(pyqt5|napari\[pyqt5\])", napari), napari

    # the README's cpr-zarr commands, run as written in the folder the example ran in, with
    # .venv/ standing for the environment the tests run in
    (tmp_path / ".venv").symlink_to(sys.prefix)
    readme = (ROOT / "README.md").read_text()
    console = re.search(r"```console\n(.*?)\n```", readme, re.S)[1]  # type: ignore[index]
    readme_commands = [
        line[2:].split("  #")[0].strip() for line in console.splitlines() if line.startswith("$ ")
    ]
    assert len(readme_commands) >= 5
    for command in readme_commands:
        assert command.startswith(".venv/bin/cpr-zarr "), command
        proc = run_shell(command, tmp_path, home)
        assert proc.returncode == 0, (command, proc.stdout, proc.stderr)
