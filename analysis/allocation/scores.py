"""A signal's table aligned with a model's modules (`Scores`), what allocation makes of it (`Allocation`), and
the helpers a plan family reads its tables with."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from analysis.contract.signal import PlanFamily
from analysis.errors import UserError
from analysis.model.layout import Layout


@dataclass
class Scores:
    """One signal's table aligned with a layout's modules (index = module position)."""
    name: str
    family: PlanFamily                       # how the table is read and its ranks chosen (the signal's own)
    per_module: np.ndarray                   # (M,) importance; a block value is broadcast to its modules
    per_rank: np.ndarray | None = None       # (M, R) ranks / learned: value of each measured rank (NaN: none)
    floor: np.ndarray | None = None          # (M,) learned counts (SoRA) or bounds (GeLoRA)
    excluded: np.ndarray | None = None       # (M,) blocks a plan must not select (degenerate CKA)
    per_rank_stderr: np.ndarray | None = None  # (M, R) standard error of each per_rank value, where measured
    variant: str = ""                        # the entry's non-paper options by name (registry.variant_of)


@dataclass
class Allocation:
    ranks: np.ndarray                        # (M,) int
    cost: int
    warnings: list[str] = field(default_factory=list)


def module_index(layout: Layout, table: pd.DataFrame) -> np.ndarray:
    """Module position of each row; a `block` row maps to -1 and is broadcast by the caller."""
    position = {(m.layer, m.name): i for i, m in enumerate(layout.modules)}
    index = [position.get((int(l), str(n)), -1) for l, n in zip(table["layer"], table["module"])]
    unknown = [(l, n) for (l, n), i in zip(zip(table["layer"], table["module"]), index) if i < 0 and n != "block"]
    if unknown:
        raise UserError(f"The table names module '{unknown[0][1]}' in layer {unknown[0][0]}, which this model "
                        "does not have; it was computed for another model.")
    return np.array(index, dtype=np.int64)


def per_module_values(layout: Layout, table: pd.DataFrame, column: str = "value") -> np.ndarray:
    """Sum of `column` per module; block-level rows apply to every module of their block."""
    values = np.zeros(len(layout.modules))
    layers = np.array([m.layer for m in layout.modules])
    index = module_index(layout, table)
    column_values = table[column].to_numpy(dtype=float)
    np.add.at(values, index[index >= 0], column_values[index >= 0])
    for layer, value in zip(table["layer"][index < 0], column_values[index < 0]):
        values[layers == int(layer)] += value
    return values


def per_rank_values(layout: Layout, table: pd.DataFrame, column: str = "value") -> np.ndarray:
    """(modules, ranks) matrix of `column` of a per-rank table; NaN where a rank was not measured."""
    index = module_index(layout, table)
    ranks = table["rank"].to_numpy(dtype=np.int64)
    matrix = np.full((len(layout.modules), int(ranks.max()) + 1), np.nan)
    matrix[index, ranks] = table[column].to_numpy(dtype=float)
    return matrix
