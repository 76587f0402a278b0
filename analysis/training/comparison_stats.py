"""The comparison's statistics over its runs: mean ± std per budget and method over the runs that trained, and
each method's paired difference from uniform LoRA at the same budget (a t interval and the paired t-test), with
the verdict it supports. Numbers only; reporting/comparison_tables.py writes them as tables.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from analysis.planning.methods import UNIFORM
from analysis.store.cache import Entry

METRICS = {"classification": ["accuracy", "f1", "test_loss"], "causal-lm": ["test_loss", "perplexity"]}
# The metric a method is judged on, and whether higher is better: the paired difference, the verdict, the
# learning-rate choice and the savings at equal accuracy use it. For a decoder that is the loss (perplexity is its
# exponential; the budget curve shows it).
PRIMARY = {"classification": ("accuracy", True), "causal-lm": ("test_loss", False)}
LEVEL = 0.95


def paired_difference(method: np.ndarray, uniform: np.ndarray, level: float = LEVEL) -> dict:
    """Mean of method - uniform over paired seeds, its t interval at `level` and the paired t-test's p-value
    (NaN where fewer than two pairs, or where every difference is the same, which leaves no spread to test)."""
    from scipy import stats

    diff = np.asarray(method, dtype=float) - np.asarray(uniform, dtype=float)
    n = len(diff)
    out = {"pairs": n, "diff": float(diff.mean()) if n else math.nan, "low": math.nan, "high": math.nan,
           "p": math.nan}
    if n < 2:
        return out
    sd = diff.std(ddof=1)
    if sd == 0:
        out["low"] = out["high"] = out["diff"]
        return out
    half = stats.t.ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
    out.update(low=out["diff"] - half, high=out["diff"] + half, p=float(stats.ttest_rel(method, uniform).pvalue))
    return out


def verdict(low: float, high: float, higher_is_better: bool) -> str:
    if not (np.isfinite(low) and np.isfinite(high)):
        return ""
    if low > 0:
        return "beats uniform" if higher_is_better else "worse than uniform"
    if high < 0:
        return "worse than uniform" if higher_is_better else "beats uniform"
    return "no clear difference"


def with_defaults(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs of comparisons made before budgets, tuning and the did-not-train flag still summarise."""
    runs = runs.copy()
    if "budget" not in runs:
        runs["budget"] = ""
    if "did_not_train" not in runs:
        runs["did_not_train"] = None
    runs["did_not_train"] = runs["did_not_train"].where(runs["did_not_train"].notna() & (runs["did_not_train"] != ""),
                                                        None)
    if "lr" not in runs:
        runs["lr"] = math.nan
    return runs


def summarise(runs: pd.DataFrame, task: str) -> pd.DataFrame:
    """One row per budget and method (methods in the order given): the runs that trained, their mean and std,
    and the paired difference from uniform LoRA at the same budget on the primary metric."""
    runs = with_defaults(runs)
    primary, higher = PRIMARY[task]
    columns = [m for m in METRICS[task] + ["train_seconds"] if m in runs]
    rows = []
    for (budget, method), group in runs.groupby(["budget", "method"], sort=False):
        kept = group[group["did_not_train"].isna()]
        row = {"budget": budget, "method": method, "trainable_params": int(group["trainable_params"].iloc[0]),
               "lr": float(group["lr"].iloc[0]), "seeds": int(group["seed"].nunique()),
               "trained": int(len(kept)), "did_not_train": int(len(group) - len(kept))}
        for metric in columns:
            row[f"{metric}_mean"] = kept[metric].mean() if len(kept) else math.nan
            row[f"{metric}_std"] = kept[metric].std() if len(kept) > 1 else math.nan
        uniform = runs[(runs["budget"] == budget) & (runs["method"] == UNIFORM) & runs["did_not_train"].isna()]
        if method != UNIFORM and len(uniform):
            paired = kept.merge(uniform[["seed", primary]], on="seed", suffixes=("", "_uniform"))
            stats = paired_difference(paired[primary].to_numpy(), paired[f"{primary}_uniform"].to_numpy())
        else:
            stats = {"pairs": 0, "diff": math.nan, "low": math.nan, "high": math.nan, "p": math.nan}
        row.update({"paired_seeds": stats["pairs"], "diff_vs_uniform": stats["diff"], "diff_low": stats["low"],
                    "diff_high": stats["high"], "p_value": stats["p"],
                    "verdict": verdict(stats["low"], stats["high"], higher)})
        rows.append(row)
    return pd.DataFrame(rows)



def summary_of(entry: Entry) -> pd.DataFrame:
    """The comparison's summary recomputed from its runs (so entries made before budgets, tuning and the
    did-not-train flag read like new ones)."""
    runs = entry.table("runs")
    if "did_not_train" not in runs:
        runs = runs.assign(did_not_train=None)
    return summarise(runs, entry.meta["task"])
