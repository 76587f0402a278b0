"""The baselines that ask "which modules": uniform LoRA on the attention projections only, on the MLP only, and
on every linear of the blocks, each at the comparison's budget.

A baseline's budget is the one uniform LoRA has (`r4` is what uniform rank 4 costs on the modules `--modules`
allows); on fewer modules its rank is raised, by uniform LoRA's own rule: the largest whole rank whose cost fits
the budget (allocate's uniform), so its trainable parameters are at most the budget and within one rank's cost
of it. `--modules` does not narrow a baseline: each adapts its whole family (Layout.family tells attention from
MLP). A baseline that adapts exactly the modules uniform LoRA adapts would be the uniform row again, so a
comparison leaves it out and says so.
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from analysis.errors import UserError
from analysis.settings import MODULE_FAMILIES, Limits

if TYPE_CHECKING:   # the command line reads the names below to build its flags, without loading torch
    from analysis.model.layout import Layout

PREFIX = "uniform-"


def baseline_method(family: str) -> str:
    """The method name of a baseline's row: 'uniform-attention', 'uniform-mlp', 'uniform-all'."""
    return PREFIX + family


def baseline_family(method: str) -> str | None:
    """'uniform-mlp' -> 'mlp'; None for any other method."""
    family = method[len(PREFIX):] if method.startswith(PREFIX) else None
    return family if family in MODULE_FAMILIES else None


def family_types(layout: Layout, family: str) -> tuple[str, ...]:
    """The module types (query, q_proj, c_attn, ...) of a family, in layout order."""
    types = tuple(dict.fromkeys(m.name for m in layout.modules if family == "all" or layout.family(m) == family))
    if not types:
        raise UserError(f"This model has no linear in {MODULE_FAMILIES[family]} of its blocks, so the '{family}' "
                        "baseline cannot be planned; leave it out of --baselines.")
    return types


def family_limits(layout: Layout, family: str, limits: Limits) -> Limits:
    """`limits` with the modules allowed set to the family's (the ranks' minimum and maximum kept)."""
    return dataclasses.replace(limits, module_types=family_types(layout, family))


def baseline_rows(layout: Layout, families: list[str], limits: Limits) -> tuple[list[str], list[str]]:
    """The baselines' method names as rows of a comparison, and a note for each one left out because it adapts
    exactly the modules uniform LoRA adapts under `limits`."""
    allowed = set(limits.module_types if limits.module_types is not None else layout.module_types)
    rows, notes = [], []
    for family in families:
        if set(family_types(layout, family)) == allowed:
            notes.append(f"uniform LoRA already adapts {MODULE_FAMILIES[family]} ({', '.join(sorted(allowed))}), so "
                         f"its row is the '{family}' baseline.")
        else:
            rows.append(baseline_method(family))
    return rows, notes
