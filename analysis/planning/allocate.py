"""From a signal's table and a parameter budget to per-module LoRA ranks.

Reads tables only, never a model, so the budget slider can re-plan instantly. A rank in a module
of shape d_in x d_out costs d_in + d_out trainable parameters; every plan's exact cost is <= the
budget and as close to it as its rule allows. The rule follows the signal's `plan` family:

- ranks (Shapley, AdaLoRA, any per-rank table): keep the globally best ranks. A module's ranks
  are taken best first, and only the ranks the signal measured can be kept (r_max of its run).
- learned (SoRA): the learned non-zero counts; under a smaller budget the smallest gates go first,
  under a larger one ranks are added in proportion to each module's total gate magnitude.
- bounds (GeLoRA): ranks proportional to the per-block bounds and never below them while the
  budget allows; a warning says where it does not.
- blocks (CKA): the k most important blocks (degenerate ones excluded) at one uniform rank; k the
  largest that fits the budget, or with `block_count=paper` the paper's k = floor(L/2) of the L
  blocks (its selection scripts take ratio_of_layers 0.5), as far as the budget allows.
- weights (anything else): ranks proportional to the per-module value (clipped at zero).
- eva (peft's EVA): the pooled explained-variance ranking of every module's components (ties broken as
  peft's argsort breaks them), kept as a prefix (best first) for as long as its parameters fit the
  budget, then peft's swap for modules sharing one PCA: EVA's own rule with its rank count replaced by
  the parameter cost.
- alphalora (heavy-tailed alpha): AlphaLoRA's `exponential_scaling`: layer l's share of rank units is
  proportional to (mean alpha of its matrices) ** 2.5, rounded as AlphaLoRA rounds; every allowed
  module of a layer gets the layer's rank; the largest number of units whose cost fits is used.
- shares (GoRA): parameters in proportion to the importance, rank_i = round(budget * p_i) // (d_in + d_out)
  (GoRA's "moderate" rule) kept within GoRA's rank limits (its scripts' 4 to 32, `gora_min_rank` and
  `gora_max_rank`), then what that flooring leaves is spent one rank at a time. GoRA's own total may pass
  its budget where the limits raise ranks; here the plan stays within it, so a budget below GoRA's
  minimum on every module lowers that minimum, with a warning.
- uniform LoRA: the same rank on every allowed module.
A blend is a weighted sum of signals' per-module importance, each normalised to sum to one, and
is allocated like weights. Limits apply to all: a minimum and maximum rank per module and the
module types that may receive rank.
"""
from __future__ import annotations

import re
from decimal import Decimal
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd

from analysis.errors import UserError, quoted
from analysis.model.layout import Layout
from analysis.settings import Limits



@dataclass
class Scores:
    """One signal's table aligned with a layout's modules (index = module position)."""
    name: str
    family: str
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


def _module_index(layout: Layout, table: pd.DataFrame) -> np.ndarray:
    """Module position of each row; a `block` row maps to -1 and is broadcast by the caller."""
    position = {(m.layer, m.name): i for i, m in enumerate(layout.modules)}
    index = [position.get((int(l), str(n)), -1) for l, n in zip(table["layer"], table["module"])]
    unknown = [(l, n) for (l, n), i in zip(zip(table["layer"], table["module"]), index) if i < 0 and n != "block"]
    if unknown:
        raise UserError(f"The table names module '{unknown[0][1]}' in layer {unknown[0][0]}, which this model "
                        "does not have; it was computed for another model.")
    return np.array(index, dtype=np.int64)


def _per_module(layout: Layout, table: pd.DataFrame, column: str = "value") -> np.ndarray:
    """Sum of `column` per module; block-level rows apply to every module of their block."""
    values = np.zeros(len(layout.modules))
    layers = np.array([m.layer for m in layout.modules])
    index = _module_index(layout, table)
    column_values = table[column].to_numpy(dtype=float)
    np.add.at(values, index[index >= 0], column_values[index >= 0])
    for layer, value in zip(table["layer"][index < 0], column_values[index < 0]):
        values[layers == int(layer)] += value
    return values


def _per_rank(layout: Layout, table: pd.DataFrame, column: str = "value") -> np.ndarray:
    index = _module_index(layout, table)
    ranks = table["rank"].to_numpy(dtype=np.int64)
    matrix = np.full((len(layout.modules), int(ranks.max()) + 1), np.nan)
    matrix[index, ranks] = table[column].to_numpy(dtype=float)
    return matrix


