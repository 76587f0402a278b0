"""Every dashboard page under Streamlit's AppTest, on stores the real runner filled with synthetic tables of each
signal's real schema (tests/synthetic_store.py): an empty cache, the embedded MiniLM encoder with five signals,
MiniLM with only CKA and intrinsic dimension, and the 30-layer SmolLM2 decoder. No page may load model weights:
every test runs with the model loaders replaced by a function that fails (section 9 also refuses fingerprinting
the weights and reading the data).

Expected values are computed here from the stored tables with pandas and from the allocator, not read back from
the figures' own code.
"""
from __future__ import annotations

import dataclasses
import io
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from analysis.jobs import launch as jobs
from analysis.allocation.allocate import allocate
from analysis.allocation.budgets import uniform_cost
from analysis.settings import Limits
from analysis.signals.context import identify
from analysis.settings import RunSettings, from_dict
from analysis.planning.methods import layout_for, method_scores
from analysis.planning.plan_json import flat_plan, plan_ranks
from analysis.store.cache import Store
from tests.conftest import chart_specs, with_smollm2
from tests.pages.signal_page import signal_page
from tests.synthetic_store import fill

REPO = Path(__file__).resolve().parents[2]
PAGES = REPO / "views"
MINILM = RunSettings(val_size=16, device="cpu")
SMOLLM2 = RunSettings(model="smollm2", val_size=16, device="cpu")
FIVE = ["adalora", "cka", "id", "shapley", "sora"]        # the registry's order, which every page follows
MINILM_TYPES = ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"]
SMOLLM2_TYPES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TITLES = {"adalora": "AdaLoRA sensitivity", "cka": "CKA layer importance", "id": "Intrinsic dimension (GeLoRA)",
          "shapley": "Shapley sensitivity (ShapLoRA)", "sora": "SoRA gate sparsity"}


# --- fixtures ------------------------------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def no_model_weights(monkeypatch):
    """Pages read tables and configs only: any attempt to load weights fails the page (and so the test).
    Module-scoped stores are built before this takes effect (higher scopes set up first)."""
    import transformers

    import analysis.signals.context
    import analysis.training.retrain
    import analysis.model.sources
    import analysis.model.sources.models

    def refuse(*args, **kwargs):
        raise AssertionError("a page tried to load model weights")

    for module in (analysis.signals.context, analysis.training.retrain, analysis.model.sources, analysis.model.sources.models):
        monkeypatch.setattr(module, "load_model", refuse)
    monkeypatch.setattr(transformers.PreTrainedModel, "from_pretrained", classmethod(refuse))


@pytest.fixture(autouse=True)
def fresh_streamlit_caches():
    """planning() and cached_scores() are st.cache_resource entries keyed by the run's context key, which is the
    same for the same setting in every cache directory: without this, a page would plan from an earlier test's
    store."""
    st.cache_resource.clear()
    st.cache_data.clear()
    yield
    st.cache_resource.clear()
    st.cache_data.clear()


@pytest.fixture(scope="module")
def minilm_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("minilm-store")
    fill(root, MINILM)
    return root


@pytest.fixture
def minilm(minilm_dir, monkeypatch) -> Store:
    monkeypatch.setenv("ANALYSIS_CACHE_DIR", str(minilm_dir))
    return Store(minilm_dir)


@pytest.fixture(scope="module")
def smollm2_dir(tmp_path_factory, dequantized_smollm2) -> Path:
    root = with_smollm2(tmp_path_factory.mktemp("smollm2-store"), dequantized_smollm2)
    fill(root, SMOLLM2)
    return root


@pytest.fixture
def smollm2(smollm2_dir, monkeypatch) -> Store:
    monkeypatch.setenv("ANALYSIS_CACHE_DIR", str(smollm2_dir))
    return Store(smollm2_dir)


@pytest.fixture
def partial(cache_dir) -> Store:
    """MiniLM with only the two representation signals."""
    return fill(cache_dir, MINILM, signals=("cka", "id"))


@pytest.fixture
def deferred(monkeypatch) -> dict:
    """What each download button would send when clicked: the pages pass callables (files are made on click),
    which Streamlit registers with the media file manager; record them by their placeholder file id."""
    from streamlit.runtime.media_file_manager import MediaFileManager

    made, original = {}, MediaFileManager.add_deferred

    def add_deferred(self, data_callable, *args, **kwargs):
        file_id = original(self, data_callable, *args, **kwargs)
        made[file_id] = data_callable
        return file_id

    monkeypatch.setattr(MediaFileManager, "add_deferred", add_deferred)
    return made


def click_download(app: AppTest, deferred: dict, key: str):
    """The file behind the download button with this key, as the page would make it on a click, as text
    (Streamlit sends a str as its UTF-8 bytes, so either is the same file)."""
    (button,) = [b for b in app.get("download_button") if b.key == key]
    data = deferred[button.proto.deferred_file_id]()
    return data.decode() if isinstance(data, bytes) else data


# --- helpers -------------------------------------------------------------------------------------------------

def run_page(name: str) -> AppTest:
    """A page by its file under views/, or a signal's own page by the signal's name."""
    page = PAGES / f"{name}.py"
    return (AppTest.from_file(str(page), default_timeout=120) if page.exists() else signal_page(name)).run()


def no_exception(app: AppTest) -> None:
    assert not app.exception, [e.message for e in app.exception]


