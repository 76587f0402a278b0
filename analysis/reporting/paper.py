"""Figures and tables for papers: a print style, PDF/SVG/PNG through kaleido, and LaTeX tables.

kaleido 1.x renders with a Chromium on the machine (Debian package `chromium`, found by itself or
through BROWSER_PATH), offline: plotly.js comes from the plotly package and no label uses MathJax.
Chromium's PDF embeds the font as a TrueType subset (no Type 3). One Chromium is kept running after
the first export, so later exports take a fraction of a second instead of seconds.
"""
from __future__ import annotations

import os
import threading
import warnings

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from analysis.errors import UserError

FORMATS = ("pdf", "svg", "png")
MIME = {"pdf": "application/pdf", "svg": "image/svg+xml", "png": "image/png", "csv": "text/csv",
        "tex": "application/x-tex"}
# Text widths in inches: one column of a two-column paper (IEEE 3.5, ICML 3.25; an ACL column of 3.0 in
# shrinks the 7.5 pt text to 6.6 pt) and the full text width. Sizes are in CSS pixels, 96 to the inch,
# which is what kaleido's PDF uses.
WIDTHS = {"column": 3.4, "page": 7.0}
PIXELS_PER_INCH = 96
FONT = "Liberation Sans, Arial, Helvetica, sans-serif"   # metric twin of Arial; Debian fonts-liberation
FONT_SIZE = 10          # CSS px = 7.5 pt, the usual size of figure text in a paper
PNG_SCALE = 3           # 288 dpi
GRAYS = ["#000000", "#555555", "#888888", "#aaaaaa", "#cccccc"]
DASHES = ["solid", "dash", "dot", "dashdot", "longdash", "longdashdot"]

# kaleido's one Chromium serves one figure at a time: its queue hands back whichever result comes first, so
# two downloads at once (two users, two clicks) could swap files without this lock.
_render_lock = threading.Lock()


def paper_style(figure: go.Figure, width: str = "column", grayscale: bool = False) -> go.Figure:
    """A copy of `figure` sized for `width` ('column' or 'page') with print typography: white background,
    black text in one embedded sans font, thin axes, tight margins; `grayscale` maps every colour scale
    to grays and tells lines apart by dash pattern instead of colour."""
    if width not in WIDTHS:
        raise UserError(f"Unknown width '{width}'; choose one of: {', '.join(WIDTHS)}.")
    styled = go.Figure(figure)
    pixels = round(WIDTHS[width] * PIXELS_PER_INCH)
    screen_height = styled.layout.height or 450
    # Heatmaps grow with the number of layers on screen; keep that proportion at print width.
    height = max(round(0.62 * pixels), round(screen_height * pixels / 760))
    # Room above the plot for the title and the subplot titles (which may run over several lines).
    title_lines = max((a.text.count("<br>") + 1 for a in styled.layout.annotations
                       if a.yref == "paper" and a.yanchor == "bottom"),
                      default=0)
    top = 10 + (FONT_SIZE + 6) * title_lines + (FONT_SIZE + 10 if styled.layout.title.text else 0)
    height = max(height, _legend_height(styled) + top + 50)   # every legend entry beside the plot, above its x axis
    # One size for every text, titles and legends included (plotly makes a title and a legend's title larger by
    # default); tests/reporting/test_paper_pdf.py reads every size back from the exported PDFs.
    styled.update_layout(template="simple_white", width=pixels, height=height,
                         font={"family": FONT, "size": FONT_SIZE, "color": "black"},
                         title={"font": {"size": FONT_SIZE}, "x": 0.5, "xanchor": "center"},
                         margin={"l": 48, "r": 8, "t": top, "b": 40},
                         legend={"font": {"size": FONT_SIZE}, "title_font_size": FONT_SIZE})
    styled.update_annotations(font_size=FONT_SIZE)   # subplot titles
    # Axis titles at the text size (plotly's default is 1.2 x, 9 pt here); automargin widens the margins to fit
    # the tick labels and titles, so a long module name does not push the y-axis title off the page.
    axes = dict(ticks="outside", ticklen=3, linewidth=0.8, title_standoff=4, title_font_size=FONT_SIZE,
                tickfont_size=FONT_SIZE, automargin=True)
    styled.update_xaxes(**axes)
    styled.update_yaxes(**axes)
    _log_ticks(styled, pixels, height)
    _heatmap_text(styled, pixels)
    for axis in _square_cell_axes(styled):   # the panel shrinks to its square cells (no empty band in its frame)
        styled.layout[axis].constrain = "domain"
    # A colour bar's title is an axis title too (plotly's default is 1.2 x the text size as well).
    colorbar = {"thickness": 10, "title_font_size": FONT_SIZE, "tickfont_size": FONT_SIZE}
    styled.update_traces(colorbar={**colorbar, "len": 0.9}, selector={"type": "heatmap"})
    # Markers coloured by a scale (the agreement scatter's layers) carry their own colour bar.
    styled.update_traces(marker_colorbar={**colorbar, "len": 0.9},
                         selector=lambda trace: trace.type == "scatter" and trace.marker.colorscale is not None)
    if "coloraxis2" in styled.layout:   # two scales side by side (one-signed and signed), each half as long
        styled.update_layout(coloraxis_colorbar=colorbar, coloraxis2_colorbar=colorbar)
    elif styled.layout.coloraxis.colorbar is not None:
        styled.update_layout(coloraxis_colorbar={**colorbar, "len": 0.9})
    if grayscale:
        _to_grayscale(styled)
    return styled


