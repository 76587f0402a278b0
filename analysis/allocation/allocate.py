"""From a signal's table and a parameter budget to per-module LoRA ranks, by the signal's plan family.

Reads tables only, never a model, so the budget slider can re-plan instantly. Every plan's exact cost is <= the
budget and as close to it as its rule allows. A signal names its own plan family (how its tables are read and
its ranks chosen; analysis/signals/<name>/); without one it is planned by the shared rules here:

- ranks (any per-rank table: Shapley, AdaLoRA): keep the globally best ranks. A module's ranks are taken best
  first, and only the ranks the signal measured can be kept (r_max of its run).
- weights (anything else): ranks proportional to the per-module value (clipped at zero).
- uniform LoRA (no scores): the same rank on every allowed module.

A blend is a weighted sum of signals' per-module importance, each normalised to sum to one, and is allocated like
weights. Limits apply to all: a minimum and maximum rank per module and the module types that may receive rank.
"""
from __future__ import annotations

import numpy as np

from analysis.allocation.budgets import full_rank_cost
from analysis.allocation.rules import Room, best_ranks, cost, module_bounds, proportional, uniform
from analysis.allocation.scores import Allocation, Scores, per_module_values, per_rank_values
from analysis.contract.signal import PlanFamily
from analysis.errors import UserError
from analysis.model.layout import Layout
from analysis.settings import Limits


def own_limits(family: PlanFamily, chosen: tuple):
    """The limits of a family's own rule among those chosen, or their defaults (None: the rule has none)."""
    if family.limits is None:
        return None
    return next((limits for limits in chosen if isinstance(limits, family.limits)), None) or family.limits()


def scores_from_tables(name: str, family: PlanFamily | None, tables, layout: Layout) -> Scores:
    """Align a signal's tables (a mapping of name to table, read when asked for) with the layout by its plan family;
    None: the shared rules, best ranks for a per-rank table and ranks in proportion otherwise."""
    if family is None:
        family = RANKS if "rank" in tables["main"].columns else WEIGHTS
    return family.read(name, tables, layout)


def blend(parts: list[tuple[Scores, float]]) -> Scores:
    """Weighted sum of per-module importance, each signal clipped at zero and normalised to sum 1."""
    total = None
    for scores, weight in parts:
        values = np.nan_to_num(np.clip(scores.per_module, 0, None))
        if scores.excluded is not None:
            values[scores.excluded] = 0.0
        if values.sum() <= 0:
            raise UserError(f"Signal '{scores.name}' has no positive importance anywhere, so it cannot be blended.")
        share = weight * values / values.sum()
        total = share if total is None else total + share
    label = "+".join(f"{weight:g}*{scores.name}" for scores, weight in parts)
    variant = "; ".join(f"{scores.name}: {scores.variant}" for scores, _ in parts if scores.variant)
    return Scores(f"blend({label})", WEIGHTS, total, variant=variant)


def allocate(scores: Scores | None, layout: Layout, budget: int, limits: Limits = Limits(),
             signal_limits: tuple = ()) -> Allocation:
    """Ranks per module for `scores` (None: uniform LoRA) under `budget` parameters. `signal_limits`: the limits of
    signals' own rules as chosen (CKA's block rank, GoRA's rank range); a family whose limits are not among them
    takes their defaults."""
    costs = np.array(layout.costs, dtype=np.int64)
    low, high = module_bounds(layout, limits)
    floor_cost = cost(low, costs)
    cheapest = int(costs[high > 0].min())
    if budget < max(floor_cost, cheapest):
        smallest = floor_cost if floor_cost else cheapest
        raise UserError(f"A budget of {budget:,} parameters is below the smallest possible plan "
                        f"({smallest:,} parameters: " + ("the minimum rank on every allowed module)."
                                                         if floor_cost else "one rank on the cheapest module)."))
    room = Room(layout, limits, low, high, costs, budget)
    if scores is None:
        ranks, warnings = uniform(room)
    else:
        ranks, warnings = scores.family.allocate(scores, room, own_limits(scores.family, signal_limits))
    ranks = ranks.astype(np.int64)
    spent = cost(ranks, costs)
    assert spent <= budget, (spent, budget)
    if (ranks[high > 0] >= limits.max_rank).all() and budget - spent >= cheapest:
        full = full_rank_cost(layout)
        if budget > full:   # either spelling (r1000, 1e9): no limit would let a plan spend it
            warnings.append(f"A budget of {budget:,} parameters is more than full rank on every module of this "
                            f"model costs ({full:,}), so no plan can spend it; this one stops at {spent:,} "
                            f"parameters (at most --max-rank {limits.max_rank} per module).")
        else:
            warnings.append(f"Every allowed module is at the maximum rank {limits.max_rank}, so the plan stops at "
                            f"{spent:,} parameters; raise the maximum rank to spend the whole budget.")
    return Allocation(ranks, spent, warnings)


