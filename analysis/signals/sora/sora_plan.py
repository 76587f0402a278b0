"""SoRA's plan family: the learned ranks (non-zero gates); under a smaller budget the smallest gates go first, under a
larger one ranks are added in proportion to each module's total gate magnitude. Reads the entry's `gates` table."""
from __future__ import annotations

import numpy as np

from analysis.allocation.rules import best_ranks, cost, proportional
from analysis.allocation.scores import Scores, per_module_values, per_rank_values
from analysis.contract.signal import PlanFamily


def read_learned(name, tables, layout) -> Scores:
    learned = per_module_values(layout, tables["main"])
    gates = np.abs(per_rank_values(layout, tables["gates"]))
    gates[gates == 0] = np.nan   # a zero gate is a pruned rank, not a rank of value 0
    return Scores(name, LEARNED, np.nansum(gates, axis=1), per_rank=gates, floor=learned)


def allocate_learned(scores, room, own=None):
    _, _, low, high, costs, budget = room
    learned = scores.floor.astype(np.int64)
    if cost(np.clip(learned, low, high), costs) > budget:
        return best_ranks(scores.per_rank, low, np.minimum(high, learned), costs, budget), []
    return proportional(scores.per_module, np.clip(learned, low, high), high, costs, budget), []


LEARNED = PlanFamily(read_learned, allocate_learned)