def newest(store: Store) -> dict:
    found = {}
    for entry in store.entries():    # newest first
        found.setdefault(entry.meta["signal"], entry)
    return found


def per_module(name: str, entry) -> pd.DataFrame:
    """layer, module, value of a signal, straight from its stored tables."""
    table = entry.table("modules") if name in ("shapley", "adalora") else entry.table()
    return table[["layer", "module", "value"]]


def per_layer(name: str, entry) -> pd.DataFrame:
    if name == "shapley":
        return entry.table("layers")[["layer", "value"]]
    return per_module(name, entry).groupby("layer", as_index=False)["value"].sum()


def grid(frame: pd.DataFrame, layers, modules) -> np.ndarray:
    return (frame.pivot(index="layer", columns="module", values="value")
            .reindex(index=list(layers), columns=list(modules)).to_numpy(dtype=float))


def z_of(trace) -> np.ndarray:
    return np.array([[np.nan if v is None else v for v in row] for row in trace["z"]], dtype=float)


def panel_titles(spec) -> list[str]:
    return [a["text"] for a in spec["layout"].get("annotations", [])]


def planning_inputs(store: Store):
    """The prepared setting and layout of the store's only run, built here the way a command-line user would."""
    run = identify(from_dict(RunSettings, store.entries()[0].meta["settings"]), store)
    return run, layout_for(run)


def expected_plans(store: Store, methods: list[str], budget: int):
    prepared, layout = planning_inputs(store)
    limits = Limits(module_types=tuple(layout.module_types))   # what the page's default limits amount to
    return {m: allocate(None if m == "uniform" else method_scores(prepared, m, layout), layout, budget, limits)
            for m in methods}, layout


def rank_grid(layout, ranks: np.ndarray) -> np.ndarray:
    frame = pd.DataFrame({"layer": [m.layer for m in layout.modules], "module": [m.name for m in layout.modules],
                          "value": ranks})
    return grid(frame, range(layout.num_layers), layout.module_types)


def download_keys(app: AppTest) -> set[str]:
    return {button.key for button in app.get("download_button") if button.key}


def is_gray(colour: str) -> bool:
    colour = colour.strip().lower()
    if colour.startswith("#"):
        r, g, b = (int(colour[i:i + 2], 16) for i in (1, 3, 5))
    else:
        r, g, b = (round(float(v)) for v in re.findall(r"[\d.]+", colour)[:3])
    return r == g == b


# --- 1. an empty cache -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("page, message", [
    ("setup", "No results yet: run an analysis above"),
    ("overview", "No signals computed yet: run an analysis on the Setup page"),
    ("shapley", "No Shapley or AdaLoRA results yet: run an analysis with the shapley and adalora signals"),
    ("sora", "No SoRA results yet: run an analysis with the sora signal"),
    ("cka", "No CKA results yet: run an analysis with the cka signal"),
    ("id", "No intrinsic-dimension results yet: run an analysis with the id signal"),
    ("budget", "until then only uniform LoRA can be planned"),
    ("retrain", "No signals computed yet: run an analysis on the Setup page"),
    ("export", "No signals computed yet: run an analysis on the Setup page"),
])
def test_with_an_empty_cache_every_page_says_what_to_run(cache_dir, page, message):
    app = run_page(page)
    no_exception(app)
    assert any(message in info.value for info in app.info), [info.value for info in app.info]
    tables = [frame.value for frame in app.dataframe]
    if page == "setup":   # what each signal would cost is shown before any run; no table of runs
        assert [list(table.columns) for table in tables] == [["signal", "what", "cost here"]]
        tables = []
    assert not app.get("plotly_chart") and not tables


# --- 2. every page on the full MiniLM store ----------------------------------------------------------------

def test_overview_scales_each_signal_by_its_peak_and_measures_agreement_per_layer(minilm):
    app = run_page("overview")
    no_exception(app)
    info = " ".join(i.value for i in app.info)
    assert "`grad_norm`" in info and "`state_change`" in info and "`shapley`" not in info
    specs = chart_specs(app)
    assert len(specs) == 3
    heatmaps, curves, agreement = specs
    entries = newest(minilm)

    traces = [t for t in heatmaps["data"] if t["type"] == "heatmap" and "coloraxis" in t]
    assert len(traces) == 5 and panel_titles(heatmaps) == FIVE
    for name, trace in zip(FIVE, traces):
        modules = ["block"] if name in ("cka", "id") else MINILM_TYPES
        reference = per_module(name, entries[name])
        assert trace["x"] == modules and list(trace["y"]) == list(range(6))
        np.testing.assert_allclose(z_of(trace), grid(reference, range(6), modules) / reference["value"].abs().max())
        # each panel on the scale its own values need: a signed signal never changes the others' colours
        signed = (reference["value"] < 0).any()
        assert trace["coloraxis"] == ("coloraxis2" if signed else "coloraxis"), name
    assert heatmaps["layout"]["coloraxis"]["cmin"] == 0 and heatmaps["layout"]["coloraxis"]["cmax"] == 1
    # no signal here has an undefined cell (tests/reporting checks the grey cells of one that has)
    assert not [t for t in heatmaps["data"] if t["type"] == "heatmap" and "coloraxis" not in t]

    lines = {t["name"]: t for t in curves["data"] if t.get("mode") == "lines+markers"}
    assert list(lines) == FIVE
    for name in FIVE:
        reference = per_layer(name, entries[name]).sort_values("layer")
        np.testing.assert_allclose(lines[name]["y"], reference["value"] / reference["value"].abs().max())
    assert sum(t.get("fill") == "toself" for t in curves["data"]) == 1    # Shapley's standard-error band only

    matrix = agreement["data"][0]
    assert matrix["x"] == FIVE and matrix["y"] == FIVE
    z = z_of(matrix)
    for i, a in enumerate(FIVE):
        for j, b in enumerate(FIVE):
            joined = per_layer(a, entries[a]).merge(per_layer(b, entries[b]), on="layer")
            assert z[i, j] == pytest.approx(joined["value_x"].corr(joined["value_y"], method="spearman"))
    assert len(app.get("download_button")) == 12       # PDF, SVG, PNG and CSV of each of the three figures


