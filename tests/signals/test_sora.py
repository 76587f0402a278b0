"""SoRA: the official gate update worked by hand (masked update, revival, grids, the decayed schedule the
rounds run on), the soft threshold kept as an option, and pruning to a plain peft LoRA that computes
what the gated model computes, with exact parameter counts."""
import math

import pytest
import torch
from peft import PeftModel

from analysis.errors import UserError
from analysis.model.capture import adaptable_modules
from analysis.signals.lora.gated_lora import gated_lora
from analysis.model.layout import lora_parameter_count
from analysis.signals.sora.gate_rules import OfficialGateAdam, linear_schedule, official_threshold, scheduler_thresholds
from analysis.signals.sora.gate_training import learned_ranks, proximal_step, save_pruned
from tests.conftest import random_batch, randomize_adapter, tiny_gpt2, tiny_llama


def official_by_hand(value: float, xi: float) -> float:
    """The official SparseAdamW masks, one gate at a time, in their order: shrink above xi, shrink
    below -xi, then zero whatever is now smaller than xi in magnitude."""
    if value > xi:
        value -= xi
    if value < -xi:
        value += xi
    if abs(value) < xi:
        value = 0.0
    return value


def test_official_update_zeroes_gates_between_xi_and_two_xi():
    gates = torch.tensor([[0.15, -0.15, 0.25, -0.25], [0.05, 0.3, -1.0, 0.0]], dtype=torch.float64)
    official_threshold(gates, 0.1)
    # 0.15 -> 0.05 -> 0 (the soft threshold keeps 0.05); 0.25 -> 0.15 stays; 0.3 -> 0.2; -1 -> -0.9.
    expected = torch.tensor([[0.0, 0.0, 0.15, -0.15], [0.0, 0.2, -0.9, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(gates, expected)
    generator = torch.Generator().manual_seed(0)
    many = torch.randn(500, generator=generator, dtype=torch.float64) * 0.3
    by_hand = torch.tensor([official_by_hand(float(v), 0.1) for v in many], dtype=torch.float64)
    official_threshold(many, 0.1)
    torch.testing.assert_close(many, by_hand)


def test_soft_threshold_option_matches_a_hand_computed_example():
    gates = torch.tensor([[0.5, -0.05, -0.3, 0.1], [0.0, 2.0, -2.0, 0.099], [0.15, -0.15, 0.0, 0.0]])
    proximal_step(gates, 0.1)
    expected = torch.tensor([[0.4, 0.0, -0.2, 0.0], [0.0, 1.9, -1.9, 0.0], [0.05, -0.05, 0.0, 0.0]])
    torch.testing.assert_close(gates, expected)


def test_soft_option_holds_dead_gates_at_zero():
    gates = torch.tensor([[0.0, 0.5, 1.0]])
    alive = gates != 0
    gates += torch.tensor([[0.3, 0.3, 0.3]])  # an optimizer step would revive the dead gate
    proximal_step(gates, 0.01, alive)
    assert gates[0, 0] == 0 and gates[0, 1] == pytest.approx(0.79) and gates[0, 2] == pytest.approx(1.29)


def test_official_optimizer_revives_a_zero_gate():
    gate = torch.nn.Parameter(torch.tensor([0.0, 0.0, 0.3]))
    optimizer = OfficialGateAdam([gate], lr=0.5, xi=0.1)
    gate.grad = torch.tensor([-1.0, -0.01, 0.0])
    optimizer.step()
    # First Adam step by hand: m = 0.1 g, v = 0.001 g^2, step = lr sqrt(0.001) / 0.1 * m / (sqrt(v) + 1e-6)
    # = 0.5 * |g| / (|g| + 3.16e-5) in the direction of -g; then the masked update at xi = 0.1.
    first = 0.5 * 1.0 / (1.0 + 1e-6 / math.sqrt(0.001))
    second = 0.5 * 0.01 / (0.01 + 1e-6 / math.sqrt(0.001))
    expected = [official_by_hand(first, 0.1), official_by_hand(second, 0.1), official_by_hand(0.3, 0.1)]
    torch.testing.assert_close(gate.detach(), torch.tensor(expected), rtol=1e-6, atol=1e-7)
    assert gate[0] > 0.39  # back: 0 -> ~0.5 -> ~0.4


def test_official_grids_by_their_names():
    # lambda_num = rounds + 1 = 4 values from 0.1 to 0.4, the first being the training threshold.
    assert scheduler_thresholds(0.1, 0.4, 3, "linear") == pytest.approx([0.2, 0.3, 0.4])
    # exp_linear: geometric, ratio 4 ** (1/3) = 1.587401
    assert scheduler_thresholds(0.1, 0.4, 3, "exp_linear") == pytest.approx([0.1587401, 0.2519842, 0.4], rel=1e-6)
    # log_linear: log of evenly spaced exp: e^0.1 = 1.1051709, e^0.4 = 1.4918247, step 0.1288846
    assert scheduler_thresholds(0.1, 0.4, 3, "log_linear") == pytest.approx(
        [math.log(1.2340555), math.log(1.3629401), 0.4], rel=1e-6)
    assert scheduler_thresholds(0.1, 0.4, 0, "linear") == []
    with pytest.raises(UserError, match="exp_linear"):
        scheduler_thresholds(0.1, 0.4, 3, "log")


def test_learning_rate_schedule_warms_up_decays_and_stays_at_zero_for_the_rounds():
    factor = linear_schedule(warmup_steps=2, decay_steps=10)
    assert [factor(t) for t in range(13)] == pytest.approx(
        [0, 0.5, 1, 7 / 8, 6 / 8, 5 / 8, 4 / 8, 3 / 8, 2 / 8, 1 / 8, 0, 0, 0])


def _sparse_gates(modules, r_max, seed):
    generator = torch.Generator().manual_seed(seed)
    gates = torch.randn(len(modules), r_max, generator=generator)
    gates[torch.rand(gates.shape, generator=generator) < 0.4] = 0
    gates[1] = 0  # a module with no rank left: pruning leaves it out
    gates[0] = torch.randn(r_max, generator=generator)  # and one with every rank
    return gates


def _gated_then_pruned(model, modules, batch, gates, seed, scale, directory):
    """The gated model's logits with random A and B and these gates, and the pruned adapter saved."""
    with gated_lora(model, modules, r_max=4, alpha=8, gates=gates) as gated:
        randomize_adapter(gated, torch.Generator().manual_seed(seed), scale)
        with torch.no_grad():
            expected = gated.model(**batch).logits
        return expected, save_pruned(gated, directory)


@pytest.mark.parametrize("build", [tiny_llama, tiny_gpt2])
def test_pruned_peft_adapter_computes_what_the_gated_model_computes(build, tmp_path):
    model = build()
    modules = adaptable_modules(model)
    batch = random_batch()
    gates = _sparse_gates(modules, 4, seed=1)
    expected, config = _gated_then_pruned(model, modules, batch, gates, 2, 0.3, tmp_path / "pruned")
    ranks = learned_ranks(gates)
    loaded = PeftModel.from_pretrained(build(), tmp_path / "pruned").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, expected, rtol=1e-5, atol=1e-5)
    assert modules[1].path not in config["target_modules"] and len(config["target_modules"]) == len(modules) - 1
    trainable = sum(p.numel() for n, p in loaded.named_parameters() if "lora_" in n)
    assert trainable == lora_parameter_count(modules, ranks) < lora_parameter_count(modules, [4] * len(modules))
    for module, rank in zip(modules, ranks):
        if rank:
            layer = loaded.base_model.model.get_submodule(module.path)
            assert layer.lora_A["default"].weight.shape[0] == rank
            assert layer.scaling["default"] == pytest.approx(8 / 4)  # alpha / r kept: alpha = s * r


def test_pruned_encoder_adapter_matches_on_the_embedded_model(minilm, tmp_path, session_cache):
    from analysis.model.sources import load_model, resolve_model

    modules = adaptable_modules(minilm.model)
    batch = minilm.tokenizer(["a gripping, funny film", "dull"], padding=True, return_tensors="pt")
    gates = _sparse_gates(modules, 4, seed=3)
    expected, _ = _gated_then_pruned(minilm.model, modules, batch, gates, 4, 0.05, tmp_path / "pruned")
    base = load_model(resolve_model("minilm", session_cache), "classification", num_labels=2, seed=0).model
    loaded = PeftModel.from_pretrained(base, tmp_path / "pruned").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, expected, rtol=1e-5, atol=1e-5)


SHORT_RUN = {"r_max": "4", "steps": "12", "rounds": "2", "round_steps": "6", "snapshot_every": "4",
             "xi": "0.05", "xi_max": "0.2", "grid": "linear", "batch_size": "8"}


def _rounds_by_hand(gates: torch.Tensor, thresholds: list[float], steps: int) -> list[list[list[float]]]:
    """Gates at the end of each round, from the learned gates, by the official rule alone: the rounds
    run on the decayed schedule (learning rate 0 after the training stage), so each of their steps
    is the masked update and nothing else. float32 arithmetic, as the gates are stored."""
    import numpy as np

    current = gates.numpy().astype(np.float32)
    ends = []
    for xi in thresholds:
        xi32 = np.float32(xi)
        for _ in range(steps):
            current = np.array([[official_by_hand(v, xi32) for v in row] for row in current], dtype=np.float32)
        ends.append(current.copy())
    return ends


def test_sora_signal_learns_ranks_by_the_official_rule_and_saves_a_loadable_pruned_adapter(
        encoder_context, session_cache):
    from analysis.signals.registry import get_signal, make_config
    from analysis.model.sources import load_model, resolve_model
    from analysis.store.cache import Store

    signal = get_signal("sora")
    model = encoder_context.model
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    result = signal.compute(encoder_context, make_config(signal, SHORT_RUN))
    table, history, schedule = result.table, result.tables["history"], result.tables["schedule"]
    snapshots, gates = result.tables["snapshots"], result.tables["gates"]
    assert list(table.columns[:4]) == ["signal", "layer", "module", "value"] and len(table) == 36
    assert (table["update"] == "official").all() and result.meta["update"] == "official"
    assert schedule["stage"].tolist() == ["train", "round 1", "round 2"] and len(history) == 24
    assert schedule["xi"].tolist() == pytest.approx([0.05, 0.125, 0.2])  # the official linear grid
    assert sorted(snapshots["step"].unique()) == [4, 8, 12, 16, 18, 20, 24]  # + stage ends
    # Official warm-up (6% of 12 steps: none for the gates) and decay to 0 by the end of training;
    # the rounds keep stepping the decayed schedule.
    train_lr = history.loc[history["stage"] == "train", "gate_lr"].tolist()
    assert train_lr == pytest.approx([1e-3 * (12 - t) / 12 for t in range(12)])
    assert (history.loc[history["stage"] != "train", "gate_lr"] == 0).all()
    # Every learned gate is 0 or at least xi in magnitude: the official masks leave nothing in between.
    learned = torch.tensor(gates["value"].to_numpy()).reshape(36, 4).float()
    assert ((learned == 0) | (learned.abs() >= 0.05)).all()
    assert table["value"].tolist() == learned_ranks(learned) and 0 < table["value"].sum() < 36 * 4
    # The rounds: the per-module counts and magnitudes follow from the learned gates by the rule alone.
    for stage, expected in zip(["round 1", "round 2"], _rounds_by_hand(learned, [0.125, 0.2], 6)):
        end = snapshots[(snapshots["stage"] == stage)].groupby("stage").tail(36)
        expected = torch.from_numpy(expected)
        assert end["nonzero"].tolist() == (expected != 0).sum(dim=1).tolist()
        magnitude = [float(row[row != 0].abs().mean()) if (row != 0).any() else 0.0 for row in expected]
        assert end["magnitude"].tolist() == pytest.approx(magnitude, rel=1e-6)
    assert result.tables["layers"]["value"].tolist() == table.groupby("layer")["value"].sum().tolist()
    # The pruned adapter, stored with the entry, loads with peft and has exactly the learned ranks.
    entry = Store(encoder_context.prepared.store.root).put("sora-test", result, {"signal": "sora"})
    base = load_model(resolve_model("minilm", session_cache), "classification", num_labels=2, seed=0).model
    loaded = PeftModel.from_pretrained(base, entry.path("adapter"))
    trainable = sum(p.numel() for n, p in loaded.named_parameters() if "lora_" in n)
    assert trainable == result.meta["trainable_after"] < result.meta["trainable_before"]
    # The model leaves as it came.
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())


