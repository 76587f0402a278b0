"""The Retrain and compare page under AppTest, on a store real signals and a real comparison filled."""
import json
import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from analysis.jobs import launch as jobs
from analysis.training.compare import compare
from analysis.settings import RunSettings
from analysis.signals.registry import get_signal
from analysis.settings import CompareSettings, TrainSettings
from analysis.signals.runner import run_signals
from analysis.store.cache import Result, Store
from analysis.contract.run import Run
from analysis.store.lookups import comparisons
from analysis.reporting.comparison_tables import formatted
from analysis.training.comparison_stats import summarise, summary_of
from tests.conftest import chart_specs
import numpy as np
import pandas as pd

PAGE = str(Path(__file__).resolve().parents[2] / "views" / "retrain.py")
SETTINGS = RunSettings(val_size=16, batch_size=8, device="cpu")


def test_without_signals_the_page_says_what_to_run(cache_dir):
    app = AppTest.from_file(PAGE, default_timeout=60).run()
    assert not app.exception
    assert any("No signals computed yet" in info.value for info in app.info)


@pytest.fixture(scope="module")
def filled_once(tmp_path_factory) -> Path:
    """Real grad_norm and cka results and a real comparison (two seeds, two steps), computed once for the module."""
    root = tmp_path_factory.mktemp("retrain-page-store")
    store = Store(root)
    run_signals(SETTINGS, [get_signal("grad_norm"), get_signal("cka")], None, store)
    compare(SETTINGS, ["grad_norm"], CompareSettings(budgets=("r2",), seeds=(0, 1), tune_lr=(), baselines=()),
            TrainSettings(steps=2, test_size=16, batch_size=4), store=store)
    return root


@pytest.fixture
def filled(filled_once, cache_dir):
    """A copy of that store as this test's cache, which the test may add to."""
    shutil.copytree(filled_once, cache_dir, dirs_exist_ok=True)
    return Store(cache_dir)


def _table(app, index):
    return app.dataframe[index].value


def test_plans_follow_the_budget_and_the_comparison_is_listed(filled):
    app = AppTest.from_file(PAGE, default_timeout=120).run()
    assert not app.exception
    plans = _table(app, 0)
    assert plans["method"].tolist() == ["uniform", "cka", "grad_norm"]
    params = plans["trainable params"].tolist()
    assert params[0] == 4 * sum(768 if i < 4 else 1920 for i in range(6)) * 6   # uniform rank 4 on MiniLM
    assert all(p <= params[0] for p in params)
    app.slider[0].set_value(2.0).run()   # average rank 4 -> 2
    smaller = _table(app, 0)["trainable params"].tolist()
    assert smaller[0] == params[0] // 2 and all(p <= smaller[0] for p in smaller)
    results = _table(app, 1)
    assert results["method"].tolist() == ["uniform", "grad_norm"] and (results["seeds"] == 2).all()
    entry = comparisons(Run(filled_key(filled), {}, store=filled))[0]
    expected = formatted(summary_of(entry), "classification")
    assert results["accuracy (%)"].tolist() == expected["accuracy (%)"].tolist()
    flagged = int(entry.table("runs")["did_not_train"].notna().sum())
    assert results["did not train"].sum() == flagged
    assert any(f"{flagged} run(s) did not train" in w.value for w in app.warning) == (flagged > 0)


def filled_key(store):
    return next(e.meta["context_key"] for e in store.entries() if e.kind == "comparison")


def _synthetic_comparison(store, context_key):
    """A comparison entry at two budgets with known numbers (what a finished job leaves), for the display."""
    rows = []
    for budget, params, base in (("r1", 41472, 0.78), ("r2", 82944, 0.80)):
        for method, shift in (("uniform", 0.0), ("grad_norm", 0.02)):
            for seed, noise in enumerate((0.0, 0.01, 0.005)):
                rows.append({"budget": budget, "method": method, "seed": seed, "lr": 1e-3,
                             "trainable_params": params, "accuracy": base + shift + noise,
                             "f1": base + shift + noise, "test_loss": 0.5, "test_examples": 100,
                             "predicted_classes": 2, "train_seconds": 1.0, "entry": f"retrain-{budget}{method}{seed}",
                             "did_not_train": None})
    rows[-1].update(accuracy=0.572, did_not_train="one class predicted for every example")
    runs = pd.DataFrame(rows)
    meta = {"signal": "comparison", "title": "Comparison of plans at 2 budgets", "context_key": context_key,
            "task": "classification", "budget": 41472, "budget_spec": "r1", "budgets": ["r1", "r2"], "seeds": [0, 1, 2],
            "methods": ["uniform", "grad_norm"], "config": {"steps": 99}, "tune_lrs": [3e-4, 1e-3],
            "chosen_lrs": {}}
    return store.put("comparison-synthetic", Result(summarise(runs, "classification"), tables={"runs": runs}), meta)