def test_shapley_page_shows_every_view_and_the_agreement_with_adalora(minilm):
    app = run_page("shapley")
    no_exception(app)
    entries = newest(minilm)
    shapley, adalora = entries["shapley"], entries["adalora"]
    assert [m.value for m in app.metric] == ["64", "0.4000", "0.7000"]
    specs = chart_specs(app)
    assert len(specs) == 5    # layers, modules, ranks, convergence, agreement with AdaLoRA (no captum reference)
    layers = shapley.table("layers")
    bars = specs[0]["data"][0]
    np.testing.assert_allclose(bars["y"], layers["value"])
    np.testing.assert_allclose(bars["error_y"]["array"], layers["stderr"])
    modules = specs[1]["data"][0]
    assert modules["x"] == MINILM_TYPES
    np.testing.assert_allclose(z_of(modules), grid(shapley.table("modules"), range(6), MINILM_TYPES))
    assert len(specs[2]["data"][0]["y"]) == 36 and specs[2]["data"][0]["x"] == list(range(8))
    assert sum(t.get("mode") == "lines" and "name" in t for t in specs[3]["data"]) == 6
    joined = shapley.table("modules").merge(adalora.table("modules"), on=["layer", "module"])
    rho = joined["value_x"].corr(joined["value_y"], method="spearman")
    assert specs[4]["layout"]["title"]["text"].endswith(f"Spearman {rho:.2f}")
    assert any("shapley.reference=true" in c.value for c in app.caption)


def test_sora_page_follows_the_training_step(minilm):
    app = run_page("sora")
    no_exception(app)
    entry = newest(minilm)["sora"]
    table, snapshots = entry.table(), entry.table("snapshots")
    assert app.metric[0].value == str(int(table["value"].sum()))
    slider = app.select_slider[0]
    assert list(slider.options) == ["10", "20", "30", "40"] and slider.value == 40   # the end of training
    specs = chart_specs(app)
    assert len(specs) == 3

    def shown(step):
        frame = snapshots[snapshots["step"] == step].rename(columns={"nonzero": "value"})
        return grid(frame, range(6), MINILM_TYPES)

    np.testing.assert_array_equal(z_of(specs[0]["data"][0]), shown(40))
    counts = table["value"].value_counts().reindex(range(9), fill_value=0)
    assert specs[1]["data"][0]["x"] == list(range(9)) and specs[1]["data"][0]["y"] == counts.tolist()
    assert specs[2]["data"][1]["y"] == entry.table("schedule")["total_rank"].tolist()
    slider.set_value(10).run()
    no_exception(app)
    first = chart_specs(app)[0]
    np.testing.assert_array_equal(z_of(first["data"][0]), shown(10))
    assert "step 10" in first["layout"]["title"]["text"]


def test_id_and_cka_pages_show_dimensions_bounds_and_cka(minilm):
    id_page, cka_page = run_page("id"), run_page("cka")
    no_exception(id_page)
    no_exception(cka_page)
    entries = newest(minilm)
    [ident], (cka, matrix) = chart_specs(id_page), chart_specs(cka_page)
    dimensions, bounds = entries["id"].table("dimensions"), entries["id"].table()
    line, bars = ident["data"]
    assert line["x"] == list(range(-1, 6)) and np.allclose(line["y"], dimensions["id"])
    assert bars["x"] == list(range(6)) and bars["y"] == bounds["value"].tolist()
    table = entries["cka"].table()
    assert cka["data"][0]["x"] == list(range(6)) and np.allclose(cka["data"][0]["y"], table["value"])
    square = entries["cka"].table("matrix").pivot(index="layer", columns="layer2", values="value")
    np.testing.assert_allclose(z_of(matrix["data"][0]), square.to_numpy())
    assert matrix["data"][0]["x"] == ["emb", "0", "1", "2", "3", "4", "5"]


def test_retrain_page_plans_every_signal_at_the_default_budget(minilm):
    app = run_page("retrain")
    no_exception(app)
    plans = app.dataframe[0].value
    prepared, layout = planning_inputs(minilm)
    budget = uniform_cost(layout, 4)
    assert plans["method"].tolist() == ["uniform", *FIVE]
    assert plans["trainable params"].iloc[0] == budget and (plans["trainable params"] <= budget).all()
    assert [b for b in app.button if b.label == "Retrain and compare"][0].proto.disabled is False
    assert any("No comparison has finished" in info.value for info in app.info)


# --- 3. the Budget page ------------------------------------------------------------------------------------------

