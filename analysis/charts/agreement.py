"""Two signals' per-module values against each other: the scatter of their positions and its exhibit."""
from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from analysis.charts.tidy_figures import HEATMAP_SCALE
from analysis.contract.exhibit import Exhibit
from analysis.contract.tidy import spearman


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


def agreement_exhibit(left, right, left_name: str, right_name: str) -> Exhibit:
    """Two signals' entries (their "modules" tables) against each other: each module's position when sorted by one
    and by the other, titled with their Spearman correlation; the CSV holds both values per module."""
    a, b = left.meta["signal"], right.meta["signal"]

    def joined() -> pd.DataFrame:
        return left.table("modules").merge(right.table("modules"), on=["layer", "module"], suffixes=(f"_{a}", f"_{b}"))

    def figure() -> go.Figure:
        modules_a, modules_b = left.table("modules"), right.table("modules")
        rho = spearman(modules_a, modules_b)
        return agreement_figure(modules_a, modules_b, left_name, right_name,
                                title=f"{left_name} vs {right_name} per module: Spearman {rho:.2f}")
    return Exhibit(f"{a}_vs_{b}", f"{left_name} vs {right_name} per module", joined, figure)
