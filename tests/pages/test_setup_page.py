"""The Setup page under Streamlit's AppTest: cached runs to reopen, and one test starts a real job."""
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from analysis.jobs import launch as jobs
from analysis.settings import RunSettings
from analysis.store.cache import Store
from tests.synthetic_store import fill

PAGE = str(Path(__file__).resolve().parents[2] / "pages" / "setup.py")
APP = str(Path(__file__).resolve().parents[2] / "app.py")


def test_empty_cache_says_so(cache_dir):
    app = AppTest.from_file(PAGE, default_timeout=60).run()
    assert not app.exception
    assert any("No results yet" in info.value for info in app.info)


def test_a_cached_run_opens_on_the_signal_pages(cache_dir):
    fill(cache_dir, RunSettings(val_size=16, device="cpu"), signals=("cka", "id"))
    app = AppTest.from_file(APP, default_timeout=60).run()
    assert not app.exception
    runs = app.dataframe[0].value
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
    assert app.dataframe[0].value["signals"].tolist() == ["state_change"]
