"""SoRA (sparse low-rank adaptation): gated LoRA trained with sparsified gates, and pruning to a
plain peft LoRA.

Each adapted module computes dh = s * B (g * (A x)) (analysis/signals/lora/gated_lora.py), g a gate
vector of length r_max, random normal at the start (A kaiming, B zero as peft makes them). The loss
is the task loss + l1 * sum|g| / n_gates. The gates have their own optimizer, after each of whose
steps the gate rule runs (gate_rules.py): by default the official SoRA code's masked update, with
zero gates still trained and free to revive; `update=soft` is the textbook soft threshold with dead
gates pinned at zero. The threshold xi is used as given, not lr * xi, in both.

Defaults follow the official scripts (TsinghuaC3I/SoRA, `run_glue.py`, `scripts/run_glue_sora_*.sh`):
gates at the main learning rate, AdamW weight decay 0.1 on the 2-D weights (A, B, the head's matrix;
never biases, norms or gates), one gradient-norm clip at 0.1 over every trained parameter gates
included, a linear schedule with 6% warm-up decaying to zero at the end of the training stage.
The scheduler's rounds keep stepping that same schedule, as the official code hands the same
optimizers and schedulers to every round: once it has decayed to zero, a round only applies its
threshold. `schedule=constant` trains every step at the full rate instead (our earlier behaviour).

The learned ranks come from the training stage's best checkpoint on validation, as the official
scripts' load_best_model_at_end reads them (best_checkpoint.py): evaluated every `eval_every` steps
(ours: 50, four evaluations in the default 200 steps), the best state is put back at the end of the
stage, and the rounds continue from it. `checkpoint=last` reads the last step's gates instead (ours).

The rounds' thresholds: the official code has none unless `--lambda_schedule` is given (run_glue.py's
default); its one scheduling script uses the `linear` grid, our default. The number of rounds, their
steps and xi_max are ours, sized for an analysis run (that script: 6 rounds of 15 epochs).

Pruning keeps the ranks with non-zero gates, folds each gate into B's column and sets the module's
alpha to s * r so that alpha / r, hence the output, is unchanged: a standard peft LoRA with
`rank_pattern` (and `alpha_pattern`) = the learned ranks, modules with no rank left out.

On a single GPU the forward and backward passes are CUDA graphs, as in the warm-up (graphed_loss.py); the
L1 term, the clip, both optimizers and the gate rule stay eager.

Data-parallel, as retrain: each process trains on its `batch_size` slice of every step and the
gradients (gates included) are averaged before the clip and both optimizers, so every process
keeps the same gates; the global batch, hence the key, depends on the number of processes.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass, field

import torch

from analysis.errors import UserError
from analysis.signals import parallel
from analysis.signals.lora import graphed_loss
from analysis.signals.lora.gated_lora import ADAPTER, GatedLoRA, gated_lora
from analysis.contract.progress import progress
from analysis.signals.lora.warmup import head_kept
from analysis.settings import MAX_RANK, SignalOptions
from analysis.signals.sora.best_checkpoint import BestCheckpoint
from analysis.signals.sora.gate_rules import (OfficialGateAdam, linear_schedule, proximal_step,
                                              scheduler_thresholds as grid_thresholds)

__all__ = ["SoraConfig", "learned_ranks", "proximal_step", "pruned_adapter", "save_pruned", "sora_step", "train"]


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
class SoraConfig(SignalOptions):
    r_max: int = field(default=8, metadata={"minimum": 1, "maximum": MAX_RANK,
                                            "help": "gated ranks per adapted module at the start"})
    alpha: float = field(default=16.0, metadata={"above": 0,
                                                 "help": "LoRA alpha (scale alpha / r_max, kept when pruning)"})
    update: str = field(default="official", metadata={
        "choices": ("official", "soft"),
        "help": "official (the SoRA code's masked update; zero gates keep training and may revive) or soft "
                "(textbook soft threshold, zero gates pinned)"})
    steps: int = field(default=200, metadata={"minimum": 1, "help": "sparse training steps on the train split"})
    lr: float = field(default=1e-3, metadata={"above": 0, "help": "peak AdamW learning rate of A, B (and the head)"})
    gate_lr: float = field(default=0.0, metadata={"minimum": 0,
                                                  "help": "learning rate of the gates (0: lr, as officially)"})
    weight_decay: float = field(default=0.1, metadata={
        "minimum": 0, "help": "AdamW weight decay of A, B and the head's weight matrix (official scripts: 0.1)"})
    max_grad_norm: float = field(default=0.1, metadata={
        "minimum": 0,
        "help": "clip the gradient norm of all trained parameters, gates included (official scripts: 0.1; 0: off)"})
    schedule: str = field(default="linear", metadata={
        "choices": ("linear", "constant"),
        "help": "linear (official: warm-up, decay to 0 at the end of training, rounds continue on it) or "
                "constant (every step at the full rate)"})
    warmup_fraction: float = field(default=0.06, metadata={"minimum": 0, "maximum": 1,
                                                           "help": "warm-up share of the training steps"})
    l1: float = field(default=1e-3, metadata={"minimum": 0, "help": "weight of mean |gate| in the loss"})
    xi: float = field(default=2e-3, metadata={"above": 0, "help": "threshold of the gates during training (as "
                                                                  "given, not multiplied by the learning rate)"})
    batch_size: int = field(default=16, metadata={"minimum": 1, "help": "training examples per step"})
    snapshot_every: int = field(default=25, metadata={"minimum": 1, "help": "steps between gate snapshots"})
    rounds: int = field(default=4, metadata={"minimum": 0,
                                             "help": "sparsifying-scheduler rounds after training (0: none)"})
    round_steps: int = field(default=25, metadata={"minimum": 1, "help": "training steps per scheduler round"})
    xi_max: float = field(default=2e-2, metadata={"above": 0, "help": "threshold of the last scheduler round"})
    grid: str = field(default="linear", metadata={
        "choices": ("linear", "exp_linear", "log_linear"),
        "help": "the rounds' thresholds, official names: linear (the official scheduling script's), exp_linear "
                "(geometric) or log_linear"})
    checkpoint: str = field(default="best", metadata={
        "choices": ("best", "last"),
        "help": "best (official: the learned ranks and pruned adapter come from the training stage's checkpoint "
                "with the best validation metric, as load_best_model_at_end; the rounds continue from it) or last "
                "(the last training step; ours)"})
    eval_every: int = field(default=50, metadata={
        "minimum": 1, "help": "training steps between validation evaluations with checkpoint=best (ours: 4 in the "
                              "default 200 steps; the official scripts evaluate every 1000 steps)"})

    @property
    def depends_on_processes(self) -> bool:
        """The global batch grows with the processes."""
        return True

    def key_fields(self) -> dict:
        """The cache key's options: with checkpoint=last, what ran before the option, the key leaves it and its
        interval out, so those entries are found with --set sora.checkpoint=last (and their other options)."""
        fields = dataclasses.asdict(self)
        if self.checkpoint == "last":
            del fields["checkpoint"], fields["eval_every"]
        return fields

    def check(self) -> None:
        """Checks across options, when the options are made (before anything is computed)."""
        if self.rounds > 0 and not self.xi < self.xi_max:
            raise UserError(f"sora.xi ({self.xi:g}) must be below sora.xi_max ({self.xi_max:g}) when the scheduler "
                            f"runs rounds (sora.rounds={self.rounds}); set sora.rounds=0 to skip them.")


def scheduler_thresholds(config: SoraConfig) -> list[float]:
    """The thresholds of the scheduler's rounds (the official grids; see gate_rules)."""
    return grid_thresholds(config.xi, config.xi_max, config.rounds, config.grid)


