"""Budgets: a budget as typed ('150k', 'r4') in parameters, and what uniform LoRA and full rank cost."""
from __future__ import annotations

import re
from decimal import Decimal

from analysis.allocation.rules import module_bounds
from analysis.errors import UserError, quoted
from analysis.model.layout import Layout
from analysis.settings import Limits


def rank_one_cost(layout: Layout, limits: Limits) -> int:
    """Parameters of one rank on every allowed module (uniform LoRA costs this times its rank)."""
    _, high = module_bounds(layout, limits)
    return sum(c for c, h in zip(layout.costs, high) if h > 0)


def uniform_cost(layout: Layout, rank: float, limits: Limits = Limits()) -> int:
    """Parameters of uniform LoRA at `rank` on the allowed modules."""
    return int(round(rank * rank_one_cost(layout, limits)))


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
        budget = int((number * rank_one_cost(layout, limits)).to_integral_value())
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
