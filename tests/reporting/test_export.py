"""Paper exports and the all-signals tables: real kaleido renders through Debian's chromium, the command line
as a real process, references computed independently (scipy, pandas, the allocator)."""
import io
import json
import re
import xml.etree.ElementTree as ElementTree
import zlib
from io import BytesIO

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.stats import spearmanr

from analysis.__main__ import main
from analysis.allocation.allocate import allocate
from analysis.allocation.budgets import parse_budget
from analysis.settings import Limits
from analysis.signals.context import identify
from analysis.settings import RunSettings
from analysis.reporting.exhibits import Exhibit, exhibits_for, overview_exhibits, plan_exhibit, render
from analysis.planning.methods import UNIFORM, layout_for, make_plan, method_scores
from analysis.reporting.all_signals import agreement, layer_importance, module_importance
from analysis.reporting.paper import PIXELS_PER_INCH, PNG_SCALE, WIDTHS, latex_table, paper_style
from analysis.planning.preview import plan_json, preview, summary
from tests.synthetic_store import fill
from tests.test_cli import cli

SETTINGS = RunSettings(val_size=16, device="cpu")


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("export-cache")
    fill(directory, SETTINGS)
    return directory


@pytest.fixture(scope="module")
def prepared(store_dir):
    from analysis.store.cache import Store
    return identify(SETTINGS, Store(store_dir))   # the key the run wrote its entries under, no data read


def _pdf_fonts(pdf: bytes) -> tuple[set[str], set[str]]:
    """Font subtypes and embedded font-file kinds, from the raw and the inflated streams of a PDF."""
    chunks = [pdf]
    for match in re.finditer(rb"stream\r?\n(.*?)endstream", pdf, re.S):
        try:
            chunks.append(zlib.decompress(match.group(1)))
        except zlib.error:
            pass
    text = b"".join(chunks)
    subtypes = {m.decode() for m in re.findall(rb"/Subtype\s*/(Type[013]|TrueType|CIDFontType[02])", text)}
    files = {m.decode() for m in re.findall(rb"/(FontFile[23]?)", text)}
    return subtypes, files


def test_pdf_embeds_its_font_and_has_no_type3(prepared):
    exhibit = exhibits_for(prepared, "shapley")[0]
    pdf = render(exhibit, "pdf")
    assert pdf.startswith(b"%PDF")
    subtypes, files = _pdf_fonts(pdf)
    assert files and "Type3" not in subtypes, (subtypes, files)
    assert b"LiberationSans" in pdf   # the paper font, embedded as a subset
    from pypdf import PdfReader
    reader = PdfReader(io.BytesIO(pdf))
    assert reader.metadata.title == exhibit.title and len(reader.pages) == 1   # not the renderer's page name


def test_svg_and_png_have_the_column_size(prepared):
    exhibit = exhibits_for(prepared, "all")[1]
    width = round(WIDTHS["column"] * PIXELS_PER_INCH)
    svg = ElementTree.fromstring(render(exhibit, "svg"))
    assert float(svg.get("width")) == width
    png = Image.open(BytesIO(render(exhibit, "png", width="page")))
    assert png.width == round(WIDTHS["page"] * PIXELS_PER_INCH) * PNG_SCALE


def test_grayscale_leaves_no_colour(prepared):
    exhibit = exhibits_for(prepared, "all")[0]   # a diverging heatmap per signal
    image = np.asarray(Image.open(BytesIO(render(exhibit, "png", grayscale=True))).convert("RGB")).astype(int)
    assert np.abs(image - image.mean(axis=2, keepdims=True)).max() <= 2
    coloured = np.asarray(Image.open(BytesIO(render(exhibit, "png"))).convert("RGB")).astype(int)
    assert np.abs(coloured - coloured.mean(axis=2, keepdims=True)).max() > 40


def test_paper_style_sets_font_size_and_width_without_touching_the_original(prepared):
    figure = exhibits_for(prepared, "cka")[0].figure()
    styled = paper_style(figure, "page")
    assert styled.layout.width == round(7.0 * 96) and styled.layout.font.family.startswith("Liberation Sans")
    assert figure.layout.width is None and styled.layout.template.layout.plot_bgcolor in (None, "white")
    with pytest.raises(Exception, match="Unknown width"):
        paper_style(figure, "poster")


