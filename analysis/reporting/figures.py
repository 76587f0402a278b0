"""Plotly figures of plans, learning curves and comparisons; shared by the dashboard and the export command."""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import sample_colorscale

from analysis.errors import UserError
from analysis.model.layout import Layout
from analysis.planning.preview import Outcome, drawn, rank_table, uniform_ranks
from analysis.charts.tidy_figures import HEATMAP_SCALE, side_by_side_heatmaps

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
