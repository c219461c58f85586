"""What a person sees in the MLflow UI, checked in a real headless Chromium.

quick.yaml (300 steps, two seeds) is swept into a temporary store, `python -m experiments ui`
(what `make ui` runs) serves it on a free loopback port, and Playwright drives Debian's
Chromium: the runs page of the sweep in the model-training view, the parent run expanded,
every child run by name, the best runs' models in the Models column, param columns; then the
runs grouped by `setting` in two clicks, and the chart view: `train/loss` drawn from 200
points a run, one mean curve with a min–max band over the seeds for each setting, the
gradient check on a log10 axis that reads. Screenshots land in reports/e2e/. `.ci/run`
installs Chromium and Playwright and sets REQUIRE_E2E=1, so there a missing browser fails
instead of skipping.
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
from collections import Counter
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
OVERRIDES = {"steps": 300, "seeds": [0, 1]}  # more steps than a chart's 200 points; bands


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
    args = ["sweep", str(CONFIGS / "quick.yaml"), "--tracking-uri", uri, "--quiet"]
    assert run([*args, *(x for k, v in OVERRIDES.items() for x in ("--set", f"{k}={v}"))]) == 0
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
        assert url == f"http://127.0.0.1:{port}/#/experiments/1/runs?workflowType=machine_learning"
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


def test_runs_page_and_charts(served):
    sync_playwright = browser_or_skip()
    grid = load_sweep(CONFIGS / "quick.yaml", OVERRIDES).grid()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        page = browser.new_page(viewport={"width": 1800, "height": 1000})
        page.set_default_timeout(60_000)
        page.goto(served)
        runs_page(page, grid)
        charts(page)
        browser.close()
    assert (SCREENSHOTS / "runs-page.png").stat().st_size > 10_000
    assert (SCREENSHOTS / "charts.png").stat().st_size > 10_000


def runs_page(page, grid) -> None:
    """The sweep's parent, expanded: every child by name; two params picked as columns."""
    page.get_by_text(f"sweep · quick · {len(grid)} runs", exact=False).first.wait_for()
    # What a person first sees is the model-training view (the experiment's kind and the
    # link's workflowType say so), not the GenAI one with its judges and sessions.
    page.get_by_text("Model registry", exact=True).first.wait_for()
    for genai in ("Judges", "Sessions", "Prompts"):
        assert page.get_by_text(genai, exact=True).count() == 0, genai
    close = page.locator('[aria-label="Close"]')  # the assistant panel, where it opens
    if close.count():
        close.first.click()
    page.locator('button[data-component-id*="runnamecellrenderer"]').first.click()
    for point in grid:
        page.get_by_text(point.name, exact=True).first.wait_for()
    # The best run of each dataset × implementation links its model in the Models column.
    for dataset in ("iris", "breast_cancer"):
        for impl in ("manual", "autograd", "function"):
            page.get_by_text(f"{dataset}-{impl}", exact=True).first.wait_for()
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


def charts(page) -> None:
    """Group by setting (two clicks), then the chart view: curves of 200 points, seed bands,
    and a gradient check whose axis reads."""
    page.get_by_role("button", name="Group by").click()
    page.locator('[role="menu"]').get_by_text("setting", exact=True).first.click()
    page.keyboard.press("Escape")
    page.locator('label:has(input[name="runs-view-mode"][value="CHART"])').click()
    search = page.get_by_placeholder("Search metric charts")

    def history(response) -> bool:
        return "get-history-bulk-interval" in response.url and "train%2Floss" in response.url

    with page.expect_response(history) as asked:
        search.fill("train/loss")
    points = Counter(m["run_id"] for m in asked.value.json()["metrics"])
    assert len(points) >= 2 and min(points.values()) >= 200, points  # the page draws these
    legend = page.get_by_text(re.compile(r" · cpu · float32 \(train/loss\)$"))
    legend.first.wait_for()
    # A min–max band over the seeds. Plotly draws the fill after the legend (under CI's load, a
    # moment later), so wait for it rather than count at once; a page without one times out.
    page.locator(".js-fill").first.wait_for(state="attached")
    page.screenshot(path=str(SCREENSHOTS / "charts.png"))
    card = page.locator("div", has=page.locator(".js-plotly-plot")).filter(
        has=page.get_by_text("train/loss", exact=True)
    )
    card.last.screenshot(path=str(SCREENSHOTS / "loss-chart.png"))  # the chart alone
    search.fill("check/log10_grad_err_vs_terms")
    page.get_by_text("check/log10_grad_err_vs_terms", exact=True).first.wait_for()
    page.locator(".ytick text").first.wait_for()
    ticks = {t.text_content() for t in page.locator(".ytick text").all()}
    assert len(ticks) >= 2 and any("−" in t or "-" in t for t in ticks), ticks  # not 0, 0, 0
    page.screenshot(path=str(SCREENSHOTS / "check-charts.png"))
