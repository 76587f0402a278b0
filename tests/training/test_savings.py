"""Parameters saved at equal accuracy: the reading of a budget curve worked by hand, and the vectorised reading and
bootstrap against the slow obvious version (a loop over points, pandas means over each draw's seeds, order
statistics by hand) on random comparisons."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from analysis.reporting.comparison_tables import savings_table
from analysis.training.savings import needed_parameters, percentile_interval, savings


def runs_of(cells: dict, metric: str = "accuracy", failed=()) -> pd.DataFrame:
    """Runs from {(method, budget): (trainable params, [value per seed])}; `failed`: (method, budget, seed) flagged."""
    return pd.DataFrame([{"method": method, "budget": budget, "seed": seed, "trainable_params": params, metric: value,
                          "did_not_train": "NaN loss" if (method, budget, seed) in failed else None}
                         for (method, budget), (params, values) in cells.items() for seed, value in enumerate(values)])


def test_the_reading_worked_by_hand():
    # Uniform reaches 84% at r2 (2,000 parameters). The method has 82% at 500 and 86% at 1,000 parameters: 84% is
    # halfway between, so in log-parameters halfway from log 500 to log 1000, at 500 sqrt(2) = 707.1 parameters,
    # 64.6% fewer than uniform's 2,000. Every seed moves both curves alike, so every draw reads the same.
    cells = {("uniform", "r1"): (1000, [0.80, 0.79, 0.81]), ("uniform", "r2"): (2000, [0.84, 0.83, 0.85]),
             ("m", "r1"): (500, [0.82, 0.81, 0.83]), ("m", "r2"): (1000, [0.86, 0.85, 0.87])}
    result = savings(runs_of(cells), "classification").set_index("method")
    assert result.loc["m", "target"] == pytest.approx(0.84)
    assert result.loc["m", "needed_params"] == pytest.approx(500 * math.sqrt(2))
    assert result.loc["m", "reading"] == "interpolated"
    assert result.loc["m", "saved"] == pytest.approx(1 - 500 * math.sqrt(2) / 2000)
    assert (result.loc["m", "needed_low"], result.loc["m", "needed_high"]) == pytest.approx((707.1068, 707.1068))
    assert result.loc["uniform", "needed_params"] == 2000 and result.loc["uniform", "saved"] == 0
    table = savings_table(result.reset_index(), "classification").set_index("method")
    assert table.columns.tolist() == ["params to reach uniform's accuracy at r2 (84.0%), 95% CI",
                                      "saved of uniform's 2,000"]
    assert table.loc["m"].tolist() == ["707", "+65%"] and table.loc["uniform"].tolist() == ["2,000", "+0%"]


def test_a_loss_is_read_downwards_and_the_ends_say_at_most_or_not_reached():
    # Losses: uniform 1.8 at r2 (2,000). 'half' has 1.9 and 1.7 at 500 and 1,000: halfway again, 707.1. 'early'
    # is at 1.75 already at its smallest budget (400): at most 400. 'never' stays at 1.85 and above: not reached.
    cells = {("uniform", "r1"): (1000, [2.0, 2.0]), ("uniform", "r2"): (2000, [1.8, 1.8]),
             ("half", "r1"): (500, [1.9, 1.9]), ("half", "r2"): (1000, [1.7, 1.7]),
             ("early", "r1"): (400, [1.75, 1.75]), ("early", "r2"): (900, [1.6, 1.6]),
             ("never", "r1"): (800, [1.95, 1.95]), ("never", "r2"): (1600, [1.85, 1.85])}
    result = savings(runs_of(cells, "test_loss"), "causal-lm").set_index("method")
    assert result.loc["half", "needed_params"] == pytest.approx(500 * math.sqrt(2))
    assert (result.loc["early", "needed_params"], result.loc["early", "reading"]) == (400, "at most")
    assert math.isinf(result.loc["never", "needed_params"]) and result.loc["never", "reading"] == "not reached"
    table = savings_table(result.reset_index(), "causal-lm").set_index("method")
    assert table.iloc[:, 0].tolist() == ["2,000", "707", "≤ 400", "not reached"]
    assert table.loc["early"].iloc[1] == "≥ +80%" and table.loc["never"].iloc[1] == ""


def test_pairing_by_seed_keeps_a_constant_gain_exact_however_the_seeds_spread():
    """The method is uniform plus 0.02 on every seed, and the seeds differ by up to six points: in every draw the
    target and the method's curve move together, so its reading never moves (an unpaired bootstrap would)."""
    rng = np.random.default_rng(3)
    spread = rng.normal(0, 0.03, 6)
    cells = {("uniform", "r1"): (1000, 0.78 + spread), ("uniform", "r2"): (2000, 0.82 + spread),
             ("m", "r1"): (1000, 0.80 + spread), ("m", "r2"): (2000, 0.84 + spread)}
    row = savings(runs_of(cells), "classification").set_index("method").loc["m"]
    assert row["needed_params"] == pytest.approx(1000 * 2 ** 0.5)   # (0.82 - 0.80) / (0.84 - 0.80) = 1/2
    assert row["needed_low"] == pytest.approx(row["needed_params"]) == pytest.approx(row["needed_high"])