def test_sora_soft_option_pins_dead_gates(encoder_context):
    from analysis.signals.registry import get_signal, make_config

    signal = get_signal("sora")
    config = make_config(signal, {**SHORT_RUN, "update": "soft", "schedule": "constant", "steps": "8", "rounds": "1",
                                  "round_steps": "2", "xi": "0.02", "xi_max": "0.1"})
    result = signal.compute(encoder_context, config)
    history = result.tables["history"]
    assert (result.table["update"] == "soft").all() and result.meta["update"] == "soft"
    assert history["nonzero"].is_monotonic_decreasing and (history["gate_lr"] == 1e-3).all()
    learned = torch.tensor(result.tables["gates"]["value"].to_numpy())
    assert ((learned != 0) & (learned.abs() < 0.02)).any()  # the soft threshold leaves gates below xi


class _ScriptedCheckpoint:
    """BestCheckpoint on a stand-in context whose validation metric at each evaluation is given."""

    def __init__(self, task, metrics, every):
        from types import SimpleNamespace

        from analysis.signals.sora.best_checkpoint import BestCheckpoint
        model = torch.nn.Linear(1, 1)
        context = SimpleNamespace(model=model, prepared=SimpleNamespace(task=task),
                                  measured=lambda split: None, batches=lambda *args, **kwargs: [])
        self.weight = model.weight
        self.checkpoint = BestCheckpoint(context, [self.weight], every)
        scripted = iter(metrics)
        self.checkpoint.measure = lambda: next(scripted)

    def train(self, steps):
        for step in range(1, steps + 1):
            with torch.no_grad():
                self.weight.fill_(step)          # the state after each step is its step number
            self.checkpoint.after(step)
        return self.checkpoint.restore()