def _read_ranks(name, tables, layout) -> Scores:
    per_rank = _per_rank(layout, tables["main"])
    stderr = _per_rank(layout, tables["main"], "stderr") if "stderr" in tables["main"].columns else None
    return Scores(name, "ranks", np.nansum(per_rank, axis=1), per_rank=per_rank, per_rank_stderr=stderr)


def _read_learned(name, tables, layout) -> Scores:
    learned = _per_module(layout, tables["main"])
    gates = np.abs(_per_rank(layout, tables["gates"]))
    gates[gates == 0] = np.nan   # a zero gate is a pruned rank, not a rank of value 0
    return Scores(name, "learned", np.nansum(gates, axis=1), per_rank=gates, floor=learned)


def _read_bounds(name, tables, layout) -> Scores:
    bounds = _per_module(layout, tables["main"])
    return Scores(name, "bounds", bounds, floor=bounds)


def _read_blocks(name, tables, layout) -> Scores:
    main = tables["main"]
    excluded = None
    if "degenerate" in main.columns:
        excluded = _per_module(layout, main.assign(flag=main["degenerate"].astype(float)), "flag") > 0
    return Scores(name, "blocks", _per_module(layout, main.fillna({"value": 0.0})), excluded=excluded)


def _read_weights(name, tables, layout) -> Scores:
    return Scores(name, "weights", _per_module(layout, tables["main"].fillna({"value": 0.0})))


def _read_eva(name, tables, layout) -> Scores:
    per_rank = _per_rank(layout, tables["main"])
    return Scores(name, "eva", np.nansum(per_rank, axis=1), per_rank=per_rank)


def _read_alphalora(name, tables, layout) -> Scores:
    main = tables["main"]
    alpha = np.full(len(layout.modules), np.nan)
    index = _module_index(layout, main)
    alpha[index[index >= 0]] = main["value"].to_numpy(dtype=float)[index >= 0]
    return Scores(name, "alphalora", alpha)


def _read_shares(name, tables, layout) -> Scores:
    return Scores(name, "shares", _per_module(layout, tables["main"].fillna({"value": 0.0})))


def scores_from_tables(name: str, family: str | None, tables: dict[str, pd.DataFrame], layout: Layout) -> Scores:
    """Align a signal's tables with the layout. `family` None infers ranks or weights from the table."""
    if family is None:
        family = "ranks" if "rank" in tables["main"].columns else "weights"
    if family not in FAMILIES:
        raise ValueError(f"unknown plan family {family!r}")
    return FAMILIES[family].read(name, tables, layout)


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
    return Scores(f"blend({label})", "weights", total, variant=variant)


# --- the rules ---------------------------------------------------------------------------------------

def _cost(ranks: np.ndarray, costs: np.ndarray) -> int:
    return int(ranks @ costs)


def _bounds(layout: Layout, limits: Limits) -> tuple[np.ndarray, np.ndarray]:
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


def _fill(ranks, high, costs, budget, priority) -> np.ndarray:
    """Spend what is left one rank at a time, most deserving module first, while anything fits."""
    order = np.argsort(-priority, kind="stable")
    spent = _cost(ranks, costs)
    while True:
        added = False
        for i in order:
            if ranks[i] < high[i] and spent + costs[i] <= budget:
                ranks[i] += 1
                spent += costs[i]
                added = True
        if not added:
            return ranks


def _best_ranks(values, low, high, costs, budget) -> np.ndarray:
    """Keep the globally best measured ranks (each module's best first) after the minimum."""
    measured = (~np.isnan(values)).sum(axis=1)
    ranks = low.copy()
    spent = _cost(ranks, costs)
    ordered = -np.sort(-np.nan_to_num(values, nan=-np.inf), axis=1)   # each module's ranks, best first
    candidates = [(ordered[i, j], i, j) for i in range(len(values)) for j in range(measured[i]) if j >= low[i]]
    for value, i, j in sorted(candidates, key=lambda c: -c[0]):
        if j == ranks[i] and ranks[i] < high[i] and spent + costs[i] <= budget:
            ranks[i] += 1
            spent += costs[i]
    return ranks


def _proportional(weights, low, high, costs, budget) -> np.ndarray:
    """Ranks floor(s * weight) within [low, high] for the largest scale s that fits, then a fill."""
    weights = np.nan_to_num(np.clip(weights, 0, None))
    weights = np.where(high > 0, weights, 0)
    if weights.sum() <= 0:
        weights = (high > 0).astype(float)
    def at(scale):
        return np.clip(np.floor(scale * weights), low, high).astype(np.int64)
    lo, hi = 0.0, 1.0
    growing = weights > 0
    while _cost(at(hi), costs) <= budget and (at(hi)[growing] < high[growing]).any():
        lo, hi = hi, hi * 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _cost(at(mid), costs) <= budget else (lo, mid)
    ranks = at(lo)
    return _fill(ranks, high, costs, budget, lo * weights - ranks)


