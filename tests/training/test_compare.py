"""The comparison protocol: paired statistics against hand-worked numbers, runs that did not train left out
and counted, the learning rate chosen on validation, tables and the budget curve's data."""
from __future__ import annotations

from types import SimpleNamespace

import math

import numpy as np
import pandas as pd
import pytest

from analysis.reporting.comparison_tables import budget_table, curve_points, formatted
from analysis.settings import CompareSettings
from analysis.training.compare import choose_rate
from analysis.training.comparison_stats import paired_difference, summarise, verdict
from analysis.training.retrain import did_not_train
from analysis.errors import UserError


def test_paired_difference_matches_the_t_interval_worked_by_hand():
    # differences 0.02, 0.02, 0.01: mean 1/60, sd 0.01/sqrt(3), so t = mean / (sd / sqrt(3)) = 5 exactly.
    # With 2 degrees of freedom the t distribution has a closed form: F(t) = 1/2 + t / (2 sqrt(t^2 + 2)), so
    # the two-sided p is 1 - 5/sqrt(27) and the 97.5% quantile is 0.95 / sqrt(2 * 0.975 * 0.025).
    method = np.array([0.80, 0.82, 0.79])
    uniform = np.array([0.78, 0.80, 0.78])
    result = paired_difference(method, uniform)
    mean, sd = 1 / 60, 0.01 / math.sqrt(3)
    quantile = 0.95 / math.sqrt(2 * 0.975 * 0.025)
    assert quantile == pytest.approx(4.302653, abs=1e-6)
    half = quantile * sd / math.sqrt(3)
    assert result["pairs"] == 3
    assert result["diff"] == pytest.approx(mean)
    assert result["low"] == pytest.approx(mean - half) and result["high"] == pytest.approx(mean + half)
    assert result["p"] == pytest.approx(1 - 5 / math.sqrt(27))
    assert verdict(result["low"], result["high"], higher_is_better=True) == "beats uniform"
    assert verdict(result["low"], result["high"], higher_is_better=False) == "worse than uniform"   # a loss


def test_paired_difference_agrees_with_scipys_own_interval():
    from scipy import stats
    rng = np.random.default_rng(0)
    uniform = rng.normal(0.8, 0.01, 5)
    method = uniform + rng.normal(0.002, 0.01, 5)
    result = paired_difference(method, uniform)
    reference = stats.ttest_rel(method, uniform)
    interval = reference.confidence_interval(0.95)
    assert result["p"] == pytest.approx(reference.pvalue)
    assert (result["low"], result["high"]) == pytest.approx((interval.low, interval.high))
    assert verdict(result["low"], result["high"], True) == ("no clear difference" if interval.low < 0 < interval.high
                                                            else verdict(interval.low, interval.high, True))


def test_one_pair_gives_a_difference_without_an_interval():
    result = paired_difference(np.array([0.8]), np.array([0.7]))
    assert result["diff"] == pytest.approx(0.1) and math.isnan(result["low"]) and math.isnan(result["p"])
    assert verdict(result["low"], result["high"], True) == ""


def _runs(rows):
    return pd.DataFrame([dict(zip(["budget", "method", "seed", "accuracy", "did_not_train"], row),
                              trainable_params=1000 if row[0] == "r4" else 500, lr=1e-3, f1=row[3],
                              test_loss=1 - row[3], train_seconds=1.0) for row in rows])


def test_runs_that_did_not_train_are_left_out_of_the_means_and_counted():
    runs = _runs([("r4", "uniform", 0, 0.80, None), ("r4", "uniform", 1, 0.82, None), ("r4", "uniform", 2, 0.81, None),
                  ("r4", "sora", 0, 0.83, None), ("r4", "sora", 1, 0.572, "one class predicted for every example"),
                  ("r4", "sora", 2, 0.84, None)])
    summary = summarise(runs, "classification").set_index("method")
    assert summary.loc["sora", "did_not_train"] == 1 and summary.loc["sora", "trained"] == 2
    assert summary.loc["sora", "accuracy_mean"] == pytest.approx(np.mean([0.83, 0.84]))
    assert summary.loc["sora", "accuracy_std"] == pytest.approx(np.std([0.83, 0.84], ddof=1))
    # paired on seeds 0 and 2 only: differences 0.03 and 0.03
    assert summary.loc["sora", "paired_seeds"] == 2 and summary.loc["sora", "diff_vs_uniform"] == pytest.approx(0.03)
    assert summary.loc["uniform", "did_not_train"] == 0 and math.isnan(summary.loc["uniform", "diff_vs_uniform"])
    table = formatted(summary.reset_index(), "classification").set_index("method")
    assert table.loc["sora", "did not train"] == 1 and table.loc["sora", "seeds"] == 3
    assert table.loc["sora", "accuracy (%)"] == "83.5 ± 0.7"
    assert table.loc["uniform", "accuracy (%)"] == "81.0 ± 1.0"


