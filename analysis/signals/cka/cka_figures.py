"""CKA's figures: importance per block (degenerate blocks marked) and the layer x layer CKA matrix."""
from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from analysis.charts.tidy_figures import HEATMAP_SCALE
from analysis.contract.exhibit import Exhibit


def cka_importance_figure(table: pd.DataFrame, title: str = "") -> go.Figure:
    """1 - CKA per block as bars; degenerate blocks (constant state, CKA undefined) marked, not scored."""
    scored = table[~table["degenerate"]]
    figure = go.Figure(go.Bar(x=scored["layer"], y=scored["value"], marker_color="#3b528b",
                              hovertemplate="block %{x}<br>1 - CKA %{y:.4f}<extra></extra>"))
    for layer in table.loc[table["degenerate"], "layer"]:
        figure.add_annotation(x=layer, y=0, text="degenerate", textangle=-90, yanchor="bottom",
                              showarrow=False, font={"color": "#888888"})
    figure.update_layout(title=title, xaxis={"title": "layer (block)", "dtick": max(1, len(table) // 16)},
                         yaxis={"title": "importance  1 - CKA(input, output)", "rangemode": "tozero"},
                         margin={"l": 60, "r": 20, "t": 50, "b": 60}, height=360)
    return figure


def cka_matrix_figure(matrix: pd.DataFrame, title: str = "") -> go.Figure:
    """Layer x layer linear CKA between hidden states (0 = embedding output), blank where undefined."""
    square = matrix.pivot(index="layer", columns="layer2", values="value").sort_index().sort_index(axis=1)
    labels = ["emb" if j == 0 else str(j - 1) for j in square.index]
    figure = go.Figure(go.Heatmap(z=square.to_numpy(), x=labels, y=labels, zmin=0, zmax=1,
                                  colorscale=HEATMAP_SCALE, colorbar={"title": "CKA"},
                                  hovertemplate="output of %{y}<br>output of %{x}<br>CKA %{z:.3f}<extra></extra>"))
    side = max(520, 20 * len(labels) + 200)
    # constrain="domain": the square plot shrinks its axes with it, so labels and axis lines stay at the cells
    figure.update_layout(title=title, height=side, xaxis={"title": "layer", "type": "category", "showgrid": False,
                                                          "constrain": "domain"},
                         yaxis={"title": "layer", "type": "category", "autorange": "reversed",
                                "scaleanchor": "x", "showgrid": False, "constrain": "domain"},
                         margin={"l": 60, "r": 20, "t": 50, "b": 60})
    return figure


def exhibits(entry) -> list[Exhibit]:
    table = entry.table
    found = [Exhibit("cka_importance", "CKA layer importance", table, lambda: cka_importance_figure(table()))]
    if "matrix" in entry.table_names:
        found.append(Exhibit("cka_matrix", "Layer x layer CKA", lambda: table("matrix"),
                             lambda: cka_matrix_figure(table("matrix"))))
    return found
