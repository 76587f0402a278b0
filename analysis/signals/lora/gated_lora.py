"""Gated LoRA: a uniform peft LoRA of rank r_max with one gate per rank, shared by ShapLoRA and SoRA.

Every adapted module computes dh = s * B (g * (A x)): the gate vector g (length r_max) multiplies
the rank-r_max intermediate A x just before B, through a forward pre-hook on peft's lora_B. All
gates live in one (modules x r_max) tensor, so a coalition of ranks is a 0/1 mask of that shape
and one backward pass gives dL/dg for every rank at once. The hot path costs one element-wise
product per module, never a loop over ranks; with all gates at 1 the outputs are peft's own.

Coalitions side by side: gates of shape (C, modules x r_max) gate a batch repeated C times, copy c
(rows c*B .. (c+1)*B - 1 of the repeated batch) under coalition c's gates, so one pass evaluates C
coalitions and one backward pass gives each its own dL/dg (`repeated` builds such a batch).

`gated_lora` is a context manager: it adds the adapter to the model in place and takes it out
again on exit (peft `unload`), so the model leaves as it came, classification head included.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from analysis.model.capture import AdaptableModule

ADAPTER = "default"


@dataclass
class GatedLoRA:
    model: nn.Module                 # the peft-wrapped model
    modules: list[AdaptableModule]   # row i of `gates` gates modules[i]
    gates: nn.Parameter              # (len(modules), r_max), or (C, len(modules), r_max): see the docstring
    scaling: float                   # s = alpha / r_max

    def set_gates(self, mask: torch.Tensor) -> None:
        """The gates of one coalition (modules, r_max), or of C side by side (C, modules, r_max)."""
        if self.gates.shape != mask.shape:
            self.gates.data = torch.empty(mask.shape, dtype=self.gates.dtype, device=self.gates.device)
        self.gates.data.copy_(mask)

    def lora_layer(self, index: int) -> nn.Module:
        return self.model.base_model.model.get_submodule(self.modules[index].path)

    def lora_parameters(self) -> list[nn.Parameter]:
        """A and B of every adapted module, in module order (A0, B0, A1, B1, ...)."""
        params = []
        for i in range(len(self.modules)):
            layer = self.lora_layer(i)
            params += [layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight]
        return params

    def adapter_state(self) -> dict[str, torch.Tensor]:
        """A and B by module index, on the CPU (what a warm-up stores)."""
        state = {}
        for i in range(len(self.modules)):
            layer = self.lora_layer(i)
            state[f"A.{i}"] = layer.lora_A[ADAPTER].weight.detach().cpu()
            state[f"B.{i}"] = layer.lora_B[ADAPTER].weight.detach().cpu()
        return state

    @torch.no_grad()
    def load_adapter_state(self, state: dict[str, torch.Tensor]) -> None:
        for i in range(len(self.modules)):
            layer = self.lora_layer(i)
            layer.lora_A[ADAPTER].weight.copy_(state[f"A.{i}"])
            layer.lora_B[ADAPTER].weight.copy_(state[f"B.{i}"])

    def freeze_adapter(self, dtype: torch.dtype | None = None) -> None:
        """A and B stop requiring gradients (an analysis differentiates the gates only); optionally cast
        them to the model's dtype so the LoRA matmuls run at the base model's speed."""
        for param in self.lora_parameters():
            param.requires_grad_(False)
            if dtype is not None:
                param.data = param.data.to(dtype)


def _gate_hook(gates: nn.Parameter, index: int):
    def hook(module, args):
        x = args[0]
        # .to: with the model split across GPUs (--device-map) the gates sit on the first one
        gate = gates[..., index, :].to(x.device, x.dtype)
        if gate.ndim == 1:
            return (x * gate,) + args[1:]
        # C coalitions: the batch dimension leads, so copy c is the c-th of C equal blocks of rows.
        copies = gate.shape[0]
        return ((x.reshape(copies, -1, x.shape[-1]) * gate.unsqueeze(1)).reshape(x.shape),) + args[1:]
    return hook


def repeated(batch: dict[str, torch.Tensor], copies: int) -> dict[str, torch.Tensor]:
    """The batch `copies` times over, one copy after another along the batch dimension (labels included)."""
    return {k: v.repeat(copies, *[1] * (v.ndim - 1)) for k, v in batch.items()}


def uniform_lora_config(modules: list[AdaptableModule], r: int, alpha: float):
    from peft import LoraConfig

    # Full module paths: each matches exactly one module (peft would match a bare "dense" everywhere).
    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=[m.path for m in modules],
                      bias="none")


@contextlib.contextmanager
def gated_lora(model: nn.Module, modules: list[AdaptableModule], r_max: int, alpha: float,
               seed: int = 0, gates: torch.Tensor | None = None, gate_hooks: bool = True):
    """Yields a GatedLoRA on `model` (base weights frozen, A kaiming, B zero, gates 1 unless given).
    gate_hooks=False leaves the gates out of the forward pass: a plain LoRA (as if every gate were 1) with the
    same initialisation, for a training that never moves them (the warm-up)."""
    from peft import get_peft_model

    requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)  # the same A for the same seed, wherever it runs
        peft_model = get_peft_model(model, uniform_lora_config(modules, r_max, alpha))
    peft_model.train(model.training)  # the new LoRA modules start in training mode; follow the model
    initial = gates if gates is not None else torch.ones(len(modules), r_max)
    gate_param = nn.Parameter(initial.to(device=device, dtype=torch.float32).clone())
    gated = GatedLoRA(peft_model, modules, gate_param, alpha / r_max)
    handles = [gated.lora_layer(i).lora_B[ADAPTER].register_forward_pre_hook(_gate_hook(gate_param, i))
               for i in range(len(modules))] if gate_hooks else []
    try:
        yield gated
    finally:
        for handle in handles:
            handle.remove()
        peft_model.unload()
        for name, param in model.named_parameters():
            param.requires_grad_(requires_grad.get(name, False))
            param.grad = None