def _axis_names(figure: go.Figure) -> list[str]:
    """The layout's axes by name: 'xaxis', 'yaxis2', ..."""
    return [key for key in figure.layout.to_plotly_json() if key[:5] in ("xaxis", "yaxis")]


def _axis_traces(figure: go.Figure, name: str) -> list:
    """The traces drawn on layout axis `name` ('xaxis', 'yaxis2', ...)."""
    letter, number = name[0], name[5:]
    return [t for t in figure.data if (getattr(t, f"{letter}axis", None) or letter) == letter + number]


def _tick_label(value: float) -> str:
    """A tick label as plotly writes one (SI suffixes from a thousand up: 50k, 1.5M; else the shortest decimal)."""
    for power, suffix in ((9, "G"), (6, "M"), (3, "k")):
        if abs(value) >= 10 ** power:
            return f"{value / 10 ** power:.3g}{suffix}"
    return f"{value:.3g}"


def _log_ticks(figure: go.Figure, width: int, height: int) -> None:
    """Log axes get their ticks at powers of ten (every k-th where they would run into each other), with 2 and 5
    (then 3 and 7) times them added while there are fewer than three labels and they stay clear of each other, all
    labelled at the text size: plotly draws the 2s and 5s of a log axis at 0.75 x the text size (5.6 pt), and an
    axis spanning less than a decade gets linear-looking labels that overlap."""
    legend_outside = (figure.layout.showlegend is not False and len(legend_entries(figure)) > 1
                      and (figure.layout.legend.x is None or figure.layout.legend.x >= 1))
    for name in _axis_names(figure):
        axis = figure.layout[name]
        if axis.type != "log" or axis.tickvals is not None:
            continue
        if axis.range is not None:
            low, high = 10 ** min(axis.range), 10 ** max(axis.range)
        else:
            values = [np.asarray(getattr(t, name[0]), dtype=float).ravel() for t in _axis_traces(figure, name)
                      if getattr(t, name[0], None) is not None]
            values = np.concatenate(values or [np.array([])])
            values = values[np.isfinite(values) & (values > 0)]
            if not len(values):
                continue
            low, high = values.min(), values.max()
        # Pixels per decade, a little short of the plot's (margins, tick labels, a legend beside the plot), and the
        # room a label needs: its width along an x axis, its height along a y axis.
        length = width * (0.5 if legend_outside else 0.7) if name[0] == "x" else height * 0.6
        per_decade = length / max(np.log10(high / low), 0.1)

        def spaced(ticks):   # the labels, and whether each is clear of the next
            labels = [_tick_label(t) for t in ticks]
            need = [0.6 * FONT_SIZE * max(len(a), len(b)) + 6 if name[0] == "x" else 1.6 * FONT_SIZE
                    for a, b in zip(labels, labels[1:])]
            return labels, all(gap >= n for gap, n in zip(np.diff(np.log10(ticks)) * per_decade, need))

        decades = range(int(np.floor(np.log10(low))), int(np.ceil(np.log10(high))) + 1)
        ticks = [10.0 ** d for d in decades if low * (1 - 1e-9) <= 10.0 ** d <= high * (1 + 1e-9)]
        labels, clear = spaced(ticks)
        step = 1
        while not clear:   # many decades on a short axis: every second (third, ...) power of ten
            step += 1
            labels, clear = spaced(ticks[::step])
        ticks = ticks[::step]
        for mantissas in ((1, 2, 5), (1, 2, 3, 5, 7)):   # denser while fewer than 3 labels, and clear of each other
            if len(ticks) >= 3:
                break
            denser = [m * 10.0 ** d for d in decades for m in mantissas if low * (1 - 1e-9) <= m * 10.0 ** d
                      <= high * (1 + 1e-9)]
            denser_labels, clear = spaced(denser)
            if not clear:
                break
            ticks, labels = denser, denser_labels
        if len(ticks) < 2:   # too narrow a range for two of these: plotly's own ticks (full size there)
            continue
        axis.update(tickmode="array", tickvals=ticks, ticktext=labels)


