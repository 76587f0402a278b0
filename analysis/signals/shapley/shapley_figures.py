"""Shapley sensitivity's figures: per module, per layer, per rank, convergence, and captum's reference."""
from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.colors import sample_colorscale

from analysis.reporting import figures
from analysis.reporting.figures import HEATMAP_SCALE, error_band
from analysis.reporting.exhibits import Exhibit


def convergence_figure(convergence: pd.DataFrame, title: str = "") -> go.Figure:
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
    figure.update_layout(title=title, xaxis_title="coalition samples", yaxis_title="estimate (loss reduction)",
                         height=420, margin={"l": 60, "r": 20, "t": 50, "b": 60})
    return figure


def exhibits(entry) -> list[Exhibit]:
    table = entry.table
    found = [
        Exhibit("shapley_modules", "Shapley sensitivity per module", lambda: table("modules"),
                lambda: figures.module_heatmap(table("modules"), value_label="loss reduction")),
        Exhibit("shapley_layers", "Shapley sensitivity per layer", lambda: table("layers"),
                lambda: figures.layer_bars(table("layers"), value_label="loss reduction")),
        Exhibit("shapley_ranks", "Shapley value of every rank", table, lambda: figures.rank_heatmap(table())),
        Exhibit("shapley_convergence", "Convergence of the Shapley estimate", lambda: table("convergence"),
                lambda: convergence_figure(table("convergence")))]
    if "reference" in entry.table_names:
        found.append(Exhibit(
            "shapley_vs_captum", "Shapley estimate vs captum's exact-loss reference",
            lambda: table("modules").merge(table("reference"), on=["layer", "module"],
                                           suffixes=("_estimate", "_captum")),
            lambda: figures.agreement_figure(table("modules"), table("reference"), "Shapley (gradients)",
                                             "captum (exact losses)")))
    return found
