"""Compare plans at one or more budgets: uniform LoRA first, then each method, each retrained with several seeds.

The protocol (docs/architecture.md, "The comparison protocol" in the design notes):

- Every method runs the same seeds as uniform LoRA; a seed fixes the data order and the task head's
  initialisation (retrain.py), so each method's run with seed s is paired with uniform's run with seed s.
- With a learning-rate grid (`tune_lrs`), each method at each budget is trained once per rate with the first
  seed and evaluated on the validation split (never test); the best rate is then run with every seed.
- A run that did not train (retrain.did_not_train) is kept in the runs table, flagged, and left out of the
  means, with a count.
- The summary gives mean ± std over the runs that trained and, per method, the paired difference from
  uniform on the seeds where both trained: its mean, a 95% t interval and the paired t-test's p-value. A
  method "beats uniform" only where that interval excludes zero on the better side.

Every (plan, seed, rate, split) is one cached retrain entry, so adding a seed, a budget or a method later
trains only what is new. The comparison itself is a store entry too (the runs, the tuning runs and the
summary), which the dashboard lists.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import time

import numpy as np
import pandas as pd

from analysis.errors import UserError
from analysis.jobs.progress import phase
from analysis.settings import Limits, PlanOptions, RunSettings, TrainSettings, to_dict
from analysis.signals.context import prepare
from analysis.store.hashing import hash_json
from analysis.planning.methods import UNIFORM, layout_for, make_plan
from analysis.planning.plan_json import row_name
from analysis.training.retrain import did_not_train, retrain
from analysis.store.cache import Entry, Result, Store

METRICS = {"classification": ["accuracy", "f1", "test_loss"], "causal-lm": ["test_loss", "perplexity"]}
# The metric a method is judged on, and whether higher is better: the paired difference, the verdict and the
# learning-rate choice use it. For a decoder that is the loss (perplexity is its exponential; the curve shows it).
PRIMARY = {"classification": ("accuracy", True), "causal-lm": ("test_loss", False)}
CURVE = {"classification": "accuracy", "causal-lm": "perplexity"}
LEVEL = 0.95


def parse_rates(text: str | None) -> list[float] | None:
    """'1e-4,3e-4,1e-3' -> rates; '', 'off' or 'none' -> None (no tuning: every run uses --lr)."""
    if text is None or str(text).strip().lower() in ("", "off", "none", "no"):
        return None
    try:
        rates = [float(part) for part in str(text).split(",") if part.strip()]
    except ValueError:
        rates = []
    if not rates or not all(math.isfinite(r) and r > 0 for r in rates):
        raise UserError(f"--tune-lr expects comma-separated positive learning rates such as 1e-4,3e-4,1e-3, or "
                        f"'off', not '{text}'.")
    return sorted(set(rates))


def parse_budgets(text: str) -> list[str]:
    budgets = [part.strip() for part in str(text).split(",") if part.strip()]
    if not budgets:
        raise UserError(f"--budgets expects comma-separated budgets such as r1,r2,r4,r8, not '{text}'.")
    return list(dict.fromkeys(budgets))


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


def _with_defaults(runs: pd.DataFrame) -> pd.DataFrame:
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
    runs = _with_defaults(runs)
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


def _row(method: str, budget: str, plan: dict, seed: int, entry: Entry, task: str) -> dict:
    meta = entry.meta
    failure = meta.get("did_not_train", "missing")
    if failure == "missing":   # an entry of an older version: judge it from its metrics and curve
        failure = did_not_train(meta["metrics"], entry.table("curve")["loss"].tolist(), task)
    return {"budget": budget, "method": row_name(method, plan.get("variant", "")), "seed": seed,
            "lr": meta["config"]["lr"],
            "trainable_params": plan["trainable_params"], **meta["metrics"], "train_seconds": meta["train_seconds"],
            "did_not_train": failure, "entry": entry.key}


def choose_rate(tuning: pd.DataFrame, task: str) -> float:
    """The rate best on validation among runs that trained (ties: the smaller rate); if none trained, the
    smallest rate."""
    primary, higher = PRIMARY[task]
    trained = tuning[tuning["did_not_train"].isna()]
    if trained.empty:
        return float(tuning["lr"].min())
    ordered = trained.sort_values(["lr"]).sort_values(primary, ascending=not higher, kind="stable")
    return float(ordered["lr"].iloc[0])


def compare(settings: RunSettings, methods: list[str], budget: str | list[str], seeds: list[int],
            config: TrainSettings, limits: Limits = Limits(), options: PlanOptions = PlanOptions(),
            store: Store | None = None, overrides: dict[str, dict[str, str]] | None = None,
            tune_lrs: list[float] | None = None) -> Entry:
    """Retrain uniform LoRA and every method at every budget with every seed (the learning rate tuned per
    method and budget on validation when `tune_lrs` is given; else `config.lr`); the comparison's entry."""
    store = store or Store()
    budgets = parse_budgets(budget) if isinstance(budget, str) else list(dict.fromkeys(budget))
    if not seeds:
        raise UserError("Give at least one seed.")
    prepared = prepare(settings, store)
    task = prepared.task
    layout = layout_for(prepared.identity)
    methods = [UNIFORM] + [m for m in dict.fromkeys(methods) if m != UNIFORM]   # uniform LoRA is the first row
    plans = {(b, method): make_plan(prepared.identity, method, b, limits, options, overrides=overrides,
                                    layout=layout) for b in budgets for method in methods}
    for (b, method), plan in plans.items():
        for warning in plan["warnings"]:
            print(f"note ({method} at {b}): {warning}")
    rows, tuning_rows, chosen = [], [], {}
    started = time.time()
    final = dataclasses.replace(config, eval_split="test")
    total = len(plans) * (len(tune_lrs or []) + len(seeds))   # the job's progress counts every training run
    count = itertools.count(1)
    for (b, method), plan in plans.items():
        lr = config.lr
        if tune_lrs:
            trials = []
            for rate in tune_lrs:
                phase(f"run {method} at {b}, lr {rate:g} (tuning)", next(count), total)
                print(f"tune {method} at {b}: lr {rate:g} (seed {seeds[0]}, validation)", flush=True)
                entry = retrain(plan, dataclasses.replace(final, lr=rate, seed=seeds[0], eval_split="validation"),
                                store, label=f"{method} · {b} · lr {rate:g} (tuning)")
                trials.append(_row(method, b, plan, seeds[0], entry, task))
            trials = pd.DataFrame(trials)
            lr = choose_rate(trials, task)
            tuning_rows += trials.assign(chosen=trials["lr"] == lr).to_dict("records")
        chosen[f"{b}/{method}"] = lr
        for seed in seeds:
            phase(f"run {method} at {b}, seed {seed}", next(count), total)
            print(f"retrain {method} at {b} (seed {seed}, lr {lr:g}, {plan['trainable_params']:,} parameters)",
                  flush=True)
            entry = retrain(plan, dataclasses.replace(final, lr=lr, seed=seed), store,
                            label=f"{method} · {b} · seed {seed}")
            rows.append({**_row(method, b, plan, seed, entry, task), "init": final.init})   # which start (--init)
            if rows[-1]["did_not_train"]:
                print(f"  did not train: {rows[-1]['did_not_train']}", flush=True)
    runs = pd.DataFrame(rows)
    tuning = pd.DataFrame(tuning_rows)
    summary = summarise(runs, task)
    key = "comparison-" + hash_json({"context": prepared.key, "runs": runs["entry"].tolist(),
                                     "tuning": tuning["entry"].tolist() if len(tuning) else [],
                                     "grid": list(tune_lrs or []), "chosen": chosen})[:24]
    first = plans[(budgets[0], UNIFORM)]
    meta = {"signal": "comparison", "title": "Comparison of plans" + (" at one budget" if len(budgets) == 1 else
                                                                      f" at {len(budgets)} budgets"),
            "context_key": prepared.key, **prepared.description, "budget": first["budget"], "budget_spec": budgets[0],
            "budgets": budgets, "budget_params": {b: plans[(b, UNIFORM)]["budget"] for b in budgets},
            "seeds": seeds, "methods": methods, "config": to_dict(config), "tune_lrs": list(tune_lrs or []),
            "chosen_lrs": chosen, "left_out": int(runs["did_not_train"].notna().sum()),
            "plans": {f"{b}/{m}": p for (b, m), p in plans.items()}, "seconds": round(time.time() - started, 1)}
    tables = {"runs": runs}
    if len(tuning):
        tables["tuning"] = tuning
    return store.put(key, Result(summary, tables=tables), meta)


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


def summary_of(entry: Entry) -> pd.DataFrame:
    """The comparison's summary recomputed from its runs (so entries made before budgets, tuning and the
    did-not-train flag read like new ones)."""
    runs = entry.table("runs")
    if "did_not_train" not in runs:
        runs = runs.assign(did_not_train=None)
    return summarise(runs, entry.meta["task"])
