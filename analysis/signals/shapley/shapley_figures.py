"""Shapley sensitivity's figures: per module, per layer, per rank, convergence, and the exact reference."""
from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.colors import sample_colorscale

from analysis.charts import tidy_figures
from analysis.charts.tidy_figures import HEATMAP_SCALE, error_band
from analysis.contract.exhibit import Exhibit


VALUE_LABELS = {"shapley": "loss reduction", "sensitivity": "sensitivity |g dL/dg|"}
NAMES = {"shapley": "Shapley first-order (ours)", "sensitivity": "ShapLoRA sensitivity"}


def reading_of(entry) -> str:
    """Which reading an entry holds; entries from before the option are Shapley values."""
    return entry.meta.get("reading") or entry.meta.get("config", {}).get("reading") or "shapley"


def reference_figure(reference: pd.DataFrame, title: str = "") -> go.Figure:
    """Per rank: our estimate and the exact first-order value against the exact Shapley value."""
    low = float(reference[["exact", "first_order", "estimate"]].min().min())
    high = float(reference[["exact", "first_order", "estimate"]].max().max())
    labels = [f"layer {l} {m} rank {r}" for l, m, r in zip(reference["layer"], reference["module"], reference["rank"])]
    figure = go.Figure([
        go.Scatter(x=[low, high], y=[low, high], mode="lines", line={"color": "#999", "dash": "dot"},
                   name="equal", hoverinfo="skip"),
        go.Scatter(x=reference["exact"], y=reference["first_order"], mode="markers", name="exact first-order",
                   marker={"color": "#21918c", "symbol": "x"}, text=labels,
                   hovertemplate="%{text}<br>exact %{x:.4g}<br>first-order %{y:.4g}<extra></extra>"),
        go.Scatter(x=reference["exact"], y=reference["estimate"], mode="markers", name="our estimate",
                   marker={"color": "#3b528b"}, text=labels,
                   hovertemplate="%{text}<br>exact %{x:.4g}<br>estimate %{y:.4g}<extra></extra>")])
    figure.update_layout(title=title, xaxis_title="exact Shapley value (loss differences, all coalitions)",
                         yaxis_title="estimate", height=420, margin={"l": 60, "r": 20, "t": 50, "b": 60})
    return figure


def convergence_figure(convergence: pd.DataFrame, title: str = "", value_label: str = "loss reduction") -> go.Figure:
    """Per-layer estimate after each sample, a ±1 standard-error band around each line."""
    figure = go.Figure()
    layers = sorted(convergence["layer"].unique())
    colours = sample_colorscale(HEATMAP_SCALE, [i / max(1, len(layers) - 1) * 0.9 for i in range(len(layers))])
    for layer, colour in zip(layers, colours):
        rows = convergence[convergence["layer"] == layer]
        band = rows.dropna(subset=["stderr"])
        figure.add_trace(error_band(band["samples"], band["value"], band["stderr"], colour, 0.15))
        figure.add_trace(go.Scatter(x=rows["samples"], y=rows["value"], mode="lines", name=f"layer {layer}",
                                    line={"color": colour},
                                    hovertemplate=f"layer {layer}<br>%{{x}} samples<br>%{{y:.4g}}<extra></extra>"))
    figure.update_layout(title=title, xaxis_title="coalition samples", yaxis_title=f"estimate ({value_label})",
                         height=420, margin={"l": 60, "r": 20, "t": 50, "b": 60})
    return figure


def exhibits(entry) -> list[Exhibit]:
    table = entry.table
    reading = reading_of(entry)
    label = VALUE_LABELS.get(reading, reading)
    name = NAMES.get(reading, reading)
    found = [
        Exhibit("shapley_modules", f"{name} per module", lambda: table("modules"),
                lambda: tidy_figures.module_heatmap(table("modules"), value_label=label)),
        Exhibit("shapley_layers", f"{name} per layer", lambda: table("layers"),
                lambda: tidy_figures.layer_bars(table("layers"), value_label=label)),
        Exhibit("shapley_ranks", f"{name} of every rank", table, lambda: tidy_figures.rank_heatmap(table())),
        Exhibit("shapley_convergence", f"Convergence of the {name} estimate", lambda: table("convergence"),
                lambda: convergence_figure(table("convergence"), value_label=label))]
    if "reference" in entry.table_names:
        found.append(Exhibit("shapley_vs_exact", "Estimate vs the exact Shapley value per rank",
                             lambda: table("reference"), lambda: reference_figure(table("reference"))))
    return found
