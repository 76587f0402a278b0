"""End to end, as a first-time researcher meets the dashboard: runs of two different models on the
Budget and Retrain pages, a running comparison's progress and its too-small warning, and the Setup page
following the chosen model. A real `streamlit run` server, Debian's chromium, and no request may leave this
machine."""
import re
import time

import pytest

from analysis.settings import RunSettings
from analysis.store.cache import Store
from tests.conftest import with_smollm2
from tests.pages.browser import launch_comparison, open_page, requests_leaving_localhost, serve
from tests.synthetic_store import fill

# Uniform rank 4 on every adaptable linear, r * (d_in + d_out) per module:
# MiniLM, 6 layers of query, key, value, attention.output.dense (384 -> 384) and two 384 <-> 1536 denses;
MINILM_R4 = 4 * (4 * (384 + 384) + 2 * (384 + 1536)) * 6                          # 165,888
# SmolLM2, 30 layers of q_proj, o_proj (576 -> 576), k_proj, v_proj (576 -> 192), gate, up, down (576 <-> 1536);
SMOLLM2_R4 = 4 * (2 * (576 + 576) + 2 * (576 + 192) + 3 * (576 + 1536)) * 30      # 1,221,120
SMOLLM2_R4_WITHOUT_DOWN = SMOLLM2_R4 - 4 * (1536 + 576) * 30                       # down_proj left out: 967,680
MINILM_TYPES = ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"]
SMOLLM2_TYPES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
DEAD_END = "No module type may receive rank"
DURATION = r"(\d+ s|\d+ min \d\d s)"   # analysis.jobs.launch.duration
MINILM = RunSettings(val_size=16, batch_size=8, max_length=32, device="cpu")
SMOLLM2 = RunSettings(model="smollm2", val_size=8, batch_size=8, max_length=32, device="cpu")
MINILM_METHODS = ["adalora", "cka", "grad_norm", "id", "shapley", "sora", "state_change"]   # the registry's order


def compute(cache, settings: RunSettings, *signals: str) -> None:
    from analysis.signals.registry import get_signal
    from analysis.signals.runner import run_signals

    run_signals(settings, [get_signal(name) for name in signals], store=Store(cache))


def fill_two_models(cache) -> None:
    """A run of each embedded model. MiniLM: gradient norms and hidden-state change computed, the other five
    signals' tables random in their real schema (tests/synthetic_store.py), eight plans with uniform LoRA's.
    SmolLM2: hidden-state change, a forward pass over 8 snippets (its cheapest real signal on a CPU)."""
    fill(cache, MINILM)
    compute(cache, MINILM, "grad_norm", "state_change")
    compute(cache, SMOLLM2, "state_change")


@pytest.fixture(scope="module")
def two_models(tmp_path_factory, dequantized_smollm2):
    cache = with_smollm2(tmp_path_factory.mktemp("two-models"), dequantized_smollm2)
    fill_two_models(cache)
    return cache


def choose(page, label: str, option: str) -> None:
    """Pick the option of a select box whose text contains `option`."""
    page.get_by_role("combobox", name=label).click()
    page.get_by_role("option", name=re.compile(re.escape(option))).click()


def wait_until(condition, what, timeout: float = 60):
    """Poll `condition` (a function returning a value or None) until it holds; its last value. `what` (a string,
    or a function giving one) says what was awaited if it never holds."""
    deadline = time.time() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.time() < deadline, f"timed out waiting for {what() if callable(what) else what}"
        time.sleep(0.5)


def table_rows(page, nth: int = 0) -> dict[str, list[str]]:
    """The rows of the page's nth data frame by their first cell, read from its accessible table (which the grid
    draws a few seconds after its canvas, and re-draws a moment after new data)."""
    frame = page.locator("[data-testid=stDataFrame]").nth(nth)
    rows = (row.locator("td").all_text_contents() for row in frame.locator("tbody tr").all())
    return {cells[0]: cells for cells in rows if cells}


