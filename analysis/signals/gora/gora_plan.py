"""GoRA's plan family: parameters in proportion to the importance, rank_i = round(budget * p_i) // (d_in + d_out)
(GoRA's "moderate" rule) kept within GoRA's rank limits (its scripts' 4 to 32, `--gora-min-rank` and
`--gora-max-rank`), then what that flooring leaves is spent one rank at a time. GoRA's own total may pass its
budget where the limits raise ranks; here the plan stays within it, so a budget below GoRA's minimum on every
module lowers that minimum, with a warning."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from analysis.allocation.rules import cost, fill, proportional
from analysis.allocation.scores import Scores, per_module_values
from analysis.contract.signal import PlanFamily
from analysis.errors import UserError
from analysis.settings import Group, setting


@dataclass(frozen=True)
class GoRALimits(Group):
    """GoRA's rank limits (the command line's --gora-min-rank and --gora-max-rank); the defaults are its scripts'."""
    gora_min_rank: int = setting(4, "every module a GoRA plan adapts gets at least this rank (GoRA's published "
                                    "scripts: 4; 0 for none)", minimum=0)
    gora_max_rank: int = setting(32, "no module of a GoRA plan gets more (GoRA's published scripts: 32)", minimum=1)

    def check(self) -> None:
        if self.gora_min_rank > self.gora_max_rank:
            raise UserError(f"--gora-min-rank ({self.gora_min_rank}) must not exceed --gora-max-rank "
                            f"({self.gora_max_rank}).")


def read_shares(name, tables, layout) -> Scores:
    return Scores(name, SHARES, per_module_values(layout, tables["main"].fillna({"value": 0.0})))


def _gora_bounds(limits, own: GoRALimits, low, high, costs, budget) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """GoRA's rank limits inside the plan's own; its minimum lowered, with a warning, to the largest the budget fits
    on every allowed module."""
    allowed = high > 0
    top = np.where(allowed, np.minimum(high, own.gora_max_rank), 0)
    def floor(rank):
        return np.where(allowed, np.minimum(np.maximum(low, rank), top), 0)
    wanted = minimum = max(limits.min_rank, own.gora_min_rank)
    while minimum > limits.min_rank and cost(floor(minimum), costs) > budget:
        minimum -= 1
    warnings = []
    if minimum < wanted:
        warnings.append(f"GoRA's minimum rank {wanted} on every allowed module costs {cost(floor(wanted), costs):,} "
                        f"parameters, more than the budget; this plan's minimum rank is {minimum}.")
    published = GoRALimits()   # the defaults are GoRA's published limits
    if (own.gora_min_rank, own.gora_max_rank) != (published.gora_min_rank, published.gora_max_rank):
        warnings.append(f"GoRA's ranks are kept between {own.gora_min_rank} and {own.gora_max_rank} here; its "
                        f"published scripts use {published.gora_min_rank} and {published.gora_max_rank}.")
    return floor(minimum), top, warnings


def allocate_shares(scores, room, own: GoRALimits):
    _, limits, low, high, costs, budget = room
    low, high, warnings = _gora_bounds(limits, own, low, high, costs, budget)
    importance = np.nan_to_num(np.clip(scores.per_module, 0, None)) * (high > 0)
    if importance.sum() <= 0:
        return proportional(importance, low, high, costs, budget), warnings
    share = budget * importance / importance.sum()
    ranks = np.clip(np.round(share).astype(np.int64) // costs, low, high)    # GoRA: round(trainable) // features
    if cost(ranks, costs) > budget:   # the minimum rank pushed it over: scale everything down instead
        ranks = proportional(importance / costs, low, high, costs, budget)
    else:
        ranks = fill(ranks, high, costs, budget, share / costs - ranks)
    capped = own.gora_max_rank < limits.max_rank and (ranks[high > 0] >= high[high > 0]).all()
    if capped and budget - cost(ranks, costs) >= int(costs[high > 0].min()):   # (else allocate's warning says so)
        warnings.append(f"Every module is at GoRA's maximum rank {own.gora_max_rank}, so the plan stops at "
                        f"{cost(ranks, costs):,} parameters; raise --gora-max-rank to spend the whole budget.")
    return ranks, warnings


SHARES = PlanFamily(read_shares, allocate_shares, GoRALimits)
