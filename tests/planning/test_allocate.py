"""Allocation and plans: exact parameter counts under peft, each family's rule against an obvious
reference on fresh random tables, limits, and plan validation."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from analysis.allocation.allocate import RANKS, WEIGHTS, allocate, blend, scores_from_tables
from analysis.allocation.budgets import parse_budget, uniform_cost
from analysis.signals.cka.cka_plan import BlockLimits
from analysis.signals.registry import get_signal
from analysis.settings import Limits, PlanOptions
from analysis.errors import UserError
from analysis.model.layout import layout_of, model_layout
from analysis.planning.plan_json import build_plan, check_peft_model, lora_config, plan_ranks, validate
from tests.conftest import tiny_bert, tiny_llama


MODELS = {"bert": tiny_bert, "llama": lambda: tiny_llama(layers=3)}


def plan_family(name):
    """A plan family: ranks and weights are the shared rules, the others are the signals' own."""
    return {"ranks": RANKS, "weights": WEIGHTS}.get(name) or get_signal({"learned": "sora", "bounds": "id",
                                                                        "blocks": "cka"}[name]).plan


def per_rank(layout, rng, r=8, name="shapley"):
    rows = [(name, m.layer, m.name, float(rng.normal()), j) for m in layout.modules for j in range(r)]
    return pd.DataFrame(rows, columns=["signal", "layer", "module", "value", "rank"])


def per_block(layout, values, name):
    return pd.DataFrame({"signal": name, "layer": range(layout.num_layers), "module": "block", "value": values})


def sora_tables(layout, rng, r=8):
    gates = rng.normal(size=(len(layout.modules), r)) * (rng.random((len(layout.modules), r)) < 0.6)
    main = pd.DataFrame({"signal": "sora", "layer": [m.layer for m in layout.modules],
                         "module": [m.name for m in layout.modules], "value": (gates != 0).sum(axis=1)})
    table = per_rank(layout, rng, r, "sora")
    table["value"] = gates.reshape(-1)
    return {"main": main, "gates": table}, gates


def cost_of(layout, ranks):
    return int(sum(r * c for r, c in zip(ranks, layout.costs)))


def closeness(layout, ranks, high, budget):
    """No module below its cap could take one more rank within the budget."""
    leftover = budget - cost_of(layout, ranks)
    return all(r >= h or c > leftover for r, h, c in zip(ranks, high, layout.costs))


@pytest.fixture(params=list(MODELS))
def model_and_layout(request):
    model = MODELS[request.param]()
    return model, layout_of(model)


def test_meta_layout_equals_the_loaded_models(tmp_path):
    for model, task in [(tiny_bert(), "classification"), (tiny_llama(), "causal-lm")]:
        model.save_pretrained(tmp_path / task)
        assert model_layout(tmp_path / task, task, 2) == layout_of(model)


@pytest.mark.parametrize("family", ["uniform", "ranks", "learned", "bounds", "blocks", "weights"])
def test_plan_parameter_counts_are_exact_under_peft(model_and_layout, family):
    from peft import get_peft_model
    model, layout = model_and_layout
    rng = np.random.default_rng(1)
    tables = {"ranks": lambda: {"main": per_rank(layout, rng)},
              "learned": lambda: sora_tables(layout, rng)[0],
              "bounds": lambda: {"main": per_block(layout, rng.integers(1, 6, layout.num_layers), "id")},
              "blocks": lambda: {"main": per_block(layout, rng.random(layout.num_layers), "cka")},
              "weights": lambda: {"main": per_block(layout, rng.random(layout.num_layers), "state_change")}}
    scores = None if family == "uniform" else scores_from_tables(
        family, None if family == "weights" else plan_family(family), tables[family](), layout)
    budget = parse_budget("r3", layout)
    allocation = allocate(scores, layout, budget)
    plan = build_plan(layout, allocation.ranks, family, budget)
    assert plan["trainable_params"] == allocation.cost == cost_of(layout, allocation.ranks) <= budget
    plan = json.loads(json.dumps(plan))   # what a user loads from plan.json
    peft_model = get_peft_model(model, lora_config(plan))
    check_peft_model(plan, peft_model)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert trainable == plan["trainable_params"]
    for path, rank in plan_ranks(plan).items():
        layer = peft_model.base_model.model.get_submodule(path)
        assert layer.r["default"] == rank
        assert layer.scaling["default"] == pytest.approx(2.0)   # alpha / r constant everywhere


