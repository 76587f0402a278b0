"""SoRA: the proximal step by hand, zero gates staying zero, and pruning to a plain peft LoRA that
computes what the gated model computes, with exact parameter counts."""
import pytest
import torch
from peft import PeftModel

from analysis.model.capture import adaptable_modules
from analysis.signals.lora.gated_lora import gated_lora
from analysis.model.layout import lora_parameter_count
from analysis.signals.sora.gate_training import learned_ranks, proximal_step, save_pruned
from tests.conftest import random_batch, randomize_adapter, tiny_gpt2, tiny_llama


def test_proximal_step_matches_a_hand_computed_example():
    gates = torch.tensor([[0.5, -0.05, -0.3, 0.1], [0.0, 2.0, -2.0, 0.099]])
    proximal_step(gates, 0.1)
    expected = torch.tensor([[0.4, 0.0, -0.2, 0.0], [0.0, 1.9, -1.9, 0.0]])
    torch.testing.assert_close(gates, expected)


def test_gates_held_dead_stay_exactly_zero():
    gates = torch.tensor([[0.0, 0.5, 1.0]])
    alive = gates != 0
    gates += torch.tensor([[0.3, 0.3, 0.3]])  # an optimizer step would revive the dead gate
    proximal_step(gates, 0.01, alive)
    assert gates[0, 0] == 0 and gates[0, 1] == pytest.approx(0.79) and gates[0, 2] == pytest.approx(1.29)


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


def test_sora_signal_trains_sparsifies_and_saves_a_loadable_pruned_adapter(encoder_context, session_cache):
    from analysis.signals.registry import get_signal, make_config
    from analysis.model.sources import load_model, resolve_model
    from analysis.store.cache import Store

    signal = get_signal("sora")
    model = encoder_context.model
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    config = make_config(signal, {"r_max": "4", "steps": "12", "rounds": "2", "round_steps": "6",
                                  "snapshot_every": "4", "xi": "0.05", "xi_max": "0.4", "batch_size": "8"})
    result = signal.compute(encoder_context, config)
    table, history, schedule = result.table, result.tables["history"], result.tables["schedule"]
    assert list(table.columns[:4]) == ["signal", "layer", "module", "value"] and len(table) == 36
    # Dead gates stay dead: the count of non-zero gates never rises, and a larger xi never keeps more.
    assert history["nonzero"].is_monotonic_decreasing and len(history) == 24
    assert schedule["stage"].tolist() == ["train", "round 1", "round 2"]
    assert schedule["xi"].is_monotonic_increasing and schedule["total_rank"].is_monotonic_decreasing
    assert table["value"].sum() == history.loc[history["step"] == 12, "nonzero"].item()
    assert result.tables["layers"]["value"].tolist() == table.groupby("layer")["value"].sum().tolist()
    assert sorted(result.tables["snapshots"]["step"].unique()) == [4, 8, 12, 16, 18, 20, 24]  # + stage ends
    assert 0 < table["value"].sum() < 36 * 4  # some ranks pruned, some kept
    # The pruned adapter, stored with the entry, loads with peft and has exactly the learned ranks.
    entry = Store(encoder_context.prepared.store.root).put("sora-test", result, {"signal": "sora"})
    base = load_model(resolve_model("minilm", session_cache), "classification", num_labels=2, seed=0).model
    loaded = PeftModel.from_pretrained(base, entry.path("adapter"))
    trainable = sum(p.numel() for n, p in loaded.named_parameters() if "lora_" in n)
    assert trainable == result.meta["trainable_after"] < result.meta["trainable_before"]
    # The model leaves as it came.
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())
