"""One rule picks a signal's entry in a run (store.lookups.chosen_entry): of the signal's current code version, the
entry with default options, else the newest. `show`, `plan`, `export` (one signal or all) and the pages' default
choice all follow it, on a real store holding a default and a newer variant of one signal."""
from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import streamlit as st

from analysis.__main__ import main
from analysis.planning.methods import layout_for, method_scores, scores_from_entry
from analysis.reporting.exhibits import cached_signals, overview_exhibits, render, signal_exhibits
from analysis.settings import RunSettings
from analysis.signals.context import identify
from analysis.signals.registry import all_signals, get_signal, make_config
from analysis.store.cache import Entry
from analysis.contract.run import Run
from analysis.store.lookups import chosen_entries, chosen_entry, find_entry
from tests.pages.signal_page import signal_page
from tests.synthetic_store import fill

REPO = Path(__file__).resolve().parents[2]
SETTINGS = RunSettings(val_size=16, device="cpu")
FLAGS = ["--val-size", "16", "--device", "cpu"]


def _entry(tmp_path, name: str, created: float, version: int, **config) -> Entry:
    defaults = {"split": "train", "pooling": "auto", "unbiased": False, "accumulate": False}
    return Entry(tmp_path / name, {"signal": "cka", "created": created, "version": version,
                                   "config": {**defaults, **config}})


def test_the_rule_prefers_defaults_then_the_newest_of_the_current_version(tmp_path):
    cka = get_signal("cka")
    old_default = _entry(tmp_path, "old", 4, cka.version - 1)
    variant, older_variant = _entry(tmp_path, "v", 3, cka.version, split="validation"), \
        _entry(tmp_path, "w", 1, cka.version, unbiased=True)
    default = _entry(tmp_path, "d", 2, cka.version)
    run = Run("k", {}, {"cka": [old_default, variant, default, older_variant]})
    assert chosen_entry(run, cka) is default
    run.entries["cka"].remove(default)
    assert chosen_entry(run, cka) is variant                    # no default: the newest of this version
    assert chosen_entry(Run("k", {}, {"cka": [old_default]}), cka) is None


@pytest.fixture
def two_variants(cache_dir):
    """CKA with default options, then (newer) with split=validation and other numbers."""
    store = fill(cache_dir, SETTINGS, signals=("cka",), seed=0)
    [default] = store.entries()
    time.sleep(0.01)    # entries are ordered by their creation time
    fill(cache_dir, SETTINGS, signals=("cka",), seed=1, overrides={"cka": {"split": "validation"}})
    variant = store.entries()[0]
    assert variant.key != default.key and variant.meta["config"]["split"] == "validation"
    assert not default.table().equals(variant.table())
    return store, default, variant


def _cli(argv, capsys) -> str:
    capsys.readouterr()
    assert main(argv) == 0
    return capsys.readouterr().out


def test_commands_exhibits_and_pages_pick_the_same_entry(two_variants, capsys, tmp_path):
    store, default, variant = two_variants
    run, cka = identify(SETTINGS, store), get_signal("cka")

    # show and plan (plan reads its scores through find_entry, as the Budget and Retrain plans do)
    assert find_entry(run, cka).key == default.key
    named = make_config(cka, {"split": "validation"})
    assert find_entry(run, cka, named).key == variant.key   # named options: exactly those
    shown = pd.read_csv(io.StringIO(_cli(["show", "--signal", "cka", *FLAGS], capsys)))
    pd.testing.assert_frame_equal(shown, default.table(), check_dtype=False)
    layout = layout_for(run)
    planned = method_scores(run, "cka", layout).per_module
    np.testing.assert_array_equal(planned, scores_from_entry("cka", default, layout).per_module)
    assert not np.array_equal(planned, scores_from_entry("cka", variant, layout).per_module)

    # export --signal cka and --signal all
    for what, figure, expected in [("cka", "cka_importance", signal_exhibits(default)[0]),
                                   ("all", "all_signals_heatmaps", overview_exhibits({"cka": default})[0])]:
        out = tmp_path / f"{what}.csv"
        _cli(["export", "--signal", what, "--figure", figure, "--out", str(out), *FLAGS], capsys)
        assert expected.name == figure and out.read_bytes() == render(expected, "csv")
    assert cached_signals(run)["cka"].key == default.key

    # the pages: the All signals and Export pages' entries, and the default of a page's variant choice
    assert chosen_entries(run, all_signals())["cka"].key == default.key
    st.cache_resource.clear()
    app = signal_page("cka").run()
    assert not app.exception, [e.message for e in app.exception]
    [choice] = [s for s in app.selectbox if s.label == "CKA options"]
    assert choice.value.key == default.key and len(choice.options) == 2
    assert any("Measured on the **train** split" in c.value for c in app.caption)
