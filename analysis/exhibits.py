"""Every figure and table a run can show, by name, with the data behind it: what the pages draw and what
the Export page and `python -m analysis export` write.

An exhibit is built lazily (`figure()`, `data()`), so listing a run's exhibits reads nothing.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Callable

import pandas as pd
import plotly.graph_objects as go

from analysis import figures
from analysis.allocate import Limits, parse_budget
from analysis.compare import formatted
from analysis.errors import UserError
from analysis.methods import UNIFORM, cached_entry, layout_for, method_scores
from analysis.overview import (agreement, agreement_matrix_figure, layer_curves_figure, layer_importance,
                               module_importance)
from analysis.paper import FORMATS, figure_bytes, latex_table, paper_style
from analysis.preview import plan_figure, plan_table, preview
from analysis.registry import all_signals
from analysis.results import comparisons, newest_entries, runs
from analysis.store import Entry


@dataclass(frozen=True)
class Exhibit:
    name: str                                            # file stem: shapley_modules, cka_matrix, ...
    title: str
    data: Callable[[], pd.DataFrame]                     # the CSV behind it
    figure: Callable[[], go.Figure] | None = None        # None: a table only (CSV and LaTeX)


def signal_exhibits(entry: Entry) -> list[Exhibit]:
    """The figures of one signal's entry, the most useful first."""
    name, table = entry.meta["signal"], entry.table
    if name == "shapley":
        exhibits = [
            Exhibit("shapley_modules", "Shapley sensitivity per module", lambda: table("modules"),
                    lambda: figures.module_heatmap(table("modules"), value_label="loss reduction")),
            Exhibit("shapley_layers", "Shapley sensitivity per layer", lambda: table("layers"),
                    lambda: figures.layer_bars(table("layers"), value_label="loss reduction")),
            Exhibit("shapley_ranks", "Shapley value of every rank", table,
                    lambda: figures.rank_heatmap(table())),
            Exhibit("shapley_convergence", "Convergence of the Shapley estimate", lambda: table("convergence"),
                    lambda: figures.convergence_figure(table("convergence")))]
        if "reference" in entry.table_names:
            exhibits.append(Exhibit(
                "shapley_vs_captum", "Shapley estimate vs captum's exact-loss reference",
                lambda: table("modules").merge(table("reference"), on=["layer", "module"],
                                               suffixes=("_estimate", "_captum")),
                lambda: figures.agreement_figure(table("modules"), table("reference"), "Shapley (gradients)",
                                                 "captum (exact losses)")))
        return exhibits
    if name == "adalora":
        return [Exhibit("adalora_modules", "AdaLoRA sensitivity per module", lambda: table("modules"),
                        lambda: figures.module_heatmap(table("modules"), value_label="score"))]
    if name == "sora":
        r_max = int(entry.meta.get("config", {}).get("r_max", 8))
        return [
            Exhibit("sora_learned_ranks", "SoRA learned rank per module", table,
                    lambda: figures.module_heatmap(table(), value_label="learned rank", zrange=(0, r_max))),
            Exhibit("sora_rank_histogram", "SoRA learned ranks", table,
                    lambda: figures.rank_histogram(table(), r_max)),
            Exhibit("sora_sparsity_path", "SoRA sparsity over training and threshold",
                    lambda: pd.concat([table("history").assign(panel="training"),
                                       table("schedule").assign(panel="threshold")], ignore_index=True),
                    lambda: figures.sparsity_path_figure(table("history"), table("schedule")))]
    if name == "id":
        return [Exhibit("gelora_bounds", "Intrinsic dimension and GeLoRA rank bounds", table,
                        lambda: figures.intrinsic_dimension_figure(table(), table("dimensions")))]
    if name == "cka":
        exhibits = [Exhibit("cka_importance", "CKA layer importance", table,
                            lambda: figures.cka_importance_figure(table()))]
        if "matrix" in entry.table_names:
            exhibits.append(Exhibit("cka_matrix", "Layer x layer CKA", lambda: table("matrix"),
                                    lambda: figures.cka_matrix_figure(table("matrix"))))
        return exhibits
    return [Exhibit(name, entry.meta.get("title", name), table, lambda: figures.signal_figure(table()))]


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
                lambda: figures.side_by_side_heatmaps(modules())),
        Exhibit("all_signals_layers", "All signals per layer", lambda: tidy(layers()),
                lambda: layer_curves_figure(layers())),
        Exhibit("signal_agreement", "Agreement between signals (Spearman, per layer)",
                lambda: matrix().rename_axis("signal").reset_index(), lambda: agreement_matrix_figure(matrix())),
    ]


def comparison_exhibits(entry: Entry) -> list[Exhibit]:
    """The retrain comparison: its summary (mean ± std, also as LaTeX) and every run."""

    return [Exhibit("comparison_summary", "Retrain comparison at one budget",
                    lambda: formatted(entry.table(), entry.meta["task"])),
            Exhibit("comparison_runs", "Every retrain run of the comparison", lambda: entry.table("runs"))]


def plan_exhibit(outcomes, layout, budget: int, difference: bool = False) -> Exhibit:
    """The budget preview: every method's ranks at one budget (or their difference from uniform LoRA)."""

    title = f"Rank plans at {budget:,} parameters" + (", minus uniform LoRA's ranks" if difference else "")
    return Exhibit(f"plans_{budget}{'_vs_uniform' if difference else ''}", title,
                   lambda: plan_table(outcomes, layout, difference), lambda: plan_figure(outcomes, layout, difference))


def cached_signals(prepared) -> dict[str, Entry]:
    """The newest entry of every signal computed for this setting (current signal versions only)."""

    run = next((r for r in runs(prepared.store) if r.key == prepared.key), None)
    return newest_entries(run, all_signals()) if run else {}


def exhibits_for(prepared, what: str, budget: str = "r4", limits=None, overrides=None) -> list[Exhibit]:
    """A signal's exhibits, or 'all' (every cached signal side by side), 'plans' (every method's plan at
    `budget`) or 'comparison' (the newest retrain comparison of this setting)."""

    if what == "all":
        entries = cached_signals(prepared)
        if not entries:
            raise UserError("No signal has been computed for this model and data yet; run: python -m analysis run")
        return overview_exhibits(entries)
    if what == "plans":
        layout, limits = layout_for(prepared), limits or Limits()
        methods = [UNIFORM, *cached_signals(prepared)]
        amount = parse_budget(budget, layout, limits)
        outcomes = preview({m: method_scores(prepared, m, layout, overrides) for m in methods}, layout, amount,
                           limits)
        return [plan_exhibit(outcomes, layout, amount), plan_exhibit(outcomes, layout, amount, difference=True)]
    if what == "comparison":
        found = comparisons(prepared.store, prepared.key)
        if not found:
            raise UserError("No retrain comparison has finished for this model and data; run: "
                            "python -m analysis compare")
        return comparison_exhibits(found[0])
    return signal_exhibits(cached_entry(prepared, what, (overrides or {}).get(what)))


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
    return figure_bytes(paper_style(exhibit.figure(), width, grayscale), fmt)
