"""Plotly figures built from tidy tables; shared by the dashboard and the export command."""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import sample_colorscale

from analysis.errors import UserError
from analysis.model.layout import Layout
from analysis.planning.preview import Outcome, drawn, rank_table, uniform_ranks
from analysis.signals.tidy import per_module

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


def agreement_figure(left: pd.DataFrame, right: pd.DataFrame, left_name: str, right_name: str,
                     title: str = "") -> go.Figure:
    """Per-module scatter of two signals' values (matched on layer and module), ranks on both axes."""
    joined = left.merge(right, on=["layer", "module"], suffixes=("_a", "_b"))
    figure = go.Figure(go.Scatter(
        x=joined["value_a"].rank(), y=joined["value_b"].rank(), mode="markers",
        text=[f"layer {l} · {m}" for l, m in zip(joined["layer"], joined["module"])],
        marker={"color": joined["layer"], "colorscale": HEATMAP_SCALE, "colorbar": {"title": "layer"}},
        hovertemplate="%{text}<br>" + left_name + " position %{x}<br>" + right_name + " position %{y}<extra></extra>"))
    figure.update_layout(title=title, xaxis_title=f"{left_name}: position when modules are sorted",
                         yaxis_title=f"{right_name}: position when modules are sorted", height=420,
                         margin={"l": 60, "r": 20, "t": 50, "b": 60})
    return figure


def learning_curves_figure(curves: pd.DataFrame, title: str = "", smooth: int = 10) -> go.Figure:
    """Training loss per step for each run (`run`, `step`, `loss`), a running mean over `smooth` steps."""
    figure = go.Figure()
    runs = list(dict.fromkeys(curves["run"]))
    # From 0.2: viridis below that is a dark purple that vanishes into the dark theme's background.
    colours = sample_colorscale(HEATMAP_SCALE, [0.2 + 0.65 * i / max(1, len(runs) - 1) for i in range(len(runs))])
    for run, colour in zip(runs, colours):
        rows = curves[curves["run"] == run].sort_values("step")
        figure.add_trace(go.Scatter(x=rows["step"], y=rows["loss"].rolling(smooth, min_periods=1).mean(),
                                    mode="lines", name=run, line={"color": colour},
                                    hovertemplate=f"{run}<br>step %{{x}}<br>loss %{{y:.4g}}<extra></extra>"))
    figure.update_layout(title=title, xaxis_title="step", yaxis_title=f"training loss (mean of {smooth} steps)",
                         height=360, margin={"l": 60, "r": 20, "t": 50, "b": 60})
    return figure


def plan_figure(outcomes: list[Outcome], layout: Layout, difference: bool = False):
    """The methods' ranks as layer x module heatmaps side by side on one colour scale, titled with their
    parameter counts; `difference` shows each method's rank minus uniform LoRA's (uniform itself omitted)."""
    shown = drawn(outcomes, difference)
    if not shown:
        raise UserError("No method has a plan at this budget" + (" (uniform LoRA has none to subtract)."
                                                                  if difference else "."))
    base = uniform_ranks(outcomes) if difference else 0
    frames = {o.name: rank_table(layout, o.allocation.ranks - base) for o in shown}
    titles = {o.name: f"{o.name}<br>{o.allocation.cost:,}" for o in shown}
    return side_by_side_heatmaps(frames, titles, normalise=False,
                                 value_label="rank − uniform" if difference else "rank")


def budget_curve_figure(points: pd.DataFrame, title: str = "") -> go.Figure:
    """Metric against trainable parameters (log axis), one line per method with its 95% band (the t interval
    of the mean over seeds; none where a point has a single run). `points`: comparison_tables.curve_points."""
    from plotly.colors import qualitative

    metric = points["metric"].iloc[0] if len(points) else "accuracy"
    scale = 100 if metric in ("accuracy", "f1") else 1
    label = {"accuracy": "Test accuracy (%)", "f1": "Macro F1 (%)", "perplexity": "Test perplexity",
             "test_loss": "Test loss"}.get(metric, metric)
    figure = go.Figure()
    palette = qualitative.Plotly
    for i, (method, frame) in enumerate(points.groupby("method", sort=False)):
        frame = frame.dropna(subset=["mean"]).sort_values("trainable_params")
        colour = palette[i % len(palette)]
        band = frame.dropna(subset=["low", "high"])
        if len(band):
            x = band["trainable_params"].tolist()
            figure.add_trace(go.Scatter(x=x + x[::-1], y=(band["high"] * scale).tolist() +
                                        (band["low"] * scale).tolist()[::-1], fill="toself", line={"width": 0},
                                        fillcolor=colour, opacity=0.18, hoverinfo="skip", showlegend=False,
                                        legendgroup=method, name=f"{method} 95% band"))
        figure.add_trace(go.Scatter(x=frame["trainable_params"], y=frame["mean"] * scale, mode="lines+markers",
                                    name=method, legendgroup=method, line={"color": colour},
                                    customdata=frame[["budget", "trained"]].to_numpy(),
                                    hovertemplate="%{customdata[0]}: %{x:,} parameters<br>%{y:.3f} over "
                                                  "%{customdata[1]} runs<extra>" + method + "</extra>"))
    figure.update_layout(title=title or f"{label.split(' (')[0]} against trainable parameters",
                         xaxis_title="Trainable LoRA parameters", yaxis_title=label, hovermode="closest",
                         legend={"title": {"text": "method"}})
    figure.update_xaxes(type="log")
    return figure


