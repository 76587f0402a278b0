"""The shared rules every plan family spends a budget with: keep the best ranks, ranks in proportion to a weight,
fill what is left one rank at a time, and uniform LoRA. A rank in a module of shape d_in x d_out costs d_in + d_out
parameters; every rule's plan costs at most the budget."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from analysis.errors import UserError
from analysis.model.layout import Layout
from analysis.settings import Limits


class Room(NamedTuple):
    """What a plan may spend: the model's layout, the limits, each module's lowest and highest rank under them
    (0 and 0 where its type may not receive rank), each module's cost of one rank, and the budget."""
    layout: Layout
    limits: Limits
    low: np.ndarray
    high: np.ndarray
    costs: np.ndarray
    budget: int


def cost(ranks: np.ndarray, costs: np.ndarray) -> int:
    return int(ranks @ costs)


def module_bounds(layout: Layout, limits: Limits) -> tuple[np.ndarray, np.ndarray]:
    """Per-module minimum and maximum rank after the module-type filter."""
    types = layout.module_types
    if limits.module_types is not None:
        unknown = sorted(set(limits.module_types) - set(types))
        if unknown:
            raise UserError(f"Unknown module type(s) {', '.join(unknown)}; this model has: {', '.join(types)}.")
        if not limits.module_types:
            raise UserError("No module type may receive rank; allow at least one.")
    allowed = np.array([limits.module_types is None or m.name in limits.module_types for m in layout.modules])
    return np.where(allowed, limits.min_rank, 0), np.where(allowed, limits.max_rank, 0)


def fill(ranks, high, costs, budget, priority) -> np.ndarray:
    """Spend what is left one rank at a time, most deserving module first, while anything fits."""
    order = np.argsort(-priority, kind="stable")
    spent = cost(ranks, costs)
    while True:
        added = False
        for i in order:
            if ranks[i] < high[i] and spent + costs[i] <= budget:
                ranks[i] += 1
                spent += costs[i]
                added = True
        if not added:
            return ranks


def best_ranks(values, low, high, costs, budget) -> np.ndarray:
    """Keep the globally best measured ranks (each module's best first) after the minimum."""
    measured = (~np.isnan(values)).sum(axis=1)
    ranks = low.copy()
    spent = cost(ranks, costs)
    ordered = -np.sort(-np.nan_to_num(values, nan=-np.inf), axis=1)   # each module's ranks, best first
    candidates = [(ordered[i, j], i, j) for i in range(len(values)) for j in range(measured[i]) if j >= low[i]]
    for value, i, j in sorted(candidates, key=lambda c: -c[0]):
        if j == ranks[i] and ranks[i] < high[i] and spent + costs[i] <= budget:
            ranks[i] += 1
            spent += costs[i]
    return ranks


def proportional(weights, low, high, costs, budget) -> np.ndarray:
    """Ranks floor(s * weight) within [low, high] for the largest scale s that fits, then a fill."""
    weights = np.nan_to_num(np.clip(weights, 0, None))
    weights = np.where(high > 0, weights, 0)
    if weights.sum() <= 0:
        weights = (high > 0).astype(float)
    def at(scale):
        return np.clip(np.floor(scale * weights), low, high).astype(np.int64)
    lo, hi = 0.0, 1.0
    growing = weights > 0
    while cost(at(hi), costs) <= budget and (at(hi)[growing] < high[growing]).any():
        lo, hi = hi, hi * 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cost(at(mid), costs) <= budget else (lo, mid)
    ranks = at(lo)
    return fill(ranks, high, costs, budget, lo * weights - ranks)


def uniform(room: Room):
    """Uniform LoRA: the same rank on every allowed module, the largest whole rank that fits."""
    _, limits, low, high, costs, budget = room
    per_rank = int(costs[high > 0].sum())
    rank = min(budget // per_rank, limits.max_rank)
    if rank < max(limits.min_rank, 1):
        raise UserError(f"A budget of {budget:,} parameters is below uniform LoRA's smallest plan (rank 1 on "
                        f"every allowed module: {per_rank:,} parameters).")
    warnings = []
    if rank * per_rank < budget and rank < limits.max_rank:   # say why a uniform plan spends less
        warnings.append(f"Uniform LoRA gives every allowed module the same whole rank: rank {rank} costs "
                        f"{rank * per_rank:,} parameters ({rank * per_rank / budget:.0%} of the budget) and rank "
                        f"{rank + 1} would cost {(rank + 1) * per_rank:,}.")
    return np.where(high > 0, rank, 0), warnings