def test_budget_plans_every_method_within_the_uniform_budget(minilm, deferred):
    app = run_page("budget")
    no_exception(app)
    prepared, layout = planning_inputs(minilm)
    budget = uniform_cost(layout, 4)
    assert budget == 4 * 6 * (4 * (384 + 384) + 2 * (384 + 1536)) == 165_888   # uniform rank 4 on MiniLM
    summary = app.dataframe[0].value
    assert summary["method"].tolist() == ["uniform", *FIVE]
    assert summary["trainable params"].iloc[0] == budget and (summary["trainable params"] <= budget).all()

    plans, _ = expected_plans(minilm, ["uniform", *FIVE], budget)
    specs = chart_specs(app)
    assert len(specs) == 1
    traces = specs[0]["data"]
    titles = [t.split("<br>") for t in panel_titles(specs[0])]
    assert [method for method, _ in titles] == ["uniform", *FIVE] and len(traces) == 6
    for (method, cost), trace in zip(titles, traces):
        assert cost == f"{plans[method].cost:,}"
        assert trace["x"] == MINILM_TYPES and list(trace["y"]) == list(range(6))
        np.testing.assert_array_equal(z_of(trace), rank_grid(layout, plans[method].ranks))
    assert summary.set_index("method").loc[FIVE, "trainable params"].tolist() == [plans[m].cost for m in FIVE]
    # one plan JSON per planned method, labelled with the method
    plan_buttons = {b.key: b.label for b in app.get("download_button") if (b.key or "").startswith("plan-")}
    assert plan_buttons == {f"plan-{m}": m for m in ["uniform", *FIVE]}
    for method in ["uniform", *FIVE]:
        plan = flat_plan(json.loads(click_download(app, deferred, f"plan-{method}")), method)
        assert plan["signal"] == method and plan["budget"] == budget
        assert plan["trainable_params"] == plans[method].cost
        assert plan_ranks(plan) == {m.path: int(r) for m, r in zip(layout.modules, plans[method].ranks) if r > 0}
        assert plan["settings"]["val_size"] == 16
    table = pd.read_csv(io.StringIO(click_download(app, deferred, f"csv-plans_{budget}")))
    assert len(table) == 6 * 36 and set(table["method"]) == {"uniform", *FIVE}


def test_budget_slider_halves_the_budget_and_replans(minilm):
    app = run_page("budget")
    before = z_of(chart_specs(app)[0]["data"][0])
    app.slider[0].set_value(2.0).run()
    no_exception(app)
    prepared, layout = planning_inputs(minilm)
    summary = app.dataframe[0].value
    assert summary["trainable params"].iloc[0] == uniform_cost(layout, 4) // 2 == uniform_cost(layout, 2)
    assert (summary["trainable params"] <= uniform_cost(layout, 2)).all()
    traces = chart_specs(app)[0]["data"]
    assert not np.array_equal(z_of(traces[0]), before)
    plans, _ = expected_plans(minilm, ["uniform", *FIVE], uniform_cost(layout, 2))
    for method, trace in zip(["uniform", *FIVE], traces):
        np.testing.assert_array_equal(z_of(trace), rank_grid(layout, plans[method].ranks))


def test_budget_difference_view_subtracts_uniform_and_drops_its_panel(minilm):
    app = run_page("budget")
    toggle = app.toggle[0]
    assert toggle.label == "Show each plan minus uniform LoRA's ranks" and toggle.value is False
    toggle.set_value(True).run()
    no_exception(app)
    prepared, layout = planning_inputs(minilm)
    plans, _ = expected_plans(minilm, ["uniform", *FIVE], uniform_cost(layout, 4))
    spec = chart_specs(app)[0]
    assert [t.split("<br>")[0] for t in panel_titles(spec)] == FIVE
    assert len(spec["data"]) == 5
    for method, trace in zip(FIVE, spec["data"]):
        np.testing.assert_array_equal(z_of(trace), rank_grid(layout, plans[method].ranks - plans["uniform"].ranks))


def test_budget_too_small_is_explained_row_by_row(minilm):
    app = run_page("budget")
    app.radio[0].set_value("parameters").run()
    app.number_input[0].set_value(100).run()
    assert not app.dataframe     # no table of empty cells: every method says why it has no plan
    notes = [w.value for w in app.warning if "has no plan at this budget" in w.value]
    assert [note.split("**")[1] for note in notes] == ["uniform", *FIVE]
    assert all("A budget of 100 parameters is below the smallest possible plan" in note for note in notes)
    assert not [b for b in app.get("download_button") if (b.key or "").startswith("plan-")]


def test_a_half_rank_budget_says_why_uniform_spends_less(minilm):
    app = run_page("budget")
    app.slider[0].set_value(6.5).run()
    no_exception(app)
    summary = app.dataframe[0].value
    per_rank = 6 * (4 * (384 + 384) + 2 * (384 + 1536))   # one rank on every MiniLM linear
    assert summary.set_index("method").loc["uniform", "trainable params"] == 6 * per_rank
    note = next(c.value for c in app.caption if c.value.startswith("**uniform**"))
    assert f"rank 6 costs {6 * per_rank:,} parameters (92% of the budget) and rank 7 would cost {7 * per_rank:,}" in note
    app.slider[0].set_value(0.5).run()
    no_exception(app)
    assert any(w.value.startswith("**uniform** has no plan at this budget") for w in app.warning)
    assert all("None" not in frame.value.astype(str).to_string() for frame in app.dataframe)


def test_budget_too_small_draws_no_empty_plan_figure(minilm, deferred):
    app = run_page("budget")
    app.radio[0].set_value("parameters").run()
    app.number_input[0].set_value(100).run()
    no_exception(app)
    for button in app.get("download_button"):    # a table offered for download must download
        if button.label == "CSV":
            deferred[button.proto.deferred_file_id]()
    assert not app.get("plotly_chart")


