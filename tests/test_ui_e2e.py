"""What a person sees in the MLflow UI, checked in a real headless Chromium.

quick.yaml is swept into a temporary store, `python -m experiments ui` (what `make ui` runs)
serves it on a free loopback port, and Playwright drives Debian's Chromium: the runs page of the
sweep, the parent run expanded, every child run by name, a param column, and the metric charts
grouped by prefix. Screenshots land in reports/e2e/. `.ci/run` installs Chromium and Playwright
and sets REQUIRE_E2E=1, so there a missing browser fails instead of skipping.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from experiments.cli import CONFIGS, run
from experiments.config import load_sweep

pytestmark = pytest.mark.e2e
CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
SCREENSHOTS = Path(__file__).resolve().parents[1] / "reports" / "e2e"


def browser_or_skip():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    missing = sync_playwright is None or not shutil.which(CHROMIUM)
    if missing and os.environ.get("REQUIRE_E2E"):
        pytest.fail("REQUIRE_E2E is set but Playwright or /usr/bin/chromium is missing")
    if missing:
        pytest.skip("needs Playwright (pip) and Debian's chromium at /usr/bin/chromium")
    return sync_playwright


@pytest.fixture(scope="module")
def served(tmp_path_factory, free_port):
    """A swept store, served by `python -m experiments ui`; yields the runs page's URL."""
    browser_or_skip()
    folder = tmp_path_factory.mktemp("ui")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    assert run(["sweep", str(CONFIGS / "quick.yaml"), "--tracking-uri", uri, "--quiet"]) == 0
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "experiments", "ui", "--tracking-uri", uri, "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        lines = [server.stdout.readline() for _ in range(2)]
        url = lines[1].split("MLflow UI: ", 1)[1].strip()
        assert url == f"http://127.0.0.1:{port}/#/experiments/1/runs", lines
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                assert server.poll() is None, "the UI server exited"
                assert time.monotonic() < deadline, "the UI server did not start in 90 s"
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def test_runs_page_shows_the_sweep(served):
    sync_playwright = browser_or_skip()
    grid = load_sweep(CONFIGS / "quick.yaml", {}).grid()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        page = browser.new_page(viewport={"width": 1800, "height": 1000})
        page.set_default_timeout(60_000)
        page.goto(served)
        parent = page.get_by_text("sweep · quick · 12 runs", exact=False)
        parent.first.wait_for()
        close = page.locator('[aria-label="Close"]')  # the assistant panel, where it opens
        if close.count():
            close.first.click()
        page.locator('button[data-component-id*="runnamecellrenderer"]').first.click()
        for point in grid:
            page.get_by_text(point.name, exact=True).first.wait_for()
        # MLflow 3 lists params behind "Show more columns": pick two, as a person would.
        page.get_by_text("Show more columns").click()
        for name in ("impl", "lr"):
            page.get_by_placeholder("Search columns").fill(name)
            # The picker bolds the match inside every name holding it ("batch_<b>lr</b>s"):
            # click the entry whose whole title is the name. Parameters come before Tags.
            titles = page.locator('[class*="tree-title"]')
            titles.filter(has_text=re.compile(rf"^{name}$")).first.click()
        page.keyboard.press("Escape")
        page.locator('[col-id="params.`lr`"]').first.wait_for()
        page.locator('[col-id="params.`impl`"]').first.wait_for()
        page.screenshot(path=str(SCREENSHOTS / "runs-page.png"))

        page.locator('label:has(input[name="runs-view-mode"][value="CHART"])').click()
        # Charts come in sections by metric prefix; the first section is check/.
        page.get_by_text("check/grad_err_vs_terms", exact=True).first.wait_for()
        page.screenshot(path=str(SCREENSHOTS / "charts.png"))
        page.get_by_placeholder("Search metric charts").fill("train/loss")
        page.get_by_text("train/loss", exact=True).first.wait_for()
        browser.close()
    assert (SCREENSHOTS / "runs-page.png").stat().st_size > 10_000
