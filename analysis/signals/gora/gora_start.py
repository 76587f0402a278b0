"""GoRA's start for a retrain's adapter (`--init gora`): A as peft initialises it, B = the least-squares solution
of B A = G times gamma / lora_alpha (GoRA's `grad_compress_init`, gamma 0.02 as its default), G the weight
gradient averaged over the batches (GoRA's gradient accumulation, model in eval mode), in the run's batch size."""
from __future__ import annotations

import torch

from analysis.contract.signal import AdapterStart
from analysis.signals.gora.gradient_importance import averaged_gradients, gradient_b

GORA_GAMMA = 0.02   # GoRA's --gora-stable-gemma default


def gora_init(peft_model, layers: dict, batches, gamma: float = GORA_GAMMA) -> dict:
    examples = batches(one=False)
    weights = [module.get_base_layer().weight for module in layers.values()]
    peft_model.eval()
    grads, steps = averaged_gradients(peft_model, weights, examples)
    with torch.no_grad():
        for module, grad in zip(layers.values(), grads):
            if getattr(module, "fan_in_fan_out", False):   # GPT-2's Conv1D keeps W as (d_in, d_out)
                grad = grad.T
            b = gradient_b(module.lora_A["default"].weight, grad, module.lora_alpha["default"], gamma)
            module.lora_B["default"].weight.copy_(b)
    peft_model.train()
    return {"gora_steps": steps, "gora_gamma": gamma, "init_batches": len(examples)}


START = AdapterStart("GoRA's: B from the gradient", gora_init)
