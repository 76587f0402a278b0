"""Compare plans at one or more budgets: uniform LoRA first, then the module baselines (uniform LoRA on the
attention only, the MLP only, every linear; planning/baselines.py), then each method, each retrained with several
seeds.

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
import math
import time

import pandas as pd

from analysis.errors import UserError
from analysis.settings import Limits, PlanOptions, RunSettings, TrainSettings, to_dict
from analysis.signals import parallel
from analysis.signals.context import prepare, resolve_device
from analysis.store.hashing import hash_json
from analysis.planning.baselines import DEFAULT_BASELINES, baseline_rows
from analysis.planning.methods import UNIFORM, layout_for, make_plan
from analysis.planning.plan_json import row_name
from analysis.training.comparison_stats import PRIMARY, summarise
from analysis.training.outcome import did_not_train
from analysis.training.many_runs import Request, train_runs
from analysis.store.cache import Entry, Result, Store



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
            tune_lrs: list[float] | None = None,
            baselines: list[str] | tuple[str, ...] = DEFAULT_BASELINES, adapters_at_once: int | None = None) -> Entry:
    """Retrain uniform LoRA, the module baselines (uniform LoRA on each family in `baselines` at the same budget)
    and every method at every budget with every seed (the learning rate tuned per method and budget on validation
    when `tune_lrs` is given; else `config.lr`); the comparison's entry. `adapters_at_once` runs train together on
    one copy of the model (None: as many as fit; 1: one by one)."""
    store = store or Store()
    parallel.start(resolve_device(settings.device))   # under a launcher: join its processes (they share the runs)
    budgets = parse_budgets(budget) if isinstance(budget, str) else list(dict.fromkeys(budget))
    if not seeds:
        raise UserError("Give at least one seed.")
    prepared = prepare(settings, store)
    task = prepared.task
    layout = layout_for(prepared.identity)
    # Uniform LoRA is the first row, then the baselines that ask which modules, then the methods.
    baseline_methods, notes = baseline_rows(layout, list(baselines), limits)
    for note in notes:
        parallel.say(f"note: {note}")
    methods = [UNIFORM, *baseline_methods] + [m for m in dict.fromkeys(methods) if m not in (UNIFORM,
                                                                                             *baseline_methods)]
    plans = {(b, method): make_plan(prepared.identity, method, b, limits, options, overrides=overrides,
                                    layout=layout) for b in budgets for method in methods}
    for (b, method), plan in plans.items():
        for warning in plan["warnings"]:
            parallel.say(f"note ({method} at {b}): {warning}")
    rows, tuning_rows, chosen = [], [], {}
    started = time.time()
    final = dataclasses.replace(config, eval_split="test")
    total = len(plans) * (len(tune_lrs or []) + len(seeds))   # the job's progress counts every training run
    if tune_lrs:   # every method's tuning runs first (trained together), then every final run
        trials = {(b, m): [(rate, dataclasses.replace(final, lr=rate, seed=seeds[0], eval_split="validation"))
                           for rate in tune_lrs] for (b, m) in plans}
        parallel.say(f"tuning: {len(plans)} plans x {len(tune_lrs)} rates (seed {seeds[0]}, validation)",
                     flush=True)
        entries = iter(train_runs([Request(plans[pair], trial, f"{pair[1]} · {pair[0]} · lr {rate:g} (tuning)")
                                   for pair, tried in trials.items() for rate, trial in tried], store,
                                  adapters_at_once, counted=(0, total)))
        for (b, method), tried in trials.items():
            table = pd.DataFrame([_row(method, b, plans[(b, method)], seeds[0], next(entries), task) for _ in tried])
            lr = choose_rate(table, task)
            chosen[f"{b}/{method}"] = lr
            tuning_rows += table.assign(chosen=table["lr"] == lr).to_dict("records")
    else:
        chosen = {f"{b}/{m}": config.lr for (b, m) in plans}
    finals = [((b, method), seed) for (b, method) in plans for seed in seeds]
    parallel.say(f"training: {len(plans)} plans x {len(seeds)} seeds", flush=True)
    entries = train_runs([Request(plans[pair], dataclasses.replace(final, lr=chosen[f"{pair[0]}/{pair[1]}"], seed=seed),
                                  f"{pair[1]} · {pair[0]} · seed {seed}") for pair, seed in finals], store,
                         adapters_at_once, counted=(total - len(finals), total))
    for ((b, method), seed), entry in zip(finals, entries):
        rows.append({**_row(method, b, plans[(b, method)], seed, entry, task), "init": final.init})   # which start
        if rows[-1]["did_not_train"]:
            parallel.say(f"  {method} at {b}, seed {seed} did not train: {rows[-1]['did_not_train']}", flush=True)
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
            "seeds": seeds, "methods": methods, "baselines": list(baselines), "config": to_dict(config),
            "tune_lrs": list(tune_lrs or []), "chosen_lrs": chosen,
            "left_out": int(runs["did_not_train"].notna().sum()),
            "plans": {f"{b}/{m}": p for (b, m), p in plans.items()}, "seconds": round(time.time() - started, 1)}
    tables = {"runs": runs}
    if len(tuning):
        tables["tuning"] = tuning
    if not parallel.is_main():   # a launch's other processes read what the main one writes
        parallel.barrier()
        return store.get(key)
    entry = store.put(key, Result(summary, tables=tables), meta)
    parallel.barrier()
    return entry


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
