"""The inputs that are not refused but adjusted or reported: rows left out, a --val-size or --max-length
beyond what there is, too few examples for a signal, duplicate points for the ID estimators; and the rules that
must be the same everywhere (which cached entry a command uses), the plan JSON applied by hand, one-seed
comparisons."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from analysis.__main__ import main
from analysis.settings import RunSettings
from analysis.signals.context import prepare
from analysis.store.cache import Store


def run_cli(argv, capsys):
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def messy_csv(tmp_path: Path) -> tuple[str, dict]:
    """200 rows: 60 without a label, 20 empty and 20 blank texts, 9 without text (one of them also without a
    label); 92 usable."""
    rng = np.random.default_rng(0)
    texts = [f"a review, number {i}, of a film" for i in range(200)]
    labels = [float(rng.integers(0, 2)) for _ in range(200)]
    for i in range(0, 60):
        labels[i] = None
    for i in range(60, 100):
        texts[i] = "" if i % 2 else "   "
    for i in range(100, 108):
        texts[i] = None
    texts[0] = None   # no text and no label: counted once, as no text
    path = tmp_path / "messy.csv"
    pd.DataFrame({"text": texts, "label": labels}).to_csv(path, index=False)
    return str(path), {"no text": 29, "no label": 59, "empty text": 20}   # an empty CSV cell reads as missing


def test_rows_left_out_are_counted_in_the_log_and_the_entry(cache_dir, tmp_path, capsys, monkeypatch):
    from analysis.model.sources import data as sources_data
    from analysis.signals import context

    reads, read = [], sources_data.load_data
    for module in (sources_data, context):   # every way a run reads the data, counted
        monkeypatch.setattr(module, "load_data", lambda *a, **k: reads.append(a) or read(*a, **k))
    data, dropped = messy_csv(tmp_path)
    code, out, err = run_cli(["run", "--data", data, "--signals", "state_change,cka", "--val-size", "8",
                              "--batch-size", "8", "--device", "cpu", "--fractions", "0.8,0.1,0.1"], capsys)
    assert code == 0, err
    assert len(reads) == 1   # a new file is read once, by the run that computes
    assert "warning: 108 of 199 rows" not in err   # the count is of the file's rows
    assert "warning: 108 of 200 rows of" in err and "(29 with no text, 59 with no label, 20 with empty text)" in err
    assert "cka uses 8 validation examples, fewer than the 32 it needs" in err
    metas = {e.meta["signal"]: e.meta for e in Store(cache_dir).entries()}
    assert metas["state_change"]["dropped_rows"] == dropped
    assert any("108 of 200 rows" in w for w in metas["state_change"]["setup_warnings"])
    assert any("fewer than the 32" in w for w in metas["cka"]["warnings"])
    assert not any("fewer than" in w for w in metas["state_change"]["warnings"])
    # All cached: the re-run says the rows left out again (from the entries; it reads no data).
    code, out, err = run_cli(["run", "--data", data, "--signals", "state_change,cka", "--val-size", "8",
                              "--batch-size", "8", "--device", "cpu", "--fractions", "0.8,0.1,0.1"], capsys)
    assert code == 0 and out.count("cached") == 2 and "warning: 108 of 200 rows of" in err and len(reads) == 1


def test_val_size_and_max_length_beyond_what_there_is_use_the_real_values(cache_dir, tmp_path):
    data, _ = messy_csv(tmp_path)
    said = []
    prepared = prepare(RunSettings(data=data, val_size=100000, max_length=1000, device="cpu"), Store(cache_dir),
                       warn=said.append)
    available = len(prepared.splits.validation)
    assert prepared.settings.val_size == available == len(prepared.validation) == 9
    assert prepared.settings.max_length == 512   # all-MiniLM-L6-v2 takes 512 tokens
    assert said == prepared.warnings == prepared.description["setup_warnings"]
    assert any(f"--val-size 100000 is more than the {available} validation examples" in w for w in said)
    assert any("--max-length 1000 is beyond what all-MiniLM-L6-v2 (embedded) takes; using 512" in w for w in said)
    assert prepared.description["settings"]["val_size"] == available   # what the pages show
    exact = prepare(RunSettings(data=data, val_size=available, max_length=512, device="cpu"), Store(cache_dir),
                    warn=None)
    assert exact.key == prepared.key   # the same analysis, the same cache entries


def test_max_length_1000_runs_on_long_texts(cache_dir, tmp_path, capsys):
    """Texts longer than the model's maximum with --max-length 1000 crashed with a tensor size mismatch."""
    path = tmp_path / "long.csv"
    pd.DataFrame({"text": [" ".join(["word"] * 900)] * 30, "label": [0, 1] * 15}).to_csv(path, index=False)
    code, out, err = run_cli(["run", "--data", str(path), "--max-length", "1000", "--signals", "state_change",
                              "--val-size", "4", "--batch-size", "4", "--device", "cpu"], capsys)
    assert code == 0, err
    assert "using 512 tokens per example" in err