def test_latex_table_escapes_and_writes_plus_minus():
    frame = pd.DataFrame({"method": ["uniform", "a_b"], "accuracy (%)": ["77.5 ± 1.9", "78.0 ± 2.1"]})
    text = latex_table(frame, caption="Results", label="tab:results")
    assert r"a\_b" in text and r"77.5 $\pm$ 1.9" in text and r"accuracy (\%)" in text
    assert r"\toprule" in text and r"\caption{Results}" in text and r"\label{tab:results}" in text
    assert "±" not in text


def test_module_importance_blanks_degenerate_blocks(prepared):
    entry = next(e for e in prepared.store.entries() if e.meta["signal"] == "cka")
    table = entry.table().assign(degenerate=[True] + [False] * 5)
    entry_like = type("E", (), {"table": lambda self, name="main": table, "table_names": ["main"]})()
    values = module_importance(entry_like)["value"]
    assert np.isnan(values.iloc[0]) and values.iloc[1:].notna().all()


def test_agreement_equals_scipy_spearman_on_random_tables():
    rng = np.random.default_rng(1)
    frames = {name: pd.DataFrame({"layer": range(12), "value": rng.normal(size=12)}) for name in "abc"}
    frames["c"].loc[3, "value"] = np.nan   # a layer a signal cannot score drops out of that pair only
    matrix = agreement(frames, ["layer"])
    for a in "abc":
        for b in "abc":
            x, y = frames[a]["value"], frames[b]["value"]
            keep = x.notna() & y.notna()
            assert matrix.loc[a, b] == pytest.approx(spearmanr(x[keep], y[keep]).statistic)


def test_overview_figures_scale_each_signal_by_its_largest_value(prepared):
    from analysis.reporting.exhibits import cached_signals
    entries = cached_signals(prepared)
    heatmaps, curves, _ = overview_exhibits(entries)
    figure = heatmaps.figure()
    assert [t.type for t in figure.data] == ["heatmap"] * len(entries)
    for trace, (name, entry) in zip(figure.data, entries.items()):
        values = module_importance(entry)
        expected = values.pivot(index="layer", columns="module", values="value")
        expected = expected.reindex(columns=list(dict.fromkeys(values["module"]))) / values["value"].abs().max()
        np.testing.assert_allclose(np.asarray(trace.z, dtype=float), expected.to_numpy(), equal_nan=True)
    lines = [t for t in curves.figure().data if t.mode == "lines+markers"]
    shapley = layer_importance(entries["shapley"])
    line = next(t for t in lines if t.name == "shapley")
    np.testing.assert_allclose(line.y, shapley["value"] / shapley["value"].abs().max())
    assert "stderr" in shapley   # Shapley's band comes from its own per-layer standard errors


def test_preview_equals_the_allocator_and_the_plan_command(prepared):
    layout = layout_for(prepared)
    limits = Limits(max_rank=16)
    budget = parse_budget("r3", layout, limits)
    scores = {m: method_scores(prepared, m, layout) for m in (UNIFORM, "shapley", "sora", "id", "cka")}
    outcomes = preview(scores, layout, budget, limits)
    for outcome in outcomes:
        np.testing.assert_array_equal(outcome.allocation.ranks, allocate(scores[outcome.method], layout, budget,
                                                                         limits).ranks)
        expected = make_plan(prepared, outcome.method, "r3", limits, layout=layout)
        assert plan_json(outcome, layout, budget, expected["settings"]) == expected
    table = summary(outcomes, budget)
    base = outcomes[0].allocation.ranks
    for row, outcome in zip(table.to_dict("records"), outcomes):
        assert row["trainable params"] == outcome.allocation.cost <= budget
        assert row["more than uniform"] == int((outcome.allocation.ranks > base).sum())
        assert row["less than uniform"] == int((outcome.allocation.ranks < base).sum())