def test_best_ranks_equal_a_global_sort_when_costs_are_equal(model_and_layout):
    _, layout = model_and_layout
    attention = [m.name for m in layout.modules if m.d_in == m.d_out][:1]   # one square type: equal costs
    limits = Limits(module_types=tuple(attention))
    for seed in range(5):
        rng = np.random.default_rng(seed)
        table = per_rank(layout, rng)
        scores = scores_from_tables("shapley", None, {"main": table}, layout)
        cost = layout.costs[[m.name for m in layout.modules].index(attention[0])]
        k = int(rng.integers(1, 8 * layout.num_layers))
        ranks = allocate(scores, layout, k * cost + int(rng.integers(0, cost)), limits).ranks
        allowed = table[table["module"] == attention[0]]
        best = allowed.nlargest(k, "value").groupby(["layer", "module"]).size()
        expected = [best.get((m.layer, m.name), 0) for m in layout.modules]
        assert ranks.tolist() == expected


@pytest.mark.parametrize("family", ["ranks", "weights", "bounds"])
def test_plans_spend_the_budget_as_closely_as_granularity_allows(model_and_layout, family):
    _, layout = model_and_layout
    for seed in range(8):
        rng = np.random.default_rng(seed)
        tables = {"ranks": {"main": per_rank(layout, rng)},
                  "weights": {"main": per_rank(layout, rng).drop(columns="rank")},
                  "bounds": {"main": per_block(layout, rng.integers(1, 4, layout.num_layers), "id")}}[family]
        scores = scores_from_tables(family, plan_family("bounds") if family == "bounds" else None, tables, layout)
        limits = Limits(min_rank=int(rng.integers(0, 2)), max_rank=int(rng.integers(4, 9)))
        budget = int(rng.integers(uniform_cost(layout, 2), uniform_cost(layout, 4)))
        ranks = allocate(scores, layout, budget, limits).ranks
        assert cost_of(layout, ranks) <= budget
        assert ranks.min() >= limits.min_rank and ranks.max() <= limits.max_rank
        high = np.full(len(ranks), limits.max_rank if family != "ranks" else min(limits.max_rank, 8))
        assert closeness(layout, ranks, high, budget)


def test_proportional_ranks_follow_the_weights():
    layout = layout_of(tiny_llama(layers=4))
    scores = scores_from_tables("w", plan_family("weights"), {"main": per_block(layout, [1, 2, 3, 4], "w")}, layout)
    ranks = allocate(scores, layout, uniform_cost(layout, 10), Limits(max_rank=100)).ranks.reshape(4, -1)
    per_layer = ranks.mean(axis=1)
    assert np.all(np.diff(per_layer) > 0)
    assert per_layer / per_layer.sum() == pytest.approx(np.array([1, 2, 3, 4]) / 10, abs=0.03)


