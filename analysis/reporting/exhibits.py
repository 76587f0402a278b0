"""Every figure and table a run can show, by name, with the data behind it: what the pages draw and what
the Export page and `python -m analysis export` write.

An exhibit is built lazily (`figure()`, `data()`), so listing a run's exhibits reads nothing.
"""
from __future__ import annotations

import io
import zipfile
from functools import cache

import pandas as pd

from analysis.charts import tidy_figures
from analysis.reporting import figures
from analysis.contract.exhibit import Exhibit
from analysis.allocation.budgets import parse_budget
from analysis.settings import Limits
from analysis.reporting.comparison_tables import (budget_table, curve_points, formatted, pareto_points,
                                                   savings_table, too_small)
from analysis.training.comparison_stats import summary_of
from analysis.training.savings import RESAMPLES, savings
from analysis.errors import UserError
from analysis.planning.methods import UNIFORM, cached_entry, layout_for, method_scores
from analysis.reporting.all_signals import (agreement, agreement_matrix_figure, layer_curves_figure, layer_importance,
                               module_importance)
from analysis.reporting.paper import FORMATS, figure_bytes, latex_table, paper_style
from analysis.planning.preview import drawn, plan_table, preview
from analysis.signals.registry import all_signals
from analysis.store.lookups import chosen_entries, comparisons
from analysis.store.cache import Entry


def signal_exhibits(entry: Entry) -> list[Exhibit]:
    """The figures of one signal's entry, the most useful first: the signal's own (its `exhibits` hook), or
    a generic heatmap (bars for a layer-level signal)."""
    name, table = entry.meta["signal"], entry.table
    signal = all_signals().get(name)
    if signal is not None and signal.exhibits is not None:
        return signal.exhibits(entry)
    return [Exhibit(name, entry.meta.get("title", name), table, lambda: tidy_figures.signal_figure(table()))]


def overview_exhibits(entries: dict[str, Entry]) -> list[Exhibit]:
    """The all-signals figures: heatmaps side by side, per-layer curves, and agreement per layer; each
    signal is labelled by its short name and scaled by its largest |value| (they come in different units).
    The tables are read once for all three (a page draws each figure and may then download its data)."""
    @cache
    def modules():
        return {name: module_importance(entry) for name, entry in entries.items()}

    @cache
    def layers():
        return {name: layer_importance(entry) for name, entry in entries.items()}

    @cache
    def matrix():
        return agreement(layers(), ["layer"])

    def tidy(frames):
        return pd.concat([frame.assign(signal=name) for name, frame in frames.items()], ignore_index=True)

    return [
        Exhibit("all_signals_heatmaps", "All signals per layer and module", lambda: tidy(modules()),
                lambda: tidy_figures.side_by_side_heatmaps(modules())),
        Exhibit("all_signals_layers", "All signals per layer", lambda: tidy(layers()),
                lambda: layer_curves_figure(layers())),
        Exhibit("signal_agreement", "Agreement between signals (Spearman, per layer)",
                lambda: matrix().rename_axis("signal").reset_index(), lambda: agreement_matrix_figure(matrix())),
    ]


def comparison_exhibits(entry: Entry) -> list[Exhibit]:
    """The retrain comparison: its summary (mean ± std over the runs that trained, the paired difference from
    uniform with its interval; also as LaTeX), the budget curve and its table, the Pareto figure and the parameters
    each method needs to reach uniform, every run (runs that did not train flagged) and the learning-rate tuning
    runs."""
    task = entry.meta["task"]

    @cache
    def summary():
        return summary_of(entry)

    @cache
    def saved():
        return savings(entry.table("runs"), task)

    def pareto() -> pd.DataFrame:   # each point with its method's reading of the parameters to reach uniform
        points = pareto_points(summary(), task)
        if saved().empty:
            return points
        columns = ["method", "target", "reference_budget", "needed_params", "reading", "needed_low", "needed_high"]
        return points.merge(saved()[columns], on="method", how="left")

    budgets = entry.meta.get("budgets") or [entry.meta.get("budget_spec", "")]
    caveats = too_small(entry)   # the exported caption says so too, not only the page
    caveat = f" (too small to mean much: {' '.join(caveats)})" if caveats else ""
    exhibits = [Exhibit("comparison_summary", "Retrain comparison" + (" at one budget" if len(budgets) == 1 else
                                                                      f" at {len(budgets)} budgets") + caveat,
                        lambda: formatted(summary(), task)),
                Exhibit("comparison_budgets", "Metric against trainable parameters (95% bands)",
                        lambda: curve_points(summary(), task), lambda: figures.budget_curve_figure(
                            curve_points(summary(), task))),
                Exhibit("comparison_budget_table", "Retrain comparison per budget († beats uniform)",
                        lambda: budget_table(summary(), task)),
                Exhibit("comparison_pareto", "Metric against trainable parameters: the Pareto frontier and the "
                        "parameters each method needs to reach uniform at the largest budget", pareto,
                        lambda: figures.pareto_figure(pareto_points(summary(), task), saved())),
                Exhibit("comparison_savings", "Parameters to reach uniform LoRA at the largest budget (bootstrap "
                        f"over seeds, {RESAMPLES} resamples)" + caveat, lambda: savings_table(saved(), task)),
                Exhibit("comparison_runs", "Every retrain run of the comparison", lambda: entry.table("runs"))]
    if "tuning" in entry.table_names:
        exhibits.append(Exhibit("comparison_tuning", "Learning-rate tuning runs (validation split)",
                                lambda: entry.table("tuning")))
    return exhibits


