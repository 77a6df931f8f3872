"""The Prefect UI shows a flow run's cpr_zarr artifacts, in a real headless browser.

A real Prefect server serving its UI (``prefect server start``, offline: its static files
come from the installed package) and the small nuclei flow of ``tests/test_web.py``
(load -> denoise -> label -> measure) run against it; Playwright drives Debian's chromium
through the run's Artifacts tab to the flow's results table and a preview, in the default
(V2) UI, and opens the same artifacts in the V1 UI. Every request to another host is
refused, so this also shows the pages need no internet.

``CPR_ZARR_SCREENSHOTS=docs/images`` writes the README's screenshots of the Prefect UI.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from typing import TYPE_CHECKING

import numpy as np
import pytest
from playwright.sync_api import expect
from prefect.settings import PREFECT_API_URL, temporary_settings

from tests.test_web import chromium_path, make_flow, png_pixels, save_screenshot

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from playwright.sync_api import Page

    import cpr_zarr

TIMEOUT_MS = 60_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def prefect_ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``prefect server start`` with its UI, in a fresh home; its origin (``http://...``).

    (The session's ``prefect_server`` fixture runs Prefect's test server, which serves no UI.)
    """
    home = tmp_path_factory.mktemp("prefect-ui")
    port = free_port()
    origin = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_UI_API_URL=f"{origin}/api",  # what the pages call: this server
        PREFECT_UI_STATIC_DIRECTORY=str(home / "ui"),  # not inside the installed package
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT="false",
        PREFECT_LOGGING_LEVEL="WARNING",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
         "--port", str(port), "--no-scheduler", "--no-late-runs", "--analytics-off"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300  # a busy machine (CI, xdist workers) starts slowly
        while True:
            try:
                with urllib.request.urlopen(f"{origin}/api/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                out = proc.communicate()[0]
                raise AssertionError(f"prefect server start did not come up:\n{out[-3000:]}")
            time.sleep(0.5)
        yield origin
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def run(
    prefect_ui: str, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, dict[str, cpr_zarr.ZarrTarget]]:
    """The nuclei flow, run against that server: (flow run id, its results)."""
    folder = tmp_path_factory.mktemp("prefect-ui-flow")
    records = folder / "records"
    records.mkdir()
    with temporary_settings(updates={PREFECT_API_URL: f"{prefect_ui}/api"}):
        state = make_flow(str(folder / "results.zarr"), records)(return_state=True)
        assert state.is_completed(), state
        results: dict[str, cpr_zarr.ZarrTarget] = state.result()
    return str(state.state_details.flow_run_id), results


@pytest.fixture
def page(tmp_path: Path) -> Iterator[Page]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path())
        context = browser.new_context(viewport={"width": 1800, "height": 900})
        context.set_default_timeout(TIMEOUT_MS)
        expect.set_options(timeout=TIMEOUT_MS)
        # offline: nothing but this machine (the V2 UI asks an analytics host; refused)
        context.route(
            lambda url: not url.startswith("http://127.0.0.1:"), lambda route: route.abort()
        )
        yield context.new_page()
        browser.close()


def table_rows(page: Page) -> dict[str, dict[str, str]]:
    """The rendered table artifact: {result name: {column: cell text}}."""
    page.wait_for_selector("table tbody tr td")
    header = [h.strip() for h in page.locator("table thead th").all_inner_texts()]
    rows = {}
    for row in page.locator("table tbody tr").all():
        cells = [c.strip() for c in row.locator("td").all_inner_texts()]
        record = dict(zip(header, cells, strict=True))
        rows[record["result"]] = record
    return rows


def check_results_table(page: Page, results: dict[str, cpr_zarr.ZarrTarget]) -> None:
    rows = table_rows(page)
    assert sorted(rows) == sorted(t.name for t in results.values())
    for target in results.values():
        row = rows[target.name]
        assert row["hash"] == target.content_hash[:12]
        assert row["group"] == target.group_path
        assert row["cache hit"] == "no"
    assert rows["load_nuclei"]["kind"] == "image"
    assert rows["load_nuclei"]["physical size"] == "z 16 µm, y 64 µm, x 64 µm"
    assert rows["label"]["kind"] == "labels"
    assert rows["measure"]["kind"] == "table"
    assert rows["measure"]["ratio"] == "—"  # a missing value is a dash, not a list bullet
    assert page.locator("table li").count() == 0