def pareto_figure(points: pd.DataFrame, savings: pd.DataFrame, title: str = "") -> go.Figure:
    """The judged metric (accuracy, or the test loss for a decoder) against trainable parameters (log axis) for
    every method and budget, the Pareto frontier drawn through its points and ringed (as peft's method-comparison
    app marks it), uniform's result at the largest budget as a dotted line, and a cross where each method's curve
    reaches that line: the parameters it needs (its bootstrap interval in the hover; on one line, whiskers would hide
    each other). `points`: comparison_tables.pareto_points; `savings`: training.savings.savings."""
    from plotly.colors import qualitative

    metric = points["metric"].iloc[0] if len(points) else "accuracy"
    scale = 100 if metric in ("accuracy", "f1") else 1
    label = {"accuracy": "Test accuracy (%)", "f1": "Macro F1 (%)", "test_loss": "Test loss"}.get(metric, metric)
    palette = qualitative.Plotly
    colours = {method: palette[i % len(palette)] for i, method in enumerate(dict.fromkeys(points["method"]))}
    figure = go.Figure()
    for method, frame in points.dropna(subset=["mean"]).groupby("method", sort=False):
        frame = frame.sort_values("trainable_params")
        figure.add_trace(go.Scatter(x=frame["trainable_params"], y=frame["mean"] * scale, mode="lines+markers",
                                    name=method, legendgroup=method, line={"color": colours[method], "width": 1},
                                    marker={"size": 7}, customdata=frame[["budget"]].to_numpy(),
                                    hovertemplate="%{customdata[0]}: %{x:,} parameters<br>%{y:.3f}<extra>" + method
                                                  + "</extra>"))
    frontier = points[points["frontier"]].sort_values("trainable_params")
    if len(frontier):
        figure.add_trace(go.Scatter(x=frontier["trainable_params"], y=frontier["mean"] * scale, mode="lines+markers",
                                    name="Pareto frontier", line={"color": "#000000", "width": 1.5, "dash": "dash"},
                                    marker={"size": 13, "symbol": "circle-open", "color": "#000000"},
                                    text=frontier["method"] + " at " + frontier["budget"].astype(str),
                                    hovertemplate="%{text}<br>%{x:,} parameters<br>%{y:.3f}<extra>frontier</extra>"))
    if len(savings) and np.isfinite(savings["target"].iloc[0]):
        target = savings["target"].iloc[0] * scale
        span = [points["trainable_params"].min(), points["trainable_params"].max()]
        figure.add_trace(go.Scatter(x=span, y=[target, target], mode="lines", hoverinfo="skip",
                                    name=f"uniform at {savings['reference_budget'].iloc[0]}",
                                    line={"color": "#7f7f7f", "width": 1, "dash": "dot"}))
        reached = savings[np.isfinite(savings["needed_params"])]
        for row in reached.itertuples():   # in its method's colour; the interval is in the hover and the table
            bound = "at most " if row.reading == "at most" else ""
            interval = f"{row.needed_low:,.0f} to " + ("not reached" if np.isinf(row.needed_high) else
                                                       f"{row.needed_high:,.0f}")
            figure.add_trace(go.Scatter(
                x=[row.needed_params], y=[target], mode="markers", showlegend=False, legendgroup=row.method,
                marker={"symbol": "x", "size": 10, "color": colours.get(row.method, "#000000")},
                hovertemplate=f"{row.method} reaches uniform at {bound}{row.needed_params:,.0f} parameters "
                              f"({row.saved:+.0%} of uniform's)<br>{row.level:.0%} interval: {interval}"
                              "<extra></extra>"))
        if len(reached):   # one legend entry for every method's mark
            figure.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name="parameters to reach it",
                                        marker={"symbol": "x", "size": 10, "color": "#000000"}))
    figure.update_layout(title=title or f"{label.split(' (')[0]} against trainable parameters: the Pareto frontier",
                         xaxis_title="Trainable LoRA parameters", yaxis_title=label, hovermode="closest",
                         legend={"title": {"text": "method"}})
    figure.update_xaxes(type="log")
    return figure
