"""Figures on the dashboard's screen: nothing may vanish into the dark theme's near-black background."""
import numpy as np
import pandas as pd
import plotly.graph_objects as go

from analysis.reporting.all_signals import agreement_matrix_figure, layer_curves_figure
from analysis.charts.agreement import agreement_figure
from analysis.charts.tidy_figures import layer_bars, side_by_side_heatmaps
from analysis.reporting.screen import FRAME, on_screen


def frames_of(figure: go.Figure) -> set[tuple[str, str]]:
    return {(shape.xref, shape.yref) for shape in figure.layout.shapes if shape.type == "rect"
            and (shape.x0, shape.x1, shape.y0, shape.y1) == (0, 1, 0, 1) and shape.line.color == FRAME}


def test_every_heatmap_panel_and_colour_bar_is_framed_and_the_figure_itself_is_left_alone():
    """Viridis starts at a dark purple: where it meets the dark page, a panel's edge disappears unless framed."""
    frames = {name: pd.DataFrame({"layer": [0, 0, 1, 1], "module": ["q", "v"] * 2, "value": values})
              for name, values in (("shapley", [-0.1, 0.2, 0.3, 0.0]), ("sora", [0, 2, 4, 8]), ("cka", [0.1] * 4))}
    figure = side_by_side_heatmaps(frames)
    screen = on_screen(figure)
    assert frames_of(screen) == {("x domain", "y domain"), ("x2 domain", "y domain"), ("x3 domain", "y domain")}
    for axis in ("coloraxis", "coloraxis2"):   # one-signed and signed panels' colour bars
        assert (screen.layout[axis].colorbar.outlinewidth, screen.layout[axis].colorbar.outlinecolor) == (1, FRAME)
    assert not figure.layout.shapes and figure.layout.coloraxis.colorbar.outlinecolor is None   # a copy changed
    assert screen.to_json() != figure.to_json() and \
        go.Figure(screen.data).to_json() == go.Figure(figure.data).to_json()   # the same cells and colours

    matrix = on_screen(go.Figure(go.Heatmap(z=np.eye(3), colorscale="Viridis")))   # a heatmap with its own bar
    assert frames_of(matrix) == {("x domain", "y domain")}
    assert (matrix.data[0].colorbar.outlinewidth, matrix.data[0].colorbar.outlinecolor) == (1, FRAME)


def test_black_lines_bands_and_whiskers_turn_grey_and_scale_coloured_markers_get_an_outline():
    """The eighth signal's Okabe-Ito black, its standard-error band, plotly's dark whiskers and dark-purple
    markers of layer 0 would be invisible on the dark theme."""
    tables = {f"s{i}": pd.DataFrame({"layer": [0, 1, 2], "value": [1.0, 2.0, 3.0]}) for i in range(7)}
    tables["shapley"] = pd.DataFrame({"layer": [0, 1, 2], "value": [1.0, 2.0, 3.0], "stderr": [0.1] * 3})
    curves = on_screen(layer_curves_figure(tables))
    shapley = [t for t in curves.data if t.name == "shapley"][0]
    band = [t for t in curves.data if t.fill == "toself" and t.fillcolor == FRAME]
    assert shapley.line.color == FRAME and len(band) == 1
    assert [t.line.color for t in curves.data if t.name == "s0"] == ["#0072B2"]   # other colours are kept

    tables["ninth"] = tables["s0"]   # more signals than Okabe-Ito colours: the colour comes back, dashed
    lines = {t.name: t.line for t in layer_curves_figure(tables).data if t.name}
    assert lines["ninth"].color == lines["s0"].color and (lines["s0"].dash, lines["ninth"].dash) == ("solid", "dash")

    bars = on_screen(layer_bars(pd.DataFrame({"layer": [0, 1], "value": [0.2, 0.4], "stderr": [0.01, 0.02]})))
    assert bars.data[0].error_y.color == FRAME

    modules = pd.DataFrame({"layer": [0, 0, 1], "module": ["q", "v", "q"], "value": [0.1, 0.2, 0.3]})
    scatter = on_screen(agreement_figure(modules, modules.assign(value=[0.3, 0.1, 0.2]), "a", "b"))
    assert (scatter.data[0].marker.line.width, scatter.data[0].marker.line.color) == (0.75, FRAME)
    assert scatter.data[0].marker.colorbar.outlinecolor == FRAME


def test_on_the_dark_theme_viridis_starts_at_its_blue_and_square_cells_keep_their_frame():
    """The dark theme gets viridis without its near-black purple (same hues, same order); diverging scales and
    the light theme keep theirs. A matrix with square cells shrinks its panel to them, so the frame fits."""
    from analysis.reporting.screen import DARK_VIRIDIS
    from analysis.signals.cka.cka_figures import cka_matrix_figure

    frames = {"sora": pd.DataFrame({"layer": [0, 1], "module": "q", "value": [1, 4]}),
              "shapley": pd.DataFrame({"layer": [0, 1], "module": "q", "value": [-0.1, 0.2]})}
    figure = side_by_side_heatmaps(frames)
    dark, light = on_screen(figure, dark=True), on_screen(figure)
    assert [list(step) for step in dark.layout.coloraxis.colorscale] == DARK_VIRIDIS
    assert DARK_VIRIDIS[0][1] == "rgb(64, 66, 134)" and DARK_VIRIDIS[-1][1] == "rgb(253, 231, 37)"
    assert dark.layout.coloraxis2.colorscale == figure.layout.coloraxis2.colorscale   # RdBu as it was
    assert light.layout.coloraxis.colorscale == figure.layout.coloraxis.colorscale
    scatter = on_screen(agreement_figure(frames["sora"], frames["sora"], "a", "b"), dark=True)
    assert [list(step) for step in scatter.data[0].marker.colorscale] == DARK_VIRIDIS

    cka = pd.DataFrame([(i, j, 1.0 if i == j else 0.5) for i in range(3) for j in range(3)],
                       columns=["layer", "layer2", "value"])
    assert [list(step) for step in on_screen(cka_matrix_figure(cka), dark=True).data[0].colorscale] == DARK_VIRIDIS
    spearman = agreement_matrix_figure(pd.DataFrame(np.eye(3), index=list("abc"), columns=list("abc")))
    assert spearman.layout.xaxis.constrain is None   # square cells, the panel as wide as the page
    matrix = on_screen(spearman)
    assert matrix.layout.xaxis.constrain == matrix.layout.yaxis.constrain == "domain"
    assert frames_of(matrix) == {("x domain", "y domain")}