def sora_step(gated: GatedLoRA, batch: dict, weights: torch.optim.Optimizer,
              gate_optimizer: torch.optim.Optimizer, l1: float, xi: float, update: str = "official",
              max_grad_norm: float = 0.0, loss_of=None) -> torch.Tensor:
    """One SoRA step: task loss + l1 * mean|g|, one gradient clip over everything trained, both
    optimizers, then the gate rule. official: OfficialGateAdam applies the masked update itself and
    zero gates train on; soft: the soft threshold with dead gates held at zero. Returns the task loss
    (a copy that outlives the step). loss_of(batch) gives the task loss (default: the gated model's own;
    graphed_loss's replays, say)."""
    alive = gated.gates.detach() != 0
    task = loss_of(batch) if loss_of is not None else gated.model(**batch).loss
    loss = task + l1 * gated.gates.abs().sum() / gated.gates.numel()
    loss.backward()
    params = [p for group in weights.param_groups + gate_optimizer.param_groups for p in group["params"]]
    parallel.average_gradients(params)
    if update == "soft":  # dead gates get no gradient, so they neither move nor count in the clip
        gated.gates.grad.mul_(alive)
    if max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    weights.step()
    if update == "official":
        gate_optimizer.xi = xi
    gate_optimizer.step()
    if update == "soft":
        proximal_step(gated.gates, xi, alive)
    weights.zero_grad(set_to_none=True)
    gate_optimizer.zero_grad(set_to_none=True)
    return task.detach().clone()   # a graph's next replay overwrites its output


