"""CKA's plan family: the k most important blocks (degenerate ones left out) at one uniform rank; k the largest that
fits the budget, or with `--block-count paper` the paper's k = floor(L/2) of the L blocks (its selection scripts
take ratio_of_layers 0.5), as far as the budget allows."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from analysis.allocation.rules import cost
from analysis.allocation.scores import Scores, per_module_values
from analysis.contract.signal import PlanFamily
from analysis.errors import UserError
from analysis.settings import Group, setting


@dataclass(frozen=True)
class BlockLimits(Group):
    """What a CKA plan selects (the command line's --block-rank and --block-count)."""
    block_rank: int = setting(8, "rank of each block a CKA plan selects", minimum=1)
    block_count: str = setting("budget", "how many blocks a CKA plan selects: budget (as many as fit) or paper "
                                         "(floor(L/2), the CKA paper's rule)", choices=("budget", "paper"))


def read_blocks(name, tables, layout) -> Scores:
    main = tables["main"]
    excluded = None
    if "degenerate" in main.columns:
        excluded = per_module_values(layout, main.assign(flag=main["degenerate"].astype(float)), "flag") > 0
    return Scores(name, BLOCKS, per_module_values(layout, main.fillna({"value": 0.0})), excluded=excluded)


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
        if cost(trial, costs) > budget:
            break
        ranks, chosen = trial, chosen + 1
    return ranks, chosen


def allocate_blocks(scores, room, own: BlockLimits):
    layout, _, low, high, costs, budget = room
    paper = own.block_count == "paper"
    wanted = layout.num_layers // 2 if paper else None
    ranks, chosen = _top_blocks(scores.per_module, scores.excluded, layout, low, high, costs, budget,
                                own.block_rank, wanted)
    # the rank a block really gets: --max-rank caps --block-rank
    rank = int(min(own.block_rank, high.max(initial=0) or own.block_rank))
    capped = f" (--block-rank {own.block_rank}, capped by --max-rank)" if rank < own.block_rank else ""
    if chosen == 0:
        raise UserError(f"A budget of {budget:,} parameters does not fit a single block at rank "
                        f"{rank}{capped}; lower the block rank or raise the budget.")
    warnings = []
    if paper and chosen < wanted:
        warnings.append(f"The CKA paper's rule selects floor({layout.num_layers}/2) = {wanted} blocks, but this "
                        f"budget fits {chosen} at rank {rank}{capped}.")
    spent = cost(ranks, costs)   # the paper's rule keeps floor(L/2) blocks whatever the budget: no advice there
    if not paper and budget - spent >= int(costs[high > 0].min()) and spent < budget / 2:
        advice = ("raise --max-rank (it caps the block rank)" if capped
                  else "raise the block rank (--block-rank)")
        warnings.append(f"{scores.name} adapts {chosen} block(s) at rank {rank}{capped}, which uses "
                        f"{spent:,} parameters, {spent / budget:.1%} of the budget; {advice} to spend more of it.")
    return ranks, warnings


BLOCKS = PlanFamily(read_blocks, allocate_blocks, BlockLimits)