def test_a_budget_a_method_cannot_meet_is_an_outcome_not_an_exception(prepared):
    layout = layout_for(prepared)
    outcomes = preview({UNIFORM: None, "cka": method_scores(prepared, "cka", layout)}, layout, 2000)
    assert [o.allocation for o in outcomes] == [None, None]
    assert "below uniform LoRA's smallest plan" in outcomes[0].error
    assert "does not fit a single block" in outcomes[1].error
    assert summary(outcomes, 2000)["note"].tolist() == [o.error for o in outcomes]


def test_plan_figure_difference_is_rank_minus_uniform(prepared):
    layout = layout_for(prepared)
    plans = exhibits_for(prepared, "plans", "r4")
    assert [e.name for e in plans] == ["plans_165888", "plans_165888_vs_uniform"]
    data = plans[0].data()
    uniform = data[data["method"] == "uniform"].set_index(["layer", "module"])["rank"]
    difference = plans[1].figure()
    assert "uniform" not in [a.text.split("<br>")[0] for a in difference.layout.annotations]
    shapley = data[data["method"] == "shapley"].set_index(["layer", "module"])["rank"] - uniform
    expected = shapley.unstack().reindex(columns=layout.module_types)
    trace = next(t for t, a in zip(difference.data, difference.layout.annotations) if a.text.startswith("shapley"))
    np.testing.assert_array_equal(np.asarray(trace.z), expected.to_numpy())


@pytest.mark.slow
def test_export_command_writes_every_format_atomically(store_dir, tmp_path):
    listed = cli(store_dir, "export", "--signal", "all", "--list", "--val-size", "16")
    assert listed.returncode == 0 and "all_signals_heatmaps" in listed.stdout and "signal_agreement" in listed.stdout
    for name, extra in [("fig.pdf", []), ("fig.svg", ["--grayscale"]), ("fig.png", ["--width", "page"]),
                        ("table.csv", ["--figure", "shapley_layers"]), ("table.tex", ["--format", "tex"])]:
        out = tmp_path / name
        result = cli(store_dir, "export", "--signal", "shapley", "--val-size", "16", "--out", str(out), *extra)
        assert result.returncode == 0, result.stderr
        assert out.stat().st_size > 0 and not list(tmp_path.glob(".*.tmp"))
    assert pd.read_csv(tmp_path / "table.csv").columns.tolist() == ["layer", "value", "stderr"]
    assert (tmp_path / "fig.pdf").read_bytes().startswith(b"%PDF")
    assert r"\begin{tabular}" in (tmp_path / "table.tex").read_text()


@pytest.mark.parametrize("args, message", [
    (["--signal", "shapley", "--figure", "nope", "--out", "{tmp}/x.pdf"], "has no figure 'nope'"),
    (["--signal", "shapley", "--out", "{tmp}/x.docx"], "Unknown format 'docx'"),
    (["--signal", "grad_norm", "--out", "{tmp}/x.pdf"], "has not been computed"),
    (["--signal", "comparison", "--out", "{tmp}/x.tex"], "No retrain comparison"),
    (["--signal", "shapley"], "--out"),
    (["--signal", "shapley", "--out", "{tmp}/missing/x.pdf"], "does not exist"),
    (["--signal", "plans", "--budget", "r0.5", "--figure", "plans_20736_vs_uniform", "--out", "{tmp}/x.pdf"],
     "uniform LoRA has none to subtract"),
    (["--signal", "shapley", "--fractions", "nan,0.5,0.5", "--out", "{tmp}/x.csv"], "three positive fractions"),
])
def test_export_errors_are_one_sentence_and_write_nothing(store_dir, tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.setenv("ANALYSIS_CACHE_DIR", str(store_dir))
    argv = ["export", "--val-size", "16", *[a.format(tmp=tmp_path) for a in args]]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error and len(error.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())


def test_plan_json_round_trips(prepared, tmp_path):
    layout = layout_for(prepared)
    budget = parse_budget("r2", layout)
    outcome = preview({"sora": method_scores(prepared, "sora", layout)}, layout, budget)[0]
    plan = plan_json(outcome, layout, budget, {})
    assert json.loads(json.dumps(plan)) == plan and plan["trainable_params"] == outcome.allocation.cost


def test_without_a_browser_figures_fail_in_one_sentence_and_tables_still_export(store_dir, tmp_path, monkeypatch,
                                                                                 capsys):
    monkeypatch.setenv("ANALYSIS_CACHE_DIR", str(store_dir))
    monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "no-chrome"))
    assert main(["export", "--signal", "cka", "--val-size", "16", "--out", str(tmp_path / "f.pdf")]) == 2
    error = capsys.readouterr().err
    assert "needs a Chromium" in error and "apt-get install chromium" in error
    assert not (tmp_path / "f.pdf").exists()
    assert main(["export", "--signal", "cka", "--val-size", "16", "--out", str(tmp_path / "t.csv")]) == 0
    assert (tmp_path / "t.csv").read_text().startswith("signal,layer")