def test_a_method_whose_every_run_failed_shows_did_not_train():
    runs = _runs([("r4", "uniform", 0, 0.80, None), ("r4", "id", 0, 0.572, "NaN loss")])
    table = formatted(summarise(runs, "classification"), "classification").set_index("method")
    assert table.loc["id", "accuracy (%)"] == "did not train" and table.loc["id", "did not train"] == 1


def test_with_one_seed_no_spread_is_printed():
    runs = _runs([("r4", "uniform", 0, 0.80, None), ("r4", "cka", 0, 0.81, None)])
    table = formatted(summarise(runs, "classification"), "classification")
    assert not any("±" in str(value) for value in table.to_numpy().ravel())
    assert table.set_index("method").loc["cka", "accuracy (%)"] == "81.0"
    assert table.set_index("method").loc["cka", "verdict"] == ""


def test_budget_table_and_curve_points_per_budget():
    runs = _runs([(b, m, s, acc, None) for b, base in (("r2", 0.78), ("r4", 0.80))
                  for m, shift in (("uniform", 0.0), ("sora", 0.02)) for s, acc in
                  zip(range(3), (base + shift, base + shift + 0.01, base + shift + 0.005))])
    summary = summarise(runs, "classification")
    table = budget_table(summary, "classification")
    assert table.columns.tolist() == ["method", "r2 (500)", "r4 (1,000)"]
    assert table.set_index("method").loc["sora", "r4 (1,000)"] == "82.5 ± 0.5 †"   # differences all 0.02
    points = curve_points(summary, "classification")
    from scipy import stats
    row = points[(points["method"] == "uniform") & (points["budget"] == "r2")].iloc[0]
    half = stats.t.ppf(0.975, 2) * np.std([0.78, 0.79, 0.785], ddof=1) / math.sqrt(3)
    assert row["mean"] == pytest.approx(0.785) and row["low"] == pytest.approx(0.785 - half)
    assert points["trainable_params"].tolist() == [500, 500, 1000, 1000]


@pytest.mark.parametrize("metrics, losses, reason", [
    ({"accuracy": 0.572, "test_loss": 0.68, "predicted_classes": 1, "test_examples": 100}, [0.7, 0.6],
     "one class predicted for every example"),
    ({"accuracy": 0.8, "test_loss": float("nan"), "predicted_classes": 2, "test_examples": 100}, [0.7, 0.6], "NaN loss"),
    ({"accuracy": 0.8, "test_loss": 0.5, "predicted_classes": 2, "test_examples": 100}, [0.7, float("nan")],
     "NaN loss"),
    ({"accuracy": 0.6, "test_loss": 0.7, "predicted_classes": 2, "test_examples": 100}, [0.6] * 10 + [0.8] * 10,
     "loss ended above its start"),
    ({"accuracy": 0.8, "test_loss": 0.5, "predicted_classes": 2, "test_examples": 100}, [0.7] * 10 + [0.4] * 10, None),
])
def test_did_not_train(metrics, losses, reason):
    assert did_not_train(metrics, losses, "classification") == reason


def test_a_decoder_is_never_judged_by_predicted_classes():
    assert did_not_train({"test_loss": 3.0, "perplexity": 20.0}, [5.0, 4.0, 3.0], "causal-lm") is None
    assert did_not_train({"test_loss": 3.0}, [3.0, 4.0], "causal-lm") == "loss ended above its start"


def test_the_rate_is_chosen_on_validation_among_runs_that_trained():
    tuning = pd.DataFrame({"lr": [1e-4, 3e-4, 1e-3, 3e-3], "accuracy": [0.70, 0.79, 0.79, 0.90],
                           "test_loss": [0.6, 0.5, 0.45, 0.3],
                           "did_not_train": [None, None, None, "one class predicted for every example"]})
    assert choose_rate(tuning, "classification") == 3e-4          # a tie goes to the smaller rate
    assert choose_rate(tuning, "causal-lm") == 1e-3               # lowest loss among those that trained
    assert choose_rate(tuning.assign(did_not_train="NaN loss"), "classification") == 1e-4


def test_rate_and_budget_lists_are_read_or_refused():
    assert CompareSettings(tune_lr="3e-3,1e-4, 1e-3").tune_lr == (1e-4, 1e-3, 3e-3)
    assert CompareSettings(tune_lr="off").tune_lr == () and CompareSettings(tune_lr="").tune_lr == ()
    with pytest.raises(UserError, match="^--tune-lr expects a number, not 'fast'.$"):
        CompareSettings(tune_lr="1e-3,fast")
    with pytest.raises(UserError, match="^--tune-lr must be greater than 0"):
        CompareSettings(tune_lr="-1e-3")
    assert CompareSettings(budgets="r1, r2,r1").budgets == ("r1", "r2")
    with pytest.raises(UserError, match="^--budgets names no budget"):
        CompareSettings(budgets=" , ")


