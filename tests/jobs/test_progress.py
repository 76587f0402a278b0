"""What a job tells the dashboard about itself: phase k of n, the step inside it, and the time left in all."""
from __future__ import annotations

import json

import pytest

from analysis.contract import job_folder, progress
from analysis.jobs import launch


@pytest.fixture
def job_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(job_folder.ENVIRONMENT, str(tmp_path))
    monkeypatch.setattr(progress, "_phase", {})
    clock = {"now": 100.0}
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock["now"])
    return tmp_path, clock


def written(directory):
    return json.loads((directory / job_folder.PROGRESS).read_text())


def test_a_silent_step_is_reported_at_once(job_dir):
    directory, _ = job_dir
    progress.phase("signal sora", 2, 5)
    progress.step("loading the model")
    info = written(directory)
    assert (info["phase"], info["k"], info["of"], info["step"]) == ("signal sora", 2, 5, "loading the model")
    assert launch.describe_progress(info)[1] == "signal sora (2 of 5) · loading the model"


def test_time_left_in_all_counts_the_items_still_to_come(job_dir):
    directory, clock = job_dir
    progress.phase("run uniform · seed 0", 1, 3)
    clock["now"] += 10.0                       # the first run took 10 s
    progress.phase("run uniform · seed 1", 2, 3)
    clock["now"] += 6.0
    progress._write({"desc": "retrain", "n": 60, "total": 100, "elapsed": 6.0, "eta": 4.0})
    info = written(directory)
    assert info["total_eta"] == pytest.approx(4.0 + 1 * 10.0)   # this run's 4 s, then one more run of 10 s
    fraction, text = launch.describe_progress(info)
    assert fraction == pytest.approx(0.6)
    assert text == "run uniform · seed 1 (2 of 3) · retrain 60/100, about 4 s left in this step and 14 s in all"


def test_before_any_item_finished_the_current_one_sets_the_pace(job_dir):
    _, clock = job_dir
    progress.phase("signal cka", 1, 4)
    clock["now"] += 30.0
    assert progress.total_left(item_elapsed=30.0, item_eta=10.0) == pytest.approx(10.0 + 3 * 40.0)


def test_a_job_that_has_not_reported_yet_says_it_is_starting():
    assert launch.describe_progress(None) == (0.0, "starting Python and reading the settings")
