"""End to end: the dashboard served by Streamlit, opened in headless Chromium (Debian package)."""
import os
from pathlib import Path

import pytest

from analysis.settings import RunSettings
from analysis.store.cache import Store
from tests.pages.browser import CHROMIUM_FLAGS, chromium_path, launch_comparison, requests_leaving_localhost, serve
from tests.synthetic_store import fill


@pytest.fixture
def dashboard(cache_dir):
    with serve(cache_dir) as url:
        yield url


@pytest.mark.slow
def test_budget_preview_follows_the_slider_in_chromium(dashboard, cache_dir, tmp_path):
    """A bookmark to the Budget page as a fresh server's first request: the grouped navigation, then the plans
    re-drawn as the average rank moves from 4 to 6."""
    from playwright.sync_api import sync_playwright

    fill(cache_dir, RunSettings(val_size=16, device="cpu"))
    uniform = 4 * sum(768 if i < 4 else 1920 for i in range(6)) * 6   # rank 4 on every MiniLM linear
    screenshot = Path(os.environ.get("SCREENSHOT_PATH", tmp_path / "budget.png"))
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1700})
        outside = requests_leaving_localhost(page)
        page.goto(f"{dashboard}/budget")
        page.get_by_text(f"Plans at {uniform:,} trainable parameters").wait_for(timeout=90_000)
        navigation = page.locator("[data-testid=stSidebarNav]").inner_text()
        assert "Budget and plans" in navigation and "Export for papers" in navigation and "budget\n" not in navigation
        panels = page.locator(".js-plotly-plot .heatmaplayer")
        panels.first.wait_for(timeout=30_000)
        assert page.locator(".js-plotly-plot").get_by_text(f"{uniform:,}").count() >= 1   # uniform's panel title
        slider = page.get_by_role("slider").first
        # 0.5 per step: average rank 4 -> 6, a step at a time until the slider says 6 (a rerun that redraws the page
        # can take the focus between presses, and a press then goes nowhere; seen once in a fresh clone's make test)
        for _ in range(12):
            if float(slider.get_attribute("aria-valuetext")) == 6:
                break
            slider.focus()
            page.keyboard.press("ArrowRight")
            page.wait_for_timeout(300)
        assert float(slider.get_attribute("aria-valuetext")) == 6
        larger = uniform * 6 // 4
        page.get_by_text(f"Plans at {larger:,} trainable parameters").wait_for(timeout=30_000)
        page.locator(".js-plotly-plot").get_by_text(f"{larger:,}").first.wait_for(timeout=30_000)
        page.screenshot(path=str(screenshot), full_page=True)
        browser.close()
    assert outside == [], f"the dashboard reached outside this machine: {outside[:5]}"
    assert screenshot.stat().st_size > 10_000


@pytest.mark.slow
def test_cka_and_id_pages_draw_real_results_in_chromium(dashboard, cache_dir, tmp_path):
    from playwright.sync_api import sync_playwright

    from analysis.settings import RunSettings
    from analysis.signals.registry import get_signal
    from analysis.signals.runner import run_signals

    run_signals(RunSettings(val_size=64, batch_size=16, device="cpu"), [get_signal("cka"), get_signal("id")],
                store=Store(cache_dir))
    screenshot = Path(os.environ.get("SCREENSHOT_PATH_REPRESENTATION", tmp_path / "representation.png"))
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1500})
        outside = requests_leaving_localhost(page)
        page.goto(dashboard)  # from the start page, as a user does: the sidebar link is the navigation
        page.get_by_text("Intrinsic dimension (GeLoRA)").click()
        page.get_by_text("GeLoRA rank lower bound").wait_for(timeout=60_000)
        assert page.locator(".js-plotly-plot").count() == 1
        page.get_by_text("CKA layer importance").first.click()
        page.get_by_text("Layer x layer CKA").wait_for(timeout=60_000)
        page.locator(".js-plotly-plot .heatmaplayer").first.wait_for(timeout=60_000)
        assert page.locator(".js-plotly-plot").count() == 2
        assert page.locator(".js-plotly-plot").get_by_text("degenerate").count() == 1
        page.screenshot(path=str(screenshot), full_page=True)
        browser.close()
    assert outside == [], f"the dashboard reached outside this machine: {outside[:5]}"
    assert screenshot.stat().st_size > 10_000


@pytest.mark.slow
def test_launching_a_comparison_from_the_browser_trains_and_shows_results(dashboard, cache_dir, tmp_path):
    """A user opens Retrain and compare, sets a tiny run, launches it and watches it finish: the job is a
    real background process and its results table appears without reloading the page."""
    from playwright.sync_api import sync_playwright

    from analysis.settings import RunSettings
    from analysis.signals.registry import get_signal
    from analysis.signals.runner import run_signals

    run_signals(RunSettings(val_size=16, batch_size=8, device="cpu"), [get_signal("cka")], store=Store(cache_dir))
    screenshot = Path(os.environ.get("SCREENSHOT_PATH_RETRAIN", tmp_path / "retrain.png"))
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1700})
        outside = requests_leaving_localhost(page)
        page.goto(dashboard)
        page.get_by_text("Retrain and compare").first.click()
        launch_comparison(page, seeds="0,1", steps=4, test_size=16)   # two seeds at one rate: 4 runs
        page.get_by_text("Compare at r4").first.wait_for(timeout=60_000)   # the job panel picked it up
        page.get_by_text("Mean ± standard deviation over the seeds that trained").wait_for(timeout=300_000)
        page.locator("th", has_text="accuracy (%)").first.wait_for(state="attached", timeout=30_000)  # the grid
        page.screenshot(path=str(screenshot), full_page=True)
        browser.close()
    assert outside == [], f"the dashboard reached outside this machine: {outside[:5]}"
    runs = [e for e in Store(cache_dir).entries() if e.kind == "retrain"]
    assert len(runs) == 4 and {e.meta["config"]["steps"] for e in runs} == {4}


