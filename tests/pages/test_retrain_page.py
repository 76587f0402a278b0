"""The Retrain and compare page under AppTest, on a store real signals and a real comparison filled."""
import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from analysis.jobs import launch as jobs
from analysis.training.compare import compare
from analysis.settings import RunSettings
from analysis.signals.registry import get_signal
from analysis.settings import TrainSettings
from analysis.signals.runner import run_signals
from analysis.store.cache import Store

PAGE = str(Path(__file__).resolve().parents[2] / "pages" / "retrain.py")
SETTINGS = RunSettings(val_size=16, batch_size=8, device="cpu")


def test_without_signals_the_page_says_what_to_run(cache_dir):
    app = AppTest.from_file(PAGE, default_timeout=60).run()
    assert not app.exception
    assert any("No signals computed yet" in info.value for info in app.info)


@pytest.fixture
def filled(cache_dir):
    store = Store(cache_dir)
    run_signals(SETTINGS, [get_signal("grad_norm"), get_signal("cka")], None, store)
    compare(SETTINGS, ["grad_norm"], "r2", [0, 1], TrainSettings(steps=2, test_size=16, batch_size=4), store=store)
    return store


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
    assert all("±" in value for value in results["accuracy (%)"])


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
    form_button = [b for b in app.button if b.proto.label == "Retrain and compare"][0]
    form_button.click().run()
    assert not app.exception
    argv = started[0]
    assert argv[0] == "compare" and argv[argv.index("--budget") + 1] == "r4"
    assert argv[argv.index("--signals") + 1] == "cka,grad_norm"
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