def optimizers(gated: GatedLoRA, head: dict, config: SoraConfig):
    """AdamW on A, B and the head (weight decay on 2-D weights only, as the official grouping leaves
    biases and norms out) and the gates' optimizer for the chosen rule."""
    trained = gated.lora_parameters() + list(head.values())
    groups = [{"params": [p for p in trained if p.ndim >= 2], "weight_decay": config.weight_decay},
              {"params": [p for p in trained if p.ndim < 2], "weight_decay": 0.0}]
    weights = torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr)
    gate_lr = config.gate_lr or config.lr
    if config.update == "official":
        gates = OfficialGateAdam([gated.gates], lr=gate_lr, xi=config.xi)
    else:
        gates = torch.optim.AdamW([gated.gates], lr=gate_lr, weight_decay=0.0)
    return weights, gates


def schedulers(weights, gates, config: SoraConfig) -> list:
    """One learning-rate schedule per optimizer over the training stage, stepped on through the rounds."""
    if config.schedule == "constant":
        return []
    # Official warm-up lengths: transformers rounds the main one up, run_glue.py truncates the gates'.
    main = linear_schedule(math.ceil(config.steps * config.warmup_fraction), config.steps)
    gate = linear_schedule(int(config.steps * config.warmup_fraction), config.steps)
    return [torch.optim.lr_scheduler.LambdaLR(weights, main), torch.optim.lr_scheduler.LambdaLR(gates, gate)]


def train(context, config: SoraConfig, directory=None) -> dict:
    """Sparse training, then the scheduler's rounds; gate snapshots along the way. The learned gates are those of
    the training stage's best validation checkpoint (or its last step); with `directory`, the pruned adapter of
    those gates is saved there. Returns plain data for the store."""
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
        weights, gate_optimizer = optimizers(gated, head, config)
        lr_schedules = schedulers(weights, gate_optimizer, config)
        best = (BestCheckpoint(context, [gated.gates, *gated.lora_parameters(), *head.values()], config.eval_every)
                if config.checkpoint == "best" else None)
        batches = context.training_batches(config.batch_size, fixed_length=graphed_loss.wanted(model))
        model.train()
        first = next(batches)
        loss_of, _ = graphed_loss.loss_function(gated.model, first, [gated.gates], warn=context.warn)
        batches = itertools.chain([first], batches)
        bar = progress(range(total), total=total, desc="sora", unit="step")
        step = 0
        for stage, xi, steps in stages:
            for _ in range(steps):
                next(bar, None)
                gate_lr = gate_optimizer.param_groups[0]["lr"]  # the rate this step uses
                losses.append(sora_step(gated, next(batches), weights, gate_optimizer, config.l1, xi,
                                        config.update, config.max_grad_norm, loss_of))
                for schedule in lr_schedules:
                    schedule.step()
                nonzero.append((gated.gates != 0).sum())  # both kept on the device: no synchronisation per step
                step += 1
                steps_run.append((step, stage, xi, gate_lr))
                if step % config.snapshot_every == 0:
                    snapshots.append((step, stage, xi, gated.gates.detach().cpu().clone()))
                if best is not None and stage == "train":
                    best.after(step)
            if not snapshots or snapshots[-1][0] != step:  # every stage ends with a snapshot
                snapshots.append((step, stage, xi, gated.gates.detach().cpu().clone()))
            if stage == "train":
                learned_at = (best.restore() if best is not None else None) or step
                learned = gated.gates.detach().cpu().clone()
                if directory is not None:
                    save_pruned(gated, directory, str(context.prepared.source.path))
    losses = parallel.mean(torch.stack(losses).float())   # each step's loss, averaged over the processes
    history = [(*row, loss, count) for row, loss, count in
               zip(steps_run, losses.cpu().tolist(), torch.stack(nonzero).cpu().tolist())]
    return {"snapshots": snapshots, "history": history, "learned": learned, "learned_at": learned_at,
            "validation": best.history if best is not None else [], "metric": best.metric if best is not None else None}