def test_a_comparison_reports_run_k_of_n_over_tuning_and_seeds(tmp_path, monkeypatch):
    """The job's progress counts every training run of the comparison: tuning rates, then seeds, per budget,
    whether runs train one at a time or together."""
    from analysis.settings import RunSettings, TrainSettings
    from analysis.store.cache import Store
    from analysis.training import compare as comparison, many_runs as training

    def fake_entry(plan, config, *args, **kwargs):   # what compare reads from a finished run
        return SimpleNamespace(key=f"run-{config.lr}-{config.seed}-{plan['budget']}", meta={
            "config": {"lr": config.lr}, "metrics": {"accuracy": 0.8, "f1": 0.8, "test_loss": 0.5},
            "train_seconds": 1.0, "did_not_train": None})

    def fake_groups(todo, prepared, size, done, total):
        found = {}
        for start in range(0, len(todo), size):
            group = todo[start: start + size]
            training.phase(f"runs {done + 1}-{done + len(group)} of {total}", done + 1, total)
            found.update({run.key: fake_entry(run.plan, run.config) for run in group})
            done += len(group)
        return found

    monkeypatch.setattr(training, "retrain", fake_entry)
    monkeypatch.setattr(training, "_grouped", fake_groups)
    for size, expected in ((1, list(range(1, 11))), (3, [1, 4, 5, 8])):   # 2 budgets x (2 rates + 3 seeds)
        phases = []
        monkeypatch.setattr(training, "phase", lambda text, k, n: phases.append((text, k, n)))
        comparison.compare(RunSettings(val_size=16, device="cpu"), [],
                           CompareSettings(budgets=("r1", "r2"), seeds=(0, 1, 2), tune_lr=(1e-3, 3e-3), baselines=(),
                                           adapters_at_once=size), TrainSettings(), store=Store(tmp_path / str(size)))
        assert [k for _, k, _ in phases] == expected and {n for _, _, n in phases} == {10}
    assert phases[0][0] == "runs 1-3 of 10" and phases[-1][0] == "runs 8-10 of 10"


def test_a_method_that_cannot_spend_a_budget_sits_that_budget_out(tmp_path, monkeypatch):
    """CKA's smallest block does not fit r1 on MiniLM: the comparison goes on without that cell, says why, and keeps
    the method at the budgets it fits (a plan uniform LoRA cannot make still stops it)."""
    from analysis.errors import UserError
    from analysis.settings import RunSettings, TrainSettings
    from analysis.store.cache import Store
    from analysis.training import compare as comparison, many_runs as training

    real_plan = comparison.make_plan

    def plan_or_refuse(run, method, budget, *args, **kwargs):
        if method == "blocky" and budget == "r1":
            raise UserError("A budget of 1 parameters does not fit a single block at rank 8.")
        return real_plan(run, "uniform" if method == "blocky" else method, budget, *args, **kwargs)

    def fake_entry(plan, config, *args, **kwargs):
        return SimpleNamespace(key=f"run-{config.seed}-{plan['budget']}-{id(plan)}", meta={
            "config": {"lr": config.lr}, "metrics": {"accuracy": 0.8, "f1": 0.8, "test_loss": 0.5},
            "train_seconds": 1.0, "did_not_train": None})

    monkeypatch.setattr(comparison, "make_plan", plan_or_refuse)
    monkeypatch.setattr(training, "retrain", fake_entry)
    entry = comparison.compare(RunSettings(val_size=16, device="cpu"), ["blocky"],
                               CompareSettings(budgets=("r1", "r2"), seeds=(0, 1), tune_lr=(), baselines=(),
                                               adapters_at_once=1), TrainSettings(), store=Store(tmp_path))
    runs = entry.table("runs")
    assert sorted(set(zip(runs["budget"], runs["method"]))) == [("r1", "uniform"), ("r2", "blocky"),
                                                                    ("r2", "uniform")]
    assert list(entry.meta["left_out_plans"]) == ["r1/blocky"]
    assert "does not fit a single block" in entry.meta["left_out_plans"]["r1/blocky"]
    monkeypatch.setattr(comparison, "make_plan", lambda *a, **k: (_ for _ in ()).throw(UserError("no plan")))
    with pytest.raises(UserError, match="no plan"):
        comparison.compare(RunSettings(val_size=16, device="cpu"), ["blocky"],
                           CompareSettings(budgets=("r1",), seeds=(0,), tune_lr=(), baselines=(), adapters_at_once=1),
                           TrainSettings(), store=Store(tmp_path))