def test_budget_replans_after_a_signal_is_recomputed(cache_dir):
    store = fill(cache_dir, MINILM, signals=("shapley",), seed=0)
    first = z_of(chart_specs(run_page("budget"))[0]["data"][1])
    store.discard(store.entries()[0].key)            # what `python -m analysis run --force` does first
    fill(cache_dir, MINILM, signals=("shapley",), seed=1)
    plans, layout = expected_plans(store, ["shapley"], uniform_cost(planning_inputs(store)[1], 4))
    again = z_of(chart_specs(run_page("budget"))[0]["data"][1])   # same server process, new session
    assert not np.array_equal(first, rank_grid(layout, plans["shapley"].ranks))   # the scores did change
    np.testing.assert_array_equal(again, rank_grid(layout, plans["shapley"].ranks))


# --- 4. budget state shared across pages (through app.py) ------------------------------------------------------

def test_a_budget_set_on_the_budget_page_is_the_budget_on_retrain_and_export(minilm):
    prepared, layout = planning_inputs(minilm)
    app = AppTest.from_file(str(REPO / "app.py"), default_timeout=120).run()
    no_exception(app)
    assert app.title[0].value == "Where should the LoRA rank go?"
    app.switch_page("views/budget.py").run()
    assert app.title[0].value == "Budget and plans"
    app.slider[0].set_value(6.0).run()
    assert app.dataframe[0].value["trainable params"].iloc[0] == uniform_cost(layout, 6)
    app.switch_page("views/retrain.py").run()
    no_exception(app)
    assert app.title[0].value == "Retrain and compare" and app.slider[0].value == 6.0
    assert app.dataframe[0].value["trainable params"].iloc[0] == uniform_cost(layout, 6)
    app.switch_page("views/setup.py").run()         # a page without the controls in between
    app.switch_page("views/retrain.py").run()
    assert app.slider[0].value == 6.0
    app.radio[0].set_value("parameters").run()
    app.number_input[0].set_value(100_000).run()
    assert (app.dataframe[0].value["trainable params"] <= 100_000).all()
    app.switch_page("views/budget.py").run()
    no_exception(app)
    assert app.radio[0].value == "parameters" and app.number_input[0].value == 100_000
    assert app.subheader[0].value == "Plans at 100,000 trainable parameters"
    app.switch_page("views/export.py").run()
    no_exception(app)
    assert "Plans at 100,000 parameters" in [s.value for s in app.subheader]
    assert {"export-plans_100000-pdf", "export-plans_100000_vs_uniform-csv"} <= download_keys(app)


def test_opening_a_run_from_setup_goes_to_all_signals(minilm):
    app = AppTest.from_file(str(REPO / "app.py"), default_timeout=120).run()
    [b for b in app.button if b.label == "Open on the signal pages"][0].click().run()
    no_exception(app)
    assert app.title[0].value == "All signals" and len(app.get("plotly_chart")) == 3
    assert app.session_state["current_run"] == minilm.entries()[0].meta["context_key"]


# --- 5. the 30-layer SmolLM2 decoder -------------------------------------------------------------------------------

@pytest.mark.slow
def test_smollm2_overview_labels_every_one_of_30_layers(smollm2):
    app = run_page("overview")
    no_exception(app)
    heatmaps = chart_specs(app)[0]
    layout = heatmaps["layout"]
    assert layout["yaxis"]["dtick"] == 1 and layout["height"] >= 20 * 30
    traces = [t for t in heatmaps["data"] if t["type"] == "heatmap"]
    assert len(traces) == 5
    for name, trace in zip(FIVE, traces):
        assert list(trace["y"]) == list(range(30)) and len(trace["z"]) == 30
        assert trace["x"] == (["block"] if name in ("cka", "id") else SMOLLM2_TYPES)
    for panel in [heatmaps["layout"][key]["domain"] for key in heatmaps["layout"] if key.startswith("xaxis")]:
        assert 0 <= panel[0] < panel[1] <= 1
    # the Export page previews this figure first, in print size
    app = run_page("export")
    no_exception(app)
    preview = chart_specs(app)[0]
    assert preview["layout"]["width"] == round(3.4 * 96) and len(preview["data"]) == 5


@pytest.mark.slow
def test_smollm2_budget_heatmaps_have_30_rows_of_7_modules(smollm2):
    app = run_page("budget")
    no_exception(app)
    prepared, layout = planning_inputs(smollm2)
    assert layout.num_layers == 30 and layout.module_types == SMOLLM2_TYPES
    budget = uniform_cost(layout, 4)
    summary = app.dataframe[0].value
    assert summary["trainable params"].iloc[0] == budget and (summary["trainable params"] <= budget).all()
    spec = chart_specs(app)[0]
    assert spec["layout"]["yaxis"]["dtick"] == 1 and spec["layout"]["height"] >= 20 * 30
    plans, _ = expected_plans(smollm2, ["uniform", *FIVE], budget)
    assert len(spec["data"]) == 6
    for method, trace in zip(["uniform", *FIVE], spec["data"]):
        assert trace["x"] == SMOLLM2_TYPES and list(trace["y"]) == list(range(30))
        np.testing.assert_array_equal(z_of(trace), rank_grid(layout, plans[method].ranks))