def _top_blocks(values, excluded, layout, low, high, costs, budget, block_rank,
                most: int | None = None) -> tuple[np.ndarray, int]:
    layers = np.array([m.layer for m in layout.modules])
    block_value = {layer: values[layers == layer].mean() for layer in np.unique(layers)}
    skip = set() if excluded is None else set(layers[excluded])
    order = sorted((layer for layer in block_value if layer not in skip and not np.isnan(block_value[layer])),
                   key=lambda layer: -block_value[layer])
    ranks = low.copy()
    chosen = 0
    for layer in order[:most]:
        trial = ranks.copy()
        in_block = (layers == layer) & (high > 0)
        trial[in_block] = np.maximum(low[in_block], np.minimum(block_rank, high[in_block]))
        if _cost(trial, costs) > budget:
            break
        ranks, chosen = trial, chosen + 1
    return ranks, chosen


def allocate(scores: Scores | None, layout: Layout, budget: int, limits: Limits = Limits()) -> Allocation:
    """Ranks per module for `scores` (None: uniform LoRA) under `budget` parameters."""
    costs = np.array(layout.costs, dtype=np.int64)
    low, high = _bounds(layout, limits)
    floor_cost = _cost(low, costs)
    cheapest = int(costs[high > 0].min())
    if budget < max(floor_cost, cheapest):
        smallest = floor_cost if floor_cost else cheapest
        raise UserError(f"A budget of {budget:,} parameters is below the smallest possible plan "
                        f"({smallest:,} parameters: " + ("the minimum rank on every allowed module)."
                                                         if floor_cost else "one rank on the cheapest module)."))
    if scores is None:
        ranks, warnings = _uniform(limits, low, high, costs, budget)
    else:
        ranks, warnings = FAMILIES[scores.family].allocate(scores, layout, limits, low, high, costs, budget)
    ranks = ranks.astype(np.int64)
    cost = _cost(ranks, costs)
    assert cost <= budget, (cost, budget)
    if (ranks[high > 0] >= limits.max_rank).all() and budget - cost >= cheapest:
        full = full_rank_cost(layout)
        if budget > full:   # either spelling (r1000, 1e9): no limit would let a plan spend it
            warnings.append(f"A budget of {budget:,} parameters is more than full rank on every module of this "
                            f"model costs ({full:,}), so no plan can spend it; this one stops at {cost:,} "
                            f"parameters (at most --max-rank {limits.max_rank} per module).")
        else:
            warnings.append(f"Every allowed module is at the maximum rank {limits.max_rank}, so the plan stops at "
                            f"{cost:,} parameters; raise the maximum rank to spend the whole budget.")
    return Allocation(ranks, cost, warnings)


# --- the families: how a signal's table is read, and how its ranks are chosen -------------------------------

def _uniform(limits, low, high, costs, budget):
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


def _allocate_ranks(scores, layout, limits, low, high, costs, budget):
    warnings = []
    cap = np.minimum(high, (~np.isnan(scores.per_rank)).sum(axis=1))
    ranks = _best_ranks(scores.per_rank, low, cap, costs, budget)
    warnings += _doubtful_ranks(scores, ranks)
    if (ranks >= cap).all() and budget - _cost(ranks, costs) >= int(costs[high > 0].min()):
        warnings.append(f"{scores.name} measured {scores.per_rank.shape[1]} ranks per module and all of them "
                        f"fit in this budget, so the plan stops at {_cost(ranks, costs):,} parameters; run the "
                        f"signal with a larger r_max to plan for larger budgets.")
    return ranks, warnings


def _allocate_learned(scores, layout, limits, low, high, costs, budget):
    learned = scores.floor.astype(np.int64)
    if _cost(np.clip(learned, low, high), costs) > budget:
        return _best_ranks(scores.per_rank, low, np.minimum(high, learned), costs, budget), []
    return _proportional(scores.per_module, np.clip(learned, low, high), high, costs, budget), []


def _allocate_bounds(scores, layout, limits, low, high, costs, budget):
    bound = np.clip(np.ceil(scores.floor).astype(np.int64), low, high)
    if _cost(bound, costs) <= budget:
        return _proportional(scores.floor, bound, high, costs, budget), []
    ranks = _proportional(scores.floor, low, high, costs, budget)
    below = int((ranks < bound).sum())
    return ranks, [f"The budget is below GeLoRA's bounds ({_cost(bound, costs):,} parameters), so {below} of "
                   f"{len(ranks)} modules get less rank than their bound."]


