"""Shapley sensitivity (ShapLoRA): each LoRA rank's Shapley value for lowering the validation loss.

Our faithful reading of ShapLoRA (the paper's code is not public): players are the ranks of a
warmed-up uniform LoRA, one gate each; coalitions are sampled with Shapley weights and one
forward+backward per coalition gives every rank's first-order marginal contribution (see
analysis/shapley.py for the estimator and why it converges to the first-order Shapley value).

value per (layer, module, rank) = -(Shapley value of the validation loss): the loss reduction the
rank accounts for; `stderr` its Monte Carlo standard error. Extra tables: "modules" and "layers"
(sums, each with the standard error of the sum), "convergence" (per-layer estimates after each
sample) and, in reference mode, "reference": captum's ShapleyValueSampling with whole modules as
players and true loss differences, with its Spearman agreement in the meta.

What it implies for a plan: keep the globally best ranks until the budget is spent, then retrain
from scratch with those counts (allocate-then-retrain).
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, field

import pandas as pd
import torch

from analysis.signals.shapley import sampling as shapley
from analysis.model.capture import find_blocks
from analysis.errors import UserError
from analysis.jobs.progress import progress
from analysis.signals.tidy import per_rank_table
from analysis.signals.registry import Signal, register
from analysis.signals.tidy import spearman
from analysis.store.cache import Result
from analysis.signals.lora.warmup import WarmupConfig, warm_adapter, warmup_options


@dataclass
class ShapleyConfig(WarmupConfig):
    samples: int = field(default=64, metadata={"minimum": 1, 
        "help": "most coalitions to sample (with coalition_per=batch, rounded up to whole passes)"})
    coalition_per: str = field(default="pass", metadata={"choices": ("pass", "batch"), 
        "help": "pass (each coalition is evaluated on the whole validation set) or batch (a new coalition "
                "for every validation batch: a pass gives as many coalitions as batches, each noisier)"})
    min_samples: int = field(default=16, metadata={"minimum": 1, "help": "coalitions sampled before the stopping rule applies"})
    tolerance: float = field(default=0.1, metadata={"minimum": 0, 
        "help": "stop once the mean per-module standard error is at most this fraction of the mean "
                "|per-module value| (0: always take all samples)"})
    batch_size: int = field(default=0, metadata={"minimum": 0, "help": "validation examples per forward pass (0: the run's)"})
    gradient_checkpointing: bool = field(default=False, metadata={
        "help": "recompute activations in the backward pass (for models that do not fit otherwise)"})
    compile: bool = field(default=False, metadata={
        "help": "torch.compile the gradient passes: on an H100 a 1B model's coalition takes 1.7 s instead of "
                "2.8 s after about 100 s of compiling, so it pays from about 100 coalitions on"})
    reference: bool = field(default=False, metadata={
        "help": "also run captum's ShapleyValueSampling with modules as players (slow; for checking)"})
    reference_permutations: int = field(default=4, metadata={"minimum": 1, "help": "captum permutations in reference mode"})


@contextlib.contextmanager
def checkpointing_in_eval(model: torch.nn.Module, enabled: bool):
    """Activation checkpointing of every block with the whole model left in eval mode.

    transformers checkpoints a block only while it is training, and some blocks apply dropout
    themselves when training; so each block's forward is wrapped in torch's non-reentrant
    checkpoint instead, and nothing is switched to training. The KV cache is off meanwhile (a
    recomputed block must not append to it twice). Everything is undone on exit.
    """
    if not enabled:
        yield
        return
    from torch.utils.checkpoint import checkpoint

    blocks = find_blocks(model)[1]
    use_cache = getattr(model.config, "use_cache", None)
    model.config.use_cache = False
    for block in blocks:
        original = block.forward
        block.forward = functools.partial(checkpoint, original, use_reentrant=False)
    try:
        yield
    finally:
        for block in blocks:
            del block.forward  # back to the class's forward
        if use_cache is not None:
            model.config.use_cache = use_cache


def loss_function(gated, batches: list[dict], task: str, per_batch: bool, forward=None):
    """gradient_at(mask, part) for the estimator, value_at(mask) = v(mask) over all batches, and the
    number of parts the estimator should cycle through.

    `forward` (default: the gated model) runs the gradient passes; a compiled model, say.
    v is the validation loss: each batch's mean loss weighted by its share of what the losses
    average (examples, or predicted tokens for causal LM). per_batch: part b is batch b alone
    (a new coalition for every batch); otherwise part 0 is the whole validation set.
    """
    if task == "causal-lm":
        counts = [int((b["labels"][:, 1:] != -100).sum()) for b in batches]
    else:
        counts = [b["input_ids"].shape[0] for b in batches]
    # A batch with nothing to predict (one-token texts) has a NaN loss: leave it out.
    batches = [b for b, c in zip(batches, counts) if c > 0]
    counts = [c for c in counts if c > 0]
    if not batches:
        raise UserError("No validation example has a token to predict after its first; use longer texts.")
    weights = [c / sum(counts) for c in counts]
    run = gated.model if forward is None else forward  # (a compiled module has no truth value)

    def gradient_at(mask: torch.Tensor, part: int) -> tuple[torch.Tensor, torch.Tensor]:
        gated.gates.data.copy_(mask)
        gated.gates.grad = None
        value = torch.zeros((), device=gated.gates.device)
        for b in ([part] if per_batch else range(len(batches))):
            loss = run(**batches[b]).loss * weights[b]
            loss.backward()
            value += loss.detach()
        return value, gated.gates.grad

    def value_at(mask: torch.Tensor) -> float:
        gated.gates.data.copy_(mask)
        with torch.no_grad():
            return sum(float(gated.model(**b).loss) * w for b, w in zip(batches, weights))

    return gradient_at, value_at, len(batches) if per_batch else 1


def _per_layer(samples: torch.Tensor, modules) -> tuple[list[int], torch.Tensor]:
    """The layers and, per sample, each layer's summed loss reduction: (T, layers)."""
    layers = sorted({m.layer for m in modules})
    index = torch.tensor([layers.index(m.layer) for m in modules])
    sums = torch.zeros(samples.shape[0], len(layers), dtype=samples.dtype)
    return layers, sums.index_add_(1, index, -samples.sum(dim=2))