def plan_rows(page, amount: int, methods: list[str]) -> dict[str, list[str]]:
    """The summary of plans once it lists uniform LoRA at `amount` and then `methods`."""
    def listed():
        rows = table_rows(page)
        return rows if list(rows) == ["uniform", *methods] and rows["uniform"][1] == str(amount) else None
    return wait_until(listed, lambda: f"the plans of uniform and {methods} at {amount:,}; shown: {table_rows(page)}")


def chips(multiselect) -> list[str]:
    return multiselect.locator("[data-tag]").evaluate_all("tags => tags.map(t => t.getAttribute('aria-label'))")


def expect_module_types(page, types: list[str]) -> None:
    """The module types chosen under Limits are `types` (once the page's run has replaced the previous run's
    multiselect, which has a key of its own model)."""
    limits = page.locator("[data-testid=stExpander]", has_text="Limits")
    if limits.locator("[data-testid=stMultiSelect]").first.is_hidden():
        limits.locator("summary").click()
    chosen = limits.locator("[data-testid=stMultiSelect]", has_text="Module types that may receive rank")
    wait_until(lambda: chips(chosen) == types, lambda: f"the module types {types}; the page shows {chips(chosen)}")


def expect_budget_plans(page, amount: int, methods: list[str], types: list[str]) -> None:
    """The Budget page shows uniform LoRA's and each method's plan at `amount` parameters, drawn as heatmaps
    titled with their parameter counts, each with its plan JSON button, and the run's module types under
    Limits."""
    page.get_by_text(f"Plans at {amount:,} trainable parameters").wait_for(timeout=90_000)
    rows = plan_rows(page, amount, methods)
    plot = page.locator(".js-plotly-plot", has=page.locator(".heatmaplayer")).first
    for method in ["uniform", *methods]:
        plot.get_by_text(method, exact=True).first.wait_for(timeout=60_000)     # the panel's title
    assert plot.get_by_text(f"{amount:,}").count() == sum(row[1] == str(amount) for row in rows.values())
    wait_until(lambda: plan_buttons(page) == ["uniform", *methods], lambda: f"plan JSON buttons {plan_buttons(page)}")
    assert page.get_by_text(DEAD_END).count() == 0
    expect_module_types(page, types)


def plan_buttons(page) -> list[str]:
    """The Plan JSON section's buttons (a figure's Download popover holds PDF, SVG, PNG and CSV ones)."""
    names = [text.split("\n")[-1].strip() for text in page.locator("[data-testid=stDownloadButton]").all_inner_texts()]
    return [name for name in names if name not in ("PDF", "SVG", "PNG", "CSV")]   # after the icon's name


def expect_nothing_cut_off(page) -> None:
    """Each plan JSON button shows its whole name, and each module name under the heatmaps lies inside the
    figure (with eight methods both were cut off)."""
    cut = page.locator("[data-testid=stDownloadButton] button").evaluate_all(
        "buttons => buttons.filter(b => [...b.querySelectorAll('*')].some(e => e.scrollWidth > e.clientWidth + 1))"
        ".map(b => b.innerText)")
    assert cut == [], f"buttons cut off: {cut}"
    outside = page.locator(".js-plotly-plot", has=page.locator(".heatmaplayer")).first.evaluate(
        """plot => { const box = plot.querySelector('.main-svg').getBoundingClientRect();
                     return [...plot.querySelectorAll('.xtick text')].filter(t => { const r = t.getBoundingClientRect();
                         return r.bottom > box.bottom + 1 || r.left < box.left - 1 || r.right > box.right + 1; })
                         .map(t => t.textContent); }""")
    assert outside == [], f"module names cut off at the figure's edge: {outside}"


def expect_retrain_plans(page, amount: int, methods: list[str], types: list[str]) -> None:
    """The Retrain page's plans at `amount`: uniform LoRA's and each method's, and the comparison can start."""
    plan_rows(page, amount, methods)
    assert page.get_by_text(DEAD_END).count() == 0 and page.get_by_text("has no plan at this budget").count() == 0
    assert page.get_by_role("button", name="Retrain and compare").is_enabled()
    expect_module_types(page, types)