def test_best_checkpoint_follows_load_best_model_at_end_worked_by_hand():
    """The official scripts' Trainer, by hand: evaluate at steps 50, 100, 150, 200 (multiples of eval_steps only);
    accuracy .60, .70, .70, .65: the best is step 100 (step 150 only ties it, and only a strictly better metric
    replaces the best); its weights are loaded back. For a loss (lower is better) .50, .40, .40, .45: step 100 too.
    Training shorter than one interval evaluates nothing and keeps the last weights."""
    accuracy = _ScriptedCheckpoint("classification", [0.60, 0.70, 0.70, 0.65], every=50)
    assert accuracy.train(200) == 100 and accuracy.weight.item() == 100
    assert accuracy.checkpoint.history == [(50, 0.60), (100, 0.70), (150, 0.70), (200, 0.65)]
    loss = _ScriptedCheckpoint("causal-lm", [0.50, 0.40, 0.40, 0.45], every=50)
    assert loss.train(230) == 100 and loss.weight.item() == 100      # no evaluation at the last step, 230
    short = _ScriptedCheckpoint("classification", [], every=50)
    assert short.train(40) is None and short.weight.item() == 40


def test_sora_reads_the_learned_ranks_from_the_best_validation_checkpoint(encoder_context):
    """The signal end to end: evaluations every 4 of 12 steps; the learned ranks are the snapshot of the best one,
    by the rule above from the validation table; the rounds continue from those gates."""
    from analysis.contract.signal import variant_of
    from analysis.signals.registry import get_signal, make_config

    signal = get_signal("sora")
    assert make_config(signal).checkpoint == "best" and make_config(signal).grid == "linear"
    result = signal.compute(encoder_context, make_config(signal, {**SHORT_RUN, "eval_every": "4"}))
    validation, snapshots, table = result.tables["validation"], result.tables["snapshots"], result.table
    assert validation["step"].tolist() == [4, 8, 12] and (validation["metric"] == "accuracy").all()
    values = validation["value"].tolist()
    best = next(step for step, value in zip([4, 8, 12], values) if value == max(values))   # the first of the best
    assert result.meta["learned_at"] == best and validation.loc[validation["best"], "step"].tolist() == [best]
    at_best = snapshots[(snapshots["step"] == best) & (snapshots["stage"] == "train")]
    assert table["value"].tolist() == at_best["nonzero"].tolist()
    assert table["magnitude"].tolist() == pytest.approx(at_best["magnitude"].tolist(), rel=1e-6)
    learned = torch.tensor(result.tables["gates"]["value"].to_numpy()).reshape(36, 4).float()
    for stage, expected in zip(["round 1", "round 2"], _rounds_by_hand(learned, [0.125, 0.2], 6)):
        end = snapshots[(snapshots["stage"] == stage)].groupby("stage").tail(36)
        assert end["nonzero"].tolist() == (torch.from_numpy(expected) != 0).sum(dim=1).tolist()
    assert variant_of(signal, {**result.meta, "checkpoint": "best", "update": "official", "schedule": "linear"}) == ""
    assert variant_of(signal, {"checkpoint": "last", "update": "official", "schedule": "linear"}) == \
        "last-step gates (ours)"
    assert variant_of(signal, {}) == "last-step gates, soft threshold, constant learning rate (ours)"


def test_entries_from_before_the_checkpoint_option_keep_their_keys():
    """The key of checkpoint=last is the key the same options had before the option existed: the options of
    that SoraConfig, hashed as signal_key hashed them."""
    import dataclasses

    from analysis.signals.registry import get_signal, make_config
    from analysis.signals.runner import signal_key
    from analysis.store.hashing import hash_json
    earlier = {"r_max", "alpha", "update", "steps", "lr", "gate_lr", "weight_decay", "max_grad_norm", "schedule",
               "warmup_fraction", "l1", "xi", "batch_size", "snapshot_every", "rounds", "round_steps", "xi_max",
               "grid"}
    signal = get_signal("sora")
    config = make_config(signal, {"checkpoint": "last", "grid": "exp_linear"})
    options = {name: value for name, value in dataclasses.asdict(config).items() if name in earlier}
    assert len(options) == len(earlier)
    assert signal_key("ctx", signal, config) == hash_json({"context": "ctx", "signal": "sora", "version": 3,
                                                           "config": options})
    assert signal_key("ctx", signal, make_config(signal)) != signal_key("ctx", signal, config)
