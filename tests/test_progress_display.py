"""Progress as users see it outside Prefect: plain lines in logs, bars in terminals and Jupyter.

Each case runs a real process (or a real Jupyter kernel) with stderr as it would be there:
a pipe (nohup, CI logs), a pseudo-terminal, a kernel's output stream.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

import cpr_zarr
from tests.conftest import microscopy_volume

ROOT = Path(__file__).resolve().parents[1]

SLOW_SAVE = """
import time, dask.array as da, numpy as np, cpr_zarr
def slow(block):
    time.sleep(0.05)
    return block
volume = np.arange(40 * 96 * 80, dtype=np.uint16).reshape(40, 96, 80)
lazy = da.from_array(volume, chunks=(4, 48, 40)).map_blocks(slow)
cpr_zarr.ResultStore({store!r}).save(lazy, name="slow", chunks=(4, 48, 40))
print("done")
"""


def _env(**more: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "CPR_ZARR_"))}
    env["PYTHONPATH"] = str(ROOT)
    env.update(more)
    return env


def test_a_save_logs_plain_progress_lines_when_stderr_is_not_a_terminal(tmp_path: Path) -> None:
    code = SLOW_SAVE.format(store=str(tmp_path / "s.zarr"))
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=_env(CPR_ZARR_PROGRESS_SECONDS="0.3"),
        timeout=300,
        check=True,
    )
    assert proc.stdout.strip() == "done"
    assert "\r" not in proc.stderr  # no bar redrawn in a log file
    lines = proc.stderr.splitlines()
    progress = [line for line in lines if line.startswith("saving slow (streaming): ")]
    assert progress, proc.stderr
    assert all(re.search(r": \d+/40 chunks written \(\d+%, \d+ s", line) for line in progress)
    assert lines[-1].startswith("saved slow (streaming): 40 chunks, "), proc.stderr
    assert lines[-1].endswith("MB/s)")


def test_a_save_draws_a_bar_in_a_terminal(tmp_path: Path) -> None:
    import fcntl
    import pty
    import struct
    import termios

    code = SLOW_SAVE.format(store=str(tmp_path / "s.zarr"))
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.DEVNULL,
        stderr=follower,
        env=_env(CPR_ZARR_PROGRESS_SECONDS="0.3"),
    )
    os.close(follower)
    out = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the process closed the terminal
            break
        if not chunk:
            break
        out += chunk
    assert proc.wait(timeout=300) == 0
    os.close(leader)
    text = out.decode()
    # tqdm's bar, redrawn in place: carriage returns, a percentage and the bar's frame
    assert "\r" in text
    assert re.search(r"saving slow \(streaming\): +\d+%\|", text), text
    assert "40/40" in text


def test_a_save_shows_a_bar_in_a_jupyter_kernel(tmp_path: Path) -> None:
    from jupyter_client.manager import start_new_kernel

    manager, client = start_new_kernel(
        kernel_name="python3", env=_env(CPR_ZARR_PROGRESS_SECONDS="0.3"), cwd=str(ROOT)
    )
    try:
        code = f"import sys; sys.path.insert(0, {str(ROOT)!r})\n" + SLOW_SAVE.format(
            store=str(tmp_path / "s.zarr")
        )
        shown: list[str] = []

        def collect(msg: dict) -> None:  # type: ignore[type-arg]
            content = msg["content"]
            if msg["msg_type"] == "stream":
                shown.append(content["text"])
            elif msg["msg_type"] in ("display_data", "update_display_data"):
                shown.append(str(content["data"]))
            elif msg["msg_type"] == "error":
                shown.append("\n".join(content["traceback"]))

        reply = client.execute_interactive(code, timeout=300, output_hook=collect)
        assert reply["content"]["status"] == "ok", "".join(shown)
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
    text = "".join(shown)
    assert "done" in text
    # a tqdm widget where ipywidgets is installed, else its text bar, which Jupyter redraws
    assert re.search(r"saving slow \(streaming\)", text), text
    assert "40/40" in text


def _cli(*args: str) -> Any:
    from click.testing import CliRunner

    from cpr_zarr.cli import main

    return CliRunner().invoke(main, list(args), env={"CPR_ZARR_PROGRESS_SECONDS": "0.001"})


def test_verify_ls_and_gc_report_progress(tmp_path: Path) -> None:
    store = cpr_zarr.ResultStore(tmp_path / "s.zarr")
    for seed in range(4):
        store.save(microscopy_volume((8, 64, 64), seed=seed), name="vol", chunks=(2, 16, 16))
    store.save(np.arange(10), name="small")
    url = re.escape(store.url)

    verify = _cli("verify", store.url)
    assert verify.exit_code == 0, verify.output
    assert "OK: " in verify.stdout
    assert re.search(rf"verifying store {url}: \d+/5 results checked", verify.stderr)
    # and within one result, its chunks
    assert re.search(r"verifying vol-[0-9a-f]+: \d+/64 chunks checked", verify.stderr)
    assert "\r" not in verify.stderr

    # with the store's catalog, ls and gc read no result one by one: nothing to report;
    # a store without one (written before catalogs) is listed group by group, with progress
    commands = (("ls", store.url), ("gc", store.url, "--max-size", "1G"))
    for command in commands:
        result = _cli(*command)
        assert result.exit_code == 0, result.output
        assert "results listed" not in result.stderr
    shutil.rmtree(tmp_path / "s.zarr" / "_catalog")
    for command in commands:
        result = _cli(*command)
        assert result.exit_code == 0, result.output
        assert re.search(rf"listing store {url}: \d+/5 results listed", result.stderr)
