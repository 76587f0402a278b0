"""Retrain's data-driven initialisations at the plan's ranks (the starts the eva and gora signals bring): EVA's as
peft's own user-facing flow gives it, GoRA's B against a float64 least-squares reference."""
import numpy as np
import pytest
import torch

from analysis.model.capture import adaptable_modules
from analysis.signals.eva.eva_start import eva_init
from analysis.signals.gora.gora_start import gora_init
from analysis.training.adapter_init import _lora_layers

# Ranks equal within each group of modules that read the same input (q/k/v, gate/up), so peft's own EVA
# flow keeps them too and the two can be compared number for number.
RANKS = {"q_proj": 3, "k_proj": 3, "v_proj": 3, "o_proj": 2, "gate_proj": 2, "up_proj": 2, "down_proj": 1}


@pytest.fixture(scope="module")
def tiny():
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    model = LlamaForCausalLM(config).eval()
    generator = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(2):
        ids = torch.randint(3, 64, (4, 12), generator=generator)
        mask = torch.ones_like(ids)
        mask[0, 9:] = 0
        batches.append({"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)})
    return config, model.state_dict(), batches


def _peft(tiny, **extra):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM
    config, state, _ = tiny
    model = LlamaForCausalLM(config).eval()
    model.load_state_dict(state)
    paths = [m.path for m in adaptable_modules(model)]
    pattern = {p: RANKS[p.rsplit(".", 1)[1]] for p in paths}
    torch.manual_seed(1)
    return get_peft_model(model, LoraConfig(r=3, lora_alpha=6, target_modules=paths, rank_pattern=pattern, **extra))


def _lora(model, which):
    return {n: getattr(m, which)["default"].weight.detach().clone() for n, m in model.named_modules()
            if hasattr(m, which) and "default" in getattr(m, which)}


def test_eva_init_equals_peft_initialize_lora_eva_weights(tiny):
    from peft import EvaConfig
    from peft.tuners.lora.eva import initialize_lora_eva_weights
    _, _, batches = tiny
    inputs = [{k: b[k] for k in ("input_ids", "attention_mask")} for b in batches]
    ours = _peft(tiny)
    eva_init(ours, _lora_layers(ours), lambda one: batches)
    theirs = _peft(tiny, init_lora_weights="eva", eva_config=EvaConfig(rho=1.0))
    initialize_lora_eva_weights(theirs, inputs, show_progress_bar=False)    # the user's flow
    ours_a, theirs_a = _lora(ours, "lora_A"), _lora(theirs, "lora_A")
    assert set(ours_a) == set(theirs_a) and len(ours_a) == 14
    for name in ours_a:
        assert ours_a[name].shape[0] == RANKS[name.rsplit(".", 1)[1]]
        torch.testing.assert_close(ours_a[name], theirs_a[name])
    assert all((b == 0).all() for b in _lora(ours, "lora_B").values())
    assert ours.peft_config["default"].init_lora_weights is True        # the saved adapter loads plainly


def test_gora_init_b_is_the_least_squares_fit_of_the_averaged_gradient(tiny):
    config, state, batches = tiny
    model = _peft(tiny)
    a_before = _lora(model, "lora_A")
    gora_init(model, _lora_layers(model), lambda one: batches, gamma=0.02)
    from transformers import LlamaForCausalLM
    reference = LlamaForCausalLM(config).double().eval()
    reference.load_state_dict({k: v.double() for k, v in state.items()})
    for name, b in _lora(model, "lora_B").items():
        path = name.removeprefix("base_model.model.")
        weight = reference.get_submodule(path).weight
        grad = sum(torch.autograd.grad(reference(**batch).loss, weight)[0] for batch in batches) / len(batches)
        a = a_before[name].double().numpy()
        solution = np.linalg.lstsq(a.T, grad.numpy().T, rcond=None)[0].T      # argmin_B ||B A - G||
        np.testing.assert_allclose(b.numpy(), solution * 0.02 / 6, rtol=2e-3, atol=1e-9)
    torch.testing.assert_close(_lora(model, "lora_A"), a_before)   # A keeps peft's initialisation