def test_labels_that_look_like_ids_or_floats_pass_with_allow_many_classes(tmp_path):
    from analysis.model.sources.data import load_data
    path = tmp_path / "ids.csv"
    pd.DataFrame({"text": [f"t{i}" for i in range(30)], "label": [i / 3 for i in range(30)]}).to_csv(path, index=False)
    data = load_data(str(path), allow_many_classes=True)
    assert len(data.label_names) == 30
    whole = tmp_path / "whole.csv"   # 1.0 / 0.0 with a NaN (read as floats) are the classes 0 and 1
    pd.DataFrame({"text": ["a", "b", "c", "d"], "label": [1.0, 0.0, None, 1.0]}).to_csv(whole, index=False)
    data = load_data(str(whole))
    assert data.label_names == ["0", "1"] and data.dropped == {"no label": 1}


def test_show_plan_and_export_pick_the_same_entry_by_one_rule(cache_dir, capsys):
    """Without --set, the default variant or else the newest one; with --set, exactly that variant."""
    from analysis.signals.registry import get_signal, make_config
    from analysis.signals.runner import run_signals
    from analysis.store.lookups import find_entry
    from tests.synthetic_store import MAKERS
    from analysis.planning.methods import layout_for

    def synthetic(context, config):
        modules = list(layout_for(context.prepared.run).modules)
        return MAKERS["cka"](modules, sorted({m.layer for m in modules}), np.random.default_rng(0))

    settings = RunSettings(val_size=16, device="cpu")
    signal = dataclasses.replace(get_signal("cka"), compute=synthetic)
    [(_, variant, _)] = run_signals(settings, [signal], {"cka": {"unbiased": "true"}}, Store(cache_dir))
    run = prepare(settings, Store(cache_dir), warn=None).run
    assert find_entry(run, signal).key == variant.key                        # the newest variant
    assert find_entry(run, signal, make_config(signal, {"unbiased": "false"})) is None   # exactly what was asked
    code, out, err = run_cli(["show", "--signal", "cka", "--val-size", "16", "--device", "cpu"], capsys)
    assert code == 0 and len(out.splitlines()) > 1, err
    code, out, err = run_cli(["show", "--signal", "cka", "--val-size", "16", "--device", "cpu", "--set",
                              "cka.unbiased=false"], capsys)
    assert code == 2 and "has not been computed with --set cka.unbiased=false" in err
    code, out, err = run_cli(["plan", "--signal", "cka", "--val-size", "16", "--device", "cpu", "--budget", "r2",
                              "--out", str(cache_dir.parent / "plan.json")], capsys)
    assert code == 0, err
    [(_, default, _)] = run_signals(settings, [signal], None, Store(cache_dir))
    run = prepare(settings, Store(cache_dir), warn=None).run   # read again: a run's entries are those it first read
    assert find_entry(run, signal).key == default.key != variant.key      # the default one, once there


def test_the_plan_json_applied_by_hand_trains_the_head(cache_dir, tmp_path, capsys):
    from peft import get_peft_model
    from transformers import AutoModel, AutoModelForSequenceClassification

    from analysis.model.sources.models import resolve_model
    from analysis.planning.plan_json import check_peft_model, for_base_model, lora_config, plan_ranks, read_plan
    out = tmp_path / "plan.json"
    code, _, err = run_cli(["plan", "--budget", "r2", "--out", str(out), "--device", "cpu"], capsys)
    assert code == 0, err
    plan = read_plan(out)
    assert plan["task_type"] == "SEQ_CLS" and plan["modules_to_save"] == ["classifier"]
    path = resolve_model("minilm", cache_dir).path
    task_model = get_peft_model(AutoModelForSequenceClassification.from_pretrained(path, num_labels=2),
                                lora_config(plan, with_task=True))
    trainable = {name for name, p in task_model.named_parameters() if p.requires_grad}
    assert any("classifier" in name for name in trainable)
    check_peft_model(plan, task_model)
    bare = for_base_model(plan)
    assert all(not key.startswith("bert.") for key in bare["target_modules"])
    base_model = get_peft_model(AutoModel.from_pretrained(path), lora_config(bare))
    ranks = {name.removeprefix("base_model.model."): module.r["default"]
             for name, module in base_model.named_modules() if hasattr(module, "lora_A")}
    assert ranks == plan_ranks(bare)


def test_compare_with_one_seed_prints_no_spread():
    from analysis.reporting.comparison_tables import formatted
    from analysis.training.comparison_stats import summarise
    runs = pd.DataFrame({"budget": "r2", "method": ["uniform", "cka", "cka", "cka"], "seed": [0, 0, 1, 2],
                         "lr": 1e-3, "trainable_params": 100, "accuracy": [0.406, 0.49, 0.50, 0.51],
                         "f1": 0.4, "test_loss": 0.6, "train_seconds": 1.0, "did_not_train": None})
    table = formatted(summarise(runs, "classification"), "classification")
    assert table["accuracy (%)"].tolist() == ["40.6", "50.0 ± 1.0"]


