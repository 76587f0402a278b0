"""The module baselines: attention and MLP told apart on BERT, Llama and GPT-2 as each architecture names them, and
uniform LoRA on one family at the comparison's budget, its parameters counted by hand from the config's sizes and
by peft itself after get_peft_model."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from analysis.errors import UserError
from analysis.model.layout import layout_of
from analysis.planning.baselines import baseline_rows
from analysis.planning.methods import make_plan
from analysis.planning.plan_json import lora_config
from analysis.settings import CompareSettings, Limits, RunSettings
from tests.conftest import tiny_bert, tiny_gpt2, tiny_llama

# Each architecture's module types by family, as its modelling code names the linears of a block.
EXPECTED = {
    "bert": {"attention": ["query", "key", "value", "attention.output.dense"],
             "mlp": ["intermediate.dense", "output.dense"]},
    "llama": {"attention": ["q_proj", "k_proj", "v_proj", "o_proj"], "mlp": ["gate_proj", "up_proj", "down_proj"]},
    "gpt2": {"attention": ["c_attn", "attn.c_proj"], "mlp": ["c_fc", "mlp.c_proj"]},
}
# d_in + d_out of each family's linears in one block, from the tiny configs' sizes: BERT hidden 32, intermediate
# 48; Llama hidden 32, intermediate 72, 4 heads of 8 and 2 key-value heads (k and v project to 16); GPT-2 hidden 32,
# c_attn to 3 x 32, c_fc to 4 x 32.
PER_RANK = {
    "bert": {"attention": 4 * (32 + 32), "mlp": (32 + 48) + (48 + 32)},
    "llama": {"attention": (32 + 32) + 2 * (32 + 16) + (32 + 32), "mlp": 3 * (32 + 72)},
    "gpt2": {"attention": (32 + 96) + (32 + 32), "mlp": (32 + 128) + (128 + 32)},
}
LAYERS = 3
MODELS = {"bert": lambda: tiny_bert(LAYERS), "llama": lambda: tiny_llama(LAYERS), "gpt2": lambda: tiny_gpt2(LAYERS)}
IDENTITY = SimpleNamespace(settings=RunSettings())   # a plan records the run's settings; nothing else is read


@pytest.mark.parametrize("name", list(MODELS))
def test_attention_and_mlp_are_told_apart_as_each_architecture_names_them(name):
    layout = layout_of(MODELS[name]())
    found = {family: [t for t in layout.module_types
                      if layout.family(next(m for m in layout.modules if m.name == t)) == family]
             for family in ("attention", "mlp")}
    assert found == EXPECTED[name]
    # every module of a type is in its type's family, in every block
    assert all(layout.family(m) == ("attention" if m.name in EXPECTED[name]["attention"] else "mlp")
               for m in layout.modules)


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("family", ["attention", "mlp", "all"])
def test_a_baseline_spends_the_budget_at_the_largest_whole_rank_and_peft_counts_the_same(name, family):
    from peft import get_peft_model

    model = MODELS[name]()
    layout = layout_of(model)
    per_rank = PER_RANK[name]
    everything = per_rank["attention"] + per_rank["mlp"]
    budget = 5 * everything * LAYERS   # r5: uniform rank 5 on every linear
    cost = everything if family == "all" else per_rank[family]
    rank = budget // (cost * LAYERS)   # uniform LoRA's rule: the largest whole rank that fits
    expected = rank * cost * LAYERS
    plan = make_plan(IDENTITY, f"uniform-{family}", "r5", Limits(), layout=layout)
    assert plan["budget"] == budget and plan["trainable_params"] == expected <= budget
    assert budget - expected < cost * LAYERS   # one more rank would not fit
    assert plan["r"] == rank and plan["rank_pattern"] == {} and plan["signal"] == f"uniform-{family}"
    plan = json.loads(json.dumps(plan))   # as a user loads plan.json
    peft_model = get_peft_model(model, lora_config(plan))
    assert sum(p.numel() for p in peft_model.parameters() if p.requires_grad) == expected
    adapted = {path for path, module in peft_model.base_model.model.named_modules() if hasattr(module, "lora_A")}
    types = [*EXPECTED[name]["attention"], *EXPECTED[name]["mlp"]] if family == "all" else EXPECTED[name][family]
    assert adapted == {m.path for m in layout.modules if m.name in types}


def test_the_budget_is_uniforms_under_modules_and_the_baselines_ignore_modules():
    """With --modules query,value, r4 costs what uniform rank 4 on query and value costs; the MLP baseline spends
    that budget on the MLP's linears only, at the rank that fits."""
    layout = layout_of(tiny_bert(LAYERS))
    limits = Limits(module_types=("query", "value"))
    budget = 4 * 2 * (32 + 32) * LAYERS
    plan = make_plan(IDENTITY, "uniform-mlp", "r4", limits, layout=layout)
    mlp = PER_RANK["bert"]["mlp"] * LAYERS
    assert plan["budget"] == budget and plan["trainable_params"] == (budget // mlp) * mlp
    assert {m.name for m in layout.modules if m.path in plan["target_modules"]} == {"intermediate.dense",
                                                                                     "output.dense"}


def test_a_baseline_identical_to_uniform_is_left_out_with_a_note():
    layout = layout_of(tiny_bert(LAYERS))
    rows, notes = baseline_rows(layout, ["attention", "mlp", "all"], Limits())
    assert rows == ["uniform-attention", "uniform-mlp"] and len(notes) == 1 and "'all' baseline" in notes[0]
    attention = tuple(EXPECTED["bert"]["attention"])
    rows, notes = baseline_rows(layout, ["attention", "mlp", "all"], Limits(module_types=attention))
    assert rows == ["uniform-mlp", "uniform-all"] and "'attention' baseline" in notes[0]
    rows, notes = baseline_rows(layout, ["all", "mlp", "attention"], Limits(module_types=("query", "value")))
    assert rows == ["uniform-all", "uniform-mlp", "uniform-attention"] and notes == []


def test_baseline_lists_are_read_or_refused_and_a_budget_too_small_says_which_baseline():
    assert CompareSettings(baselines="attention, mlp,all,mlp").baselines == ("attention", "mlp", "all")
    assert CompareSettings(baselines="none").baselines == () and CompareSettings(baselines="").baselines == ()
    with pytest.raises(UserError, match="^--baselines must be one of attention, mlp, all, not 'ffn'.$"):
        CompareSettings(baselines="attention,ffn")
    layout = layout_of(tiny_bert(LAYERS))
    # r1 on query alone is 64 x 3 parameters: less than rank 1 on every attention linear (256 x 3)
    with pytest.raises(UserError, match="'attention' baseline .* has no plan at r1"):
        make_plan(IDENTITY, "uniform-attention", "r1", Limits(module_types=("query",)), layout=layout)


def test_a_comparison_puts_the_baselines_after_uniform_and_before_the_methods(tmp_path, monkeypatch, capsys):
    """The real compare with each retrain replaced by what it reads of a finished run: its rows, the baseline
    plans at every budget, and the note for the baseline that is uniform itself."""
    from analysis.store.cache import Store
    from analysis.settings import TrainSettings
    from analysis.training import compare as comparison

    def fake_runs(requests, store, adapters_at_once=None, counted=None):
        return [SimpleNamespace(key=f"run-{r.plan['signal']}-{r.plan['budget']}-{r.config.seed}", meta={
            "config": {"lr": r.config.lr}, "metrics": {"accuracy": 0.8, "f1": 0.8, "test_loss": 0.5},
            "train_seconds": 1.0, "did_not_train": None}) for r in requests]
    monkeypatch.setattr(comparison, "train_runs", fake_runs)
    entry = comparison.compare(RunSettings(val_size=16, device="cpu"), [],
                               CompareSettings(budgets=("r1", "r2"), seeds=(0, 1), tune_lr=()), TrainSettings(),
                               store=Store(tmp_path))
    assert "uniform LoRA already adapts every linear" in capsys.readouterr().out
    assert entry.meta["methods"] == ["uniform", "uniform-attention", "uniform-mlp"]
    assert entry.meta["baselines"] == ["attention", "mlp", "all"]
    runs = entry.table("runs")
    assert runs["method"].tolist()[:6] == ["uniform", "uniform", "uniform-attention", "uniform-attention",
                                           "uniform-mlp", "uniform-mlp"] and len(runs) == 12   # x 2 budgets
    for budget in ("r1", "r2"):
        plans = {m: entry.meta["plans"][f"{budget}/{m}"] for m in entry.meta["methods"]}
        assert len({p["budget"] for p in plans.values()}) == 1   # one budget for every row
        # MiniLM (hidden 384, intermediate 1536): one rank on every linear of a layer costs 4 x (384 + 384) in the
        # attention and 2 x (384 + 1536) in the MLP, 6,912 in all
        assert plans["uniform-attention"]["r"] == int(budget[1]) * 6912 // 3072
        assert plans["uniform-mlp"]["r"] == int(budget[1]) * 6912 // 3840