def _allocate_blocks(scores, layout, limits, low, high, costs, budget):
    paper = limits.block_count == "paper"
    wanted = layout.num_layers // 2 if paper else None
    ranks, chosen = _top_blocks(scores.per_module, scores.excluded, layout, low, high, costs, budget,
                                limits.block_rank, wanted)
    # the rank a block really gets: --max-rank caps --block-rank
    rank = int(min(limits.block_rank, high.max(initial=0) or limits.block_rank))
    capped = f" (--block-rank {limits.block_rank}, capped by --max-rank)" if rank < limits.block_rank else ""
    if chosen == 0:
        raise UserError(f"A budget of {budget:,} parameters does not fit a single block at rank "
                        f"{rank}{capped}; lower the block rank or raise the budget.")
    warnings = []
    if paper and chosen < wanted:
        warnings.append(f"The CKA paper's rule selects floor({layout.num_layers}/2) = {wanted} blocks, but this "
                        f"budget fits {chosen} at rank {rank}{capped}.")
    spent = _cost(ranks, costs)   # the paper's rule keeps floor(L/2) blocks whatever the budget: no advice there
    if not paper and budget - spent >= int(costs[high > 0].min()) and spent < budget / 2:
        advice = ("raise --max-rank (it caps the block rank)" if capped
                  else "raise the block rank (--block-rank)")
        warnings.append(f"{scores.name} adapts {chosen} block(s) at rank {rank}{capped}, which uses "
                        f"{spent:,} parameters, {spent / budget:.1%} of the budget; {advice} to spend more of it.")
    return ranks, warnings


def _allocate_weights(scores, layout, limits, low, high, costs, budget):
    return _proportional(scores.per_module, low, high, costs, budget), []


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


def _allocate_eva(scores, layout, limits, low, high, costs, budget):
    """EVA's rule: walk the pooled ranking of components (largest explained variance first, ties as peft breaks
    them) and stop at the first one that does not fit, so the plan is a prefix of the ranking as EVA's top-k is;
    then, as peft does, a module that shares another's PCA and got more rank than that module swaps ranks with it
    (where the swap fits the budget and the limits)."""
    values = scores.per_rank
    measured = (~np.isnan(values)).sum(axis=1)
    cap = np.minimum(high, measured)
    ranks = low.copy()
    spent = _cost(ranks, costs)
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
        if ranks[h] < ranks[k] and _cost(swapped, costs) <= budget and (swapped >= low).all() and \
                (swapped <= cap).all():
            ranks, spent = swapped, _cost(swapped, costs)
    warnings = []
    if (ranks >= cap).all() and budget - spent >= int(costs[high > 0].min()):
        warnings.append(f"{scores.name} measured at most {int(measured.max())} components per module and all of "
                        f"them fit in this budget, so the plan stops at {spent:,} parameters; run the signal with "
                        f"a larger r or rho to plan for larger budgets.")
    return ranks, warnings


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


def _allocate_alphalora(scores, layout, limits, low, high, costs, budget):
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
        if _cost(ranks, costs) <= budget:
            return ranks, []
    raise UserError(f"A budget of {budget:,} parameters does not fit one rank on every allowed module of a layer, "
                    "which AlphaLoRA's per-layer allocation needs.")


def _gora_bounds(limits, low, high, costs, budget) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """GoRA's rank limits inside the plan's own; its minimum lowered, with a warning, to the largest the budget fits
    on every allowed module."""
    allowed = high > 0
    top = np.where(allowed, np.minimum(high, limits.gora_max_rank), 0)
    def floor(rank):
        return np.where(allowed, np.minimum(np.maximum(low, rank), top), 0)
    wanted = minimum = max(limits.min_rank, limits.gora_min_rank)
    while minimum > limits.min_rank and _cost(floor(minimum), costs) > budget:
        minimum -= 1
    warnings = []
    if minimum < wanted:
        warnings.append(f"GoRA's minimum rank {wanted} on every allowed module costs {_cost(floor(wanted), costs):,} "
                        f"parameters, more than the budget; this plan's minimum rank is {minimum}.")
    published = Limits()   # the defaults are GoRA's published limits
    if (limits.gora_min_rank, limits.gora_max_rank) != (published.gora_min_rank, published.gora_max_rank):
        warnings.append(f"GoRA's ranks are kept between {limits.gora_min_rank} and {limits.gora_max_rank} here; its "
                        f"published scripts use {published.gora_min_rank} and {published.gora_max_rank}.")
    return floor(minimum), top, warnings