def check_preview(page: Page, target: cpr_zarr.ZarrTarget) -> np.ndarray:
    """The preview's <img>: a decoded data-URI PNG, drawn, a picture rather than a blank."""
    image = page.locator('img[src^="data:image/png;base64,"]')
    expect(image).to_have_count(1)
    page.wait_for_function(
        "() => { const i = document.querySelector('img[src^=\"data:image/png\"]');"
        " return !!i && i.complete && i.naturalWidth > 0; }"
    )
    natural = image.evaluate("i => [i.naturalWidth, i.naturalHeight]")
    assert natural == [256, 256], natural  # 128 x 128 pixels of 0.5 µm, drawn at 256
    assert image.get_attribute("alt") == target.name
    assert target.content_hash[:12] in page.locator("h3", has_text=target.name).inner_text()
    box = image.bounding_box()
    assert box is not None
    assert box["width"] > 100
    assert box["height"] > 100
    pixels = png_pixels(image.screenshot())  # what the page shows, not the bytes it got
    assert pixels.std() > 10, "a blank preview"
    return pixels


def test_prefect_ui_shows_the_results_table_and_previews(
    prefect_ui: str, run: tuple[str, dict[str, cpr_zarr.ZarrTarget]], page: Page
) -> None:
    flow_run_id, results = run
    # the default UI (V2): the flow run's Artifacts tab lists the flow table and each
    # task run's table and previews (not the table result's: a table has no picture)
    artifacts_tab = f"{prefect_ui}/v2/runs/flow-run/{flow_run_id}?tab=Artifacts"
    page.goto(artifacts_tab)
    cards = page.locator('a[href*="/artifacts/"]')
    expect(cards).to_have_count(8)
    flow_table = cards.filter(has_text=f"cpr-zarr-results-{flow_run_id}")
    expect(flow_table).to_have_count(1)
    for task in ("load_nuclei", "denoise", "label", "measure"):
        expect(cards.filter(has_text=f"cpr_zarr results of task run {task}-")).to_have_count(1)
    for task in ("load_nuclei", "denoise", "label"):
        expect(cards.filter(has_text=f"cpr_zarr previews of task run {task}-")).to_have_count(1)
    page.get_by_role("tablist").evaluate("e => e.scrollIntoView({block: 'start'})")
    save_screenshot(page, "prefect-artifacts.png")
    # the flow's results table
    flow_table.click()
    page.wait_for_url(re.compile(r".*/artifacts/(artifact|key)/.*"))
    if "/artifacts/key/" in page.url:  # Prefect 3.8's V2 UI: the key's versions, then one
        page.locator('a[href*="/artifacts/artifact/"]').first.click()
        page.wait_for_url("**/artifacts/artifact/**")
    table_url = page.url
    check_results_table(page, results)
    save_screenshot(
        page, "prefect-results.png", clip={"x": 0, "y": 0, "width": 1800, "height": 520}
    )
    # a preview: the label image, coloured
    page.goto(artifacts_tab)
    cards.filter(has_text="cpr_zarr previews of task run label-").click()
    page.wait_for_url("**/artifacts/artifact/**")
    preview_url = page.url
    labels = check_preview(page, results["label"])
    assert np.abs(labels[..., 0] - labels[..., 1]).mean() > 5, "labels are not coloured"
    save_screenshot(
        page, "prefect-preview.png", clip={"x": 0, "y": 0, "width": 1800, "height": 720}
    )
    # the V1 UI renders the same artifacts
    for url in (table_url, preview_url):
        page.goto(url.replace("/v2/", "/").split("?")[0])
        if url == table_url:
            check_results_table(page, results)
        else:
            check_preview(page, results["label"])
