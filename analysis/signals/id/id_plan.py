"""GeLoRA's plan family: ranks proportional to the per-block bounds and never below them while the budget allows; a
warning says where it does not."""
from __future__ import annotations

import numpy as np

from analysis.allocation.rules import cost, proportional
from analysis.allocation.scores import Scores, per_module_values
from analysis.contract.signal import PlanFamily


def read_bounds(name, tables, layout) -> Scores:
    bounds = per_module_values(layout, tables["main"])
    return Scores(name, BOUNDS, bounds, floor=bounds)


def allocate_bounds(scores, room, own=None):
    _, _, low, high, costs, budget = room
    bound = np.clip(np.ceil(scores.floor).astype(np.int64), low, high)
    if cost(bound, costs) <= budget:
        return proportional(scores.floor, bound, high, costs, budget), []
    ranks = proportional(scores.floor, low, high, costs, budget)
    below = int((ranks < bound).sum())
    return ranks, [f"The budget is below GeLoRA's bounds ({cost(bound, costs):,} parameters), so {below} of "
                   f"{len(ranks)} modules get less rank than their bound."]


BOUNDS = PlanFamily(read_bounds, allocate_bounds)
