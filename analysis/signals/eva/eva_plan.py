"""EVA's plan family (peft's EVA): the pooled explained-variance ranking of every module's components (ties broken as
peft's argsort breaks them), kept as a prefix (best first) for as long as its parameters fit the budget, then peft's
swap for modules sharing one PCA: EVA's own rule with its rank count replaced by the parameter cost."""
from __future__ import annotations

import numpy as np

from analysis.allocation.rules import cost
from analysis.allocation.scores import Scores, per_rank_values
from analysis.contract.signal import PlanFamily


def read_eva(name, tables, layout) -> Scores:
    per_rank = per_rank_values(layout, tables["main"])
    return Scores(name, EVA, np.nansum(per_rank, axis=1), per_rank=per_rank)


def _shared_inputs(values: np.ndarray) -> dict[int, int]:
    """Module -> the module whose PCA it shares (q, k and v read one hidden state; peft fits one PCA for them and
    gives each the same explained-variance ratios), for every module but the first of its group: the groups are
    the modules with identical ratios, and peft's owner is the first of a group in module order."""
    first: dict[bytes, int] = {}
    shared = {}
    for i, row in enumerate(values):
        key = np.nan_to_num(row, nan=-1.0).tobytes()
        if key in first:
            shared[i] = first[key]
        else:
            first[key] = i
    return shared


def _peft_eva_ranking(values: np.ndarray, shared: dict[int, int]) -> list[int]:
    """The module of every measured component, best first, in the order peft's _get_rank_distribution ranks them:
    each module's ratios pooled in its layer_hook_map order (the modules with their own PCA, then those sharing
    one, group by group) and sorted by the same call, torch.argsort(descending=True) on float32 (the ratios'
    dtype), which is not stable: it breaks ties as peft does on the CPU."""
    import torch

    followers = sorted(shared, key=lambda k: (shared[k], k))
    order = [i for i in range(len(values)) if i not in shared] + followers
    owners, pooled = [], []
    for i in order:
        row = values[i][~np.isnan(values[i])]
        owners += [i] * len(row)
        pooled += row.tolist()
    ranked = torch.tensor(pooled, dtype=torch.float32).argsort(descending=True)
    return [owners[k] for k in ranked.tolist()]


def allocate_eva(scores, room, own=None):
    """EVA's rule: walk the pooled ranking of components (largest explained variance first, ties as peft breaks
    them) and stop at the first one that does not fit, so the plan is a prefix of the ranking as EVA's top-k is;
    then, as peft does, a module that shares another's PCA and got more rank than that module swaps ranks with it
    (where the swap fits the budget and the limits)."""
    _, _, low, high, costs, budget = room
    values = scores.per_rank
    measured = (~np.isnan(values)).sum(axis=1)
    cap = np.minimum(high, measured)
    ranks = low.copy()
    spent = cost(ranks, costs)
    shared = _shared_inputs(values)
    seen = np.zeros(len(values), dtype=np.int64)
    for i in _peft_eva_ranking(values, shared):
        seen[i] += 1
        if seen[i] <= low[i] or ranks[i] >= cap[i]:
            continue            # given by the minimum rank, or the module is at its cap (EVA's rho * r)
        if spent + costs[i] > budget:
            break
        ranks[i] += 1
        spent += costs[i]
    for k in sorted(shared, key=lambda k: (shared[k], k)):   # peft's equal_inputs_map order
        h = shared[k]
        swapped = ranks.copy()
        swapped[[h, k]] = ranks[[k, h]]
        if ranks[h] < ranks[k] and cost(swapped, costs) <= budget and (swapped >= low).all() and \
                (swapped <= cap).all():
            ranks, spent = swapped, cost(swapped, costs)
    warnings = []
    if (ranks >= cap).all() and budget - spent >= int(costs[high > 0].min()):
        warnings.append(f"{scores.name} measured at most {int(measured.max())} components per module and all of "
                        f"them fit in this budget, so the plan stops at {spent:,} parameters; run the signal with "
                        f"a larger r or rho to plan for larger budgets.")
    return ranks, warnings


EVA = PlanFamily(read_eva, allocate_eva)
