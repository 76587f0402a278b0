"""Gated LoRA against plain peft LoRA: same outputs with all gates on, gate gradients by brute force."""
import pytest
import torch
from peft import get_peft_model

from analysis.model.capture import adaptable_modules
from analysis.signals.lora.gated_lora import gated_lora, uniform_lora_config
from tests.conftest import random_batch, randomize_adapter, tiny_gpt2, tiny_llama


@pytest.mark.parametrize("build", [tiny_llama, tiny_gpt2])
def test_all_gates_on_equals_the_plain_peft_adapter(build):
    model = build()
    modules = adaptable_modules(model)
    batch = random_batch()
    with torch.no_grad():
        base = model(**batch).logits
    with gated_lora(model, modules, r_max=4, alpha=8) as gated:
        state = randomize_adapter(gated, torch.Generator().manual_seed(1))
        with torch.no_grad():
            gated_out = gated.model(**batch).logits
    plain_model = build()
    plain = get_peft_model(plain_model, uniform_lora_config(modules, 4, 8))
    with torch.no_grad():
        for i, module in enumerate(modules):
            layer = plain.base_model.model.get_submodule(module.path)
            layer.lora_A["default"].weight.copy_(state[f"A.{i}"])
            layer.lora_B["default"].weight.copy_(state[f"B.{i}"])
        reference = plain(**batch).logits
    torch.testing.assert_close(gated_out, reference, rtol=0, atol=0)
    assert (gated_out - base).abs().max() > 1e-3  # the adapter does change the outputs
    # The model leaves as it came: no LoRA layers, same outputs, same trainable flags.
    assert not any("lora_" in name for name, _ in model.named_modules())
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, base, rtol=0, atol=0)
    assert all(p.requires_grad for p in model.parameters())


def test_gate_gradient_equals_finite_differences_and_masks_remove_ranks():
    model = tiny_gpt2().double()  # GPT-2 stays in float64 throughout (Llama's RMSNorm computes in float32)
    modules = adaptable_modules(model)
    batch = random_batch()
    with gated_lora(model, modules, r_max=3, alpha=6) as gated:
        gated.freeze_adapter(torch.float64)  # peft keeps adapters in float32 unless told otherwise
        randomize_adapter(gated, torch.Generator().manual_seed(1))
        gated.gates.data = gated.gates.data.double()

        def loss(gates):
            gated.gates.data.copy_(gates)
            return gated.model(**batch).logits.square().mean()  # float64 throughout (the LM loss is float32)

        point = torch.rand(len(modules), 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
        value = loss(point)
        (gradient,) = torch.autograd.grad(value, gated.gates)
        assert all(not p.requires_grad for p in gated.lora_parameters())
        for i, j in [(0, 0), (3, 2), (len(modules) - 1, 1)]:
            step = torch.zeros_like(point)
            step[i, j] = 1e-6
            with torch.no_grad():
                numeric = (loss(point + step) - loss(point - step)) / 2e-6
            torch.testing.assert_close(gradient[i, j], numeric, rtol=1e-6, atol=1e-9)
        # A zero gate is the same as a zero row of A (that rank removed).
        mask = torch.ones_like(point)
        mask[1, 0] = 0
        with torch.no_grad():
            gated_off = loss(mask)
            gated.gates.data.fill_(1)
            layer = gated.lora_layer(1)
            layer.lora_A["default"].weight[0] = 0
            removed = gated.model(**batch).logits.square().mean()
        torch.testing.assert_close(gated_off, removed, rtol=1e-12, atol=1e-12)
