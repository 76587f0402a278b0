"""Plotly figures any tidy table can have: per layer and module, per rank, per layer, several signals side by side.

The signals' own figures build on these, and so do reporting's; they read tables only.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from analysis.contract.tidy import per_module

# Colour-blind-safe sequential scale (viridis) for importance heatmaps.
HEATMAP_SCALE = "Viridis"


def colour_scale(values) -> dict:
    """Viridis for one-signed values; a diverging blue-red scale centred on 0 when signs are mixed."""
    finite = pd.Series(values, dtype="float64").dropna()
    if len(finite) and finite.min() < 0 < finite.max():
        return {"colorscale": "RdBu", "zmid": 0}
    return {"colorscale": HEATMAP_SCALE}


def module_order(table: pd.DataFrame) -> list[str]:
    """Modules in the order they appear in a block (first occurrence in the table)."""
    return list(dict.fromkeys(table["module"]))


def layer_module_matrix(table: pd.DataFrame) -> pd.DataFrame:
    """layer x module matrix of `value` (summed over ranks when the table is per rank)."""
    matrix = per_module(table).pivot(index="layer", columns="module", values="value")
    return matrix.reindex(columns=module_order(table)).sort_index()


def signal_figure(table: pd.DataFrame, title: str = "") -> go.Figure:
    """A layer x module heatmap (per-rank values summed); a bar per layer when the signal is layer-level
    (module == 'block')."""
    if set(table["module"]) == {"block"}:
        return layer_bars(table.groupby("layer", as_index=False)["value"].sum(), title)
    return module_heatmap(per_module(table), title)


def peak(values: pd.Series) -> float:
    """Largest |value| (1 when there is none), what normalised figures divide by."""
    largest = values.abs().max()
    return float(largest) if largest and np.isfinite(largest) else 1.0


def _grid(frame: pd.DataFrame, layers: list[int]) -> tuple[np.ndarray, list[str]]:
    """layers x modules array of a per-module frame (one row per layer and module), NaN where absent; numpy
    indexing rather than a pandas pivot, since the budget preview redraws several of these per move."""
    modules = module_order(frame)
    grid = np.full((len(layers), len(modules)), np.nan)
    rows = np.searchsorted(layers, frame["layer"].to_numpy())
    columns = pd.Index(modules).get_indexer(frame["module"])
    grid[rows, columns] = frame["value"].to_numpy(dtype=float)
    return grid, modules


UNDEFINED_GREY = "#b0b0b0"


def _undefined_cells(grid: np.ndarray, modules: list[str], layers: list[int], axis: str) -> go.Heatmap | None:
    """Grey cells where a signal has no value (a degenerate CKA block), so they never read as a value."""
    missing = np.isnan(grid)
    if not missing.any():
        return None
    return go.Heatmap(z=np.where(missing, 1.0, np.nan), x=modules, y=layers, xaxis=f"x{axis}", yaxis="y",
                      colorscale=[[0, UNDEFINED_GREY], [1, UNDEFINED_GREY]], showscale=False,
                      hovertemplate="layer %{y} · %{x}<br>undefined<extra></extra>")


def side_by_side_heatmaps(frames: dict[str, pd.DataFrame], titles: dict[str, str] | None = None,
                          normalise: bool = True, value_label: str = "scaled value") -> go.Figure:
    """One layer x module heatmap per frame (one row per layer and module) on a shared layer axis.

    `normalise` (signals in different units) divides each frame by its largest |value| and gives each panel
    the scale its own values need: viridis from 0 to 1 for a one-signed signal, blue-red centred on 0 for a
    signed one, so one signed signal never changes how the others are drawn. Without it (ranks) all panels
    share one scale. Cells without a value are grey, with a legend entry. The hover always shows the raw
    value. Panels are laid out by hand: make_subplots costs more than the whole budget preview may take."""
    names, titles = list(frames), titles or {}
    layers = sorted(set().union(*(frames[n]["layer"] for n in names)))
    widths = np.array([max(2, frames[n]["module"].nunique()) for n in names], dtype=float)  # a block still fits its title
    gap = 0.02
    spans = widths / widths.sum() * (1 - gap * (len(names) - 1))
    starts = np.concatenate([[0], np.cumsum(spans + gap)[:-1]])
    signed = {n: bool((frames[n]["value"] < 0).any()) for n in names}
    traces, layout, undefined = [], {}, False
    for index, name in enumerate(names):
        grid, modules = _grid(frames[name], layers)
        scale = peak(frames[name]["value"]) if normalise else 1.0
        axis = "" if index == 0 else str(index + 1)
        colours = "coloraxis2" if normalise and signed[name] else "coloraxis"
        grey = _undefined_cells(grid, modules, layers, axis)
        if grey is not None:
            traces.append(grey)
            undefined = True
        traces.append(go.Heatmap(z=grid / scale, x=modules, y=layers, customdata=grid, coloraxis=colours,
                                 xaxis=f"x{axis}", yaxis="y",
                                 hovertemplate=f"{titles.get(name, name)}<br>layer %{{y}} · %{{x}}<br>"
                                               "%{customdata:.4g}<extra></extra>"))
        layout[f"xaxis{axis}"] = {"domain": [starts[index], min(1.0, starts[index] + spans[index])], "tickangle": -60,
                                  "anchor": "y", "automargin": True}   # long module names stay whole
    if undefined:   # a legend entry for the grey cells
        traces.append(go.Scatter(x=[None], y=[None], mode="markers", name="no value (undefined)",
                                 marker={"symbol": "square", "size": 12, "color": UNDEFINED_GREY}))
    if normalise:
        scales = {"coloraxis": {"colorscale": HEATMAP_SCALE, "cmin": 0, "cmax": 1,
                                "colorbar": {"title": value_label, "len": 0.45, "y": 1, "yanchor": "top"}}}
        if any(signed.values()):
            scales["coloraxis2"] = {"colorscale": "RdBu", "cmin": -1, "cmax": 1,
                                    "colorbar": {"title": f"{value_label} (signed)", "len": 0.45, "y": 0.45,
                                                 "yanchor": "top"}}
    else:
        colours = {"colorscale": "RdBu", "cmid": 0} if any(signed.values()) else {"colorscale": HEATMAP_SCALE, "cmin": 0}
        scales = {"coloraxis": {**colours, "colorbar": {"title": value_label}}}
    annotations = [{"text": titles.get(name, name), "x": starts[i] + spans[i] / 2, "y": 1.0, "xref": "paper",
                    "yref": "paper", "xanchor": "center", "yanchor": "bottom", "showarrow": False}
                   for i, name in enumerate(names)]
    # Room below the panels for the longest module name at -60 degrees (automargin alone gives up when many
    # panels share the height, and cut 'attention.output.dense' off), then for the legend under the names.
    longest = max(len(str(module)) for name in names for module in frames[name]["module"].unique())
    bottom = round(6 * longest) + 30 + (30 if undefined else 0)
    return go.Figure(traces, {
        **layout, "yaxis": {"title": "layer", "autorange": "reversed", "dtick": 1 if len(layers) <= 40 else 2},
        **scales, "annotations": annotations, "showlegend": undefined,
        "legend": {"orientation": "h", "x": 0, "y": 0, "yref": "container", "yanchor": "bottom"},
        "height": max(360, 22 * len(layers) + 180) + max(0, bottom - 80),
        "margin": {"l": 60, "r": 20, "t": 60, "b": bottom}})


def module_heatmap(modules: pd.DataFrame, title: str = "", value_label: str = "value",
                   zrange: tuple[float, float] | None = None) -> go.Figure:
    """layer x module heatmap of per-module values, the standard error in the hover when there is one;
    `zrange` fixes the colour scale (so frames of a slider stay comparable)."""
    matrix = layer_module_matrix(modules)
    hover = f"layer %{{y}}<br>%{{x}}<br>{value_label} %{{z:.4g}}"
    custom = None
    if "stderr" in modules:
        errors = modules.pivot(index="layer", columns="module", values="stderr")
        custom = errors.reindex(index=matrix.index, columns=matrix.columns).to_numpy()
        hover += " ± %{customdata:.2g}"
    figure = go.Figure(go.Heatmap(z=matrix.values, x=list(matrix.columns), y=list(matrix.index), customdata=custom,
                                  **colour_scale(matrix.values.ravel()), colorbar={"title": value_label},
                                  zmin=zrange[0] if zrange else None, zmax=zrange[1] if zrange else None,
                                  hovertemplate=hover + "<extra></extra>"))
    figure.update_layout(title=title, xaxis_title="module",
                         yaxis={"title": "layer", "dtick": 1, "autorange": "reversed"},
                         height=max(320, 24 * len(matrix) + 160), margin={"l": 60, "r": 20, "t": 50, "b": 60})
    return figure


def rank_heatmap(table: pd.DataFrame, title: str = "") -> go.Figure:
    """(layer, module) rows x rank columns of a per-rank table, standard errors in the hover."""
    rows = list(dict.fromkeys(zip(table["layer"], table["module"])))
    labels = [f"{layer} · {module}" for layer, module in rows]
    ranks = sorted(table["rank"].unique())
    values = table.pivot_table(index=["layer", "module"], columns="rank", values="value", sort=False)
    values = values.reindex(index=pd.MultiIndex.from_tuples(rows), columns=ranks)
    custom = None
    hover = "%{y}<br>gate (rank component) %{x}<br>value %{z:.3g}"
    if "stderr" in table:
        errors = table.pivot_table(index=["layer", "module"], columns="rank", values="stderr", sort=False)
        custom = errors.reindex(index=values.index, columns=ranks).to_numpy()
        hover += " ± %{customdata:.2g}"
    figure = go.Figure(go.Heatmap(z=values.to_numpy(), x=ranks, y=labels, customdata=custom,
                                  **colour_scale(values.to_numpy().ravel()), colorbar={"title": "value"},
                                  hovertemplate=hover + "<extra></extra>"))
    figure.update_layout(title=title, xaxis={"title": "gate index: one LoRA rank component each", "dtick": 1},
                         yaxis={"title": "layer · module", "autorange": "reversed", "type": "category"},
                         height=max(360, 14 * len(labels) + 160), margin={"l": 60, "r": 20, "t": 50, "b": 60})
    return figure


def layer_bars(layers: pd.DataFrame, title: str = "", value_label: str = "value") -> go.Figure:
    """One bar per layer, with ±1 standard-error whiskers when the table has them."""
    error = {"type": "data", "array": layers["stderr"], "visible": True} if "stderr" in layers else None
    figure = go.Figure(go.Bar(x=layers["layer"], y=layers["value"], error_y=error, marker_color="#3b528b",
                              hovertemplate="layer %{x}<br>%{y:.4g}<extra></extra>"))
    figure.update_layout(title=title, xaxis={"title": "layer", "dtick": max(1, len(layers) // 16)},
                         yaxis_title=value_label, height=360, margin={"l": 60, "r": 20, "t": 50, "b": 60})
    return figure


def error_band(x, value, stderr, colour: str, opacity: float) -> go.Scatter:
    """A filled band value ± stderr along x, for drawing under the line it belongs to."""
    return go.Scatter(x=list(x) + list(x)[::-1], y=list(value + stderr) + list(value - stderr)[::-1],
                      fill="toself", fillcolor=colour, opacity=opacity, mode="lines", line={"width": 0},
                      hoverinfo="skip", showlegend=False)
