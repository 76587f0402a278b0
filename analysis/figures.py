"""Plotly figures built from tidy tables; shared by the dashboard and (later) the export command."""
from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

# Colour-blind-safe sequential scale (viridis) for importance heatmaps.
HEATMAP_SCALE = "Viridis"


def module_order(table: pd.DataFrame) -> list[str]:
    """Modules in the order they appear in a block (first occurrence in the table)."""
    return list(dict.fromkeys(table["module"]))


def layer_module_matrix(table: pd.DataFrame) -> pd.DataFrame:
    """layer x module matrix of `value` (summed over ranks when the table is per rank)."""
    summed = table.groupby(["layer", "module"], sort=False)["value"].sum().reset_index()
    matrix = summed.pivot(index="layer", columns="module", values="value")
    return matrix.reindex(columns=module_order(table)).sort_index()


def signal_figure(table: pd.DataFrame, title: str = "") -> go.Figure:
    """A layer x module heatmap; a bar per layer when the signal is layer-level (module == 'block')."""
    if set(table["module"]) == {"block"}:
        per_layer = table.groupby("layer")["value"].sum()
        figure = go.Figure(go.Bar(x=per_layer.index, y=per_layer.values, marker_color="#3b528b"))
        figure.update_layout(xaxis_title="layer", yaxis_title="value")
    else:
        matrix = layer_module_matrix(table)
        figure = go.Figure(go.Heatmap(z=matrix.values, x=list(matrix.columns), y=list(matrix.index),
                                      colorscale=HEATMAP_SCALE, colorbar={"title": "value"},
                                      hovertemplate="layer %{y}<br>%{x}<br>value %{z:.4g}<extra></extra>"))
        figure.update_layout(xaxis_title="module", yaxis_title="layer", yaxis={"dtick": 1, "autorange": "reversed"},
                             height=max(320, 28 * len(matrix) + 160))
    figure.update_layout(title=title, margin={"l": 60, "r": 20, "t": 50, "b": 60})
    return figure
