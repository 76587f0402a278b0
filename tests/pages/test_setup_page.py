"""The Setup page under Streamlit's AppTest: cached runs to reopen, and one test starts a real job."""
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from analysis.jobs import launch as jobs
from analysis.settings import RunSettings
from analysis.store.cache import Store
from tests.synthetic_store import fill

PAGE = str(Path(__file__).resolve().parents[2] / "views" / "setup.py")
APP = str(Path(__file__).resolve().parents[2] / "app.py")


def runs_table(app):
    """The Cached runs table (the page also shows a table of what each signal costs)."""
    return next(d.value for d in app.dataframe if "signals" in d.value)


def test_empty_cache_says_so(cache_dir):
    app = AppTest.from_file(PAGE, default_timeout=60).run()
    assert not app.exception
    assert any("No results yet" in info.value for info in app.info)


def test_a_cached_run_opens_on_the_signal_pages(cache_dir):
    fill(cache_dir, RunSettings(val_size=16, device="cpu"), signals=("cka", "id"))
    app = AppTest.from_file(APP, default_timeout=60).run()
    assert not app.exception
    runs = runs_table(app)
    assert len(runs) == 1 and set(runs["signals"].iloc[0].split(", ")) == {"cka", "id"}
    assert "shapley" in runs["missing"].iloc[0]
    [b for b in app.button if b.label == "Open on the signal pages"][0].click().run()
    assert not app.exception
    assert app.title[0].value == "All signals"
    assert app.session_state["current_run"] == Store(cache_dir).entries()[0].meta["context_key"]


@pytest.mark.slow
def test_run_button_starts_a_background_job_that_fills_the_cache(cache_dir):
    app = AppTest.from_file(PAGE, default_timeout=60).run()
    [s for s in app.multiselect if s.label == "Signals"][0].set_value(["state_change"])
    [n for n in app.number_input if n.label == "Validation examples used"][0].set_value(16)
    app.button[0].click().run()
    assert not app.exception
    started = jobs.list_jobs(cache_dir)
    assert len(started) == 1 and started[0].argv[:2] == ["run", "--model"]
    deadline = time.time() + 300
    while jobs.list_jobs(cache_dir)[0].state == "running" and time.time() < deadline:
        time.sleep(1)
    job = jobs.list_jobs(cache_dir)[0]
    assert job.state == "done", job.log_tail
    assert [e.meta["signal"] for e in Store(cache_dir).entries()] == ["state_change"]
    app.run()
    assert runs_table(app)["signals"].tolist() == ["state_change"]
    # the finished run is now the one every page opens with
    assert app.session_state["current_run"] == Store(cache_dir).entries()[0].meta["context_key"]


def test_setup_follows_the_chosen_model_and_shows_what_signals_cost(cache_dir):
    """A decoder trains as a causal LM (no label column), path fields only for a model or data set of one's
    own, training signals not chosen by default on a CPU, and each signal labelled with its earlier cost."""
    import pandas as pd

    from analysis.store.cache import Result
    store = Store(cache_dir)
    for signal, seconds in (("cka", 12.0), ("sora", 400.0)):
        store.put(f"earlier-{signal}", Result(pd.DataFrame({"value": [0.0]})),
                  {"signal": signal, "seconds": seconds, "model": "smollm2", "device": "cpu",
                   "settings": {"val_size": 256}})
    app = AppTest.from_file(PAGE, default_timeout=60).run()
    assert not app.exception
    labels = lambda: [w.label for w in app.text_input]   # noqa: E731
    assert labels() == []                                  # embedded model and data: no paths, no columns
    [s for s in app.selectbox if s.label == "Device"][0].set_value("cpu").run()
    [s for s in app.selectbox if s.label == "Model"][0].set_value("smollm2").run()
    assert not app.exception
    assert "Label column" not in labels() and any("causal-lm" in c.value for c in app.caption)
    signals = [s for s in app.multiselect if s.label == "Signals"][0]
    assert "shapley" not in signals.value and "sora" not in signals.value and "cka" in signals.value
    shown = next(d.value for d in app.dataframe if "cost here" in d.value).set_index("signal")["cost here"]
    assert shown["cka"] == "about 12 s" and shown["sora"] == "about 6 min 40 s"
    assert shown["shapley"] == "trains; minutes on a CPU"
    [s for s in app.selectbox if s.label == "Dataset"][0].set_value("other").run()
    assert labels() == ["Local .csv / .jsonl / .parquet file or hub dataset name", "Text column"]
    [s for s in app.selectbox if s.label == "Model"][0].set_value("minilm").run()
    assert labels()[-1] == "Label column"