def read_ranks(name, tables, layout) -> Scores:
    per_rank = per_rank_values(layout, tables["main"])
    stderr = per_rank_values(layout, tables["main"], "stderr") if "stderr" in tables["main"].columns else None
    return Scores(name, RANKS, np.nansum(per_rank, axis=1), per_rank=per_rank, per_rank_stderr=stderr)


def read_weights(name, tables, layout) -> Scores:
    return Scores(name, WEIGHTS, per_module_values(layout, tables["main"].fillna({"value": 0.0})))


def _doubtful_ranks(scores: Scores, ranks: np.ndarray) -> list[str]:
    """Say so when the kept ranks (each module's best first) include ranks of negative value, or of value
    within two standard errors of zero: the plan then spends budget on ranks the signal does not support."""
    values = np.nan_to_num(scores.per_rank, nan=-np.inf)
    order = np.argsort(-values, axis=1, kind="stable")
    kept = [(i, order[i, j]) for i in range(len(ranks)) for j in range(int(ranks[i]))]
    if not kept:
        return []
    value = np.array([scores.per_rank[i, j] for i, j in kept])
    negative = int((value < 0).sum())
    unclear = 0
    if scores.per_rank_stderr is not None:
        stderr = np.array([scores.per_rank_stderr[i, j] for i, j in kept])
        unclear = int(((value >= 0) & (np.abs(value) <= 2 * np.nan_to_num(stderr))).sum())
    if not negative and not unclear:
        return []
    parts = []
    if negative:
        parts.append(f"{negative} {'has' if negative == 1 else 'have'} a negative {scores.name} value (switching "
                     f"{'it' if negative == 1 else 'them'} on raised the loss)")
    if unclear:
        parts.append(f"{unclear} {'is' if unclear == 1 else 'are'} within two standard errors of zero")
    return [f"Of the {len(kept)} ranks this plan keeps, " + " and ".join(parts) + "; the signal does not support "
            "spending budget on them (more samples, or a smaller budget, would)."]


def allocate_ranks(scores, room, own=None):
    _, _, low, high, costs, budget = room
    warnings = []
    cap = np.minimum(high, (~np.isnan(scores.per_rank)).sum(axis=1))
    ranks = best_ranks(scores.per_rank, low, cap, costs, budget)
    warnings += _doubtful_ranks(scores, ranks)
    if (ranks >= cap).all() and budget - cost(ranks, costs) >= int(costs[high > 0].min()):
        warnings.append(f"{scores.name} measured {scores.per_rank.shape[1]} ranks per module and all of them "
                        f"fit in this budget, so the plan stops at {cost(ranks, costs):,} parameters; run the "
                        f"signal with a larger r_max to plan for larger budgets.")
    return ranks, warnings


def allocate_weights(scores, room, own=None):
    _, _, low, high, costs, budget = room
    return proportional(scores.per_module, low, high, costs, budget), []


RANKS = PlanFamily(read_ranks, allocate_ranks)
WEIGHTS = PlanFamily(read_weights, allocate_weights)
