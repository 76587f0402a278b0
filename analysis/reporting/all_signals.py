"""All signals of one run side by side: each signal's importance per module and per layer, normalised so
they share one colour scale, and how far the signals agree (Spearman rank correlation)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from analysis.charts.tidy_figures import error_band, peak
from analysis.contract.tidy import per_module
from analysis.store.cache import Entry

# Okabe & Ito's palette: distinguishable with every common colour-vision deficiency.
OKABE_ITO = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]


def module_importance(entry: Entry) -> pd.DataFrame:
    """layer, module, value[, stderr]: the signal per module (`block` for layer-level signals). Blocks a
    signal cannot score (a degenerate CKA block) are NaN, not zero."""
    main = entry.table()
    if "modules" in entry.table_names:
        table = entry.table("modules")
    elif "rank" in main:
        table = per_module(main)
    else:
        table = main
    columns = ["layer", "module", "value", *(["stderr"] if "stderr" in table else [])]
    table = table[columns].copy()
    if "degenerate" in main:
        table.loc[main["degenerate"].to_numpy(), "value"] = np.nan
    return table


def layer_importance(entry: Entry) -> pd.DataFrame:
    """layer, value[, stderr]: the signal summed per layer (the signal's own per-layer table when it has
    one, since only that carries a per-layer standard error)."""
    if "layers" in entry.table_names and "value" in entry.table("layers"):
        table = entry.table("layers")
        return table[["layer", "value", *(["stderr"] if "stderr" in table else [])]]
    modules = module_importance(entry)
    return modules.groupby("layer", as_index=False)["value"].sum(min_count=1)


def agreement(frames: dict[str, pd.DataFrame], on: list[str]) -> pd.DataFrame:
    """Spearman correlation between every pair of signals, matched on the `on` columns (NaN: fewer than
    three shared rows, or a signal constant on them)."""
    names = list(frames)
    matrix = pd.DataFrame(np.nan, index=names, columns=names)
    for i, a in enumerate(names):
        for b in names[i:]:
            joined = frames[a].merge(frames[b], on=on, suffixes=("_a", "_b")).dropna(subset=["value_a", "value_b"])
            if len(joined) >= 3:
                matrix.loc[a, b] = matrix.loc[b, a] = joined["value_a"].corr(joined["value_b"], method="spearman")
    return matrix


def layer_curves_figure(frames: dict[str, pd.DataFrame]) -> go.Figure:
    """Each signal's per-layer importance as a line (scaled by its largest |value|, so signals in different
    units share an axis), with a ±1 standard error band where the signal has one."""
    figure = go.Figure()
    for index, (name, table) in enumerate(frames.items()):
        colour, scale = OKABE_ITO[index % len(OKABE_ITO)], peak(table["value"])
        table = table.sort_values("layer")
        if "stderr" in table:
            figure.add_trace(error_band(table["layer"], table["value"] / scale, table["stderr"] / scale, colour, 0.2))
        repeat = index // len(OKABE_ITO)   # more signals than colours: a colour's second line is dashed
        figure.add_trace(go.Scatter(x=table["layer"], y=table["value"] / scale, mode="lines+markers",
                                    name=name, line={"color": colour, "dash": ["solid", "dash", "dot"][repeat % 3]},
                                    marker={"symbol": index % 24}, customdata=table["value"],
                                    hovertemplate=f"{name}<br>layer %{{x}}<br>"
                                                  "%{customdata:.4g}<extra></extra>"))
    layers = max((len(t) for t in frames.values()), default=1)
    figure.update_layout(xaxis={"title": "layer", "dtick": max(1, layers // 16)},
                         yaxis={"title": "scaled per-layer value"}, height=400,
                         margin={"l": 60, "r": 20, "t": 30, "b": 60})
    return figure


def agreement_matrix_figure(matrix: pd.DataFrame) -> go.Figure:
    """The Spearman matrix as an annotated heatmap on a fixed -1..1 diverging scale."""
    labels = list(matrix.index)
    text = [[("" if np.isnan(v) else f"{v:.2f}") for v in row] for row in matrix.to_numpy()]
    figure = go.Figure(go.Heatmap(z=matrix.to_numpy(), x=labels, y=labels, zmin=-1, zmax=1, colorscale="RdBu",
                                  text=text, texttemplate="%{text}", colorbar={"title": "Spearman"},
                                  hovertemplate="%{y} vs %{x}<br>Spearman %{z:.3f}<extra></extra>"))
    side = 120 + 60 * len(labels)
    figure.update_layout(height=max(320, side), yaxis={"autorange": "reversed", "scaleanchor": "x"},
                         xaxis={"tickangle": -30}, margin={"l": 60, "r": 20, "t": 30, "b": 60})
    return figure
