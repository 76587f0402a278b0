"""A cache filled by the real runner with random results in each signal's real table schema, for any model
whose config is on disk: page tests and the budget bench run on a 30-layer decoder or an 8B shape without
training anything. tests/signals/test_signals.py checks that these schemas equal what the real signals return.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from analysis.settings import RunSettings
from analysis.planning.methods import layout_for
from analysis.signals.registry import get_signal
from analysis.signals.runner import run_signals
from analysis.store.cache import Result, Store

R_MAX = 8


def _per_rank(name, modules, values, stderr=None) -> pd.DataFrame:
    table = pd.DataFrame({"signal": name, "layer": np.repeat([m.layer for m in modules], R_MAX),
                          "module": np.repeat([m.name for m in modules], R_MAX), "value": values.reshape(-1)})
    if stderr is not None:
        table["stderr"] = stderr.reshape(-1)
    table["rank"] = np.tile(np.arange(R_MAX), len(modules))
    return table


def _module_frame(modules, **columns) -> pd.DataFrame:
    return pd.DataFrame({"layer": [m.layer for m in modules], "module": [m.name for m in modules], **columns})


def _shapley(modules, layers, rng) -> Result:
    values, errors = rng.normal(0.01, 0.02, (len(modules), R_MAX)), rng.uniform(0.001, 0.01, (len(modules), R_MAX))
    table = _per_rank("shapley", modules, values, errors).assign(reading="shapley")
    per_module = _module_frame(modules, value=values.sum(1), stderr=np.sqrt((errors ** 2).sum(1)))
    per_layer = per_module.groupby("layer", as_index=False).agg(value=("value", "sum"),
                                                                stderr=("stderr", lambda e: np.sqrt((e ** 2).sum())))
    convergence = pd.concat([per_layer.assign(samples=t, value=per_layer["value"] + rng.normal(0, 0.01, len(layers)),
                                              stderr=per_layer["stderr"] * 8 / t) for t in (8, 16, 32, 64)])
    return Result(table, tables={"modules": per_module, "layers": per_layer,
                                 "convergence": convergence[["samples", "layer", "value", "stderr"]]},
                  meta={"reading": "shapley", "samples": 64, "loss_all_ranks": 0.4, "loss_no_ranks": 0.7, "exact_total": 0.3})


def _adalora(modules, layers, rng) -> Result:
    table = _per_rank("adalora", modules, rng.gamma(2.0, 0.01, (len(modules), R_MAX)))
    return Result(table, tables={"modules": table.groupby(["layer", "module"], sort=False, as_index=False)["value"]
                                 .sum()})


def _sora(modules, layers, rng) -> Result:
    gates = rng.normal(0, 0.3, (len(modules), R_MAX)) * (rng.random((len(modules), R_MAX)) < 0.6)
    learned = (gates != 0).sum(1)
    table = _module_frame(modules, value=learned, magnitude=np.abs(gates).sum(1) / np.maximum(learned, 1))
    table.insert(0, "signal", "sora")
    table["update"] = "official"
    snapshots = pd.concat([_module_frame(modules, nonzero=np.minimum(R_MAX, learned + 4 - k), magnitude=0.1)
                           .assign(step=10 * (k + 1), stage="train", xi=0.0) for k in range(4)])
    history = pd.DataFrame({"step": [10, 20, 30, 40, 50], "stage": ["train"] * 4 + ["xi 0.1"], "xi": [0.0] * 4 + [0.1],
                            "gate_lr": [1e-3] * 4 + [0.0], "loss": [0.7, 0.6, 0.5, 0.45, 0.5], "nonzero": [int(learned.sum()) + 12 - 3 * k
                                                                            for k in range(5)]})
    schedule = pd.DataFrame({"stage": ["train", "xi 0.1"], "xi": [0.01, 0.1],
                             "total_rank": [int(learned.sum()), int(learned.sum()) // 2]})
    return Result(table, tables={"snapshots": snapshots[["step", "stage", "xi", "layer", "module", "nonzero",
                                                         "magnitude"]],
                                 "history": history, "schedule": schedule,
                                 "layers": table.groupby("layer", as_index=False)["value"].sum(),
                                 "gates": _per_rank("sora", modules, gates)},
                  meta={"update": "official", "trainable_before": 1, "trainable_after": 1, "adapter_files": []})


def _intrinsic_dimension(modules, layers, rng) -> Result:
    dims = np.cumsum(rng.uniform(0, 3, len(layers) + 1)) + 5
    blocks = range(len(layers))
    table = pd.DataFrame({"signal": "id", "layer": blocks, "module": "block",
                          "value": [int(np.ceil(max(dims[i + 1] - dims[i], 0))) + 1 for i in blocks],
                          "id_in": dims[:-1], "id_out": dims[1:], "degenerate": False})
    return Result(table, tables={"dimensions": pd.DataFrame({"state": range(len(dims)), "id": dims, "duplicates": 0,
                                                             "degenerate": False})},
                  meta={"points": 64, "estimator": "twonn"})


def _cka(modules, layers, rng) -> Result:
    size = len(layers) + 1
    similarity = np.clip(1 - np.abs(np.subtract.outer(range(size), range(size))) * 0.05, 0, 1)
    consecutive = similarity.diagonal(1) - rng.uniform(0, 0.1, size - 1)
    table = pd.DataFrame({"signal": "cka", "layer": range(size - 1), "module": "block", "value": 1 - consecutive,
                          "degenerate": False})
    matrix = pd.DataFrame({"layer": np.repeat(range(size), size), "layer2": np.tile(range(size), size),
                           "value": similarity.reshape(-1)})
    return Result(table, tables={"matrix": matrix}, meta={"examples": 64, "accumulated": False})


def _grad_norm(modules, layers, rng) -> Result:
    return Result(pd.DataFrame({"signal": "grad_norm", "layer": [m.layer for m in modules],
                                "module": [m.name for m in modules], "value": rng.gamma(2.0, 0.05, len(modules))}))


def _state_change(modules, layers, rng) -> Result:
    return Result(pd.DataFrame({"signal": "state_change", "layer": range(len(layers)), "module": "block",
                                "value": rng.uniform(0.05, 0.6, len(layers)).tolist()}))


def _gora(modules, layers, rng) -> Result:
    table = pd.DataFrame({"signal": "gora", "layer": [m.layer for m in modules], "module": [m.name for m in modules],
                          "value": rng.gamma(2.0, 1e-4, len(modules)).tolist()})
    return Result(table, meta={"steps": 4, "importance": "union_mean", "split": "train"})


def _eva(modules, layers, rng, r: int = 8, rho: float = 2.0) -> Result:
    """Explained-variance ratios of round(r * rho) components per module, largest first; peft_ranks as EVA's pooled
    ranking gives them (the best r x modules components over all modules)."""
    kept = round(r * rho)
    ratios = np.sort(rng.dirichlet(np.full(64, 0.3), len(modules))[:, :kept], axis=1)[:, ::-1]
    best = np.argsort(-ratios, axis=None, kind="stable")[: r * len(modules)] // kept
    table = pd.DataFrame({"signal": "eva", "layer": np.repeat([m.layer for m in modules], kept),
                          "module": np.repeat([m.name for m in modules], kept), "value": ratios.reshape(-1),
                          "rank": np.tile(np.arange(kept), len(modules))})
    peft_ranks = _module_frame(modules, value=np.bincount(best, minlength=len(modules)))
    return Result(table, tables={"peft_ranks": peft_ranks},
                  meta={"forwards": 3, "batches": 1, "shares_input_with": {}, "rank_budget": r * len(modules),
                        "split": "train"})


def _alpha(modules, layers, rng) -> Result:
    """Each matrix's eigenvalues of W^T W (min(d_in, d_out) of them, a power-law tail) and a fit consistent with
    them: xmin an eigenvalue, n_tail the eigenvalues at or above it."""
    rows, spectra = [], []
    for m in modules:
        alpha = rng.uniform(2.0, 6.0)
        evals = np.sort((rng.pareto(alpha - 1, min(m.d_in, m.d_out)) + 1) * 0.05)
        xmin = float(evals[len(evals) // 2])
        n_tail = int((evals >= xmin).sum())
        rows.append({"value": alpha, "xmin": xmin, "D": rng.uniform(0.02, 0.1), "sigma": (alpha - 1) / np.sqrt(n_tail),
                     "n_evals": len(evals), "n_tail": n_tail})
        spectra.append(pd.DataFrame({"layer": m.layer, "module": m.name, "eigenvalue": evals}))
    table = pd.concat([_module_frame(modules), pd.DataFrame(rows)], axis=1)
    table.insert(0, "signal", "alpha")
    table["degenerate"] = table["value"].isna()
    return Result(table, tables={"spectra": pd.concat(spectra, ignore_index=True)},
                  meta={"svd_dtype": "float32", "fit": "ww", "spectrum": "svdvals"})


MAKERS = {"shapley": _shapley, "adalora": _adalora, "sora": _sora, "id": _intrinsic_dimension, "cka": _cka,
          "eva": _eva, "alpha": _alpha, "gora": _gora, "grad_norm": _grad_norm, "state_change": _state_change}
# What fill() computes unless told: the signals the page tests and the budget bench were written against.
DEFAULT_SIGNALS = ("shapley", "adalora", "sora", "id", "cka")


def fill(cache_dir, settings: RunSettings, signals=DEFAULT_SIGNALS, seed: int = 0,
         overrides: dict[str, dict[str, str]] | None = None) -> Store:
    """Run `signals` through the real runner (real keys, metadata and store), each computing random tables of
    its real schema for the model's layout instead of training; `overrides` are options as `--set` gives them."""
    store, rng = Store(cache_dir), np.random.default_rng(seed)

    def synthetic(name):
        def compute(context, config):
            modules = list(layout_for(context.prepared.run).modules)
            return MAKERS[name](modules, sorted({m.layer for m in modules}), rng)
        return dataclasses.replace(get_signal(name), compute=compute)

    run_signals(settings, [synthetic(name) for name in signals], overrides, store=store)
    return store


