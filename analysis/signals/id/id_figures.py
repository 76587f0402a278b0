"""Intrinsic dimension's figure: the ID of every hidden state over depth above GeLoRA's bounds."""
from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from analysis.contract.exhibit import Exhibit


def _depth_axis(blocks: int) -> dict:
    """x axis over depth: -1 is the embedding output, i the output of block i (the tidy `layer`)."""
    step = max(1, blocks // 16)
    ticks = [-1, *range(0, blocks, step)]
    return {"tickvals": ticks, "ticktext": ["emb" if t < 0 else str(t) for t in ticks],
            "title": "layer (emb = embedding output)"}


def intrinsic_dimension_figure(table: pd.DataFrame, dimensions: pd.DataFrame, title: str = "") -> go.Figure:
    """ID of every hidden state over depth (line) above GeLoRA's rank lower bound per block (bars).

    `dimensions` has one row per state j (0 = embedding output); state j is plotted at layer j - 1
    so a block's bound sits under the state it produces.
    """
    from plotly.subplots import make_subplots

    figure = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.12, row_heights=[0.55, 0.45],
                           subplot_titles=("intrinsic dimension of the hidden state",
                                           "GeLoRA rank lower bound  max(d_out - d_in, 0) + 1"))
    figure.add_trace(go.Scatter(x=dimensions["state"] - 1, y=dimensions["id"], mode="lines+markers",
                                line={"color": "#21918c"}, name="intrinsic dimension",
                                hovertemplate="layer %{x}<br>ID %{y:.2f}<extra></extra>"), row=1, col=1)
    figure.add_trace(go.Bar(x=table["layer"], y=table["value"], marker_color="#3b528b", name="rank bound",
                            customdata=table[["id_in", "id_out"]].to_numpy(),
                            hovertemplate="block %{x}<br>bound %{y}<br>ID %{customdata[0]:.2f} → "
                                          "%{customdata[1]:.2f}<extra></extra>"), row=2, col=1)
    figure.update_yaxes(title_text="ID", row=1, col=1)
    figure.update_yaxes(title_text="rank", row=2, col=1, rangemode="tozero")
    figure.update_xaxes(**_depth_axis(len(table)), row=2, col=1)
    figure.update_layout(title=title, showlegend=False, height=520, margin={"l": 60, "r": 20, "t": 70, "b": 60})
    return figure


def exhibits(entry) -> list[Exhibit]:
    table = entry.table
    return [Exhibit("gelora_bounds", "Intrinsic dimension and GeLoRA rank bounds", table,
                    lambda: intrinsic_dimension_figure(table(), table("dimensions")))]