def test_gelora_stays_at_or_above_its_bounds_while_the_budget_allows():
    layout = layout_of(tiny_llama(layers=4))
    bounds = [1, 3, 2, 5]
    scores = scores_from_tables("id", plan_family("bounds"), {"main": per_block(layout, bounds, "id")}, layout)
    floor = np.repeat(bounds, len(layout.modules) // 4)
    generous = allocate(scores, layout, cost_of(layout, floor) * 2)
    assert (generous.ranks >= floor).all() and not generous.warnings
    tight = allocate(scores, layout, cost_of(layout, floor) // 2)
    assert (tight.ranks < floor).any() and "below GeLoRA's bounds" in tight.warnings[0]


def test_cka_takes_the_most_important_non_degenerate_blocks():
    layout = layout_of(tiny_llama(layers=4))
    table = per_block(layout, [np.nan, 0.9, 0.1, 0.5], "cka").assign(degenerate=[True, False, False, False])
    scores = scores_from_tables("cka", plan_family("blocks"), {"main": table}, layout)
    block = uniform_cost(layout, 8) // 4
    for k, chosen in [(1, [1]), (2, [1, 3]), (3, [1, 2, 3]), (4, [1, 2, 3])]:
        ranks = allocate(scores, layout, block * k + block // 2, signal_limits=(BlockLimits(block_rank=8),)).ranks
        ranks = ranks.reshape(4, -1)
        assert sorted(np.flatnonzero(ranks.max(axis=1))) == chosen and set(ranks[chosen].ravel()) == {8}
    with pytest.raises(UserError, match="does not fit a single block at rank 8"):
        allocate(scores, layout, block - 1, signal_limits=(BlockLimits(block_rank=8),))


def test_cka_paper_rule_keeps_half_the_blocks_as_the_paper_sorts_them():
    # Encoder of 6 blocks; block 0 is the degenerate CLS one. The paper's script sorts the CKA values
    # ascending, [0 (block 0: constant CLS gives CKA 0 there), .60 (2), .70 (4), .80 (5), .90 (1), .95 (3)],
    # drops the first entry and keeps the next floor(6/2) = 3: blocks 2, 4, 5.
    layout = layout_of(tiny_bert(layers=6))
    cka = [np.nan, 0.90, 0.60, 0.95, 0.70, 0.80]
    table = per_block(layout, [1 - c for c in cka], "cka").assign(degenerate=[True] + [False] * 5)
    scores = scores_from_tables("cka", plan_family("blocks"), {"main": table}, layout)
    plenty = uniform_cost(layout, 64)
    paper = allocate(scores, layout, plenty, signal_limits=(BlockLimits(block_rank=8, block_count="paper"),))
    ranks = paper.ranks.reshape(6, -1)
    assert sorted(np.flatnonzero(ranks.max(axis=1))) == [2, 4, 5] and set(ranks[[2, 4, 5]].ravel()) == {8}
    assert not paper.warnings
    budget = allocate(scores, layout, plenty, signal_limits=(BlockLimits(block_rank=8),)).ranks.reshape(6, -1)
    assert sorted(np.flatnonzero(budget.max(axis=1))) == [1, 2, 3, 4, 5]  # our option: all that fit
    # Decoder of 5 blocks: sorted ascending [.5 (3), .7 (0), .8 (4), .85 (1), .9 (2)], the first 2 kept.
    layout = layout_of(tiny_llama(layers=5))
    table = per_block(layout, [1 - c for c in [0.7, 0.85, 0.9, 0.5, 0.8]], "cka").assign(degenerate=False)
    scores = scores_from_tables("cka", plan_family("blocks"), {"main": table}, layout)
    paper = (BlockLimits(block_count="paper"),)
    ranks = allocate(scores, layout, uniform_cost(layout, 64), signal_limits=paper).ranks.reshape(5, -1)
    assert sorted(np.flatnonzero(ranks.max(axis=1))) == [0, 3]
    # A budget that fits one block only says so.
    one = allocate(scores, layout, uniform_cost(layout, 8) // 5 + 10, signal_limits=paper)
    assert one.ranks.reshape(5, -1).max(axis=1).tolist() == [0, 0, 0, 8, 0]
    assert "floor(5/2) = 2 blocks" in one.warnings[0]


def test_a_plan_that_keeps_negative_or_unresolved_ranks_says_so():
    layout = layout_of(tiny_llama(layers=1))            # 7 modules, 2 measured ranks each
    values = np.full((7, 2), -0.4)                      # most ranks raise the loss
    stderr = np.full((7, 2), 0.01)
    values[0] = [0.9, 0.5]                              # clearly useful
    values[1] = [0.6, 0.015]                            # the second within 2 stderr (0.02) of zero
    table = pd.DataFrame([("shapley", 0, m.name, values[i, j], stderr[i, j], j) for i, m in enumerate(layout.modules)
                          for j in range(2)], columns=["signal", "layer", "module", "value", "stderr", "rank"])
    scores = scores_from_tables("shapley", plan_family("ranks"), {"main": table}, layout)
    costs = layout.costs
    clear = allocate(scores, layout, 2 * costs[0] + costs[1])   # 0.9, 0.6, 0.5: all clearly positive
    assert clear.ranks.tolist() == [2, 1, 0, 0, 0, 0, 0] and clear.warnings == []
    everything = allocate(scores, layout, 10 * uniform_cost(layout, 2))   # all 14 ranks kept
    assert everything.ranks.tolist() == [2] * 7
    doubt = [w for w in everything.warnings if w.startswith("Of the")]
    assert doubt == ["Of the 14 ranks this plan keeps, 10 have a negative shapley value (switching them on raised "
                     "the loss) and 1 is within two standard errors of zero; the signal does not support spending "
                     "budget on them (more samples, or a smaller budget, would)."]


def test_sora_shrinks_by_the_smallest_gates_and_grows_by_gate_magnitude():
    layout = layout_of(tiny_llama(layers=3))
    rng = np.random.default_rng(3)
    tables, gates = sora_tables(layout, rng)
    scores = scores_from_tables("sora", plan_family("learned"), tables, layout)
    learned = (gates != 0).sum(axis=1)
    assert allocate(scores, layout, cost_of(layout, learned)).ranks.tolist() == learned.tolist()
    # Shrinking with equal costs per module: the same as dropping the globally smallest gates.
    limits = Limits(module_types=("q_proj", "o_proj"))
    allowed = np.array([m.name in limits.module_types for m in layout.modules])
    keep = int(learned[allowed].sum()) // 2
    magnitudes = sorted(((abs(g), i) for i in np.flatnonzero(allowed) for g in gates[i] if g != 0), reverse=True)
    expected = np.bincount([i for _, i in magnitudes[:keep]], minlength=len(learned))
    budget = keep * layout.costs[int(np.flatnonzero(allowed)[0])]
    assert allocate(scores, layout, budget, limits).ranks.tolist() == expected.tolist()
    grown = allocate(scores, layout, 2 * cost_of(layout, learned), Limits(max_rank=100)).ranks
    assert (grown >= learned).all()
    mass = np.abs(gates).sum(axis=1)
    extra = grown - learned
    assert np.corrcoef(extra[mass > 0], mass[mass > 0])[0, 1] > 0.8


def test_uniform_is_one_rank_on_the_allowed_modules():
    layout = layout_of(tiny_llama(layers=3))
    limits = Limits(module_types=("q_proj", "v_proj"))
    ranks = allocate(None, layout, uniform_cost(layout, 5, limits) + 10, limits).ranks
    names = [m.name for m in layout.modules]
    assert {r for r, n in zip(ranks, names) if n in ("q_proj", "v_proj")} == {5}
    assert {r for r, n in zip(ranks, names) if n not in ("q_proj", "v_proj")} == {0}


def test_blend_of_a_signal_with_itself_plans_like_the_signal():
    layout = layout_of(tiny_llama(layers=4))
    a = scores_from_tables("a", plan_family("weights"), {"main": per_block(layout, [1, 2, 3, 4], "a")}, layout)
    b = scores_from_tables("b", plan_family("weights"), {"main": per_block(layout, [4, 3, 2, 1], "b")}, layout)
    budget = uniform_cost(layout, 6)
    assert allocate(blend([(a, 0.3), (a, 0.7)]), layout, budget).ranks.tolist() == \
        allocate(a, layout, budget).ranks.tolist()
    even = allocate(blend([(a, 1), (b, 1)]), layout, budget, Limits(max_rank=100)).ranks.reshape(4, -1)
    assert np.ptp(even.mean(axis=1)) <= 1   # opposite signals cancel: an even plan


def test_budgets_and_limits_fail_with_one_sentence():
    layout = layout_of(tiny_llama(layers=2))
    assert parse_budget("150k", layout) == 150_000 and parse_budget("1.5M", layout) == 1_500_000
    assert parse_budget("r4", layout) == uniform_cost(layout, 4) == 4 * sum(layout.costs)
    for bad in ["", "abc", "r4k", "-5"]:
        with pytest.raises(UserError, match="Cannot read the budget"):
            parse_budget(bad, layout)
    with pytest.raises(UserError, match="below the smallest possible plan"):
        allocate(None, layout, min(layout.costs) - 1)
    with pytest.raises(UserError, match="minimum rank on every allowed module"):
        allocate(None, layout, uniform_cost(layout, 2) - 1, Limits(min_rank=2))
    with pytest.raises(UserError, match="Unknown module type"):
        allocate(None, layout, 10_000, Limits(module_types=("q_projj",)))


def test_validation_catches_typos_ambiguous_keys_alpha_and_counts():
    layout = layout_of(tiny_llama(layers=2))
    ranks = np.array([4 if m.name == "q_proj" else 2 for m in layout.modules])
    plan = build_plan(layout, ranks, "test", 10**6)
    validate(plan, layout)
    broken = {
        "typo": {**plan, "target_modules": plan["target_modules"][:-1] + ["model.layers.1.mlp.down_prj"]},
        "ambiguous": {**plan, "rank_pattern": {"q_proj": 4}},
        "alpha": {**plan, "alpha_pattern": {**plan["alpha_pattern"], plan["target_modules"][0]: 1.0}},
        "count": {**plan, "trainable_params": plan["trainable_params"] + 1},
    }
    messages = {"typo": "not a module of this model", "ambiguous": "matches 2 modules",
                "alpha": "alpha / r differs", "count": "its ranks give"}
    for case, bad in broken.items():
        with pytest.raises(UserError, match=messages[case]):
            validate(bad, layout)
    rslora = build_plan(layout, ranks, "test", 10**6, PlanOptions(rslora=True))
    assert rslora["alpha_pattern"] == {} and lora_config(rslora).use_rslora


def test_pattern_matching_shortcut_agrees_with_peft_on_every_name():
    from peft.utils.other import get_pattern_key

    from analysis.planning.plan_json import _pattern_matches
    layout = layout_of(tiny_llama(layers=12))
    keys = [m.path for m in layout.modules] + ["q_proj", "layers.1.mlp.down_proj", "model.layers.1.mlp",
                                                "mlp.*_proj", r"layers\.1\d\..*", "self_attn"]
    for key in keys:
        assert _pattern_matches(key, layout.names) == [n for n in layout.names if get_pattern_key([key], n) == key]


def test_a_cka_plan_names_the_rank_its_blocks_really_get():
    """--block-rank above --max-rank: the blocks get --max-rank, and the warning says so (not the asked rank)."""
    layout = layout_of(tiny_llama(layers=4))
    scores = scores_from_tables("cka", plan_family("blocks"), {"main": per_block(layout, [0.1, 0.9, 0.2, 0.3], "cka")},
                                layout)
    huge = (BlockLimits(block_rank=100_000),)
    allocation = allocate(scores, layout, uniform_cost(layout, 4) * 4, Limits(max_rank=4), signal_limits=huge)
    assert set(allocation.ranks[allocation.ranks > 0]) == {4}
    warning = allocation.warnings[0]
    assert "at rank 4 (--block-rank 100000, capped by --max-rank)" in warning and "raise --max-rank" in warning
    with pytest.raises(UserError, match=r"at rank 4 \(--block-rank 100000, capped by --max-rank\)"):
        allocate(scores, layout, uniform_cost(layout, 4) // 4 - 1, Limits(max_rank=4), signal_limits=huge)


def test_a_budget_above_full_rank_is_capped_with_a_warning_in_either_spelling():
    layout = layout_of(tiny_llama(layers=2))
    full = sum(min(m.d_in, m.d_out) * (m.d_in + m.d_out) for m in layout.modules)
    for text in ("r1000", str(full + 1), "1.5M"):
        budget = parse_budget(text, layout)
        assert budget > full
        [warning] = allocate(None, layout, budget, Limits(max_rank=8)).warnings
        assert f"more than full rank on every module of this model costs ({full:,})" in warning, warning
    for text in ("r9999999999999", "99999999999999999999999"):   # beyond any model: a typo, refused
        with pytest.raises(UserError, match=rf"is {full:,} parameters\); give at most that") as error:
            parse_budget(text, layout)
        assert "e+" not in str(error.value)