@pytest.mark.slow
def test_a_comparison_at_two_budgets_draws_the_budget_curve_and_the_table_in_chromium(dashboard, cache_dir,
                                                                                     tmp_path):
    """Two budgets from the Retrain page: a real background comparison (one seed, no tuning, a few steps),
    then the results table with a row per budget and method and the budget curve with a line per method
    at the two budgets' parameter counts."""
    from playwright.sync_api import sync_playwright

    from analysis.settings import RunSettings
    from analysis.signals.registry import get_signal
    from analysis.signals.runner import run_signals

    # short examples and few steps: four runs on CI's two cores (30 steps of 128 tokens took over 400 s there)
    run_signals(RunSettings(val_size=16, batch_size=8, max_length=32, device="cpu"), [get_signal("grad_norm")],
                store=Store(cache_dir))
    screenshot = Path(os.environ.get("SCREENSHOT_PATH_BUDGETS", tmp_path / "budgets.png"))
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 2200})
        outside = requests_leaving_localhost(page)
        page.goto(f"{dashboard}/retrain")
        launch_comparison(page, seeds="0", steps=30, test_size=32, lr=0.003, budgets="r1,r2")
        page.get_by_text("Compare at r1, r2").first.wait_for(timeout=60_000)
        page.get_by_text("Budget curve", exact=True).wait_for(timeout=900_000)   # CI: two cores shared with the server
        curve = page.locator(".js-plotly-plot", has_text="Trainable LoRA parameters")
        curve.first.wait_for(timeout=60_000)
        curve.first.locator(".legendtext").first.wait_for(state="attached", timeout=30_000)
        legend = curve.first.locator(".legendtext").all_text_contents()
        assert "uniform" in legend and "grad_norm" in legend
        grid = page.locator("[data-testid=stDataFrame]").nth(1)
        grid.locator("th", has_text="did not train").first.wait_for(state="attached", timeout=30_000)
        page.screenshot(path=str(screenshot), full_page=True)
        browser.close()
    assert outside == [], f"the dashboard reached outside this machine: {outside[:5]}"
    comparison = next(e for e in Store(cache_dir).entries() if e.kind == "comparison")
    assert comparison.meta["budgets"] == ["r1", "r2"] and comparison.meta["tune_lrs"] == []
    runs = comparison.table("runs")
    assert sorted(zip(runs["budget"], runs["method"])) == [("r1", "grad_norm"), ("r1", "uniform"),
                                                           ("r2", "grad_norm"), ("r2", "uniform")]
    assert runs.groupby("budget")["trainable_params"].first().to_dict() == {"r1": 41472, "r2": 82944}


@pytest.mark.slow
def test_the_retrain_page_draws_the_pareto_figure_with_the_savings_in_chromium(small_comparison, tmp_path):
    """The shared small CPU comparison (two budgets, uniform on q_proj and v_proj, the three module baselines and a
    signal's plan) on the Retrain page: the Pareto figure with every method, the frontier, uniform's line and the
    crosses where each method reaches it, and the table of parameters each method needs."""
    from playwright.sync_api import sync_playwright

    cache, _ = small_comparison
    screenshot = Path(os.environ.get("SCREENSHOT_PATH_PARETO", tmp_path / "pareto.png"))
    with serve(cache) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 2600})
        outside = requests_leaving_localhost(page)
        page.goto(f"{url}/retrain")
        page.get_by_text("Pareto frontier and parameters to reach uniform").wait_for(timeout=90_000)
        figure = page.locator(".js-plotly-plot", has_text="Pareto frontier")
        figure.first.locator(".legendtext").first.wait_for(state="attached", timeout=60_000)
        legend = figure.first.locator(".legendtext").all_text_contents()
        assert legend == ["uniform", "uniform-attention", "uniform-mlp", "uniform-all", "grad_norm",
                          "Pareto frontier", "uniform at r16", "parameters to reach it"]
        assert figure.first.locator(".scatterlayer .trace").count() >= len(legend)
        page.locator("th", has_text="saved of uniform's").first.wait_for(state="attached", timeout=30_000)
        page.get_by_text("The interval resamples the seeds").wait_for(timeout=30_000)
        figure.first.scroll_into_view_if_needed()
        page.screenshot(path=str(screenshot), full_page=True)
        browser.close()
    assert outside == [], f"the dashboard reached outside this machine: {outside[:5]}"
    assert screenshot.stat().st_size > 10_000
