"""A comparison as researchers write it: the results table (mean ± std, the paired difference from uniform with
its interval), the per-budget table, the budget curve's points, the parameters each method needs to match
uniform, and the Pareto points; Markdown for the command line; and the sentences saying when a comparison is too small
to mean much. The numbers come from training/comparison_stats.py and training/savings.py.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from analysis.planning.methods import UNIFORM
from analysis.store.cache import Entry
from analysis.training.comparison_stats import LEVEL, METRICS, PRIMARY

# The metric the budget curve draws: perplexity for a decoder reads better than its logarithm.
CURVE = {"classification": "accuracy", "causal-lm": "perplexity"}


def _scale(metric: str) -> tuple[float, int]:
    return (100, 1) if metric in ("accuracy", "f1") else (1, 3 if metric == "test_loss" else 1)


NAMES = {"accuracy": "accuracy (%)", "f1": "macro F1 (%)", "train_seconds": "train time (s)",
         "test_loss": "test loss"}


def _spread(mean: float, std: float, scale: float, digits: int, trained: int) -> str:
    if not np.isfinite(mean):
        return "did not train"
    if trained < 2:   # one run: no spread to show
        return f"{mean * scale:.{digits}f}"
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"


def formatted(summary: pd.DataFrame, task: str) -> pd.DataFrame:
    """The summary as researchers write it: mean ± std over the runs that trained, how many did not, and each
    method's paired difference from uniform with its 95% interval and p-value."""
    primary, _ = PRIMARY[task]
    scale, digits = _scale(primary)
    table = pd.DataFrame({"budget": summary["budget"], "method": summary["method"],
                          "trainable params": summary["trainable_params"].map("{:,}".format),
                          "lr": summary["lr"].map(lambda v: f"{v:.0e}" if np.isfinite(v) else ""),
                          "seeds": summary["seeds"],
                          "did not train": summary["did_not_train"]})
    if (table["budget"] == "").all():
        table = table.drop(columns="budget")
    for metric in METRICS[task] + ["train_seconds"]:
        if f"{metric}_mean" not in summary:
            continue
        m_scale, m_digits = _scale(metric)
        table[NAMES.get(metric, metric)] = [_spread(m, s, m_scale, m_digits, t) for m, s, t in
                                            zip(summary[f"{metric}_mean"], summary[f"{metric}_std"],
                                                summary["trained"])]
    unit = " (points)" if primary in ("accuracy", "f1") else ""

    def difference(row) -> str:
        if row["method"] == UNIFORM or not np.isfinite(row["diff_vs_uniform"]):
            return ""
        text = f"{row['diff_vs_uniform'] * scale:+.{digits}f}"
        if np.isfinite(row["diff_low"]) and row["diff_low"] != row["diff_high"]:
            text += f" [{row['diff_low'] * scale:+.{digits}f}, {row['diff_high'] * scale:+.{digits}f}]"
        return text

    table[f"Δ {NAMES.get(primary, primary).split(' (')[0]} vs uniform, 95% CI{unit}"] = summary.apply(difference,
                                                                                                        axis=1)
    table["p"] = summary["p_value"].map(lambda p: "" if not np.isfinite(p) else ("<0.001" if p < 1e-3 else f"{p:.3f}"))
    table["verdict"] = summary["verdict"]
    return table


def budget_table(summary: pd.DataFrame, task: str) -> pd.DataFrame:
    """Methods x budgets (trainable parameters of uniform LoRA there): the curve's metric, mean ± std, with
    a dagger where the method beats uniform; the budget figure as a table for a paper."""
    metric = CURVE[task]
    scale, digits = _scale(metric)
    budgets = list(dict.fromkeys(summary["budget"]))
    uniform = summary[summary["method"] == UNIFORM].set_index("budget")["trainable_params"]
    table = pd.DataFrame({"method": list(dict.fromkeys(summary["method"]))})
    for budget in budgets:
        here = summary[summary["budget"] == budget].set_index("method")
        label = f"{budget} ({int(uniform.get(budget, here['trainable_params'].max())):,})" if budget else "result"
        cells = []
        for method in table["method"]:
            if method not in here.index:
                cells.append("")
                continue
            row = here.loc[method]
            cell = _spread(row[f"{metric}_mean"], row[f"{metric}_std"], scale, digits, row["trained"])
            cells.append(cell + (" †" if row["verdict"] == "beats uniform" else ""))
        table[label] = cells
    return table


def curve_points(summary: pd.DataFrame, task: str, level: float = LEVEL) -> pd.DataFrame:
    """What the budget figure draws: per method and budget, trainable parameters, the curve metric's mean and
    the t interval of that mean (NaN band with fewer than two runs)."""
    from scipy import stats

    metric = CURVE[task]
    frame = summary[["method", "budget", "trainable_params", "trained", f"{metric}_mean", f"{metric}_std"]].copy()
    frame.columns = ["method", "budget", "trainable_params", "trained", "mean", "std"]
    half = [stats.t.ppf(0.5 + level / 2, n - 1) * s / math.sqrt(n) if n > 1 and np.isfinite(s) else math.nan
            for n, s in zip(frame["trained"], frame["std"])]
    frame["low"] = frame["mean"] - np.asarray(half)
    frame["high"] = frame["mean"] + np.asarray(half)
    frame.insert(0, "metric", metric)
    return frame


