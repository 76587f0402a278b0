"""A cache written by the code as it was before the packages were reordered (commit 3fdeceb, whose retrain defaults
are today's) is found whole by today's code: the same signal, warm-up, retrain and comparison keys, every entry's
kind, the run they form.

The old code is taken from the repository's history (`git archive`), run in its own processes on tiny settings,
and today's command line then asks for the same things: nothing may be computed or trained again, and nothing new
may be written.
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from analysis.settings import RunSettings
from analysis.store.cache import Store
from analysis.store.lookups import comparisons, runs

REPO = Path(__file__).resolve().parents[2]
OLD = "3fdeceb"   # the last commit before keys and kinds moved into the store (retrain defaults as today)
SETTING = ["--val-size", "16", "--batch-size", "8", "--max-length", "32", "--device", "cpu"]
WARMUP = ["--set", "adalora.warmup_steps=2", "--set", "adalora.r_max=2", "--set", "adalora.warmup_batch_size=4"]
TRAINING = ["--steps", "2", "--train-batch-size", "4", "--test-size", "8"]
COMPARE = ["compare", *SETTING, "--signals", "grad_norm", "--budgets", "r1", "--seeds", "0", *TRAINING,
           "--tune-lr", "off", "--baselines", "none"]


def _old_tree(target: Path) -> Path:
    archive = subprocess.run(["git", "archive", "--format=tar", OLD], cwd=REPO, capture_output=True)
    if archive.returncode != 0:
        pytest.fail(f"This test needs commit {OLD} in the repository's history (a full clone, not a shallow one): "
                    f"{archive.stderr.decode().strip()}")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(target, filter="data")
    return target


def _cli(code: Path, cache: Path, *argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "ANALYSIS_CACHE_DIR": str(cache), "PYTHONPATH": str(code)}
    env.pop("ANALYSIS_JOB_DIR", None)
    done = subprocess.run([sys.executable, "-m", "analysis", *argv], cwd=code, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, (argv, done.stderr)
    return done


@pytest.fixture(scope="module")
def old_cache(tmp_path_factory):
    """The old code's cache: three signals (one with a warm-up), a plan, a retrain of it and a comparison."""
    base = tmp_path_factory.mktemp("old")
    code, cache = _old_tree(base / "code"), base / "cache"
    _cli(code, cache, "run", *SETTING, "--signals", "cka,grad_norm,adalora", *WARMUP)
    _cli(code, cache, "plan", *SETTING, "--signal", "cka", "--budget", "r2", "--out", str(base / "plan.json"))
    retrained = _cli(code, cache, "retrain", "--plan", str(base / "plan.json"), *TRAINING, "--seed", "1")
    _cli(code, cache, *COMPARE)
    return cache, base / "plan.json", retrained.stdout


def _entries(cache: Path) -> dict[str, float]:
    return {p.name: (p / "meta.json").stat().st_mtime for p in (cache / "entries").iterdir()}


@pytest.mark.slow
def test_todays_code_finds_every_entry_of_an_old_cache_by_the_same_keys(old_cache, tmp_path):
    cache, old_plan, old_retrain = old_cache
    before = _entries(cache)
    store = Store(cache)
    kinds = sorted(store.get(key).kind for key in before)
    assert kinds == ["comparison", "retrain", "retrain", "retrain", "signal", "signal", "signal", "warmup"]

    ran = _cli(REPO, cache, "run", *SETTING, "--signals", "cka,grad_norm,adalora", *WARMUP)
    assert ran.stdout.count("cached") == 3 and "computed" not in ran.stdout
    _cli(REPO, cache, "plan", *SETTING, "--signal", "cka", "--budget", "r2", "--out", str(tmp_path / "plan.json"))
    assert json.loads((tmp_path / "plan.json").read_text()) == json.loads(old_plan.read_text())
    retrained = _cli(REPO, cache, "retrain", "--plan", str(old_plan), *TRAINING, "--train-seed", "1")
    assert retrained.stdout.split("(")[0] == old_retrain.split("(")[0]   # the same metrics, read back
    _cli(REPO, cache, *COMPARE)
    assert _entries(cache) == before   # nothing trained, computed or rewritten: every key was found

    [run] = runs(store)
    assert run.settings == RunSettings(val_size=16, batch_size=8, max_length=32, device="cpu")
    assert sorted(run.entries) == ["adalora", "cka", "grad_norm"]
    assert [e.kind for e in comparisons(run)] == ["comparison"]
