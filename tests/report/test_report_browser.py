"""The report in a real browser: Debian's headless Chromium (/usr/bin/chromium), driven by
Playwright, with every request that is not file: or data: blocked and recorded.

Asserts no console errors, no outside request, every section present and every figure drawn, hover
tooltips, and saves a screenshot to build/screenshots/. CI installs Chromium (.ci/run) and sets
TOYLENS_REQUIRE_BROWSER=1, so there a missing browser fails the test instead of skipping it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from report_runs import make_run

import toylens
from toylens.analysis.driver import analyze
from toylens.development import development
from toylens.llc import LLCSettings, llc_over_checkpoints

CHROMIUM = Path(os.environ.get("TOYLENS_CHROMIUM", "/usr/bin/chromium"))
SCREENSHOTS = Path(__file__).resolve().parents[2] / "build" / "screenshots"
# Without the background-networking flags Chromium tries to reach Google's services at start.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND",
]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def browser():
    missing = [] if CHROMIUM.exists() else [f"{CHROMIUM} (apt-get install chromium)"]
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing.append("the playwright package (pip install -e '.[dev]')")
    if missing:
        message = "browser test needs " + " and ".join(missing)
        if os.environ.get("TOYLENS_REQUIRE_BROWSER") == "1":
            pytest.fail(message + "; TOYLENS_REQUIRE_BROWSER=1 forbids skipping")
        pytest.skip(message)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        yield browser
        browser.close()


class Page:
    """A report opened in a fresh context, recording console errors and every request."""

    def __init__(self, browser, path: Path):
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.context = browser.new_context(viewport={"width": 1400, "height": 900})
        # Anything that is not the file itself or inline data is recorded and refused.
        self.context.route(
            "**/*",
            lambda route: route.continue_() if route.request.url.startswith(("file:", "data:")) else route.abort(),
        )
        self.page = self.context.new_page()
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.goto(path.as_uri())
        self.page.wait_for_selector("body[data-rendered=true]", timeout=20_000)

    def close(self) -> None:
        self.context.close()


@pytest.fixture(scope="module")
def report_page(browser, tmp_path_factory):
    out = tmp_path_factory.mktemp("browser")
    runs = [
        make_run(out / "runs", "mlp-1L", train={"epochs": 3, "log_checkpoints": 3}),
        make_run(out / "runs", "attn-2L", model={"n_layers": 2, "attn_only": True}, train={"epochs": 2}),
    ]
    for run in runs:
        analyze(run, "all", progress=False)
    llc_over_checkpoints(runs[0], "all", settings=LLCSettings(chains=2, draws=20, burnin=10), progress=False)
    development(runs[0], n_probe=8, device="cpu")  # stages of its loss and LLC: marks on every chart over steps
    result = toylens.report(runs, out / "report.html", png=False)
    page = Page(browser, result.path)
    yield result, page
    page.close()


def test_no_console_errors_and_no_outside_request(report_page):
    result, page = report_page
    assert page.errors == []
    assert page.requests and all(u.startswith(("file:", "data:")) for u in page.requests), page.requests


def test_every_section_and_figure_is_drawn(report_page):
    result, page = report_page
    shown = page.page.eval_on_selector_all("main section", "els => els.map(e => e.id)")
    assert shown == [f"sec-{s}" for s in result.sections]
    analysed = [
        "sparsity",
        "llc",
        "head-scores",
        "development",
        "attention",
        "circuits",
        "composition",
        "attribution",
        "patching",
        "edge-circuits",
        "ablation",
        "analysis-over-training",
    ]
    assert result.sections == ["summary", "training", "weights", *analysed, "configs"]
    undrawn = page.page.eval_on_selector_all(
        "[data-figure]", "els => els.filter(e => !e.querySelector('svg, canvas')).map(e => e.id)"
    )
    assert undrawn == []
    n_figures = page.page.eval_on_selector_all("[data-figure]", "els => els.length")
    assert n_figures >= 5
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.page.screenshot(path=str(SCREENSHOTS / "report.png"), full_page=True)


def test_stage_boundaries_are_drawn_on_charts_over_steps(report_page):
    result, page = report_page
    p = page.page
    assert p.locator("#fig-train-loss svg line.mark").count() >= 1
    assert p.locator("#fig-essential-dynamics-pc1 svg line.mark").count() >= 1
    assert p.locator("#fig-essential-dynamics svg line.mark").count() == 0  # its x axis is PC1, not steps
    title = p.eval_on_selector("#fig-train-loss svg line.mark title", "t => t.textContent")
    assert title.startswith("mlp-1L, step ")


def test_hover_shows_values(report_page):
    result, page = report_page
    overlay = page.page.locator("#fig-train-loss svg rect").last
    overlay.hover(position={"x": 1, "y": overlay.bounding_box()["height"] / 2})
    tip = page.page.locator("#tip")
    assert tip.is_visible()
    assert "step = 0" in tip.inner_text() and "loss = " in tip.inner_text()


def test_legend_click_hides_a_series(report_page):
    result, page = report_page
    paths = "#fig-weights-total svg path[stroke-width='1.8']"
    before = page.page.locator(paths).count()
    page.page.locator("#fig-weights-total .legend span").first.click()
    assert page.page.locator(paths).count() == before - 1
    page.page.locator("#fig-weights-total .legend span").first.click()
    assert page.page.locator(paths).count() == before


def test_attention_viewer_changes_with_the_head(report_page):
    result, page = report_page
    p = page.page
    canvas = "#fig-attention-viewer canvas[data-attn]"
    p.locator("#fig-attention-viewer").scroll_into_view_if_needed()
    before = p.eval_on_selector(canvas, "c => c.toDataURL()")
    run = p.eval_on_selector("#fig-attention-viewer select[data-control=run]", "s => s.value")
    assert p.get_attribute(canvas, "data-attn") == f"{run},0,0,0"
    assert "mlp-1L · epoch-0003" in p.inner_text("#fig-attention-viewer select[data-control=run] option:checked")
    p.select_option("#fig-attention-viewer select[data-control=head]", "1")
    assert p.get_attribute(canvas, "data-attn") == f"{run},0,1,0"
    after = p.eval_on_selector(canvas, "c => c.toDataURL()")
    assert after != before  # the drawn pattern changed, not just the label
    # Another run (2 layers) offers its own layers, and hovering a cell names both tokens.
    runs = p.eval_on_selector_all(
        "#fig-attention-viewer select[data-control=run] option", "os => os.map(o => o.textContent)"
    )
    p.select_option("#fig-attention-viewer select[data-control=run]", str(len(runs) - 1))
    assert p.eval_on_selector_all("#fig-attention-viewer select[data-control=layer] option", "os => os.length") == 2
    p.locator(canvas).hover(position={"x": p.eval_on_selector(canvas, "c => c.clientWidth") - 10, "y": 5})
    assert "attention = " in p.locator("#tip").inner_text()
    p.locator("#fig-attention-viewer").screenshot(path=str(SCREENSHOTS / "attention-viewer.png"))
    assert page.errors == []


def test_chromium_is_what_ci_installs():
    """The test above must not pass by skipping in CI: .ci/run installs the browser and demands it."""
    ci = (Path(__file__).resolve().parents[2] / ".ci" / "run").read_text()
    assert "apt-get install" in ci and "chromium" in ci and "TOYLENS_REQUIRE_BROWSER=1" in ci
    if os.environ.get("CI"):
        assert shutil.which(str(CHROMIUM)) or CHROMIUM.exists()