def markdown(table: pd.DataFrame) -> str:
    rows = [list(map(str, table.columns))] + [list(map(str, row)) for row in table.itertuples(index=False)]
    lines = ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join([lines[0], "|" + "---|" * len(table.columns), *lines[1:]])


def _count(value: float) -> str:
    return "not reached" if math.isinf(value) else f"{value:,.0f}"


def savings_table(savings: pd.DataFrame, task: str) -> pd.DataFrame:
    """training.savings as researchers write it: per method, the parameters it needs to reach uniform's result at
    the largest budget with the bootstrap interval, and the share of uniform's parameters there that it saves."""
    if savings.empty:
        return pd.DataFrame()
    first = savings.iloc[0]
    metric = first["metric"]
    scale, digits = _scale(metric)
    unit = "%" if scale == 100 else ""
    target = (f"{first['target'] * scale:.{digits}f}{unit}" if np.isfinite(first["target"]) else
              "none: no run of it trained there")
    level = f"{first['level']:.0%}"

    def needed(row) -> str:
        if row["reading"] == "":
            return ""
        text = ("≤ " if row["reading"] == "at most" else "") + _count(row["needed_params"])
        low, high = _count(row["needed_low"]), _count(row["needed_high"])
        return text + (f" [{low}, {high}]" if np.isfinite(row["needed_low"]) and low != high else "")

    def saved(row) -> str:
        if not np.isfinite(row["saved"]):
            return ""
        text = ("≥ " if row["reading"] == "at most" else "") + f"{row['saved']:+.0%}"
        low = "not reached" if math.isinf(row["saved_low"]) else f"{row['saved_low']:+.0%}"
        high = f"{row['saved_high']:+.0%}"
        return text + (f" [{low}, {high}]" if np.isfinite(row["saved_high"]) and low != high else "")

    name = NAMES.get(metric, metric).split(" (")[0]
    return pd.DataFrame({
        "method": savings["method"],
        f"params to reach uniform's {name} at {first['reference_budget']} ({target}), {level} CI":
            savings.apply(needed, axis=1),
        f"saved of uniform's {int(first['reference_params']):,}": savings.apply(saved, axis=1)})


def pareto_points(summary: pd.DataFrame, task: str) -> pd.DataFrame:
    """What the Pareto figure draws: per method and budget, trainable parameters and the judged metric's mean over
    the runs that trained, and whether the point is on the Pareto frontier: no other point has at most its
    parameters and at least its result (at most its loss), one of the two strictly."""
    metric, higher = PRIMARY[task]
    frame = summary[["method", "budget", "trainable_params", f"{metric}_mean"]].rename(
        columns={f"{metric}_mean": "mean"}).reset_index(drop=True)
    params = frame["trainable_params"].to_numpy(dtype=float)
    value = frame["mean"].to_numpy(dtype=float) * (1 if higher else -1)   # larger is better from here on
    finite = np.isfinite(value)
    fewer, better = params[None, :] <= params[:, None], value[None, :] >= value[:, None]
    strictly = (params[None, :] < params[:, None]) | (value[None, :] > value[:, None])
    dominated = (fewer & better & strictly & finite[None, :]).any(axis=1)
    frame["frontier"] = finite & ~dominated
    frame.insert(0, "metric", metric)
    return frame


# Below these a comparison's numbers say little: the page, the table and the exports say so.
MIN_SEEDS, MIN_TEST_EXAMPLES, MIN_STEPS = 3, 200, 50


def too_small(entry: Entry) -> list[str]:
    """Why a finished comparison is too small to mean much, one sentence each (none: it is not)."""
    runs, meta = entry.table("runs"), entry.meta
    notes = []
    seeds = len(meta.get("seeds", []))
    if seeds < MIN_SEEDS:
        notes.append(f"{seeds} seed(s) per method: too few for a spread or a paired interval (use at least "
                     f"{MIN_SEEDS}).")
    examples = runs["test_examples"].min() if "test_examples" in runs else None
    if examples is not None and examples < MIN_TEST_EXAMPLES:
        notes.append(f"Only {int(examples)} test examples per run: one example moves accuracy by "
                     f"{100 / examples:.1f} points.")
    steps = (meta.get("config") or {}).get("steps")
    if steps is not None and steps < MIN_STEPS:
        notes.append(f"{steps} training steps per run: too few for the plans to differ.")
    failed = int(runs["did_not_train"].notna().sum()) if "did_not_train" in runs else 0
    if failed:
        notes.append(f"{failed} of {len(runs)} runs did not train and are left out of the means.")
    return notes
