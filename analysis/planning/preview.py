"""The budget preview: every method's ranks at one budget, from scores already read from the cache.

Only allocation runs when the budget moves (about 12 ms for all methods on an 8B layout); the plan JSON,
whose validation against every module name costs more, is built when someone downloads it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.allocation.allocate import allocate
from analysis.allocation.scores import Allocation, Scores
from analysis.errors import UserError
from analysis.model.layout import Layout
from analysis.planning.plan_json import build_plan, row_name
from analysis.settings import Limits, PlanOptions


@dataclass
class Outcome:
    method: str
    allocation: Allocation | None = None
    error: str | None = None          # why this method has no plan at this budget
    variant: str = ""                 # its entry's non-paper options by name (Scores.variant)

    @property
    def name(self) -> str:
        """What the tables, figures and buttons call it (methods.row_name)."""
        return row_name(self.method, self.variant)


def preview(scores: dict[str, Scores | None], layout: Layout, budget: int, limits: Limits = Limits(),
            signal_limits: tuple = ()) -> list[Outcome]:
    """Each method's allocation at `budget` (None scores: uniform LoRA; `signal_limits`: the limits of signals' own
    plan rules as chosen); a budget a method cannot meet is an outcome with its one-sentence reason, not an
    exception."""
    outcomes = []
    for method, score in scores.items():
        variant = score.variant if score else ""
        try:
            outcomes.append(Outcome(method, allocate(score, layout, budget, limits, signal_limits), variant=variant))
        except UserError as error:
            outcomes.append(Outcome(method, error=str(error), variant=variant))
    return outcomes


def rank_table(layout: Layout, ranks: np.ndarray) -> pd.DataFrame:
    """layer, module, value = the rank of each adaptable module (0: not adapted)."""
    return pd.DataFrame({"layer": [m.layer for m in layout.modules], "module": [m.name for m in layout.modules],
                         "value": np.asarray(ranks, dtype=np.int64)})


def summary(outcomes: list[Outcome], budget: int, uniform: str = "uniform") -> pd.DataFrame:
    """One row per method: parameters, share of the budget, adapted modules, rank range, and how many modules
    get more or less rank than uniform LoRA at this budget."""
    base = uniform_ranks(outcomes, uniform)
    rows = []
    for outcome in outcomes:
        if outcome.allocation is None:
            rows.append({"method": outcome.name, "note": outcome.error})
            continue
        ranks = outcome.allocation.ranks
        adapted = ranks[ranks > 0]
        row = {"method": outcome.name, "trainable params": outcome.allocation.cost,
               "of budget": outcome.allocation.cost / budget, "modules": f"{len(adapted)} of {len(ranks)}",
               "ranks": f"{adapted.min()}–{adapted.max()}" if len(adapted) else "—"}
        if base is not None:
            row["more than uniform"] = int((ranks > base).sum())
            row["less than uniform"] = int((ranks < base).sum())
        row["note"] = " ".join(outcome.allocation.warnings)
        rows.append(row)
    return pd.DataFrame(rows)


def plan_json(outcome: Outcome, layout: Layout, budget: int, settings: dict,
              options: PlanOptions = PlanOptions()) -> dict:
    """The full, validated plan for one previewed allocation."""
    return build_plan(layout, outcome.allocation.ranks, outcome.method, budget, options,
                      warnings=outcome.allocation.warnings, settings=settings, variant=outcome.variant)


def uniform_ranks(outcomes: list[Outcome], uniform: str = "uniform") -> np.ndarray | None:
    return next((o.allocation.ranks for o in outcomes if o.method == uniform and o.allocation), None)


def drawn(outcomes: list[Outcome], difference: bool = False, uniform: str = "uniform") -> list[Outcome]:
    """The plans a figure shows: every planned method, without uniform itself when showing differences
    from it (and none then when uniform has no plan at this budget)."""
    if difference and uniform_ranks(outcomes, uniform) is None:
        return []
    return [o for o in outcomes if o.allocation is not None and not (difference and o.method == uniform)]


def plan_table(outcomes: list[Outcome], layout: Layout, difference: bool = False) -> pd.DataFrame:
    """method, layer, module, rank (and rank_minus_uniform when `difference`) of every drawn plan."""
    columns = ["method", "layer", "module", "rank", *(["rank_minus_uniform"] if difference else [])]
    base = uniform_ranks(outcomes)
    frames = [rank_table(layout, o.allocation.ranks).rename(columns={"value": "rank"}).assign(method=o.name)
              for o in drawn(outcomes, difference)]
    if difference:
        frames = [f.assign(rank_minus_uniform=f["rank"].to_numpy() - base) for f in frames]
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)