def plan_exhibit(outcomes, layout, budget: int, difference: bool = False) -> Exhibit:
    """The budget preview: every method's ranks at one budget (or their difference from uniform LoRA)."""

    title = f"Rank plans at {budget:,} parameters" + (", minus uniform LoRA's ranks" if difference else "")
    return Exhibit(f"plans_{budget}{'_vs_uniform' if difference else ''}", title,
                   lambda: plan_table(outcomes, layout, difference), lambda: figures.plan_figure(outcomes, layout, difference))


def cached_signals(run) -> dict[str, Entry]:
    """Every signal computed for this run, each by its entry under `store.lookups.chosen_entry`'s rule."""
    return chosen_entries(run, all_signals())


def exhibits_for(run, what: str, budget: str = "r4", limits=None, overrides=None,
                 signal_limits: tuple = ()) -> list[Exhibit]:
    """A signal's exhibits, or 'all' (every cached signal side by side), 'plans' (every method's plan at
    `budget`, under `limits` and the signals' own `signal_limits`) or 'comparison' (the newest retrain comparison
    of this setting)."""

    if what == "all":
        entries = cached_signals(run)
        if not entries:
            raise UserError("No signal has been computed for this model and data yet; run: python -m analysis run.")
        return overview_exhibits(entries)
    if what == "plans":
        layout, limits = layout_for(run), limits or Limits()
        methods = [UNIFORM, *cached_signals(run)]
        amount = parse_budget(budget, layout, limits)
        outcomes = preview({m: method_scores(run, m, layout, overrides) for m in methods}, layout, amount,
                           limits, signal_limits)
        return [plan_exhibit(outcomes, layout, amount), plan_exhibit(outcomes, layout, amount, difference=True)]
    if what == "comparison":
        found = comparisons(run)
        if not found:
            raise UserError("No retrain comparison has finished for this model and data; run: "
                            "python -m analysis compare.")
        return comparison_exhibits(found[0])
    return signal_exhibits(cached_entry(run, what, (overrides or {}).get(what)))


def run_exhibits(entries: dict[str, Entry], titles: dict[str, str], plans=None,
                 comparison: Entry | None = None) -> dict[str, list[Exhibit]]:
    """Everything one run can export, grouped as the Export page lists it: all signals side by side, each
    signal's own figures, the plans at a budget (`plans` = (outcomes, layout, budget), when any is drawn) and
    the newest comparison."""
    groups = {"All signals": overview_exhibits(entries)}
    for name, entry in entries.items():
        groups[titles.get(name, name)] = signal_exhibits(entry)
    if plans is not None:
        outcomes, layout, budget = plans
        drawn_plans = [plan_exhibit(outcomes, layout, budget, difference) for difference in (False, True)
                       if drawn(outcomes, difference)]
        if drawn_plans:
            groups[f"Plans at {budget:,} parameters"] = drawn_plans
    if comparison is not None:
        groups["Retrain comparison (newest)"] = comparison_exhibits(comparison)
    return groups


def zipped(exhibits: list[Exhibit], width: str = "column", grayscale: bool = False) -> bytes:
    """Every figure as PDF and every table as CSV (tables also as LaTeX), in one zip."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for exhibit in exhibits:
            archive.writestr(f"{exhibit.name}.csv", render(exhibit, "csv"))
            if exhibit.figure is not None:
                archive.writestr(f"{exhibit.name}.pdf", render(exhibit, "pdf", width, grayscale))
            else:
                archive.writestr(f"{exhibit.name}.tex", render(exhibit, "tex"))
    return buffer.getvalue()


def render(exhibit: Exhibit, fmt: str, width: str = "column", grayscale: bool = False) -> bytes:
    """The exhibit as a file: its figure in paper style (pdf, svg, png) or its data (csv, tex)."""

    if fmt == "csv":
        return exhibit.data().to_csv(index=False).encode()
    if fmt == "tex":
        return latex_table(exhibit.data(), caption=exhibit.title, label=f"tab:{exhibit.name}").encode()
    if fmt not in FORMATS:
        raise UserError(f"Unknown format '{fmt}'; choose one of: {', '.join([*FORMATS, 'csv', 'tex'])}.")
    if exhibit.figure is None:
        raise UserError(f"'{exhibit.name}' is a table; export it as csv or tex.")
    return figure_bytes(paper_style(exhibit.figure(), width, grayscale), fmt, title=exhibit.title)
