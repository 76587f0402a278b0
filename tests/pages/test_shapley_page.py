"""The Shapley page under AppTest, on a store the real shapley and adalora signals filled (the page loads no model)."""

import pandas as pd

from analysis.settings import RunSettings
from analysis.contract.tidy import per_module
from analysis.signals.registry import get_signal
from analysis.signals.runner import run_signals
from analysis.store.cache import Result, Store
from tests.conftest import chart_specs
from tests.pages.signal_page import signal_page

WARMUP = {"warmup_steps": "4", "warmup_batch_size": "8", "r_max": "2"}


def _page():
    return signal_page("shapley", 60).run()


def test_without_results_the_page_says_what_to_run(cache_dir):
    app = _page()
    assert not app.exception
    assert any("No Shapley or AdaLoRA results yet" in info.value for info in app.info)
    assert any("code is not public" in caption.value for caption in app.caption)


def test_real_results_render_every_view_with_standard_errors(cache_dir):
    settings = RunSettings(val_size=16, batch_size=8, device="cpu")
    overrides = {"shapley": {**WARMUP, "samples": "4", "min_samples": "2", "tolerance": "0"}, "adalora": WARMUP}
    run_signals(settings, [get_signal("shapley"), get_signal("adalora")], overrides, Store(cache_dir))
    app = _page()
    assert not app.exception
    shapley = next(e for e in Store(cache_dir).entries() if e.meta["signal"] == "shapley")
    specs = chart_specs(app)
    assert len(specs) == 5  # layers, modules, ranks, convergence, agreement with AdaLoRA
    assert any("**ShapLoRA's sensitivity**" in info.value and "**validation** split" in info.value
               for info in app.info)   # the default reading, the paper's
    layers = shapley.table("layers")
    bars = specs[0]["data"][0]
    assert bars["y"] == layers["value"].tolist() and bars["error_y"]["array"] == layers["stderr"].tolist()
    assert len(specs[1]["data"][0]["z"]) == 6 and len(specs[1]["data"][0]["z"][0]) == 6  # layer x module
    assert len(specs[2]["data"][0]["y"]) == 36 and specs[2]["data"][0]["x"] == [0, 1]     # (layer, module) x rank
    curves = [t for t in specs[3]["data"] if t.get("name", "").startswith("layer")]
    assert len(curves) == 6 and sum(t.get("fill") == "toself" for t in specs[3]["data"]) == 6  # a curve and band per layer
    assert "Spearman" in specs[4]["layout"]["title"]["text"]
    assert specs[4]["layout"]["title"]["text"].startswith("ShapLoRA sensitivity vs AdaLoRA")
    assert [m.value for m in app.metric][0] == "4"


def test_adalora_alone_is_shown_and_shapley_asked_for(cache_dir):
    table = pd.DataFrame({"signal": "adalora", "layer": [0, 0, 1, 1], "module": ["q", "q", "k", "k"],
                          "value": [0.1, 0.2, 0.3, 0.4], "rank": [0, 1, 0, 1]})
    Store(cache_dir).put("a1", Result(table, tables={"modules": per_module(table)}),
                         {"signal": "adalora", "context_key": "ctx", "model_name": "tiny", "data": "d", "config": {},
                          "version": get_signal("adalora").version})
    app = _page()
    assert not app.exception
    assert any("not computed for this run yet (signal `shapley`)" in info.value for info in app.info)
    assert len(chart_specs(app)) == 1


def test_the_exact_reference_and_the_reading_are_shown(cache_dir):
    rows = [(0, m, r) for m in ("q", "k") for r in (0, 1)]
    table = pd.DataFrame({"signal": "shapley", "layer": [l for l, _, _ in rows], "module": [m for _, m, _ in rows],
                          "value": [0.4, 0.1, 0.2, 0.05], "stderr": 0.01, "rank": [r for _, _, r in rows],
                          "reading": "shapley"})
    modules = pd.DataFrame({"layer": [0, 0], "module": ["q", "k"], "value": [0.5, 0.25], "stderr": [0.01, 0.01]})
    layers = pd.DataFrame({"layer": [0], "value": [0.75], "stderr": [0.01]})
    convergence = pd.DataFrame({"samples": [1, 2], "layer": [0, 0], "value": [0.7, 0.75], "stderr": [float("nan"), 0.02]})
    reference = pd.DataFrame({"layer": 0, "module": ["q", "q", "k", "k"], "rank": [0, 1, 0, 1],
                              "exact": [0.41, 0.1, 0.19, 0.05], "first_order": [0.4, 0.1, 0.2, 0.05],
                              "estimate": [0.4, 0.1, 0.2, 0.05]})
    meta = {"signal": "shapley", "context_key": "ctx", "model_name": "tiny", "data": "d", "reading": "sensitivity",
            "split": "train", "samples": 2, "pilot_samples": 2, "reference_first_order_gap": 0.0244,
            "reference_spearman": 1.0, "config": {}, "version": get_signal("shapley").version}
    Store(cache_dir).put("s1", Result(table, tables={"modules": modules, "layers": layers, "convergence": convergence,
                                                     "reference": reference}), meta)
    app = _page()
    assert not app.exception
    assert any("**ShapLoRA's sensitivity**" in info.value and "**train** split" in info.value for info in app.info)
    captions = [caption.value for caption in app.caption]
    assert any("first-order 2.4%" in c and "only its rank order is compared" in c for c in captions)
    assert any("pilot of 2" in c for c in captions)
    assert "exact Shapley value" in chart_specs(app)[-1]["layout"]["xaxis"]["title"]["text"]


def test_the_first_order_reading_is_named_ours_not_shaplora(cache_dir):
    """An entry of our first-order Shapley value (here one from before the reading option: no reading in its meta)."""
    table = pd.DataFrame({"signal": "shapley", "layer": 0, "module": ["q", "k"], "value": [0.4, 0.1],
                          "stderr": 0.01, "rank": 0})
    modules = table[["layer", "module", "value", "stderr"]]
    layers = pd.DataFrame({"layer": [0], "value": [0.5], "stderr": [0.01]})
    convergence = pd.DataFrame({"samples": [1], "layer": [0], "value": [0.5], "stderr": [float("nan")]})
    Store(cache_dir).put("s0", Result(table, tables={"modules": modules, "layers": layers, "convergence": convergence}),
                         {"signal": "shapley", "context_key": "ctx", "model_name": "tiny", "data": "d", "config": {},
                          "version": get_signal("shapley").version, "samples": 1})
    app = _page()
    assert not app.exception
    assert any("**Shapley first-order (ours)**, not ShapLoRA's measure" in info.value for info in app.info)
    titles = [spec["layout"]["title"]["text"] for spec in chart_specs(app) if spec["layout"].get("title")]
    assert not any("ShapLoRA" in title for title in titles)