@pytest.mark.slow
def test_smollm2_signal_pages_draw_all_30_layers(smollm2):
    app = run_page("shapley")
    no_exception(app)
    layers, modules, ranks, convergence, agreement = chart_specs(app)
    assert layers["data"][0]["x"] == list(range(30)) and layers["layout"]["xaxis"]["dtick"] == 1
    assert list(modules["data"][0]["y"]) == list(range(30)) and modules["data"][0]["x"] == SMOLLM2_TYPES
    assert modules["layout"]["yaxis"]["dtick"] == 1 and modules["layout"]["height"] >= 20 * 30
    assert len(ranks["data"][0]["y"]) == 30 * 7
    assert sum(t.get("mode") == "lines" and "name" in t for t in convergence["data"]) == 30
    assert len(agreement["data"][0]["x"]) == 30 * 7

    app = run_page("sora")
    no_exception(app)
    heatmap = chart_specs(app)[0]
    assert list(heatmap["data"][0]["y"]) == list(range(30)) and heatmap["data"][0]["x"] == SMOLLM2_TYPES
    assert heatmap["layout"]["yaxis"]["dtick"] == 1 and heatmap["layout"]["height"] >= 20 * 30

    [ident], (cka, matrix) = chart_specs(run_page("id")), chart_specs(run_page("cka"))
    assert ident["data"][0]["x"] == list(range(-1, 30)) and ident["data"][1]["x"] == list(range(30))
    assert cka["data"][0]["x"] == list(range(30))
    assert len(matrix["data"][0]["z"]) == 31 and matrix["data"][0]["x"] == ["emb", *map(str, range(30))]


# --- 6. a run with only CKA and intrinsic dimension -------------------------------------------------------------

def test_overview_names_the_missing_signals_and_still_draws(partial):
    app = run_page("overview")
    no_exception(app)
    info = " ".join(i.value for i in app.info)
    assert "Shapley sensitivity (ShapLoRA) (`shapley`)" in info and "`adalora`" in info and "`sora`" in info
    assert "`cka`" not in info and "`id`" not in info
    names = next(c.value for c in app.caption if c.value.startswith("**cka**"))   # each entry's split, as measured
    assert names == "**cka**: CKA layer importance (**train** split) · **id**: Intrinsic dimension (GeLoRA) " \
                    "(**validation** split)"
    heatmaps, curves, agreement = chart_specs(app)
    assert panel_titles(heatmaps) == ["cka", "id"]
    assert [t["x"] for t in heatmaps["data"]] == [["block"], ["block"]]
    assert agreement["data"][0]["x"] == ["cka", "id"]


def test_shapley_and_sora_pages_say_they_have_nothing_to_show(partial):
    app = run_page("shapley")
    no_exception(app)
    assert any("No Shapley or AdaLoRA results yet" in i.value for i in app.info) and not app.get("plotly_chart")
    app = run_page("sora")
    no_exception(app)
    assert any("No SoRA results yet" in i.value for i in app.info) and not app.get("plotly_chart")


def test_budget_offers_only_the_computed_signals_and_still_plans(partial):
    app = run_page("budget")
    no_exception(app)
    methods = app.multiselect[0]
    assert methods.label.startswith("Methods") and methods.value == ["cka", "id"]
    assert list(methods.options) == [TITLES["cka"], TITLES["id"]]
    assert any("so not offered: AdaLoRA sensitivity" in c.value and "Shapley" in c.value for c in app.caption)
    prepared, layout = planning_inputs(partial)
    budget = uniform_cost(layout, 4)
    summary = app.dataframe[0].value
    assert summary["method"].tolist() == ["uniform", "cka", "id"] and (summary["trainable params"] <= budget).all()
    plans, _ = expected_plans(partial, ["uniform", "cka", "id"], budget)
    traces = chart_specs(app)[0]["data"]
    assert len(traces) == 3
    for method, trace in zip(["uniform", "cka", "id"], traces):
        np.testing.assert_array_equal(z_of(trace), rank_grid(layout, plans[method].ranks))


def test_export_lists_the_exhibits_of_the_computed_signals(partial):
    app = run_page("export")
    no_exception(app)
    budget = uniform_cost(planning_inputs(partial)[1], 4)
    figures = ["all_signals_heatmaps", "all_signals_layers", "signal_agreement", "cka_importance", "cka_matrix",
               "gelora_bounds", f"plans_{budget}", f"plans_{budget}_vs_uniform"]
    assert download_keys(app) == {f"export-{name}-{fmt}" for name in figures for fmt in ("pdf", "svg", "png", "csv")}
    assert len(app.get("plotly_chart")) == 1


# --- 7. the Export page ------------------------------------------------------------------------------------------