def legend_entries(figure: go.Figure) -> list[str]:
    """The names the legend lists (plotly shows a legend for two entries or more, or when told to)."""
    if figure.layout.showlegend is False:
        return []
    names = [t.name for t in figure.data if t.name and t.showlegend is not False and t.visible is not False
             and (t.showlegend or t.type not in ("heatmap", "histogram2d", "contour", "surface"))]
    return names if len(names) > 1 or figure.layout.showlegend else []


def _legend_height(figure: go.Figure) -> int:
    """The pixels a vertical legend needs: plotly cuts off the entries that do not fit beside the plot."""
    legend = figure.layout.legend
    if legend.orientation == "h":
        return 0
    listed = set(legend_entries(figure))
    entries = [t for t in figure.data if t.name in listed and t.showlegend is not False]
    groups = len({t.legendgroup for t in entries}) if any(t.legendgroup for t in entries) else 1
    gap = legend.tracegroupgap if legend.tracegroupgap is not None else 10
    title = 2 * FONT_SIZE if legend.title.text else 0
    return round(len(entries) * 1.9 * FONT_SIZE + (groups - 1) * gap + title + 10) if entries else 0


def _heatmap_text(figure: go.Figure, width: int) -> None:
    """Numbers written in heatmap cells at the text size (plotly shrinks them to fit a cell: 3.75 pt in a column-wide
    10 x 10 matrix), or left out where a cell is too narrow for them at that size (the CSV holds them)."""
    for trace in figure.data:
        if trace.type != "heatmap" or not trace.texttemplate:
            continue
        columns = len(set(trace.x)) if trace.x is not None else np.shape(trace.z)[1]
        labels = [str(v) for v in (trace.y if trace.y is not None else [])]
        # What the cells share of the width: less the margins, the y tick labels and a colour bar.
        room = width - 60 - 0.6 * FONT_SIZE * max(map(len, labels), default=2) - 60
        longest = max((len(str(t)) for row in (trace.text if trace.text is not None else []) for t in row),
                      default=4)
        if room / max(columns, 1) >= 0.6 * FONT_SIZE * longest + 4:
            trace.textfont.size = FONT_SIZE
        else:
            trace.texttemplate = None


def _square_cell_axes(figure: go.Figure) -> list[str]:
    """Both axes of every subplot whose cells are kept square (an axis with scaleanchor)."""
    anchored = [name for name in _axis_names(figure) if figure.layout[name].scaleanchor]
    partners = [f"{figure.layout[name].scaleanchor[0]}axis{figure.layout[name].scaleanchor[1:]}" for name in anchored]
    return list(dict.fromkeys(anchored + partners))


def _to_grayscale(figure: go.Figure) -> None:
    """Colour scales become gray ramps (dark = high, or black-white-black for a diverging scale); bars and
    lines take gray levels, and lines a dash pattern each, so nothing depends on hue."""
    def ramp(diverging: bool):   # a diverging scale keeps its sign: negative dark, zero mid-gray, positive light
        return [[0, "#000000"], [0.5, "#969696"], [1, "#ffffff"]] if diverging else "Greys"

    def constant(scale) -> bool:   # one colour throughout: cells marked undefined, already gray
        return scale is not None and len({str(colour) for _, colour in scale}) == 1

    for trace in figure.data:
        if trace.type == "heatmap" and getattr(trace, "coloraxis", None) is None and not constant(trace.colorscale):
            trace.colorscale = ramp(trace.zmid is not None)
    for name in ("coloraxis", "coloraxis2"):
        axis = figure.layout[name] if name in figure.layout else None
        if axis is not None and axis.colorscale is not None:
            axis.colorscale = ramp(axis.cmid is not None or (axis.cmin is not None and axis.cmin < 0))
    lines = 0
    for trace in figure.data:
        if trace.type == "scatter" and trace.mode == "markers" and trace.x == (None,):   # a legend-only entry
            continue
        if trace.type in ("scatter", "bar"):
            gray = GRAYS[lines % len(GRAYS)]
            if trace.type == "scatter" and trace.fill:          # an error band
                trace.fillcolor = "#bbbbbb"
                continue
            if trace.type == "scatter":
                trace.line.color, trace.line.dash = gray, DASHES[lines % len(DASHES)]
                if not isinstance(trace.marker.color, (list, tuple)) and trace.marker.colorscale is None:
                    trace.marker.color = gray
                else:
                    trace.marker.colorscale = "Greys"
            else:
                trace.marker.color = "#555555"
            lines += 1