def test_the_plan_table_of_a_budget_nothing_fits_is_empty_with_its_columns(prepared):
    layout = layout_for(prepared)
    outcomes = preview({UNIFORM: None}, layout, 100)
    empty = plan_exhibit(outcomes, layout, 100, difference=True).data()
    assert list(empty.columns) == ["method", "layer", "module", "rank", "rank_minus_uniform"] and empty.empty
    data = exhibits_for(prepared, "plans", "r4")[1].data()
    shapley = data[data["method"] == "shapley"]
    assert "uniform" not in set(data["method"]) and (shapley["rank_minus_uniform"] == shapley["rank"] - 4).all()


def test_the_square_cka_matrix_keeps_its_axes_at_the_cells():
    """The layer x layer matrix is drawn square: its axis lines must span the heatmap, not the whole plot area
    (they stood apart from the cells in exported SVGs)."""
    from analysis.signals.cka.cka_figures import cka_matrix_figure
    rows = [{"layer": i, "layer2": j, "value": float(np.exp(-abs(i - j) / 3))} for i in range(7) for j in range(7)]
    exhibit = Exhibit("cka_matrix", "Layer x layer CKA", lambda: pd.DataFrame(rows),
                      lambda: cka_matrix_figure(pd.DataFrame(rows)))
    svg = render(exhibit, "svg").decode()
    image = re.search(r'<image[^>]*height="([\d.]+)" width="([\d.]+)"', svg)
    side = float(image.group(2))
    x_line = re.search(r'class="xlines-above[^"]*" d="M([\d.]+),[\d.]+H([\d.]+)"', svg)
    y_line = re.search(r'class="ylines-above[^"]*" d="M[\d.]+,([\d.]+)V([\d.]+)"', svg)
    assert float(image.group(1)) == side
    assert abs(float(x_line.group(2)) - float(x_line.group(1)) - side) < 2
    assert abs(float(y_line.group(2)) - float(y_line.group(1)) - side) < 2


def test_undefined_cells_are_grey_with_a_legend_entry_and_each_panel_keeps_its_scale():
    """A degenerate CKA block has no value: it is drawn grey (with a legend entry), never as a colour of the
    scale; a signed signal gets the diverging scale without changing the one-signed panels' scale."""
    from analysis.charts.tidy_figures import UNDEFINED_GREY, side_by_side_heatmaps
    frames = {"cka": pd.DataFrame({"layer": [0, 1, 2], "module": "block", "value": [np.nan, 0.3, 0.6]}),
              "shapley": pd.DataFrame({"layer": [0, 1, 2], "module": "q", "value": [-0.2, 0.1, 0.4]})}
    figure = side_by_side_heatmaps(frames)
    panels = [t for t in figure.data if t.type == "heatmap" and t.coloraxis]
    grey = [t for t in figure.data if t.type == "heatmap" and not t.coloraxis]
    assert [t.coloraxis for t in panels] == ["coloraxis", "coloraxis2"]
    assert (figure.layout.coloraxis.cmin, figure.layout.coloraxis.cmax) == (0, 1)
    assert figure.layout["coloraxis2"].colorscale[0][1] != figure.layout.coloraxis.colorscale[0][1]
    assert len(grey) == 1 and grey[0].colorscale[0][1] == UNDEFINED_GREY
    np.testing.assert_array_equal(np.asarray(grey[0].z, dtype=float).ravel(), [1.0, np.nan, np.nan])
    assert any(t.type == "scatter" and t.name == "no value (undefined)" for t in figure.data)
    np.testing.assert_allclose(np.asarray(panels[0].z, dtype=float).ravel(), [np.nan, 0.5, 1.0])