def fill_comparison(store: Store, settings: RunSettings, methods=("shapley", "cka"), budgets=("r2", "r4", "r8"),
                    seeds=(0, 1, 2), seed: int = 0):
    """A finished retrain comparison of `methods` in `store` (whose signals must be there), with the module
    baselines compare adds by default, made by the real training.compare with each retrain replaced by random
    metrics in its real schema, a bit better the more parameters a plan trains: the comparison entry the Retrain
    page and `export --signal comparison` read (its budget curve, Pareto figure and savings included)."""
    from types import SimpleNamespace
    from unittest import mock

    from analysis.settings import CompareSettings, TrainSettings
    from analysis.training import compare as comparison, many_runs

    rng = np.random.default_rng(seed)

    def retrain(plan, config, store, label=None, **_):   # what compare reads of a finished run's entry
        accuracy = float(np.clip(0.7 + 0.02 * np.log2(plan["trainable_params"] / 1e4) + rng.normal(0, 0.01), 0, 1))
        metrics = {"accuracy": accuracy, "f1": accuracy - 0.01, "test_loss": 1.2 - accuracy, "test_examples": 400,
                   "predicted_classes": 2}
        return SimpleNamespace(key=f"retrain-{plan['signal']}-{plan['trainable_params']}-{config.lr}-{config.seed}",
                               meta={"config": {"lr": config.lr}, "metrics": metrics, "train_seconds": 1.0,
                                     "did_not_train": None})

    with mock.patch.object(many_runs, "retrain", retrain), mock.patch.object(many_runs, "phase", lambda *a: None):
        return comparison.compare(settings, list(methods), CompareSettings(budgets=tuple(budgets), seeds=tuple(seeds),
                                                                           tune_lr=(), adapters_at_once=1),
                                  TrainSettings(), store=store)