def test_a_cka_plan_far_under_the_budget_warns():
    from analysis.allocation.allocate import allocate, scores_from_tables
    from analysis.allocation.budgets import uniform_cost
    from analysis.signals.registry import get_signal
    from analysis.model.layout import layout_of
    from tests.conftest import tiny_llama
    layout = layout_of(tiny_llama(layers=4))
    table = pd.DataFrame({"signal": "cka", "layer": range(4), "module": "block", "value": [0.4, 0.3, 0.2, 0.1]})
    scores = scores_from_tables("cka", get_signal("cka").plan, {"main": table}, layout)
    allocation = allocate(scores, layout, uniform_cost(layout, 32))
    assert any("of the budget" in w and "--block-rank" in w for w in allocation.warnings)
    assert not allocate(scores, layout, uniform_cost(layout, 8)).warnings   # all blocks at rank 8: the whole budget


class _States:
    """What the id signal computes with: collected states and a place for warnings."""

    def __init__(self, states):
        self.states, self.warnings = states, []

    def collected_states(self, pooling, split="validation"):
        return self.states

    def warn(self, message):
        self.warnings.append(message)


@pytest.mark.parametrize("estimator", ["twonn", "MLE", "TwoNN", "lPCA"])
def test_duplicate_points_are_dropped_for_every_estimator(estimator):
    """Token pooling repeats a padded or [CLS]-like vector: MLE gave block 0 an ID of 0.0 and a bound of 8."""
    import skdim.id

    from analysis.signals.id import IntrinsicDimConfig, compute
    generator = torch.Generator().manual_seed(0)
    distinct = [torch.randn(120, 3, generator=generator) @ torch.randn(3, 16, generator=generator)
                for _ in range(3)]
    states = [torch.cat([distinct[0], distinct[0][:1].repeat(80, 1)])] + distinct[1:]   # 80 copies of one point
    context = _States(states)
    result = compute(context, IntrinsicDimConfig(estimator=estimator))
    dims = result.tables["dimensions"]
    assert dims["duplicates"].tolist() == [80, 0, 0]
    assert any("80 of 200 points are duplicates in hidden state(s) 0" in w for w in context.warnings)
    assert (dims["id"] > 1).all() and not dims["degenerate"].any()
    if estimator not in ("twonn", "TwoNN"):   # the torch TwoNN drops every copy; the others keep one of each
        reference = getattr(skdim.id, estimator)().fit(torch.unique(states[0], dim=0).double().numpy()).dimension_
        assert dims["id"][0] == pytest.approx(reference)


def test_a_degenerate_estimate_is_flagged(monkeypatch):
    import analysis.signals.id as intrinsic_dim
    from analysis.signals.id import IntrinsicDimConfig, compute, degenerate
    assert degenerate(0.0, torch.zeros(10, 4)) and degenerate(50.0, torch.zeros(10, 4))
    assert not degenerate(3.0, torch.zeros(10, 4))
    estimates = iter([3.0, 0.0, 4.0, 5.0])   # state 1's estimate is 0: what MLE gave on duplicated points
    monkeypatch.setattr(intrinsic_dim, "estimator_for", lambda config: lambda points: next(estimates))
    generator = torch.Generator().manual_seed(1)
    context = _States([torch.randn(60, 8, generator=generator) for _ in range(4)])
    result = compute(context, IntrinsicDimConfig(estimator="MLE"))
    assert result.tables["dimensions"]["degenerate"].tolist() == [False, True, False, False]
    assert result.table["degenerate"].tolist() == [True, True, False]   # blocks 0 and 1 touch state 1
    assert any("degenerate" in w and "hidden state(s) 1;" in w for w in context.warnings)


def test_a_warm_up_shows_one_progress_bar(encoder_context, monkeypatch):
    """The warm-up's steps are the bar; the train batches it draws inside them are not a second, nested one
    ("train batches 4/638 [ETA 5:53:18]" inside a 5-step warm-up)."""
    import analysis.signals.context as context_module
    import analysis.signals.lora.warmup as warmup_module
    from analysis.signals.lora.warmup import WarmupConfig
    bars = []

    def recording(iterable, total=None, desc="", **kwargs):
        bars.append(desc)
        return iterable

    monkeypatch.setattr(context_module, "progress", recording)
    monkeypatch.setattr(warmup_module, "progress", recording)
    warmup_module._train(encoder_context, WarmupConfig(r_max=2, warmup_steps=2, warmup_batch_size=4))
    assert bars == ["warm-up"]