@pytest.mark.slow
def test_switching_between_runs_of_two_models_keeps_plans_on_budget_and_retrain(two_models):
    """SmolLM2 (down_proj left out under Limits), MiniLM, SmolLM2 again, on the Budget page and then on the Retrain
    page: plans at each model's own budget every time, for every method the run offers, each model's module
    types kept as last chosen; MiniLM's eight plans with their JSON buttons and module names whole."""
    from playwright.sync_api import sync_playwright

    with serve(two_models) as url, sync_playwright() as playwright:
        browser, page = open_page(playwright)
        outside = requests_leaving_localhost(page)
        page.goto(f"{url}/budget")
        run = page.get_by_role("combobox", name="Run")
        run.wait_for(timeout=90_000)
        assert "SmolLM2" in run.input_value()   # the newest run first
        expect_budget_plans(page, SMOLLM2_R4, ["state_change"], SMOLLM2_TYPES)
        page.get_by_role("button", name="Remove down_proj").click()
        expect_budget_plans(page, SMOLLM2_R4_WITHOUT_DOWN, ["state_change"], SMOLLM2_TYPES[:-1])
        choose(page, "Run", "all-MiniLM-L6-v2")
        expect_budget_plans(page, MINILM_R4, MINILM_METHODS, MINILM_TYPES)
        expect_nothing_cut_off(page)
        choose(page, "Run", "SmolLM2")
        expect_budget_plans(page, SMOLLM2_R4_WITHOUT_DOWN, ["state_change"], SMOLLM2_TYPES[:-1])

        page.locator("[data-testid=stSidebarNav]").get_by_text("Retrain and compare").click()
        page.get_by_text("Plans at this budget").wait_for(timeout=60_000)
        assert "SmolLM2" in page.get_by_role("combobox", name="Run").input_value()   # the run chosen on Budget
        expect_retrain_plans(page, SMOLLM2_R4_WITHOUT_DOWN, ["state_change"], SMOLLM2_TYPES[:-1])
        choose(page, "Run", "all-MiniLM-L6-v2")
        expect_retrain_plans(page, MINILM_R4, MINILM_METHODS, MINILM_TYPES)
        choose(page, "Run", "SmolLM2")
        expect_retrain_plans(page, SMOLLM2_R4_WITHOUT_DOWN, ["state_change"], SMOLLM2_TYPES[:-1])
        browser.close()
    assert outside == [], f"the dashboard reached outside this machine: {outside[:5]}"


