"""Compare plans at one or more budgets: uniform LoRA first, then the module baselines (uniform LoRA on the
attention only, the MLP only, every linear; planning/baselines.py), then each method, each retrained with several
seeds.

The protocol (docs/architecture.md, "The comparison protocol" in the design notes):

- Every method runs the same seeds as uniform LoRA; a seed fixes the data order and the task head's
  initialisation (retrain.py), so each method's run with seed s is paired with uniform's run with seed s.
- With a learning-rate grid (`CompareSettings.tune_lr`), each method at each budget is trained once per rate with
  the first seed and evaluated on the validation split (never test); the best rate is then run with every seed.
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
import time

import pandas as pd

from analysis.errors import UserError
from analysis.settings import CompareSettings, Limits, PlanOptions, RunSettings, TrainSettings, to_dict
from analysis.signals import parallel
from analysis.signals.context import prepare, resolve_device
from analysis.planning.baselines import baseline_rows
from analysis.planning.methods import UNIFORM, layout_for, make_plan
from analysis.planning.plan_json import row_name
from analysis.training.comparison_stats import PRIMARY, summarise
from analysis.training.outcome import did_not_train
from analysis.training.many_runs import Request, train_runs
from analysis.contract.result import Result
from analysis.store.cache import Entry, Store



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


def compare(settings: RunSettings, methods: list[str], comparison: CompareSettings, config: TrainSettings,
            limits: Limits = Limits(), options: PlanOptions = PlanOptions(), store: Store | None = None,
            overrides: dict[str, dict[str, str]] | None = None, signal_limits: tuple = ()) -> Entry:
    """Retrain uniform LoRA, the module baselines (uniform LoRA on each family in `comparison.baselines` at the same
    budget) and every method at each of `comparison.budgets` with each of its seeds (the learning rate tuned per
    method and budget on validation over `comparison.tune_lr` when it names rates; else `config.lr`); the
    comparison's entry. `comparison.adapters_at_once` runs train together on one copy of the model (None: as many as
    fit; 1: one by one). `signal_limits`: the limits of signals' own plan rules (CKA's block rank, GoRA's rank
    range) as chosen."""
    if not comparison.budgets:
        raise UserError("Give the comparison at least one budget.")
    budgets, seeds, tune_lrs = list(comparison.budgets), list(comparison.seeds), list(comparison.tune_lr)
    baselines, adapters_at_once = comparison.baselines, comparison.adapters_at_once
    store = store or Store()
    parallel.start(resolve_device(settings.device))   # under a launcher: join its processes (they share the runs)
    prepared = prepare(settings, store)
    task = prepared.task
    layout = layout_for(prepared.run)
    # Uniform LoRA is the first row, then the baselines that ask which modules, then the methods.
    baseline_methods, notes = baseline_rows(layout, list(baselines), limits)
    for note in notes:
        parallel.say(f"note: {note}")
    methods = [UNIFORM, *baseline_methods] + [m for m in dict.fromkeys(methods) if m not in (UNIFORM,
                                                                                             *baseline_methods)]
    plans, left_out_plans = {}, {}
    for b in budgets:
        for method in methods:
            try:
                plans[(b, method)] = make_plan(prepared.run, method, b, limits, options, overrides=overrides,
                                               layout=layout, signal_limits=signal_limits)
            except UserError as error:   # a method whose rule cannot spend this budget (CKA's block at r1) sits it out
                if method == UNIFORM:
                    raise
                left_out_plans[f"{b}/{method}"] = str(error)
                parallel.say(f"note: {method} is left out at {b}: {error}")
    for (b, method), plan in plans.items():
        for warning in plan["warnings"]:
            parallel.say(f"note ({method} at {b}): {warning}")
    rows, tuning_rows, chosen = [], [], {}
    started = time.time()
    final = dataclasses.replace(config, eval_split="test")
    total = len(plans) * (len(tune_lrs) + len(seeds))   # the job's progress counts every training run
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
    key = store.key("comparison", {"context": prepared.key, "runs": runs["entry"].tolist(),
                                   "tuning": tuning["entry"].tolist() if len(tuning) else [],
                                   "grid": tune_lrs, "chosen": chosen})
    first = plans[(budgets[0], UNIFORM)]
    meta = {"title": "Comparison of plans" + (" at one budget" if len(budgets) == 1 else f" at {len(budgets)} budgets"),
            "context_key": prepared.key, **prepared.description, "budget": first["budget"], "budget_spec": budgets[0],
            "budgets": budgets, "budget_params": {b: plans[(b, UNIFORM)]["budget"] for b in budgets},
            "seeds": seeds, "methods": methods, "baselines": list(baselines), "config": to_dict(config),
            "tune_lrs": tune_lrs, "chosen_lrs": chosen,
            "left_out": int(runs["did_not_train"].notna().sum()),
            "plans": {f"{b}/{m}": p for (b, m), p in plans.items()}, "left_out_plans": left_out_plans,
            "seconds": round(time.time() - started, 1)}
    tables = {"runs": runs}
    if len(tuning):
        tables["tuning"] = tuning
    if not parallel.is_main():   # a launch's other processes read what the main one writes
        parallel.barrier()
        return store.get(key)
    entry = store.put(key, Result(summary, tables=tables), meta)
    parallel.barrier()
    return entry
