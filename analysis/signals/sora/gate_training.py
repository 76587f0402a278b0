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

import itertools
from dataclasses import dataclass, field

import torch

from analysis.errors import UserError
from analysis.signals.lora.gated_lora import ADAPTER, GatedLoRA, gated_lora
from analysis.jobs.progress import progress
from analysis.signals.lora.warmup import head_kept


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
        raise UserError("Every gate is zero, so the pruned adapter would be empty; lower sora.xi or sora.l1.")
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


def save_pruned(gated: GatedLoRA, directory, base_model_name_or_path: str | None = None) -> dict:
    """Write the pruned adapter as peft's save_pretrained does (adapter_config.json and
    adapter_model.safetensors), loadable with PeftModel.from_pretrained; no second model is built.
    Returns the LoraConfig keyword arguments."""
    from pathlib import Path

    from peft import LoraConfig
    from safetensors.torch import save_file

    config, weights = pruned_adapter(gated)
    directory = Path(directory)
    LoraConfig(**config, base_model_name_or_path=base_model_name_or_path).save_pretrained(directory)
    save_file(weights, directory / "adapter_model.safetensors")
    return config


@dataclass
class SoraConfig:
    r_max: int = field(default=8, metadata={"minimum": 1, "help": "gated ranks per adapted module at the start"})
    alpha: float = field(default=16.0, metadata={"above": 0, "help": "LoRA alpha (scale alpha / r_max, kept when pruning)"})
    steps: int = field(default=200, metadata={"minimum": 1, "help": "sparse training steps on the train split"})
    lr: float = field(default=1e-3, metadata={"above": 0, "help": "AdamW learning rate of A, B (and the head)"})
    gate_lr: float = field(default=1e-2, metadata={"above": 0, "help": "AdamW learning rate of the gates"})
    l1: float = field(default=1e-3, metadata={"minimum": 0, "help": "weight of mean |gate| in the loss"})
    xi: float = field(default=2e-3, metadata={"above": 0, "help": "proximal threshold of the gates during training (as given, "
                                                     "not multiplied by the learning rate)"})
    batch_size: int = field(default=16, metadata={"minimum": 1, "help": "training examples per step"})
    snapshot_every: int = field(default=25, metadata={"minimum": 1, "help": "steps between gate snapshots"})
    rounds: int = field(default=4, metadata={"minimum": 0, "help": "sparsifying-scheduler rounds after training (0: none)"})
    round_steps: int = field(default=25, metadata={"minimum": 1, "help": "training steps per scheduler round"})
    xi_max: float = field(default=2e-2, metadata={"above": 0, "help": "threshold of the last scheduler round"})
    grid: str = field(default="log", metadata={"choices": ("log", "linear"),
                                               "help": "log or linear spacing of the rounds' thresholds"})

    def check(self) -> None:
        """Checks across options, run by registry.make_config before anything is computed."""
        if self.rounds > 0 and not self.xi < self.xi_max:
            raise UserError(f"sora.xi ({self.xi:g}) must be below sora.xi_max ({self.xi_max:g}) when the scheduler "
                            f"runs rounds (sora.rounds={self.rounds}); set sora.rounds=0 to skip them.")


def scheduler_thresholds(config: SoraConfig) -> list[float]:
    """The thresholds of the scheduler's rounds, rising from xi to xi_max on a linear or log grid."""
    if config.rounds <= 0:
        return []
    if config.grid not in ("log", "linear"):
        raise UserError(f"sora.grid must be log or linear, not '{config.grid}'.")
    if not 0 < config.xi < config.xi_max:
        raise UserError("sora needs 0 < xi < xi_max.")
    fractions = [(k + 1) / config.rounds for k in range(config.rounds)]
    if config.grid == "linear":
        return [config.xi + f * (config.xi_max - config.xi) for f in fractions]
    return [config.xi * (config.xi_max / config.xi) ** f for f in fractions]


def sora_step(gated: GatedLoRA, batch: dict, weights: torch.optim.Optimizer,
              gate_optimizer: torch.optim.Optimizer, l1: float, xi: float) -> torch.Tensor:
    """One SoRA step: task loss + l1 * mean|g|, both optimizers, then the proximal step on the gates
    with dead gates held at zero. Returns the task loss (detached)."""
    alive = gated.gates.detach() != 0
    task = gated.model(**batch).loss
    loss = task + l1 * gated.gates.abs().sum() / gated.gates.numel()
    loss.backward()
    gated.gates.grad.mul_(alive)
    weights.step()
    gate_optimizer.step()
    proximal_step(gated.gates, xi, alive)
    weights.zero_grad(set_to_none=True)
    gate_optimizer.zero_grad(set_to_none=True)
    return task.detach()


def train(context, config: SoraConfig, directory=None) -> dict:
    """Sparse training, then the scheduler's rounds; gate snapshots along the way. With `directory`,
    the pruned adapter after the training stage is saved there. Returns plain data for the store."""
    model, modules = context.model, context.modules
    generator = torch.Generator().manual_seed(context.settings.seed)
    initial = torch.randn(len(modules), config.r_max, generator=generator)
    stages = [("train", config.xi, config.steps)] + [
        (f"round {k + 1}", xi, config.round_steps) for k, xi in enumerate(scheduler_thresholds(config))]
    total = sum(steps for _, _, steps in stages)
    snapshots, steps_run, losses, nonzero, learned = [], [], [], [], None
    with head_kept(model, context.prepared.task) as head, \
            gated_lora(model, modules, config.r_max, config.alpha, seed=context.settings.seed, gates=initial) as gated:
        for p in head.values():
            p.requires_grad_(True)
        weights = torch.optim.AdamW(gated.lora_parameters() + list(head.values()), lr=config.lr, weight_decay=0.0)
        gate_optimizer = torch.optim.AdamW([gated.gates], lr=config.gate_lr, weight_decay=0.0)
        batches = itertools.cycle(context.batches("train", config.batch_size, show_progress=False))
        model.train()
        bar = progress(range(total), total=total, desc="sora", unit="step")
        step = 0
        for stage, xi, steps in stages:
            for _ in range(steps):
                next(bar, None)
                losses.append(sora_step(gated, next(batches), weights, gate_optimizer, config.l1, xi))
                nonzero.append((gated.gates != 0).sum())  # both kept on the device: no synchronisation per step
                step += 1
                steps_run.append((step, stage, xi))
                if step % config.snapshot_every == 0:
                    snapshots.append((step, stage, xi, gated.gates.detach().cpu().clone()))
            if not snapshots or snapshots[-1][0] != step:  # every stage ends with a snapshot
                snapshots.append((step, stage, xi, gated.gates.detach().cpu().clone()))
            if stage == "train":
                learned = gated.gates.detach().cpu().clone()
                if directory is not None:
                    save_pruned(gated, directory, str(context.prepared.source.path))
    history = [(*row, loss, count) for row, loss, count in
               zip(steps_run, torch.stack(losses).float().cpu().tolist(), torch.stack(nonzero).cpu().tolist())]
    return {"snapshots": snapshots, "history": history, "learned": learned}
