"""SoRA's figures: learned rank per module, the histogram of learned ranks, and the sparsity path."""
from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from analysis.charts import tidy_figures
from analysis.contract.exhibit import Exhibit
from analysis.signals.sora.gate_training import SoraConfig


def r_max_of(entry) -> int:
    """The gated ranks per module the run started from (its config's r_max)."""
    return int(entry.meta.get("config", {}).get("r_max", SoraConfig.r_max))


def rank_histogram(table: pd.DataFrame, r_max: int, title: str = "") -> go.Figure:
    """How many modules learned each rank 0..r_max."""
    counts = table["value"].value_counts().reindex(range(r_max + 1), fill_value=0)
    figure = go.Figure(go.Bar(x=list(counts.index), y=list(counts.values), marker_color="#3b528b",
                              hovertemplate="rank %{x}<br>%{y} modules<extra></extra>"))
    figure.update_layout(title=title, xaxis={"title": "learned rank", "dtick": 1}, yaxis_title="modules",
                         height=340, margin={"l": 60, "r": 20, "t": 50, "b": 60})
    return figure


def sparsity_path_figure(history: pd.DataFrame, schedule: pd.DataFrame, title: str = "") -> go.Figure:
    """Total learned rank over training steps (left) and at the end of each scheduler round against
    its threshold xi on a log axis (right)."""
    from plotly.subplots import make_subplots

    figure = make_subplots(rows=1, cols=2, subplot_titles=("non-zero gates over training",
                                                           "learned rank vs threshold xi"))
    figure.add_trace(go.Scatter(x=history["step"], y=history["nonzero"], mode="lines", line={"color": "#21918c"},
                                hovertemplate="step %{x}<br>%{y} non-zero gates<extra></extra>"), row=1, col=1)
    figure.add_trace(go.Scatter(x=schedule["xi"], y=schedule["total_rank"], mode="lines+markers",
                                text=schedule["stage"], line={"color": "#3b528b"},
                                hovertemplate="%{text}<br>xi %{x:.3g}<br>total rank %{y}<extra></extra>"),
                     row=1, col=2)
    figure.update_xaxes(title_text="step", row=1, col=1)
    figure.update_xaxes(title_text="xi", type="log", tickvals=list(schedule["xi"]),
                        ticktext=[f"{xi:.3g}" for xi in schedule["xi"]], row=1, col=2)
    figure.update_yaxes(title_text="total rank", rangemode="tozero", row=1, col=1)
    figure.update_yaxes(rangemode="tozero", row=1, col=2)
    figure.update_layout(title=title, showlegend=False, height=380, margin={"l": 60, "r": 20, "t": 70, "b": 60})
    return figure


def exhibits(entry) -> list[Exhibit]:
    table = entry.table
    r_max = r_max_of(entry)
    return [
        Exhibit("sora_learned_ranks", "SoRA learned rank per module", table,
                lambda: tidy_figures.module_heatmap(table(), value_label="learned rank", zrange=(0, r_max))),
        Exhibit("sora_rank_histogram", "SoRA learned ranks", table, lambda: rank_histogram(table(), r_max)),
        Exhibit("sora_sparsity_path", "SoRA sparsity over training and threshold",
                lambda: pd.concat([table("history").assign(panel="training"),
                                   table("schedule").assign(panel="threshold")], ignore_index=True),
                lambda: sparsity_path_figure(table("history"), table("schedule")))]
