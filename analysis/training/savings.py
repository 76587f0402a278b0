"""Parameters saved at equal accuracy: the trainable parameters each method needs to reach uniform LoRA's result at
the comparison's largest budget (accuracy; the test loss for a causal LM), read off the method's budget curve, with a
bootstrap interval over seeds. The claim the allocation papers that hold up make is of this form ("the same accuracy
with half the parameters"), beside "does it beat uniform at the same budget?".

- The target: uniform LoRA's mean over the seeds that trained at the budget where its plan trains the most
  parameters.
- A method's curve: its mean over the seeds that trained at each budget, against its plan's trainable parameters,
  in increasing parameters (a budget where no run trained is no point of the curve).
- The reading: the first point of the curve that reaches the target (at least the target's accuracy; at most its
  loss); between it and the curve's point before it, linear interpolation in log-parameters (the scale the budgets
  are spaced on, r1, r2, r4, r8), log p = log p0 + (target - y0) / (y1 - y0) * (log p1 - log p0). A method that
  reaches the target at its first point needs at most that point's parameters ("at most"); one that never
  reaches it: "not reached" (+inf).
- The interval: the seeds resampled with replacement RESAMPLES times, one draw shared by every method and budget (the
  runs are paired by seed, so the target moves with each curve); each draw's means give a target and every
  method's reading; the interval is the percentile interval at LEVEL of those readings (numpy's default linear
  rule between order statistics), a draw that does not reach counting as +inf, so an upper end of +inf says the
  method does not reach the target in that share of the draws. The draws come from a fixed seed (BOOTSTRAP_SEED),
  so a table reads the same every time.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from analysis.planning.methods import UNIFORM
from analysis.training.comparison_stats import LEVEL, PRIMARY, with_defaults

RESAMPLES = 2000
BOOTSTRAP_SEED = 0


def needed_parameters(params: np.ndarray, values: np.ndarray, target: np.ndarray,
                      higher_is_better: bool) -> tuple[np.ndarray, np.ndarray]:
    """Parameters needed to reach `target` on curves with points at `params` (ascending, shape (n,)) and means
    `values` (shape (..., n), NaN where no run trained), one target per curve (shape (...)): the needed parameters
    (+inf: not reached; NaN: no target) and whether the curve reached it at its first point (an upper bound)."""
    values = np.asarray(values, dtype=float)
    target = np.asarray(target, dtype=float)
    n = values.shape[-1]
    position = np.arange(n)
    reached = values >= target[..., None] if higher_is_better else values <= target[..., None]   # NaN: False
    first = np.where(reached.any(axis=-1), reached.argmax(axis=-1), n)
    before = np.where(np.isfinite(values) & (position < first[..., None]), position, -1).max(axis=-1, initial=-1)
    params = np.asarray(params, dtype=float)
    hit, at_first = first < n, (first < n) & (before < 0)
    at, prior = np.minimum(first, n - 1), np.maximum(before, 0)
    y1 = np.take_along_axis(values, at[..., None], axis=-1)[..., 0]
    y0 = np.take_along_axis(values, prior[..., None], axis=-1)[..., 0]
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        fraction = np.where(at_first, 1.0, (target - y0) / (y1 - y0))
        between = np.exp(np.log(params[prior]) + fraction * (np.log(params[at]) - np.log(params[prior])))
    # A point that meets the target exactly needs its own count (not exp(log(count)), a rounding away).
    needed = np.where(fraction >= 1, params[at], np.where(fraction <= 0, params[prior], between))
    needed = np.where(hit, needed, np.inf)
    return np.where(np.isfinite(target), needed, np.nan), at_first & np.isfinite(target)


def percentile_interval(readings: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The (1 - level) / 2 and (1 + level) / 2 quantiles of `readings` (NaN dropped; +inf allowed), by numpy's
    default rule: linear between the order statistics at (N - 1) q, and +inf once an +inf takes part."""
    readings = np.asarray(readings, dtype=float)
    ordered = np.sort(readings[~np.isnan(readings)])
    if not len(ordered):
        return math.nan, math.nan

    def quantile(q):
        h = (len(ordered) - 1) * q
        low = int(math.floor(h))
        a, b = ordered[low], ordered[min(low + 1, len(ordered) - 1)]
        if h == low or a == b:
            return float(a)
        return math.inf if math.isinf(b) else float(a + (h - low) * (b - a))
    return quantile((1 - level) / 2), quantile((1 + level) / 2)


def _cells(runs: pd.DataFrame, primary: str) -> tuple[pd.DataFrame, np.ndarray, list]:
    """Per (method, budget) its trainable parameters, and the primary metric of each seed's run that trained
    (seeds x cells, NaN where none): the seeds in sorted order."""
    trained = runs[runs["did_not_train"].isna()]
    cells = runs.groupby(["method", "budget"], sort=False)["trainable_params"].first().reset_index()
    seeds = sorted(runs["seed"].unique())
    table = trained.pivot_table(index="seed", columns=["method", "budget"], values=primary, aggfunc="mean")
    table = table.reindex(index=seeds, columns=pd.MultiIndex.from_frame(cells[["method", "budget"]]))
    return cells, table.to_numpy(dtype=float), seeds


def savings(runs: pd.DataFrame, task: str, resamples: int = RESAMPLES, level: float = LEVEL,
            draws: np.ndarray | None = None) -> pd.DataFrame:
    """One row per method (in the runs' order): the parameters it needs to reach uniform's result at the largest
    budget, how it was read, the bootstrap interval, and the share of uniform's parameters there it saves.
    `draws` (resamples x seeds, positions into the sorted seeds) replaces the random draws, for tests."""
    runs = with_defaults(runs)
    primary, higher = PRIMARY[task]
    cells, values, seeds = _cells(runs, primary)
    uniform = cells[cells["method"] == UNIFORM]
    if uniform.empty:
        return pd.DataFrame()
    reference = uniform.loc[uniform["trainable_params"].idxmax()]
    ref_cell, ref_params = int(reference.name), int(reference["trainable_params"])
    if draws is None:
        draws = np.random.default_rng(BOOTSTRAP_SEED).integers(0, len(seeds), size=(resamples, len(seeds)))
    counts = np.zeros((len(draws) + 1, len(seeds)))
    counts[0] = 1   # row 0: every seed once, the estimate itself
    np.add.at(counts, (np.repeat(np.arange(1, len(draws) + 1), draws.shape[1]), np.asarray(draws).ravel()), 1)
    measured = np.isfinite(values)
    with np.errstate(invalid="ignore"):
        means = (counts @ np.where(measured, values, 0.0)) / (counts @ measured)   # NaN where no run trained
    target = means[:, ref_cell]
    rows = []
    for method, group in cells.groupby("method", sort=False):
        group = group.sort_values("trainable_params", kind="stable")
        needed, at_first = needed_parameters(group["trainable_params"].to_numpy(), means[:, group.index], target,
                                             higher)
        low, high = percentile_interval(needed[1:], level)
        estimate = float(needed[0])
        reading = ("" if math.isnan(estimate) else "not reached" if math.isinf(estimate) else
                   "at most" if at_first[0] else "interpolated")
        rows.append({"method": method, "metric": primary, "target": float(target[0]),
                     "reference_budget": reference["budget"], "reference_params": ref_params,
                     "needed_params": estimate, "reading": reading, "needed_low": low, "needed_high": high,
                     "saved": 1 - estimate / ref_params, "saved_low": 1 - high / ref_params,
                     "saved_high": 1 - low / ref_params, "seeds": len(seeds), "resamples": len(draws),
                     "level": level})
    return pd.DataFrame(rows)