def test_the_budget_curve_and_the_flagged_run_are_shown(filled):
    entry = _synthetic_comparison(filled, filled_key(filled))
    app = AppTest.from_file(PAGE, default_timeout=120).run()
    assert not app.exception
    assert comparisons(Run(filled_key(filled), {}, store=filled))[0].key == entry.key   # the newest: shown first
    results = _table(app, 1)
    assert results["budget"].tolist() == ["r1", "r1", "r2", "r2"]
    assert results["did not train"].tolist() == [0, 0, 0, 1]
    grad_r2 = results.iloc[3]
    assert grad_r2["accuracy (%)"] == "82.5 ± 0.7"   # seeds 0 and 1 only; seed 2 did not train
    assert grad_r2["verdict"] == "beats uniform" or "[" in grad_r2[[c for c in results if c.startswith("Δ")][0]]
    assert any("1 run(s) did not train" in w.value for w in app.warning)
    curves = [spec for spec in chart_specs(app) if spec["layout"]["xaxis"]["title"]["text"] ==
              "Trainable LoRA parameters" and "Pareto" not in spec["layout"]["title"]["text"]]
    assert len(curves) == 1
    lines = {t["name"]: t for t in curves[0]["data"] if t.get("mode") == "lines+markers"}
    assert set(lines) == {"uniform", "grad_norm"}
    assert lines["uniform"]["x"] == [41472, 82944]
    assert lines["uniform"]["y"] == pytest.approx([100 * (0.78 + 0.005), 100 * (0.80 + 0.005)])
    assert lines["grad_norm"]["y"][1] == pytest.approx(100 * 0.825)
    bands = [t for t in curves[0]["data"] if t.get("fill") == "toself"]
    assert len(bands) == 2   # one 95% band per method


def test_a_budget_too_small_is_explained_method_by_method(filled):
    app = AppTest.from_file(PAGE, default_timeout=120).run()
    app.radio[0].set_value("parameters").run()
    app.number_input[0].set_value(100).run()
    assert not app.exception
    notes = [w.value for w in app.warning if "has no plan at this budget" in w.value]
    assert len(notes) == 3 and all("below the smallest possible plan" in note for note in notes)   # uniform, 2 signals


def test_starting_a_comparison_launches_a_job_with_the_shown_settings(filled, cache_dir, monkeypatch):
    started = []
    monkeypatch.setattr(jobs, "start_job", lambda argv, root, label="", run_key=None: started.append(argv) or "job-1")
    app = AppTest.from_file(PAGE, default_timeout=120).run()
    [start] = [s for s in app.selectbox if s.label == "Adapter start"]
    assert start.value == "default" and start.options == ["default", "eva", "gora"]
    start.set_value("eva")
    [at_once] = [n for n in app.number_input if n.label.startswith("Adapters trained at once")]
    assert at_once.value is None   # by default as many as fit: no flag, compare measures
    form_button = [b for b in app.button if b.proto.label == "Retrain and compare"][0]
    form_button.click().run()
    assert not app.exception and "--adapters-at-once" not in started[0]
    at_once.set_value(8)
    form_button.click().run()
    argv = started[1]
    assert argv[argv.index("--adapters-at-once") + 1] == "8"
    assert argv[argv.index("--init") + 1] == "eva"   # every method, uniform included, starts from EVA
    assert argv[0] == "compare" and argv[argv.index("--budgets") + 1] == "r4"
    assert argv[argv.index("--tune-lr") + 1] == "0.0001,0.0003,0.001,0.003"   # the default grid
    assert argv[argv.index("--signals") + 1] == "cka,grad_norm"
    assert argv[argv.index("--baselines") + 1] == "attention,mlp,all"   # the module baselines by default
    assert argv[argv.index("--val-size") + 1] == "16" and argv[argv.index("--seeds") + 1] == "0,1,2"
    from analysis.__main__ import build_parser
    assert build_parser().parse_args(argv).handler.__name__ == "cmd_compare"   # a command the CLI accepts


def test_jobs_from_disk_show_progress_and_live_curves(filled, cache_dir):
    run_key = Store(cache_dir).entries()[0].meta["context_key"]
    directory = jobs.jobs_dir(cache_dir) / "20260101-000000-abcdef"
    directory.mkdir(parents=True)
    (directory / "job.json").write_text(json.dumps({"id": directory.name, "argv": ["compare"], "label": "Compare",
                                                    "pid": 1, "create_time": 0, "started": 1.0, "run_key": run_key}))
    other = jobs.jobs_dir(cache_dir) / "20260101-000001-fedcba"   # a comparison of another run: not listed here
    other.mkdir()
    (other / "job.json").write_text(json.dumps({"id": other.name, "argv": ["compare"], "label": "Another run's",
                                                "pid": 1, "create_time": 0, "started": 2.0, "run_key": "elsewhere"}))
    (directory / "curve.jsonl").write_text("".join(json.dumps({"run": "uniform · seed 0", "step": s, "loss": 1 / s})
                                                   + "\n" for s in range(1, 21)))
    app = AppTest.from_file(PAGE, default_timeout=120).run()
    assert not app.exception
    assert any("died" in w.value for w in app.warning)   # pid 1 is not this job: it is not running
    assert not any("Another run's" in w.value for w in app.warning)
    assert [b for b in app.button if b.proto.label == "Resume"]
    charts = [c for c in app.get("plotly_chart")]
    assert charts and "Training loss" in json.loads(charts[0].proto.spec)["layout"]["title"]["text"]