def _sums(samples: torch.Tensor, modules, by: str) -> pd.DataFrame:
    """Per-module or per-layer sums of the per-sample contributions, with the standard error of each sum."""
    if by == "layer":
        layers, sums = _per_layer(samples, modules)
        return pd.DataFrame({"layer": layers, "value": sums.mean(0).tolist(),
                             "stderr": shapley.standard_error(sums).tolist()})
    per_module = -samples.sum(dim=2)                                     # (T, modules), loss reduction
    return pd.DataFrame({"layer": [m.layer for m in modules], "module": [m.name for m in modules],
                         "value": per_module.mean(0).tolist(), "stderr": shapley.standard_error(per_module).tolist()})


def _convergence(samples: torch.Tensor, modules, parts: int) -> pd.DataFrame:
    """Per-layer estimates after each whole pass over the parts (mid-pass, some parts weigh more)."""
    layers, per_layer = _per_layer(samples, modules)
    mean, stderr = shapley.running_estimates(per_layer)
    counts = list(range(parts, samples.shape[0] + 1, parts))
    return pd.DataFrame({"samples": [t for t in counts for _ in layers], "layer": layers * len(counts),
                         "value": mean[[t - 1 for t in counts]].reshape(-1).tolist(),
                         "stderr": stderr[[t - 1 for t in counts]].reshape(-1).tolist()})


def _reference(value_at, modules, r_max: int, permutations: int, seed: int) -> pd.DataFrame:
    """captum's ShapleyValueSampling over modules (a module's ranks all on or all off), true loss differences."""
    from captum.attr import ShapleyValueSampling

    def forward(module_mask: torch.Tensor) -> torch.Tensor:
        gates = module_mask.reshape(-1, 1).expand(len(modules), r_max).to(torch.float32)
        return torch.tensor([value_at(gates)], dtype=torch.float64)

    ones = torch.ones(1, len(modules), dtype=torch.float64)
    steps = 1 + permutations * len(modules)  # captum's forward calls: the baseline, then one per player
    bar = progress(range(steps), total=steps, desc="captum reference", unit="pass")

    def counted(mask):
        next(bar, None)
        return forward(mask)

    with torch.random.fork_rng(devices=[]):  # captum draws its permutations from the global generator
        torch.manual_seed(seed)
        attributions = ShapleyValueSampling(counted).attribute(ones, baselines=torch.zeros_like(ones),
                                                               n_samples=permutations, perturbations_per_eval=1)
    return pd.DataFrame({"layer": [m.layer for m in modules], "module": [m.name for m in modules],
                         "value": (-attributions[0]).tolist()})


def compute(context, config: ShapleyConfig) -> Result:
    if config.coalition_per not in ("batch", "pass"):
        raise UserError(f"shapley.coalition_per must be batch or pass, not '{config.coalition_per}'.")
    model = context.model
    with warm_adapter(context, warmup_options(config)) as (gated, warm):
        gated.freeze_adapter(next(model.parameters()).dtype)
        batches = list(context.batches("validation", config.batch_size or None, desc="tokenize validation"))
        per_batch = config.coalition_per == "batch"
        forward = torch.compile(gated.model) if config.compile else None
        gradient_at, value_at, parts = loss_function(gated, batches, context.prepared.task, per_batch, forward)
        generator = torch.Generator().manual_seed(context.settings.seed)
        with checkpointing_in_eval(model, config.gradient_checkpointing):
            estimate = shapley.estimate(
                gradient_at, tuple(gated.gates.shape), config.samples, generator,
                parts=parts, min_samples=config.min_samples,
                tolerance=config.tolerance, groups=lambda sample: sample.sum(dim=1),
                iterate=lambda steps: progress(steps, total=len(steps), desc="shapley", unit="sample"))
        all_on, all_off = value_at(torch.ones_like(gated.gates)), value_at(torch.zeros_like(gated.gates))
        reference = (_reference(value_at, context.modules, config.r_max, config.reference_permutations,
                                context.settings.seed) if config.reference else None)
    table = per_rank_table("shapley", context.modules, -estimate.mean(), estimate.stderr())
    modules = _sums(estimate.samples, context.modules, "module")
    tables = {"modules": modules, "layers": _sums(estimate.samples, context.modules, "layer"),
              "convergence": _convergence(estimate.samples, context.modules, parts)}
    meta = {"samples": estimate.count, "loss_all_ranks": all_on, "loss_no_ranks": all_off,
            "warmup_key": warm.key, "exact_total": all_off - all_on}
    if reference is not None:
        tables["reference"] = reference
        meta["reference_spearman"] = spearman(modules, reference)
    return Result(table, tables=tables, tensors={"samples": estimate.samples, "masks": estimate.masks}, meta=meta)


def _exhibits(entry):
    from analysis.signals.shapley.shapley_figures import exhibits  # figures load plotly; registration stays light
    return exhibits(entry)


register(Signal(
    name="shapley", title="Shapley sensitivity (ShapLoRA)",
    description="Monte Carlo Shapley value of each LoRA rank for the validation loss, from gate gradients "
                "(our reading of ShapLoRA; the paper's code is not public).",
    config=ShapleyConfig, compute=compute, version=1,
    exhibits=_exhibits))
