"""The SoRA page under AppTest, on a store the real sora signal filled (the page trains nothing)."""


from analysis.settings import RunSettings
from analysis.signals.registry import get_signal
from analysis.signals.runner import run_signals
from analysis.store.cache import Store
from tests.conftest import chart_specs
from tests.pages.signal_page import signal_page

SHORT = {"r_max": "4", "steps": "8", "rounds": "2", "round_steps": "4", "snapshot_every": "4", "xi": "0.05",
         "xi_max": "0.4", "batch_size": "8"}


def test_without_results_the_page_says_what_to_run(cache_dir):
    app = signal_page("sora", 60).run()
    assert not app.exception
    assert any("No SoRA results yet" in info.value for info in app.info)


def test_slider_moves_the_sparsity_heatmap_through_training(cache_dir):
    run_signals(RunSettings(val_size=8, batch_size=8, device="cpu"), [get_signal("sora")], {"sora": SHORT},
                Store(cache_dir))
    entry = Store(cache_dir).entries()[0]
    snapshots = entry.table("snapshots")
    app = signal_page("sora", 60).run()
    assert not app.exception
    assert any("update rule of this run: **official**" in info.value for info in app.info)  # the default, shown
    slider = app.select_slider[0]
    assert list(slider.options) == ["4", "8", "12", "16"] and slider.value == 8  # the end of training
    specs = chart_specs(app)
    assert len(specs) == 3
    at_end = snapshots[snapshots["step"] == 8]
    assert sum(map(sum, specs[0]["data"][0]["z"])) == at_end["nonzero"].sum() == entry.table()["value"].sum()
    assert specs[1]["data"][0]["x"] == [0, 1, 2, 3, 4] and sum(specs[1]["data"][0]["y"]) == 36
    assert specs[2]["data"][1]["y"] == entry.table("schedule")["total_rank"].tolist()
    slider.set_value(4).run()
    first = snapshots[snapshots["step"] == 4]
    assert sum(map(sum, chart_specs(app)[0]["data"][0]["z"])) == first["nonzero"].sum()
    assert "step 4" in chart_specs(app)[0]["layout"]["title"]["text"]


def test_the_page_says_which_checkpoint_the_learned_ranks_come_from(cache_dir):
    run_signals(RunSettings(val_size=8, batch_size=8, device="cpu"), [get_signal("sora")],
                {"sora": {**SHORT, "eval_every": "4"}}, Store(cache_dir))
    entry = Store(cache_dir).entries()[0]
    best = entry.table("validation").query("best").iloc[0]
    app = signal_page("sora", 60).run()
    assert not app.exception
    assert any(f"at step {best['step']}: its gates give the learned ranks" in c.value for c in app.caption)
    assert any(f"Total learned rank (step {best['step']})" == m.label for m in app.metric)