@pytest.mark.slow
def test_setup_follows_smollm2_without_a_label_column_and_with_costs_from_its_earlier_run(two_models):
    """Setup on a data file of one's own: MiniLM asks for a label column, SmolLM2 (a causal LM) does not; the signal
    costs are SmolLM2's own on this device, from the run the cache holds, and training signals are not chosen."""
    from playwright.sync_api import sync_playwright

    with serve(two_models) as url, sync_playwright() as playwright:
        browser, page = open_page(playwright)
        outside = requests_leaving_localhost(page)
        page.goto(url)
        page.get_by_text("Where should the LoRA rank go?").wait_for(timeout=90_000)
        choose(page, "Device", "cpu")
        choose(page, "Dataset", "Local file or hub dataset")
        page.get_by_label("Label column").wait_for(timeout=30_000)   # MiniLM classifies the labels
        assert page.get_by_label("Hub name or local directory").count() == 0   # an embedded model: no path field
        costs = wait_until(lambda: table_rows(page).get("grad_norm"), "the table of signal costs")
        assert re.fullmatch(f"about {DURATION}", costs[2]), costs   # what MiniLM's run took here

        choose(page, "Model", "SmolLM2-135M decoder")
        page.get_by_text("a decoder trains as a causal language model, so no label column").wait_for(timeout=30_000)
        wait_until(lambda: page.get_by_label("Label column").count() == 0, "the label column to go")
        assert page.get_by_label("Text column").count() == 1, page.get_by_label("Text column").count()
        assert page.get_by_label("Hub name or local directory").count() == 0
        page.get_by_text("Costs are the medians of earlier runs of smollm2 on this kind of device").wait_for()

        def smollm2_costs():   # the table re-drawn for SmolLM2: its state_change run has a cost
            costs = {name: row[2] for name, row in table_rows(page).items()}
            # both cells must have changed: MiniLM's run timed state_change too, so
            # that cell alone can be read off the table from before the switch
            redrawn = costs.get("state_change", "").startswith("about") and not costs.get("grad_norm", "").startswith(
                "about")
            return costs if redrawn else None
        costs = wait_until(smollm2_costs, "SmolLM2's costs")
        assert re.fullmatch(f"about {DURATION}", costs["state_change"]), costs   # what SmolLM2's run took here
        assert costs["grad_norm"] == "one pass over the data; seconds to minutes"   # not run for SmolLM2
        assert costs["sora"] == costs["shapley"] == "trains; minutes on a CPU"
        signals = page.locator("[data-testid=stMultiSelect]", has_text="Signals")
        chosen = chips(signals)
        assert "state_change" in chosen and not {"shapley", "sora", "adalora"} & set(chosen), chosen
        browser.close()
    assert outside == [], f"the dashboard reached outside this machine: {outside[:5]}"


@pytest.mark.slow
def test_a_running_comparison_tells_run_k_of_n_and_time_left_then_warns_it_is_too_small(cache_dir):
    """A comparison launched from the Retrain page (uniform and grad_norm, one seed, 16 test examples): while it
    runs, the job panel names the runs (both trained together on one copy of the model), k of 2 and the time left
    for the whole job; once done, the page says the comparison is too small to mean much."""
    from playwright.sync_api import sync_playwright

    from analysis.jobs import launch as jobs

    compute(cache_dir, MINILM, "grad_norm")
    with serve(cache_dir) as url, sync_playwright() as playwright:
        browser, page = open_page(playwright)
        outside = requests_leaving_localhost(page)
        page.goto(f"{url}/retrain")
        launch_comparison(page, seeds="0", steps=20, test_size=16, lr=0.003)
        page.get_by_text("Compare at r4").first.wait_for(timeout=60_000)

        # While the runs train, the bar's text: which runs, k of N, the step's time left and the whole job's.
        running = re.compile(r"Compare at r4: uniform, grad_norm: runs 1-2 of 2, 2 trained together \(1 of 2\) · .*"
                             f"about {DURATION} left in this step and {DURATION} in all")
        seen, deadline = [], time.time() + 400
        while not any(running.search(text) for text in seen):
            job = jobs.list_jobs(cache_dir)[0]
            assert job.state == "running" and time.time() < deadline, \
                f"the job is {job.state} and its panel never said run k of N with a total time left: {seen}"
            seen += [t for t in page.locator("[data-testid=stProgress]").all_inner_texts() if t not in seen]
            time.sleep(0.5)

        page.get_by_text("Mean ± standard deviation over the seeds that trained").wait_for(timeout=600_000)
        warnings = page.locator("[data-testid=stAlert]", has_text="Too small to mean much")
        warnings.first.wait_for(timeout=30_000)
        said = " ".join(warnings.all_inner_texts())
        assert "1 seed(s) per method: too few for a spread or a paired interval" in said, said
        assert "Only 16 test examples per run" in said and "20 training steps per run" in said, said
        browser.close()
    assert outside == [], f"the dashboard reached outside this machine: {outside[:5]}"
    comparison = next(e for e in Store(cache_dir).entries() if e.kind == "comparison")
    assert comparison.meta["seeds"] == [0] and comparison.meta["methods"] == ["uniform", "grad_norm"]