def slow_reading(points: list[tuple[float, float]], target: float, higher: bool) -> tuple[float, bool]:
    """Walk the points in increasing parameters; the first that reaches the target, interpolated in log-parameters
    from the measured point before it."""
    if math.isnan(target):
        return math.nan, False
    previous = None
    for params, value in sorted(points, key=lambda point: point[0]):
        if math.isnan(value):
            continue
        if (value >= target) if higher else (value <= target):
            if previous is None:
                return params, True
            p0, y0 = previous
            fraction = (target - y0) / (value - y0)
            return math.exp(math.log(p0) + fraction * (math.log(params) - math.log(p0))), False
        previous = (params, value)
    return math.inf, False


def test_the_vectorised_reading_equals_the_loop_on_random_curves():
    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(1, 6))
        params = np.sort(rng.choice(np.arange(100, 10_000), n, replace=False)).astype(float)
        values = rng.random((4, n))
        values[rng.random((4, n)) < 0.2] = np.nan
        target = rng.random(4)
        target[rng.random(4) < 0.1] = np.nan
        higher = bool(rng.integers(2))
        needed, at_first = needed_parameters(params, values, target, higher)
        for k in range(4):
            expected, first = slow_reading(list(zip(params, values[k])), target[k], higher)
            assert (needed[k] == pytest.approx(expected, rel=1e-12)) or (math.isnan(expected) and math.isnan(needed[k]))
            assert bool(at_first[k]) == first


def slow_quantile(values: list[float], q: float) -> float:
    """numpy's default (linear) quantile, spelled out: between the order statistics around (N - 1) q; an +inf
    neighbour makes it +inf."""
    ordered = sorted(v for v in values if not math.isnan(v))
    h = (len(ordered) - 1) * q
    below, above = ordered[math.floor(h)], ordered[math.ceil(h)]
    if h == math.floor(h) or below == above:
        return below
    return math.inf if math.isinf(above) else below + (h - math.floor(h)) * (above - below)


def slow_savings(runs: pd.DataFrame, metric: str, higher: bool, draws: np.ndarray, level: float = 0.95) -> dict:
    """Per method (estimate, low, high): for each draw the runs of its seeds stacked (a seed drawn twice counts
    twice), pandas means per method and budget over the runs that trained, the target from uniform's largest
    budget, each method's reading by the loop; the interval from the draws' readings by order statistics."""
    seeds = sorted(runs["seed"].unique())
    params = runs.groupby(["method", "budget"])["trainable_params"].first()
    uniform = params["uniform"]
    largest = uniform.idxmax()

    def readings(chosen):
        stacked = pd.concat([runs[runs["seed"] == seeds[i]] for i in chosen])
        means = stacked[stacked["did_not_train"].isna()].groupby(["method", "budget"])[metric].mean()
        target = means.get(("uniform", largest), math.nan)
        return {method: slow_reading([(params[(method, b)], means.get((method, b), math.nan))
                                      for b in params[method].index], target, higher)[0]
                for method in params.index.get_level_values(0).unique()}

    estimate = readings(range(len(seeds)))
    drawn = [readings(row) for row in draws]
    return {m: (estimate[m], slow_quantile([d[m] for d in drawn], (1 - level) / 2),
                slow_quantile([d[m] for d in drawn], (1 + level) / 2)) for m in estimate}


@pytest.mark.parametrize("seed", range(6))
def test_the_bootstrap_equals_the_slow_version_on_random_comparisons(seed):
    rng = np.random.default_rng(seed)
    task, metric, higher = (("classification", "accuracy", True), ("causal-lm", "test_loss", False))[seed % 2]
    budgets, seeds = ["r1", "r2", "r4"], int(rng.integers(2, 6))
    cells = {}
    for method in ["uniform", "a", "b", "c"]:
        shift = 0.0 if method == "uniform" else rng.normal(0, 0.06)   # some reach early, some never
        for k, budget in enumerate(budgets):
            params = int(1000 * 2 ** k * rng.uniform(0.6, 1.0)) if method != "uniform" else 1000 * 2 ** k
            trend = (0.7 + 0.03 * k) if higher else (2.0 - 0.1 * k)
            cells[(method, budget)] = (params, trend + shift + rng.normal(0, 0.03, seeds))
    failed = {(m, b, s) for (m, b) in cells for s in range(seeds) if rng.random() < 0.1 and m != "uniform"}
    runs = runs_of(cells, metric, failed)
    draws = rng.integers(0, seeds, size=(60, seeds))
    result = savings(runs, task, draws=draws).set_index("method")
    expected = slow_savings(runs, metric, higher, draws)
    for method, (estimate, low, high) in expected.items():
        row = result.loc[method]
        assert [row["needed_params"], row["needed_low"], row["needed_high"]] == \
            pytest.approx([estimate, low, high], rel=1e-9, nan_ok=True), method
    assert result["resamples"].eq(60).all() and result["seeds"].eq(seeds).all()


def test_the_interval_rule_is_numpys_on_finite_readings_and_open_with_infinite_ones():
    rng = np.random.default_rng(1)
    for n in (1, 2, 7, 40, 2000):
        readings = rng.lognormal(8, 1, n)
        assert percentile_interval(readings) == pytest.approx(tuple(np.quantile(readings, [0.025, 0.975])))
    readings = np.concatenate([rng.lognormal(8, 1, 97), [np.inf] * 3, [np.nan] * 5])
    low, high = percentile_interval(readings)
    assert low == pytest.approx(slow_quantile(list(readings), 0.025)) and high == math.inf