def _allocate_shares(scores, layout, limits, low, high, costs, budget):
    low, high, warnings = _gora_bounds(limits, low, high, costs, budget)
    importance = np.nan_to_num(np.clip(scores.per_module, 0, None)) * (high > 0)
    if importance.sum() <= 0:
        return _proportional(importance, low, high, costs, budget), warnings
    share = budget * importance / importance.sum()
    ranks = np.clip(np.round(share).astype(np.int64) // costs, low, high)    # GoRA: round(trainable) // features
    if _cost(ranks, costs) > budget:   # the minimum rank pushed it over: scale everything down instead
        ranks = _proportional(importance / costs, low, high, costs, budget)
    else:
        ranks = _fill(ranks, high, costs, budget, share / costs - ranks)
    capped = limits.gora_max_rank < limits.max_rank and (ranks[high > 0] >= high[high > 0]).all()
    if capped and budget - _cost(ranks, costs) >= int(costs[high > 0].min()):   # (else allocate's warning says so)
        warnings.append(f"Every module is at GoRA's maximum rank {limits.gora_max_rank}, so the plan stops at "
                        f"{_cost(ranks, costs):,} parameters; raise --gora-max-rank to spend the whole budget.")
    return ranks, warnings


@dataclass(frozen=True)
class Family:
    """A plan family: `read` aligns a signal's tables with a layout, `allocate` turns them into ranks."""
    read: Callable
    allocate: Callable


FAMILIES: dict[str, Family] = {
    "ranks": Family(_read_ranks, _allocate_ranks),
    "learned": Family(_read_learned, _allocate_learned),
    "bounds": Family(_read_bounds, _allocate_bounds),
    "blocks": Family(_read_blocks, _allocate_blocks),
    "weights": Family(_read_weights, _allocate_weights),
    "eva": Family(_read_eva, _allocate_eva),
    "alphalora": Family(_read_alphalora, _allocate_alphalora),
    "shares": Family(_read_shares, _allocate_shares),
}


# --- budgets -----------------------------------------------------------------------------------------

def _rank_one_cost(layout: Layout, limits: Limits) -> int:
    """Parameters of one rank on every allowed module (uniform LoRA costs this times its rank)."""
    _, high = _bounds(layout, limits)
    return sum(c for c, h in zip(layout.costs, high) if h > 0)


def uniform_cost(layout: Layout, rank: float, limits: Limits = Limits()) -> int:
    """Parameters of uniform LoRA at `rank` on the allowed modules."""
    return int(round(rank * _rank_one_cost(layout, limits)))


def full_rank_cost(layout: Layout) -> int:
    """LoRA parameters with every module at full rank (min(d_in, d_out)): more than any plan can spend."""
    return sum(min(m.d_in, m.d_out) * (m.d_in + m.d_out) for m in layout.modules)


# The largest budget taken: above every model's full-rank LoRA, and far inside int64 (numbers beyond it are typos).
MAX_BUDGET = 10**15


def parse_budget(text: str, layout: Layout, limits: Limits = Limits()) -> int:
    """'147456', '150k', '1.2M' parameters, or 'r4': what uniform LoRA of rank 4 costs on the allowed modules."""
    spec = str(text).strip().lower().replace(",", "").replace("_", "")
    match = re.fullmatch(r"(r)?(\d+(?:\.\d+)?)([km])?", spec)
    if not match or (match.group(1) and match.group(3)):
        raise UserError(f"Cannot read the budget {quoted(text)}; give parameters (150000, 150k, 1.2M) or an average "
                        "rank (r4).")
    number = Decimal(match.group(2))   # exact: 99999999999999999999999 stays that number, not a float's neighbour
    if match.group(1):   # what uniform LoRA at that rank costs on the allowed modules (uniform_cost, but exact)
        budget = int((number * _rank_one_cost(layout, limits)).to_integral_value())
    else:
        budget = int(number * {"k": 1000, "m": 10**6, None: 1}[match.group(3)])
    # One rule for both spellings: above full rank a plan is capped there (allocate warns); a number beyond any
    # model's full rank is a typo, refused with what full rank costs here.
    if budget > MAX_BUDGET:
        full = full_rank_cost(layout)
        raise UserError(f"A budget of {quoted(text)} is beyond any LoRA (full rank on every module of this model is "
                        f"{full:,} parameters); give at most that (a larger budget is capped there).")
    if budget <= 0:
        raise UserError("The budget must be a positive number of parameters.")
    return budget
