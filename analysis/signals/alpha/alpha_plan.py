"""AlphaLoRA's plan family (`exponential_scaling`): layer l's share of rank units is proportional to (mean alpha of
its matrices) ** 2.5, rounded as AlphaLoRA rounds; every allowed module of a layer gets the layer's rank; the
largest number of units whose cost fits is used."""
from __future__ import annotations

import numpy as np

from analysis.allocation.rules import cost
from analysis.allocation.scores import Scores, module_index
from analysis.contract.signal import PlanFamily
from analysis.errors import UserError


def read_alphalora(name, tables, layout) -> Scores:
    main = tables["main"]
    alpha = np.full(len(layout.modules), np.nan)
    index = module_index(layout, main)
    alpha[index[index >= 0]] = main["value"].to_numpy(dtype=float)[index >= 0]
    return Scores(name, ALPHALORA, alpha)


ALPHALORA_BETA = 2.5   # AlphaLoRA's default exponent (expert_number.py --beta)


def exponential_scaling(values: np.ndarray, target: int, exponent: float = ALPHALORA_BETA) -> np.ndarray:
    """AlphaLoRA's integer allocation of `target` units in proportion to values ** exponent: round, then move
    one unit at a time until the sum is exact, choosing by (powered value - count) as its code does."""
    scaled = np.power(values, exponent)
    counts = np.round(scaled / scaled.sum() * target).astype(np.int64)
    while counts.sum() != target:
        if target > counts.sum():
            counts[np.argmin(scaled - counts)] += 1
        else:
            counts[np.argmax(scaled - counts)] -= 1
    return counts


def allocate_alphalora(scores, room, own=None):
    layout, _, low, high, costs, budget = room
    layers = np.array([m.layer for m in layout.modules])
    order = np.unique(layers)
    allowed = high > 0
    unit = np.array([costs[(layers == l) & allowed].sum() for l in order])   # one rank on every allowed module
    alpha = np.array([np.nanmean(scores.per_module[(layers == l) & ~np.isnan(scores.per_module)])
                      if ((layers == l) & ~np.isnan(scores.per_module)).any() else np.nan for l in order])
    usable = (unit > 0) & np.isfinite(alpha) & (np.nan_to_num(alpha) > 0)
    if not usable.any():
        raise UserError(f"{scores.name} has no layer with a finite alpha and an allowed module.")
    position = np.searchsorted(order, layers)
    for target in range(int(budget // unit[usable].min()), 0, -1):
        per_layer = np.zeros(len(order), dtype=np.int64)
        per_layer[usable] = exponential_scaling(alpha[usable], target)
        ranks = np.where(allowed, np.clip(per_layer[position], low, high), 0)
        if cost(ranks, costs) <= budget:
            return ranks, []
    raise UserError(f"A budget of {budget:,} parameters does not fit one rank on every allowed module of a layer, "
                    "which AlphaLoRA's per-layer allocation needs.")


ALPHALORA = PlanFamily(read_alphalora, allocate_alphalora)
