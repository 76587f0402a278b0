"""Planning methods by name: 'uniform', a signal ('shapley'), a blend ('shapley+cka', '0.7*shapley+0.3*id'), or
uniform LoRA on one module family ('uniform-attention', 'uniform-mlp', 'uniform-all'; planning/baselines.py).

Turns a method into Scores from the cached tables of one analysis setting and a plan from those,
so the command line, the comparison and the pages all plan the same way. A method whose entry was
computed with options that depart from its paper's code carries their name (Scores.variant) into
its plan, and is shown as plan_json.row_name says.
"""
from __future__ import annotations

import re
from collections.abc import Mapping

from analysis.allocation.allocate import allocate, blend, scores_from_tables
from analysis.allocation.budgets import parse_budget
from analysis.allocation.scores import Scores
from analysis.planning.baselines import MODULE_FAMILIES, baseline_family, family_limits
from analysis.contract.run import Run
from analysis.model.sources.data import data_identity
from analysis.model.sources.models import model_files
from analysis.signals.context import DATA_MEMO
from analysis.errors import UserError
from analysis.settings import Limits, PlanOptions, to_dict
from analysis.model.layout import Layout, model_layout
from analysis.planning.plan_json import build_plan
from analysis.contract.signal import variant_of
from analysis.signals.registry import get_signal, make_config
from analysis.signals.runner import not_computed
from analysis.store.cache import Entry
from analysis.store.lookups import find_entry

UNIFORM = "uniform"


def layout_for(run: Run) -> Layout:
    """The run's model layout from its config on the meta device: no data read, no weights loaded or fingerprinted
    (the run's key is already known), so a run made on a GPU server is planned here on the CPU."""
    path, _ = model_files(run.settings.model, run.store.root)
    labels = run.labels
    if labels is None and run.task == "classification":   # entries written before the labels were recorded
        settings = run.settings
        labels = data_identity(settings.data, settings.text_column, settings.label_column, settings.hub_split,
                               run.store.root / DATA_MEMO, settings.allow_many_classes).labels
    return model_layout(path, run.task, len(labels) if labels else None)


def blend_parts(method: str) -> list[tuple[str, float]]:
    """'0.7*shapley+0.3*cka' -> [('shapley', 0.7), ('cka', 0.3)]; a bare name weighs 1."""
    parts = []
    for term in method.split("+"):
        match = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)\s*\*\s*)?([a-z_]\w*)\s*", term)
        if not match:
            raise UserError(f"Cannot read the method '{method}'; write a signal name, 'uniform' or a blend such as "
                            "'0.7*shapley+0.3*cka'.")
        parts.append((match.group(2), float(match.group(1) or 1)))
    zero = [name for name, weight in parts if weight <= 0]
    if zero:
        raise UserError(f"The method '{method}' gives {', '.join(zero)} weight 0; every weight of a blend must be "
                        "positive (leave a signal out instead).")
    for name, _ in parts:
        get_signal(name)   # an unknown name is refused here, before anything is loaded
    return parts


class EntryTables(Mapping):
    """An entry's tables by name, each read from disk when a plan family first asks for it."""

    def __init__(self, entry: Entry):
        self.entry, self.read = entry, {}

    def __getitem__(self, name: str):
        if name not in self.entry.table_names:
            raise KeyError(name)
        if name not in self.read:
            self.read[name] = self.entry.table(name)
        return self.read[name]

    def __iter__(self):
        return iter(self.entry.table_names)

    def __len__(self) -> int:
        return len(self.entry.table_names)


def scores_from_entry(name: str, entry: Entry, layout: Layout) -> Scores:
    signal = get_signal(name)
    scores = scores_from_tables(name, signal.plan, EntryTables(entry), layout)
    scores.variant = variant_of(signal, entry.meta.get("config", {}))
    return scores


def cached_entry(run: Run, name: str, overrides: dict[str, str] | None = None) -> Entry:
    """The signal's entry by store.lookups.find_entry's rule (the same for show, plan and export): of exactly the
    options named, else the run's chosen one."""
    signal = get_signal(name)
    entry = find_entry(run, signal, make_config(signal, overrides) if overrides else None)
    if entry is None:
        raise UserError(not_computed(name, overrides))
    return entry


def method_scores(run: Run, method: str, layout: Layout,
                  overrides: dict[str, dict[str, str]] | None = None) -> Scores | None:
    """Scores for a method from the cache (None for uniform LoRA)."""
    if method == UNIFORM:
        return None
    parts = blend_parts(method)
    loaded = [(scores_from_entry(name, cached_entry(run, name, (overrides or {}).get(name)), layout), weight)
              for name, weight in parts]
    if len(loaded) == 1 and parts[0][1] == 1:
        return loaded[0][0]
    return blend(loaded)


def plan_from_scores(run: Run, scores: Scores | None, layout: Layout, budget: str,
                     limits: Limits = Limits(), options: PlanOptions = PlanOptions(),
                     signal_limits: tuple = ()) -> dict:
    """The plan for already loaded scores (None: uniform LoRA); what a budget move recomputes."""
    amount = parse_budget(budget, layout, limits)
    allocation = allocate(scores, layout, amount, limits, signal_limits)
    return build_plan(layout, allocation.ranks, scores.name if scores else UNIFORM, amount, options,
                      allocation.warnings, settings=to_dict(run.settings),
                      variant=scores.variant if scores else "")


def baseline_plan(run: Run, method: str, budget: str, limits: Limits = Limits(),
                  options: PlanOptions = PlanOptions(), layout: Layout | None = None) -> dict:
    """Uniform LoRA on one module family ('uniform-mlp') at the budget uniform LoRA has under `limits`."""
    layout = layout or layout_for(run)
    family = baseline_family(method)
    amount = parse_budget(budget, layout, limits)
    narrowed = family_limits(layout, family, limits)
    try:
        allocation = allocate(None, layout, amount, narrowed)
    except UserError as error:
        raise UserError(f"The '{family}' baseline (uniform LoRA on {MODULE_FAMILIES[family]}) has no plan at "
                        f"{budget}: {error} Leave it out of --baselines or raise the budget.") from None
    return build_plan(layout, allocation.ranks, method, amount, options, allocation.warnings,
                      settings=to_dict(run.settings))


def make_plan(run: Run, method: str, budget: str, limits: Limits = Limits(),
              options: PlanOptions = PlanOptions(), overrides: dict[str, dict[str, str]] | None = None,
              layout: Layout | None = None, signal_limits: tuple = ()) -> dict:
    """The plan of a method at a budget; `signal_limits`: the limits of signals' own plan rules as chosen."""
    layout = layout or layout_for(run)
    if baseline_family(method):
        return baseline_plan(run, method, budget, limits, options, layout)
    return plan_from_scores(run, method_scores(run, method, layout, overrides), layout, budget, limits,
                            options, signal_limits)
