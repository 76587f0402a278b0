"""Exported figures as a reader gets them: the PDF rendered with poppler's pdftoppm, text sizes read from the PDF's
own content stream (7.5 pt as the paper style promises), nothing cut at the page edge; LaTeX headers readable."""
from __future__ import annotations

import re
import shutil
import subprocess
import zlib
from html import unescape

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from analysis.reporting.paper import WIDTHS, browser_path, figure_bytes, latex_table, paper_style

needs_tools = pytest.mark.skipif(shutil.which("pdftoppm") is None or shutil.which("pdftotext") is None
                                 or browser_path() is None,
                                 reason="needs poppler-utils (apt-get install poppler-utils) and a Chromium")


def text_sizes(pdf: bytes) -> list[float]:
    """The size in points of every text run: the Tf size times the scale of the text and graphics matrices in
    force (q/Q, cm, Tm), from every decompressed content stream."""
    sizes = []
    # The end-of-line before 'endstream' stays with the data: it may be the deflated data's own last byte, and
    # without it the stream read as truncated and its text went uncounted. A decompressor object ignores the
    # bytes after the end of the data.
    for match in re.finditer(rb"stream\r?\n(.*?)endstream", pdf, re.S):
        try:
            content = zlib.decompressobj().decompress(match.group(1)).decode("latin-1")
        except zlib.error:
            continue
        if not re.search(r"/\S+ [\d.]+ Tf\s", content):   # fonts and images, not a page's content
            continue
        ctm, stack, size, text_matrix = np.eye(3), [], None, np.eye(3)
        operands = []
        for token in re.findall(r"<[0-9A-Fa-f]*>|\([^)]*\)|/[^\s/\[\]()<>]+|\[|\]|[-+]?\d*\.?\d+|[A-Za-z'\"*]+",
                                content):
            if re.fullmatch(r"[-+]?\d*\.?\d+", token):
                operands.append(float(token))
                continue
            if token == "q":
                stack.append(ctm.copy())
            elif token == "Q" and stack:
                ctm = stack.pop()
            elif token == "cm" and len(operands) >= 6:
                a, b, c, d, e, f = operands[-6:]
                ctm = np.array([[a, b, 0], [c, d, 0], [e, f, 1]]) @ ctm
            elif token == "Tf" and operands:
                size = operands[-1]
            elif token == "Tm" and len(operands) >= 6:
                a, b, c, d, e, f = operands[-6:]
                text_matrix = np.array([[a, b, 0], [c, d, 0], [e, f, 1]])
            elif token in ("Tj", "TJ") and size is not None:
                scale = np.sqrt(abs(np.linalg.det((text_matrix @ ctm)[:2, :2])))
                sizes.append(round(size * scale, 2))
            if not token.startswith(("/", "<", "(", "[", "]")):
                operands = []
    return sizes


def words(pdf_path) -> tuple[tuple[float, float], list[tuple[str, float, float, float, float]]]:
    """Page size and every word's box, from pdftotext -bbox."""
    html = subprocess.run(["pdftotext", "-bbox", str(pdf_path), "-"], capture_output=True, text=True,
                          check=True).stdout
    page = re.search(r'<page width="([\d.]+)" height="([\d.]+)"', html)
    found = [(unescape(w), float(x0), float(y0), float(x1), float(y1)) for x0, y0, x1, y1, w in
             re.findall(r'<word xMin="([\d.-]+)" yMin="([\d.-]+)" xMax="([\d.-]+)" yMax="([\d.-]+)">([^<]*)</word>',
                        html)]
    return (float(page.group(1)), float(page.group(2))), found


def heatmap() -> go.Figure:
    """Like the per-module heatmaps: long module names on the y axis, axis titles on both."""
    figure = go.Figure(go.Heatmap(z=np.arange(18).reshape(3, 6), x=list(range(6)),
                                  y=["attention.output.dense", "intermediate.dense", "query"]))
    figure.update_layout(title="Shapley sensitivity", xaxis_title="layer", yaxis_title="module type")
    return figure


