"""The dashboard page under Streamlit's AppTest, on a prepared store; one test starts a real job."""
import json
import time
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from analysis import jobs
from analysis.store import Result, Store

PAGE = str(Path(__file__).resolve().parent.parent / "pages" / "analyze.py")


def _prepared(cache_dir):
    table = pd.DataFrame({"signal": "grad_norm", "layer": [0, 0, 1, 1], "module": ["query", "key"] * 2,
                          "value": [0.1, 0.2, 0.3, 0.4]})
    Store(cache_dir).put("abc", Result(table), {"signal": "grad_norm", "title": "Gradient norm",
                                                "model": "minilm", "data": "rotten_tomatoes"})


def test_empty_cache_says_so(cache_dir):
    app = AppTest.from_file(PAGE, default_timeout=60).run()
    assert not app.exception
    assert any("No results yet" in info.value for info in app.info)


def test_cached_result_renders_heatmap_and_table(cache_dir):
    _prepared(cache_dir)
    app = AppTest.from_file(PAGE, default_timeout=60).run()
    assert not app.exception
    chosen = [s for s in app.selectbox if s.label == "Cached result"][0]
    assert chosen.value.meta["signal"] == "grad_norm"
    charts = app.get("plotly_chart")
    assert len(charts) == 1
    spec = json.loads(charts[0].proto.spec)
    assert spec["data"][0]["type"] == "heatmap" and spec["data"][0]["x"] == ["query", "key"]
    frames = app.dataframe
    assert len(frames) == 1 and frames[0].value["value"].tolist() == [0.1, 0.2, 0.3, 0.4]


@pytest.mark.slow
def test_run_button_starts_a_background_job_that_fills_the_cache(cache_dir):
    app = AppTest.from_file(PAGE, default_timeout=60).run()
    [s for s in app.multiselect if s.label == "Signals"][0].set_value(["state_change"])
    [n for n in app.number_input if n.label == "Validation examples"][0].set_value(16)
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
    assert len(app.get("plotly_chart")) == 1
