"""Compare plans at one budget: uniform LoRA first, then each method, each retrained with several seeds.

Every (plan, seed) is one cached retrain entry, so adding a seed or a method later trains only
what is new. The comparison itself is a store entry too (per-run rows and the summary), which the
dashboard lists.
"""
from __future__ import annotations

import time
import dataclasses

import pandas as pd

from analysis.settings import Limits, PlanOptions, RunSettings, TrainSettings, to_dict
from analysis.signals.context import prepare
from analysis.store.hashing import hash_json
from analysis.planning.methods import UNIFORM, layout_for, make_plan
from analysis.training.retrain import retrain
from analysis.store.cache import Entry, Result, Store

METRICS = {"classification": ["accuracy", "f1", "test_loss"], "causal-lm": ["test_loss", "perplexity"]}


def summarise(runs: pd.DataFrame, task: str) -> pd.DataFrame:
    """One row per method, in the order the methods were given: mean and std over seeds."""
    columns = METRICS[task] + ["train_seconds"]
    grouped = runs.groupby("method", sort=False)
    summary = grouped[columns].agg(["mean", "std"])
    summary.columns = [f"{metric}_{stat}" for metric, stat in summary.columns]
    summary.insert(0, "trainable_params", grouped["trainable_params"].first())
    summary.insert(1, "seeds", grouped["seed"].nunique())
    return summary.reset_index()


def formatted(summary: pd.DataFrame, task: str) -> pd.DataFrame:
    """The summary as researchers write it: mean ± std, and the mean alone where one seed (or one run that trained)
    gives no spread."""
    table = pd.DataFrame({"method": summary["method"], "trainable params": summary["trainable_params"].map("{:,}".format),
                          "seeds": summary["seeds"]})
    for metric in METRICS[task] + ["train_seconds"]:
        scale, digits = (100, 1) if metric in ("accuracy", "f1") else (1, 3 if metric == "test_loss" else 1)
        mean, std = summary[f"{metric}_mean"] * scale, summary[f"{metric}_std"] * scale
        name = {"accuracy": "accuracy (%)", "f1": "macro F1 (%)", "train_seconds": "train time (s)"}.get(metric, metric)
        table[name] = [f"{m:.{digits}f}" if pd.isna(s) or n < 2 else f"{m:.{digits}f} ± {s:.{digits}f}"
                       for m, s, n in zip(mean, std, summary["seeds"])]
    return table


def markdown(table: pd.DataFrame) -> str:
    rows = [list(map(str, table.columns))] + [list(map(str, row)) for row in table.itertuples(index=False)]
    lines = ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join([lines[0], "|" + "---|" * len(table.columns), *lines[1:]])


def compare(settings: RunSettings, methods: list[str], budget: str, seeds: list[int], config: TrainSettings,
            limits: Limits = Limits(), options: PlanOptions = PlanOptions(), store: Store | None = None,
            overrides: dict[str, dict[str, str]] | None = None) -> Entry:
    store = store or Store()
    prepared = prepare(settings, store)
    layout = layout_for(prepared.identity)
    methods = [UNIFORM] + [m for m in methods if m != UNIFORM]   # uniform LoRA is always the first row
    plans = {method: make_plan(prepared.identity, method, budget, limits, options, overrides=overrides, layout=layout)
             for method in methods}
    for method, plan in plans.items():
        for warning in plan["warnings"]:
            print(f"note ({method}): {warning}")
    rows = []
    started = time.time()
    for method, plan in plans.items():
        for seed in seeds:
            print(f"retrain {method} (seed {seed}, {plan['trainable_params']:,} parameters)", flush=True)
            entry = retrain(plan, dataclasses.replace(config, seed=seed), store,
                            label=f"{method} · seed {seed}")
            rows.append({"method": method, "seed": seed, "init": config.init,   # which start (retrain --init)
                         "trainable_params": plan["trainable_params"],
                         **entry.meta["metrics"], "train_seconds": entry.meta["train_seconds"],
                         "entry": entry.key})
    runs = pd.DataFrame(rows)
    summary = summarise(runs, prepared.task)
    key = "comparison-" + hash_json({"context": prepared.key, "runs": runs["entry"].tolist()})[:24]
    meta = {"signal": "comparison", "title": "Comparison at one budget", "context_key": prepared.key,
            **prepared.description, "budget": plans[UNIFORM]["budget"], "budget_spec": budget, "seeds": seeds,
            "methods": methods, "config": to_dict(config), "plans": plans, "seconds": round(time.time() - started, 1)}
    return store.put(key, Result(summary, tables={"runs": runs}), meta)
