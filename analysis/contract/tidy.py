"""Tidy-table helpers: per-rank tables (Shapley, AdaLoRA), their per-module sums, and rank agreement of two tables."""
from __future__ import annotations

import pandas as pd
import torch


def per_rank_table(signal: str, modules: list, values: torch.Tensor,
                   stderr: torch.Tensor | None = None) -> pd.DataFrame:
    """(modules, r) values -> rows signal, layer, module, value[, stderr], rank; `modules` are the model's adaptable
    modules in order (each with its `layer` and short `name`, as model.capture finds them)."""
    r = values.shape[1]
    table = pd.DataFrame({
        "signal": signal,
        "layer": [m.layer for m in modules for _ in range(r)],
        "module": [m.name for m in modules for _ in range(r)],
        "value": values.reshape(-1).tolist(),
    })
    if stderr is not None:
        table["stderr"] = stderr.reshape(-1).tolist()
    table["rank"] = [j for _ in modules for j in range(r)]
    return table


def per_module(table: pd.DataFrame) -> pd.DataFrame:
    """Sum of the ranks' values per (layer, module), in module order."""
    return table.groupby(["layer", "module"], sort=False, as_index=False)["value"].sum()


def spearman(left: pd.DataFrame, right: pd.DataFrame) -> float:
    """Spearman correlation of two per-module tables' values, matched on layer and module."""
    joined = left.merge(right, on=["layer", "module"], suffixes=("_a", "_b"))
    return float(joined["value_a"].corr(joined["value_b"], method="spearman"))