def test_a_comparison_too_small_to_mean_much_says_so_on_the_page_and_in_its_export(filled):
    """One seed, one training step, three test examples: the table still shows numbers, but the page warns and
    the exported table's caption says why they mean little."""
    from analysis.reporting.exhibits import comparison_exhibits, render
    store = Store(filled.root)
    runs = pd.DataFrame([{"budget": "r2", "method": method, "seed": 0, "lr": 1e-3, "trainable_params": 82944,
                          "accuracy": 1.0, "f1": 1.0, "test_loss": 0.1, "test_examples": 3, "predicted_classes": 2,
                          "train_seconds": 1.0, "entry": f"retrain-{method}", "did_not_train": None}
                         for method in ("uniform", "grad_norm")])
    meta = {"signal": "comparison", "title": "Comparison", "context_key": filled_key(store), "task": "classification",
            "budget": 82944, "budget_spec": "r2", "budgets": ["r2"], "seeds": [0], "methods": ["uniform", "grad_norm"],
            "config": {"steps": 1}, "tune_lrs": [], "chosen_lrs": {}, "created": 4e9}
    entry = store.put("comparison-tiny", Result(summarise(runs, "classification"), tables={"runs": runs}), meta)
    app = AppTest.from_file(PAGE, default_timeout=120).run()
    assert not app.exception
    warnings = [w.value for w in app.warning if w.value.startswith("Too small to mean much")]
    assert len(warnings) == 3 and any("1 seed(s)" in w for w in warnings)
    assert any("Only 3 test examples" in w for w in warnings) and any("1 training steps" in w for w in warnings)
    latex = render(comparison_exhibits(entry)[0], "tex").decode()
    assert "too small to mean much" in latex and "Only 3 test examples" in latex


@pytest.mark.slow
def test_the_pareto_figure_and_the_savings_of_a_real_small_comparison(small_comparison, monkeypatch):
    """The shared small comparison (uniform on q_proj and v_proj, the three module baselines and grad_norm at r8
    and r16): the Pareto figure draws every method's points, the frontier through the points `compare --out` marked,
    uniform's loss at r16 as a line and a cross where each method reaches it; the savings table is the one the
    command line wrote."""
    from analysis.reporting.comparison_tables import savings_table

    cache, out = small_comparison
    monkeypatch.setenv("ANALYSIS_CACHE_DIR", str(cache))
    app = AppTest.from_file(PAGE, default_timeout=120).run()
    assert not app.exception
    [pareto] = [spec for spec in chart_specs(app) if "Pareto frontier" in spec["layout"]["title"]["text"]]
    points, saved = pd.read_csv(out / "pareto.csv"), pd.read_csv(out / "savings.csv")
    lines = {t["name"]: t for t in pareto["data"] if t.get("mode") == "lines+markers"}
    assert set(lines) == {"uniform", "uniform-attention", "uniform-mlp", "uniform-all", "grad_norm", "Pareto frontier"}
    for method, frame in points.groupby("method"):
        frame = frame.sort_values("trainable_params")
        assert lines[method]["x"] == frame["trainable_params"].tolist()
        assert lines[method]["y"] == pytest.approx(frame["mean"].tolist())
    frontier = points[points["frontier"]].sort_values("trainable_params")
    assert lines["Pareto frontier"]["x"] == frontier["trainable_params"].tolist()
    [target] = [t for t in pareto["data"] if t.get("name") == "uniform at r16"]
    assert target["y"] == pytest.approx([saved["target"].iloc[0]] * 2)
    crosses = [t for t in pareto["data"] if t.get("marker", {}).get("symbol") == "x" and t["x"] != [None]]
    reached = saved[np.isfinite(saved["needed_params"])]
    assert sorted(t["x"][0] for t in crosses) == pytest.approx(sorted(reached["needed_params"]))
    [table] = [d.value for d in app.dataframe if any(str(c).startswith("saved of uniform's") for c in d.value)]
    expected = savings_table(saved.fillna({"reading": ""}), "causal-lm")
    assert table.columns.tolist() == expected.columns.tolist()
    assert table.astype(str).to_numpy().tolist() == expected.astype(str).to_numpy().tolist()
