"""SoRA (sparse low-rank adaptation): gated LoRA trained with proximal-gradient gates, and pruning
to a plain peft LoRA.

Each adapted module computes dh = s * B (g * (A x)) (analysis/gated_lora.py), g a gate vector of
length r_max, random normal at the start (A kaiming, B zero as peft makes them). The loss is the
task loss + l1 * sum|g| / n_gates. The gates have their own optimizer; after each of its steps the
proximal (soft-threshold) step g <- sign(g) max(|g| - xi, 0) runs with xi as given, the official
SoRA code's convention (not lr * xi). A gate that reaches exactly zero stays zero: its rank is
pruned for good, so the number of non-zero gates never grows along a run.

Pruning keeps the ranks with non-zero gates, folds each gate into B's column and sets the module's
alpha to s * r so that alpha / r, hence the output, is unchanged: a standard peft LoRA with
`rank_pattern` (and `alpha_pattern`) = the learned ranks, modules with no rank left out.
"""
from __future__ import annotations

import torch

from analysis.gated_lora import ADAPTER, GatedLoRA


@torch.no_grad()
def proximal_step(gates: torch.Tensor, threshold: float, alive: torch.Tensor | None = None) -> None:
    """In place: soft-threshold every gate by `threshold`; gates outside `alive` are held at exactly 0."""
    gates.copy_(gates.sign() * (gates.abs() - threshold).clamp_min(0))
    if alive is not None:
        gates.mul_(alive)


def learned_ranks(gates: torch.Tensor) -> list[int]:
    """Non-zero gates per module."""
    return (gates != 0).sum(dim=1).tolist()


def pruned_adapter(gated: GatedLoRA) -> tuple[dict, dict[str, torch.Tensor]]:
    """The LoraConfig keyword arguments and the adapter weights (peft's saved key names) of the pruned
    adapter: per module only the ranks with non-zero gates, each gate folded into B's column."""
    gates = gated.gates.detach()
    ranks = learned_ranks(gates)
    kept = [i for i, r in enumerate(ranks) if r > 0]
    if not kept:
        raise ValueError("Every gate is zero: the pruned adapter would be empty.")
    base_rank = max(ranks)
    config = {
        "r": base_rank, "lora_alpha": gated.scaling * base_rank,
        "target_modules": [gated.modules[i].path for i in kept],
        "rank_pattern": {gated.modules[i].path: ranks[i] for i in kept},
        "alpha_pattern": {gated.modules[i].path: gated.scaling * ranks[i] for i in kept},
        "lora_dropout": 0.0, "bias": "none",
    }
    weights = {}
    for i in kept:
        keep = gates[i] != 0
        layer = gated.lora_layer(i)
        a = layer.lora_A[ADAPTER].weight.detach()[keep]
        b = layer.lora_B[ADAPTER].weight.detach()[:, keep] * gates[i][keep].to(layer.lora_B[ADAPTER].weight.dtype)
        prefix = f"base_model.model.{gated.modules[i].path}"
        weights[f"{prefix}.lora_A.weight"] = a.cpu().contiguous()
        weights[f"{prefix}.lora_B.weight"] = b.cpu().contiguous()
    return config, weights


def lora_parameter_count(modules, ranks: list[int]) -> int:
    """Exact trainable LoRA parameters: r * (d_in + d_out) per module."""
    return sum(r * (m.d_in + m.d_out) for m, r in zip(modules, ranks))


def save_pruned(gated: GatedLoRA, base_model: torch.nn.Module, directory) -> dict:
    """Write the pruned adapter with save_pretrained (loadable with PeftModel.from_pretrained) onto a
    fresh copy of the base model; returns the LoraConfig keyword arguments."""
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict

    config, weights = pruned_adapter(gated)
    pruned = get_peft_model(base_model, LoraConfig(**config))
    missing = set_peft_model_state_dict(pruned, weights)
    unexpected = getattr(missing, "unexpected_keys", [])
    if unexpected:
        raise RuntimeError(f"Pruned adapter weights that peft did not place: {unexpected[:3]}")
    pruned.save_pretrained(directory)
    return config