def test_export_offers_every_figure_in_every_format_and_previews_the_print_style(minilm):
    app = run_page("export")
    no_exception(app)
    budget = uniform_cost(planning_inputs(minilm)[1], 4)
    figures = ["all_signals_heatmaps", "all_signals_layers", "signal_agreement", "adalora_modules",
               "cka_importance", "cka_matrix", "gelora_bounds", "shapley_modules", "shapley_layers", "shapley_ranks",
               "shapley_convergence", "sora_learned_ranks", "sora_rank_histogram", "sora_sparsity_path",
               f"plans_{budget}", f"plans_{budget}_vs_uniform"]
    assert download_keys(app) == {f"export-{name}-{fmt}" for name in figures for fmt in ("pdf", "svg", "png", "csv")}
    labels = {b.key: b.label for b in app.get("download_button") if b.key}
    assert {labels[f"export-cka_matrix-{fmt}"] for fmt in ("pdf", "svg", "png", "csv")} == {"PDF", "SVG", "PNG", "CSV"}
    assert any(b.label.startswith("Everything") for b in app.get("download_button"))
    chooser = [s for s in app.selectbox if s.label == "Figure"][0]
    assert chooser.value.name == "all_signals_heatmaps"

    preview = chart_specs(app)
    assert len(preview) == 1 and preview[0]["layout"]["width"] == round(3.4 * 96)
    colours = [c for _, c in preview[0]["layout"]["coloraxis"]["colorscale"]]
    assert not all(map(is_gray, colours))
    grayscale = app.toggle[0]
    assert grayscale.label == "Grayscale"
    grayscale.set_value(True).run()
    no_exception(app)
    colours = [c for _, c in chart_specs(app)[0]["layout"]["coloraxis"]["colorscale"]]
    assert all(map(is_gray, colours))
    app.radio[0].set_value("page").run()
    no_exception(app)
    assert chart_specs(app)[0]["layout"]["width"] == round(7.0 * 96)


# --- 8. the Setup page ---------------------------------------------------------------------------------------------

def test_setup_lists_the_cached_run_with_its_signals(minilm):
    app = run_page("setup")
    no_exception(app)
    (row,) = next(d.value for d in app.dataframe if "signals" in d.value).to_dict("records")
    assert row["model"] == "all-MiniLM-L6-v2 (embedded)" and row["data"] == "rotten_tomatoes"
    assert row["validation examples"] == 16
    assert row["signals"] == "adalora, cka, id, shapley, sora" and row["missing"] == "alpha, eva, gora, grad_norm, state_change"


def test_setup_form_launches_a_command_the_cli_accepts(minilm, monkeypatch):
    from analysis.__main__ import _settings, build_parser

    started = []
    monkeypatch.setattr(jobs, "start_job", lambda argv, root, label="", run_key=None: started.append((argv, root)) or "job-1")
    app = run_page("setup")
    inputs = {n.label: n for n in app.number_input}
    inputs["Train fraction"].set_value(0.7)
    inputs["Validation fraction"].set_value(0.2)
    inputs["Validation examples used"].set_value(64)
    [s for s in app.multiselect if s.label == "Signals"][0].set_value(["cka", "shapley"])
    [s for s in app.selectbox if s.label == "Device"][0].set_value("cpu")
    [b for b in app.button if b.label == "Run analysis"][0].click().run()
    no_exception(app)
    (argv, root), = started
    assert Path(root) == minilm.root
    args = build_parser().parse_args(argv)
    assert args.handler.__name__ == "cmd_run"
    settings = _settings(args)   # what the job's process will run with
    assert settings.fractions == pytest.approx((0.7, 0.2, 0.1)) and settings.val_size == 64
    assert args.signals == "cka,shapley" and settings.device == "cpu" and settings.model == "minilm"
    assert not args.force


@pytest.mark.parametrize("train, validation", [
    (0.9, 0.1), (0.8, 0.3), (0.7, 0.3), (0.85, 0.15),
])
def test_setup_form_refuses_fractions_that_leave_no_test_split(minilm, monkeypatch, train, validation):
    started = []
    monkeypatch.setattr(jobs, "start_job", lambda argv, root, label="", run_key=None: started.append(argv) or "job-1")
    app = run_page("setup")
    inputs = {n.label: n for n in app.number_input}
    inputs["Train fraction"].set_value(train)
    inputs["Validation fraction"].set_value(validation)
    [b for b in app.button if b.label == "Run analysis"][0].click().run()
    no_exception(app)
    assert not started and any("leave some for test" in e.value for e in app.error)


def module_types(app: AppTest):
    return next(m for m in app.multiselect if m.label == "Module types that may receive rank")


def test_switching_runs_between_models_keeps_each_models_limits(tmp_path, monkeypatch, minilm_dir, smollm2_dir):
    """Two runs of different models in one cache: each switch on Budget and Retrain draws plans, a choice of
    module types made for one model comes back when its run is chosen again, and none is left empty."""
    import shutil

    both = tmp_path / "both"
    for source in (minilm_dir, smollm2_dir):
        shutil.copytree(source, both, dirs_exist_ok=True)
    monkeypatch.setenv("ANALYSIS_CACHE_DIR", str(both))
    app = AppTest.from_file(str(REPO / "app.py"), default_timeout=120).run()
    app.switch_page("views/budget.py").run()
    no_exception(app)
    labels = app.selectbox[0].options
    minilm_label = next(label for label in labels if "MiniLM" in label)
    smollm2_label = next(label for label in labels if "SmolLM2" in label)
    app.selectbox[0].set_value(minilm_label).run()
    no_exception(app)
    types = module_types(app)
    assert types.value == ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"]
    types.set_value(["query", "value"]).run()
    for label in (smollm2_label, minilm_label, smollm2_label):
        app.selectbox[0].set_value(label).run()
        no_exception(app)
        assert module_types(app).value, label
        assert app.dataframe and not [e.value for e in app.error], [e.value for e in app.error]
    assert "q_proj" in module_types(app).value
    app.selectbox[0].set_value(minilm_label).run()
    assert module_types(app).value == ["query", "value"]
    app.switch_page("views/retrain.py").run()
    no_exception(app)
    assert module_types(app).value == ["query", "value"] and app.dataframe


