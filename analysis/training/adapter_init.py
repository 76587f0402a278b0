"""Data-driven starting points for a retrain's adapter, at the plan's ranks: peft's EVA and GoRA's.

- default: peft's own (A Kaiming-uniform, B = 0).
- eva: A = the first r principal components of the module's inputs (peft's EVA), B = 0. The PCA is
  peft's `get_eva_state_dict`, run with rho = 1 and the plan's ranks as rank_pattern so it fits
  exactly the components the plan needs, and the result goes into the model through peft's
  `initialize_lora_eva_weights`, as a user of peft would. Modules that read the same input (q/k/v)
  share one PCA in peft; each takes its first r components of it, so the plan's ranks never change.
- gora: A as peft initialises it, B = the least-squares solution of B A = G times gamma / lora_alpha
  (GoRA's `grad_compress_init`, gamma 0.02 as its default), G the weight gradient averaged over the
  batches (GoRA's gradient accumulation, model in eval mode).

Both run on the first `val_size` examples of the train split (EVA in one step, GoRA in batches of the
run's size): an initialisation is part of training, so it never sees the validation or test split.
"""
from __future__ import annotations

import torch

from analysis.model.capture import tokenize_batches
from analysis.signals.context import with_lm_labels

PREFIX = "base_model.model."
GORA_GAMMA = 0.02   # GoRA's --gora-stable-gemma default


def _lora_layers(peft_model) -> dict[str, torch.nn.Module]:
    from peft.tuners.lora import LoraLayer
    return {name: module for name, module in peft_model.named_modules() if isinstance(module, LoraLayer)}


def _train_batches(prepared, tokenizer, device, one: bool = False) -> list[dict]:
    """The first val_size training examples in the run's batch size (`one`: as one batch)."""
    settings = prepared.settings
    frame = prepared.splits.train.iloc[: settings.val_size]
    labels = frame["label"].tolist() if prepared.task == "classification" else None
    batches = list(tokenize_batches(tokenizer, frame["text"].tolist(), len(frame) if one else settings.batch_size,
                                    settings.max_length, device, labels))
    return [with_lm_labels(b) for b in batches] if prepared.task != "classification" else batches


@torch.no_grad()
def eva_init(peft_model, batches: list[dict], tau: float = 0.99) -> dict:
    from peft.tuners.lora.eva import initialize_lora_eva_weights

    from analysis.signals.eva.peft_eva import eva_lora_config, model_inputs, run_eva
    layers = _lora_layers(peft_model)
    ranks = {name.removeprefix(PREFIX): module.r["default"] for name, module in layers.items()}
    config = eva_lora_config(list(ranks), max(ranks.values()), rho=1.0, tau=tau, rank_pattern=ranks)
    run = run_eva(peft_model, [model_inputs(b) for b in batches], config)
    state = {name: run.components[name][: module.r["default"]] for name, module in layers.items()}
    adapter = peft_model.peft_config["default"]
    adapter.init_lora_weights = "eva"       # what initialize_lora_eva_weights insists on
    try:
        initialize_lora_eva_weights(peft_model, eva_state_dict=state)
    finally:
        adapter.init_lora_weights = True    # the saved adapter loads like any other
    return {"eva_forwards": run.forwards, "init_batches": len(batches)}


def gora_init(peft_model, batches: list[dict], gamma: float = GORA_GAMMA) -> dict:
    from analysis.signals.gora.gradient_importance import averaged_gradients, gradient_b
    layers = _lora_layers(peft_model)
    weights = [module.get_base_layer().weight for module in layers.values()]
    peft_model.eval()
    grads, steps = averaged_gradients(peft_model, weights, batches)
    with torch.no_grad():
        for module, grad in zip(layers.values(), grads):
            if getattr(module, "fan_in_fan_out", False):   # GPT-2's Conv1D keeps W as (d_in, d_out)
                grad = grad.T
            b = gradient_b(module.lora_A["default"].weight, grad, module.lora_alpha["default"], gamma)
            module.lora_B["default"].weight.copy_(b)
    peft_model.train()
    return {"gora_steps": steps, "gora_gamma": gamma, "init_batches": len(batches)}


def initialise(peft_model, init: str, prepared, tokenizer, device) -> dict:
    """Set the adapter's starting values for `init`; returns what to record about it."""
    if init == "default":
        return {}
    if init == "eva":   # one step over all of it, as the eva signal does (see its docstring for why)
        return eva_init(peft_model, _train_batches(prepared, tokenizer, device, one=True))
    return gora_init(peft_model, _train_batches(prepared, tokenizer, device))