@needs_tools
@pytest.mark.parametrize("width", ["column", "page"])
def test_exported_pdf_text_is_7_5_pt_and_nothing_is_clipped(tmp_path, width):
    pdf = figure_bytes(paper_style(heatmap(), width), "pdf")
    path = tmp_path / "figure.pdf"
    path.write_bytes(pdf)
    sizes = text_sizes(pdf)
    # Every tick label (the colour bar's too), both axis titles and the figure's title at 7.5 pt.
    assert sizes and set(sizes) == {7.5}, sorted(set(sizes))
    (page_width, page_height), found = words(path)
    assert page_width == pytest.approx(WIDTHS[width] * 72, abs=1)
    for name in ("module", "type", "layer", "attention.output.dense"):
        [(_, x0, y0, x1, y1)] = [w for w in found if w[0] == name]
        assert 0 <= x0 and x1 <= page_width and 0 <= y0 and y1 <= page_height, (name, x0, y0, x1, y1)
    # Rendered as a reader sees it: the y-axis title's pixels are on the page and the page edges are blank.
    subprocess.run(["pdftoppm", "-png", "-r", "144", "-singlefile", str(path), str(tmp_path / "figure")],
                   check=True)
    from PIL import Image
    image = np.asarray(Image.open(tmp_path / "figure.png").convert("L"))
    assert image.shape[1] == pytest.approx(WIDTHS[width] * 144, abs=2)
    [(_, x0, y0, x1, y1)] = [w for w in found if w[0] == "module"]
    title = image[int(y0 * 2):int(y1 * 2) + 1, int(x0 * 2):int(x1 * 2) + 1]
    assert (title < 128).sum() > 20   # the title's glyphs are drawn
    assert (image[:, 0] > 250).all() and (image[:, -1] > 250).all()


def test_latex_headers_read_as_words():
    table = pd.DataFrame({"method": ["uniform"], "test_loss": ["0.412 ± 0.010"], "accuracy (%)": ["81.0 ± 1.0"]})
    text = latex_table(table, caption="Retrain comparison")
    assert "test loss" in text and r"test\_loss" not in text and r"$\pm$" in text


@needs_tools
@pytest.mark.slow   # about half a minute: some 25 renders, all in one Chromium
def test_every_exported_figure_keeps_the_paper_sizes_and_the_page(tmp_path):
    """Every figure the export writes: each registered signal's (from a store the real runner filled with random
    tables in each signal's real schema), the all-signals overview, the plans, the Shapley page's agreement and
    the retrain comparison (made by the real compare, each retrain's metrics random): all text at 7.5 pt (no
    9 pt axis or colour-bar title, no 8.25 pt title, no 5.6 pt minor log label, no shrunken cell text), every word
    inside the page and every legend entry drawn (plotly drops those that do not fit beside the plot)."""
    from analysis.charts.agreement import agreement_exhibit
    from analysis.reporting.exhibits import exhibits_for
    from analysis.reporting.paper import legend_entries
    from analysis.settings import Limits, RunSettings
    from analysis.signals.context import prepare
    from analysis.signals.registry import all_signals
    from tests.synthetic_store import MAKERS, fill, fill_comparison

    signals = sorted(all_signals())
    assert not set(signals) - set(MAKERS), f"tests/synthetic_store.py has no maker for {set(signals) - set(MAKERS)}"
    settings = RunSettings(val_size=16, device="cpu")
    store = fill(tmp_path / "cache", settings, signals=signals)
    run = prepare(settings, store, warn=None).run
    fill_comparison(store, settings)
    exhibits = [exhibit for what in [*signals, "all", "plans", "comparison"]
                for exhibit in exhibits_for(run, what, "r4", Limits(), {})]
    entries = {entry.meta.get("signal", entry.kind): entry for entry in store.entries()}
    exhibits.append(agreement_exhibit(entries["shapley"], entries["adalora"], "Shapley", "AdaLoRA"))
    drawn = [exhibit for exhibit in exhibits if exhibit.figure is not None]
    assert {"alpha_esd_largest", "comparison_budgets", "comparison_pareto", "signal_agreement", "all_signals_layers", "eva", "gora",
            "grad_norm", "state_change", "shapley_vs_adalora"} <= {exhibit.name for exhibit in drawn}
    problems = []
    for exhibit in drawn:
        styled = paper_style(exhibit.figure(), "column")
        pdf = figure_bytes(styled, "pdf")
        sizes = text_sizes(pdf)
        if not sizes or set(sizes) != {7.5}:
            problems.append((exhibit.name, "sizes", sorted(set(sizes))))
        path = tmp_path / f"{exhibit.name}.pdf"
        path.write_bytes(pdf)
        (width, height), found = words(path)
        outside = [w for w in found if w[1] < 0 or w[3] > width + 0.5 or w[2] < 0 or w[4] > height + 0.5]
        if outside:
            problems.append((exhibit.name, "outside the page", outside))
        text = [w[0] for w in found]
        for name in legend_entries(styled):
            parts = str(name).split()
            if not any(text[i:i + len(parts)] == parts for i in range(len(text))):
                problems.append((exhibit.name, "legend entry not drawn", name))
    assert not problems, problems
    assert len(drawn) >= 24
