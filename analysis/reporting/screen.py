"""Figures as the dashboard draws them: readable on Streamlit's light theme and on its dark one.

Streamlit draws a chart on the page's own background, white or (dark theme) near-black. There viridis' lowest
colours (#440154, a dark purple), a black line (Okabe-Ito's eighth colour) and plotly's dark grey whiskers
vanish into the background: a heatmap's darkest cells merge with the page at its edges. `on_screen` frames
every heatmap panel and colour bar, outlines markers coloured by a scale, and draws black lines, bands and
whiskers in a grey that reads on both backgrounds; on the dark theme viridis also starts at its blue (0.2)
instead of its near-black purple. Files for papers go through paper.py instead; the figure itself is left as
it is.
"""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.colors import sample_colorscale

FRAME = "#808495"   # Streamlit's grey: 3.9:1 against white, 5.2:1 against the dark theme's #0e1117
BLACK = {"#000000", "#000", "black", "rgb(0,0,0)", "rgb(0, 0, 0)"}
VIRIDIS_ENDS = ("#440154", "#fde725")
# Viridis from 0.2 (rgb(64, 66, 134)): the same hues in the same order, without the part that the dark theme's
# background swallows.
DARK_VIRIDIS = [[float(position), colour] for position, colour in
                zip(np.linspace(0, 1, 9), sample_colorscale("Viridis", np.linspace(0.2, 1, 9)))]


def _grey_if_black(colour):
    return FRAME if isinstance(colour, str) and colour.strip().lower() in BLACK else colour


def _is_viridis(scale) -> bool:
    return bool(scale) and (str(scale[0][1]).lower(), str(scale[-1][1]).lower()) == VIRIDIS_ENDS


def on_screen(figure: go.Figure, dark: bool = False) -> go.Figure:
    """A copy of `figure` for the dashboard: each heatmap panel framed, colour bars outlined, scale-coloured
    markers outlined, black lines, fills and error whiskers in grey; `dark` (the dark theme): viridis lifted."""
    screen = go.Figure(figure)
    frames = set()
    outline = {"outlinewidth": 1, "outlinecolor": FRAME}

    def lifted(scale):
        return DARK_VIRIDIS if dark and _is_viridis(scale) else scale

    for trace in screen.data:
        if trace.type == "heatmap":
            frames.add((trace.xaxis or "x", trace.yaxis or "y"))
            trace.colorscale = lifted(trace.colorscale)
            if trace.coloraxis is None and trace.showscale is not False:
                trace.update(colorbar=outline)
        if trace.type == "scatter":
            if trace.marker.colorscale is not None:
                trace.update(marker_line={"width": 0.75, "color": FRAME},
                             marker_colorscale=lifted(trace.marker.colorscale))
                if trace.marker.colorbar.to_plotly_json():
                    trace.marker.colorbar.update(outline)
            trace.update(line_color=_grey_if_black(trace.line.color), fillcolor=_grey_if_black(trace.fillcolor))
            if trace.marker.color is not None and not isinstance(trace.marker.color, (list, tuple)):
                trace.marker.color = _grey_if_black(trace.marker.color)
        if trace.type == "bar" and trace.error_y.visible:
            trace.error_y.color = FRAME
    for x, y in sorted(frames):
        axes = (f"xaxis{x[1:]}", f"yaxis{y[1:]}")
        if any(screen.layout[axis].scaleanchor for axis in axes):   # square cells: the panel shrinks to them,
            for axis in axes:                                         # so that the frame fits them
                screen.layout[axis].constrain = "domain"
        screen.add_shape(type="rect", xref=f"{x} domain", yref=f"{y} domain", x0=0, x1=1, y0=0, y1=1,
                         line={"color": FRAME, "width": 1}, fillcolor="rgba(0,0,0,0)", layer="above")
    for key in screen.layout.to_plotly_json():
        if key.startswith("coloraxis"):
            screen.layout[key].colorscale = lifted(screen.layout[key].colorscale)
            screen.layout[key].colorbar.update(outline)
    return screen
