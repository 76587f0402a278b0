"""The CKA and intrinsic-dimension pages under AppTest, on a store the real signals filled (the pages load no
model)."""
import math

import pandas as pd

from analysis.signals.registry import get_signal
from analysis.signals.runner import run_signals
from analysis.settings import RunSettings
from analysis.store.cache import Result, Store
from tests.conftest import chart_specs
from tests.pages.signal_page import signal_page


def _page(name):
    return signal_page(name, 60).run()


def test_without_results_the_pages_say_what_to_run(cache_dir):
    for name, message in (("cka", "No CKA results yet"), ("id", "No intrinsic-dimension results yet")):
        app = _page(name)
        assert not app.exception
        assert any(message in info.value for info in app.info)


def test_real_cka_and_id_results_render_all_three_views(cache_dir):
    settings = RunSettings(val_size=24, batch_size=8, device="cpu")
    run_signals(settings, [get_signal("cka"), get_signal("id")], store=Store(cache_dir))
    id_page, cka_page = _page("id"), _page("cka")
    assert not id_page.exception and not cka_page.exception
    [ident] = chart_specs(id_page)
    cka, matrix = chart_specs(cka_page)
    store = Store(cache_dir)
    id_entry = next(e for e in store.entries() if e.meta["signal"] == "id")
    cka_entry = next(e for e in store.entries() if e.meta["signal"] == "cka")
    # ID curve: one point per hidden state, embedding output at layer -1; bound bars per block.
    line, bars = ident["data"]
    assert line["x"] == list(range(-1, 6)) and line["y"] == id_entry.table("dimensions")["id"].tolist()
    assert bars["x"] == list(range(6)) and bars["y"] == id_entry.table()["value"].tolist()
    # CKA bars: auto pooling is CLS for the encoder, so block 0 is degenerate, marked and not scored.
    table = cka_entry.table()
    assert cka["data"][0]["x"] == [1, 2, 3, 4, 5] and cka["data"][0]["y"] == table["value"][1:].tolist()
    assert [a["text"] for a in cka["layout"]["annotations"]] == ["degenerate"]
    # Matrix: 7 x 7 states with the embedding's row and column blank, ones on the rest of the diagonal.
    z = matrix["data"][0]["z"]
    assert len(z) == 7 and all(math.isnan(v) for v in z[0]) and all(abs(z[j][j] - 1) < 1e-12 for j in range(1, 7))
    assert matrix["data"][0]["x"] == ["emb", "0", "1", "2", "3", "4", "5"]
    # Each signal says which split it measured: CKA the paper's train, ID validation.
    assert any("Measured on the **train** split (the paper's choice)" in c.value for c in cka_page.caption)
    assert any("examples of the **validation** split" in c.value for c in id_page.caption)
    for app, figures in ((id_page, 1), (cka_page, 2)):   # each figure in paper style, and its data
        assert [b.label for b in app.get("download_button")] == ["PDF", "SVG", "PNG", "CSV"] * figures


def test_streamed_cka_is_explained(cache_dir):
    table = pd.DataFrame({"signal": "cka", "layer": [0, 1], "module": "block", "value": [0.2, 0.1],
                          "degenerate": [False, False]})
    Store(cache_dir).put("k1", Result(table), {"signal": "cka", "title": "CKA", "context_key": "ctx",
                                               "model_name": "tiny", "data": "d", "config": {"accumulate": True},
                                               "version": get_signal("cka").version})
    app = _page("cka")
    assert not app.exception
    assert any("consecutive pairs only" in caption.value for caption in app.caption)
    assert len(app.get("plotly_chart")) == 1