def browser_path() -> str | None:
    """The Chromium kaleido would use (BROWSER_PATH, a system chromium or chrome, or kaleido's own), or None."""
    from choreographer.browsers.chromium import Chromium

    if "BROWSER_PATH" in os.environ:
        path = os.environ["BROWSER_PATH"]
        return path if os.access(path, os.X_OK) else None
    return Chromium.find_browser(skip_local=False)


NO_BROWSER = ("Exporting figures needs a Chromium on this machine: install Debian's package (sudo apt-get install "
              "chromium) or point BROWSER_PATH at a Chrome.")


def _titled_pdf(pdf: bytes, title: str) -> bytes:
    """The PDF with its document title set (the renderer names every file after its own page, "Kaleido-fier")."""
    import io

    from pypdf import PdfWriter

    writer = PdfWriter(clone_from=io.BytesIO(pdf))
    writer.add_metadata({"/Title": title, "/Creator": "LoRA rank importance (python -m analysis export)"})
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def figure_bytes(figure: go.Figure, fmt: str, title: str = "") -> bytes:
    """The figure as PDF, SVG or PNG bytes at its own width and height; a PDF carries `title` as its title."""
    if fmt not in FORMATS:
        raise UserError(f"Figures export as {', '.join(FORMATS)}, not '{fmt}'.")
    # Checked first: without a browser kaleido's server thread dies and the export would wait forever.
    if browser_path() is None:
        raise UserError(NO_BROWSER)
    import kaleido
    import plotly.io as pio

    with _render_lock, warnings.catch_warnings():
        warnings.simplefilter("ignore")   # plotly notes that its kaleido options go unused with a server
        _pdf_without_margins()
        kaleido.start_sync_server(silence_warnings=True)   # once per process; kaleido stops it at exit
        data = pio.to_image(figure, format=fmt, scale=PNG_SCALE if fmt == "png" else 1)
    return _titled_pdf(data, title) if fmt == "pdf" and title else data


def _pdf_without_margins() -> None:
    """kaleido prints a PDF page of the figure's size with 0.1 in margins, so Chromium shrinks the figure to fit:
    a 3.4 in figure's 7.5 pt text came out at 7.1 pt. Print with no margins instead, so one CSS pixel is 0.75 pt
    exactly (kaleido 1.5's print_pdf, replaced at its module; tests/reporting/test_paper_pdf.py reads the sizes back)."""
    from kaleido._kaleido_tab import _devtools_utils as tools

    if getattr(tools.print_pdf, "without_margins", False):
        return

    async def print_pdf(tab) -> str:
        response = await tab.send_command("Page.printToPDF", params={
            "printBackground": True, "marginTop": 0, "marginBottom": 0, "marginLeft": 0, "marginRight": 0,
            "preferCSSPageSize": True, "pageRanges": "1"})
        tools._raise_error(response)
        return response.get("result", {}).get("data")

    print_pdf.without_margins = True
    tools.print_pdf = print_pdf


def latex_table(frame: pd.DataFrame, caption: str = "", label: str = "") -> str:
    """A booktabs table; text is escaped for LaTeX, '±' becomes $\\pm$ and a column name's underscores spaces
    (a header reads 'test loss', not 'test\\_loss')."""
    frame = frame.rename(columns=lambda name: str(name).replace("_", " "))
    styler = frame.style.hide(axis="index").format(escape="latex", precision=3)
    styler = styler.format_index(escape="latex", axis="columns")
    text = styler.to_latex(hrules=True, column_format="l" + "r" * (len(frame.columns) - 1),
                           caption=caption or None, label=label or None, position="t",
                           position_float="centering")
    return text.replace("±", r"$\pm$").replace("†", r"$^\dagger$")