def test_switching_to_a_run_of_other_signals_keeps_methods_chosen(cache_dir):
    """Runs with different signals: each switch plans every method the run offers (never none, which would leave
    only uniform LoRA and Retrain's button disabled), and a method turned off stays off when its run comes back."""
    fill(cache_dir, MINILM, signals=("cka", "id"))
    fill(cache_dir, dataclasses.replace(MINILM, val_size=32), signals=("shapley", "sora"))
    app = AppTest.from_file(str(REPO / "app.py"), default_timeout=120).run()
    app.switch_page("views/budget.py").run()
    run = lambda signals: next(label for label in app.selectbox[0].options   # noqa: E731
                               if f"{16 if 'cka' in signals else 32} validation examples" in label)

    def methods():
        return next(m for m in app.multiselect if m.label.startswith("Methods")).value

    def planned():
        return app.dataframe[0].value["method"].tolist()

    app.selectbox[0].set_value(run("cka")).run()
    assert methods() == ["cka", "id"] and planned() == ["uniform", "cka", "id"]
    next(m for m in app.multiselect if m.label.startswith("Methods")).set_value(["cka"]).run()
    assert planned() == ["uniform", "cka"]
    app.selectbox[0].set_value(run("shapley")).run()
    no_exception(app)
    assert methods() == ["shapley", "sora"] and planned() == ["uniform", "shapley", "sora"]
    app.switch_page("views/retrain.py").run()
    assert planned() == ["uniform", "shapley", "sora"]
    assert not next(b for b in app.button if b.label == "Retrain and compare").disabled
    app.selectbox[0].set_value(run("cka")).run()
    no_exception(app)
    assert methods() == ["cka"] and planned() == ["uniform", "cka"]   # id stays off


def test_each_choice_of_run_takes_effect_at_once(cache_dir):
    """The Run box stays one widget whichever run is current: a run chosen right after a switch is opened at once
    (an unkeyed box became a new widget when the current run changed, and dropped that choice)."""
    fill(cache_dir, MINILM, signals=("cka",))
    fill(cache_dir, dataclasses.replace(MINILM, val_size=32), signals=("cka",))
    from analysis.store.lookups import runs

    labels = {run.key: run.label for run in runs(Store(cache_dir), None)}
    app = run_page("budget")
    newest, older = app.selectbox[0].options
    for label in (older, newest, older):
        app.selectbox[0].set_value(label).run()
        no_exception(app)
        assert app.selectbox[0].options[app.selectbox[0].index] == label
        assert label.startswith(labels[app.session_state["current_run"]])   # the run the page plans for


# --- 9. pages that only read the store -----------------------------------------------------------------------------

@pytest.fixture
def store_only(cache_dir, monkeypatch) -> dict:
    """Five signals of MiniLM with default options and a newer CKA variant, filled (which fingerprints the weights
    and reads the data) before fingerprinting weights and reading data are made to fail as well; loading a model
    already fails (no_model_weights)."""
    from transformers.models.auto.auto_factory import _BaseAutoModelClass

    import analysis.model.sources
    import analysis.model.sources.data
    import analysis.model.sources.models
    import analysis.signals.context
    import analysis.store.hashing

    store = fill(cache_dir, MINILM)
    default = newest(store)["cka"]
    fill(cache_dir, MINILM, signals=("cka",), seed=1, overrides={"cka": {"split": "validation"}})
    expected = {"budget": uniform_cost(planning_inputs(store)[1], 4), "cka": default}

    def refuse(what):
        def fail(*args, **kwargs):
            raise AssertionError(f"a page that only reads the store tried to {what}")
        return fail

    for module, name in [(analysis.store.hashing, "hash_file"), (analysis.store.hashing, "hash_files_memoized"),
                         (analysis.model.sources.models, "hash_files_memoized"),
                         (analysis.model.sources.models, "_dequantized_decoder")]:
        monkeypatch.setattr(module, name, refuse("fingerprint the weights"))
    for module in (analysis.model.sources.data, analysis.model.sources, analysis.signals.context):
        monkeypatch.setattr(module, "load_data", refuse("read the data"))
    monkeypatch.setattr(_BaseAutoModelClass, "from_pretrained", classmethod(refuse("load weights")))
    return expected


def test_budget_page_plans_without_fingerprinting_weights_or_reading_data(store_only):
    app = run_page("budget")
    no_exception(app)
    summary = app.dataframe[0].value
    assert summary["method"].tolist() == ["uniform", *FIVE]
    assert summary["trainable params"].iloc[0] == store_only["budget"]
    [plans] = chart_specs(app)
    assert len(plans["data"]) == 6


def test_all_signals_page_draws_without_fingerprinting_weights_or_reading_data(store_only):
    app = run_page("overview")
    no_exception(app)
    assert len(chart_specs(app)) == 3


def test_export_page_draws_plans_and_the_chosen_entries_without_weights_or_data(store_only, deferred):
    from analysis.reporting.exhibits import render, signal_exhibits

    app = run_page("export")
    no_exception(app)
    budget = store_only["budget"]
    assert {f"export-plans_{budget}-pdf", f"export-plans_{budget}_vs_uniform-pdf"} <= download_keys(app)
    assert len(chart_specs(app)) == 1
    drawn = click_download(app, deferred, "export-cka_importance-csv")
    assert drawn == render(signal_exhibits(store_only["cka"])[0], "csv").decode()   # the CKA the plans use
