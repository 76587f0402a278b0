"""Shapley sensitivity (ShapLoRA): each LoRA rank's importance for lowering the validation loss.

ShapLoRA's code is not public; this is our reading of the paper. Players are the ranks of a
warmed-up uniform LoRA, one gate each; coalitions are sampled with Shapley weights and one
forward+backward per coalition gives every rank's gate gradient (sampling.py). Two readings,
chosen by `reading`, and every table says which it holds (column `reading`, meta `reading`):

- sensitivity (default, the paper's measure): value = |g dL/dg| of each rank averaged over the
  Shapley-weighted coalitions (AdaLoRA-style sensitivity combined with coalitions of ranks).
  Non-negative; not a Shapley value.
- shapley: value = -(first-order Shapley value of the loss): the loss reduction the rank accounts
  for, from signed gate gradients; adds up to (about) the total loss change. Ours, not the paper's:
  every plan, row and figure of an entry computed with it is named "Shapley first-order (ours)"
  (`variant`), never ShapLoRA.

`stderr` is the Monte Carlo standard error, from a stream of coalitions the stopping rule never saw
(sampling.py). Extra tables: "modules" and "layers" (sums, each with the standard error of the sum),
"convergence" (per-layer estimates after each whole pass) and, in reference mode, "reference":
per rank the exact Shapley value of the loss reduction by enumerating all 2^n coalitions of true
loss differences, the exact first-order value, and our estimate; meta holds the first-order gap
and the estimate's gap to the exact value (only for models with at most 16 ranks in all).

The split defaults to validation, as the paper scores ranks on held-out data; `split=train` is an option.

Data-parallel: the warm-up trains data-parallel; each process then evaluates its own coalitions on
the whole split (sampling.py), so a run's numbers depend on the number of processes (its cache key
says how many; WarmupConfig.depends_on_processes).

What it implies for a plan: keep the globally best ranks until the budget is spent, then retrain
from scratch with those counts (allocate-then-retrain). A plan that keeps ranks of negative value,
or within two standard errors of zero, says so.
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, field

import pandas as pd
import torch

from analysis.signals import parallel
from analysis.signals.shapley import exact, pass_size
from analysis.signals.shapley import sampling as shapley
from analysis.model.capture import find_blocks
from analysis.errors import UserError
from analysis.contract.progress import progress
from analysis.contract.tidy import per_rank_table
from analysis.signals.context import MEASURED_SPLITS
from analysis.contract.signal import Page, Signal, deferred
from analysis.signals.registry import register
from analysis.contract.result import Result
from analysis.signals.lora.gated_lora import repeated
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
    coalitions_per_pass: int = field(default=0, metadata={"minimum": 0, "maximum": 4096, "keyed": False,
        "help": "coalitions evaluated side by side in one pass, each batch repeated once per coalition: the same "
                "estimates as one at a time, faster where passes are bound by kernel launches (0: on a GPU as "
                "many as its free memory holds, measured; 4 on the CPU; coalition_per=batch takes 1)"})
    gradient_checkpointing: bool = field(default=False, metadata={
        "help": "recompute activations in the backward pass (for models that do not fit otherwise)"})
    compile: bool = field(default=False, metadata={
        "help": "torch.compile the gradient passes: on an H100 a 1B model's coalition takes 1.7 s instead of "
                "2.8 s after about 100 s of compiling, so it pays from about 100 coalitions on"})
    reading: str = field(default="sensitivity", metadata={"choices": ("sensitivity", "shapley"),
        "help": "sensitivity (ShapLoRA's measure: |g dL/dg| averaged over Shapley-weighted coalitions) or shapley "
                "(our first-order Shapley value of the loss reduction, named 'Shapley first-order (ours)')"})
    split: str = field(default="validation", metadata={"choices": MEASURED_SPLITS,
        "help": "validation (the paper's held-out scoring) or train: the examples the loss is measured on"})
    reference: bool = field(default=False, metadata={
        "help": "also compute the exact Shapley value of every rank by enumerating all coalitions of true loss "
                "differences (2^ranks evaluations: tiny models only, at most 16 ranks in all)"})

    def check(self) -> None:
        if self.reading == "sensitivity" and self.coalition_per == "batch":
            # |g dL/dg| of one batch, scaled up, is not an unbiased sample of |g dL/dg| of the whole loss.
            raise UserError("The sensitivity reading needs shapley.coalition_per=pass.")


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

    gradient_at also takes C masks at once, (C, modules, r): each batch is repeated C times, copy c under
    mask c (gated_lora.repeated). The model's loss is then the mean of the C copies' losses (every copy has
    the same examples and predicted tokens), so C times it is their sum, and its gradient with respect to
    gates c is dv/dg at mask c alone. It returns the C values' sum and the (C, modules, r) gradients.
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

    copies_of: dict[tuple[int, int], dict] = {}   # (batch, C): the batch repeated C times, made once

    def batch(b: int, copies: int) -> dict:
        if copies == 1:
            return batches[b]
        if (b, copies) not in copies_of:
            copies_of[(b, copies)] = repeated(batches[b], copies)
        return copies_of[(b, copies)]

    def gradient_at(mask: torch.Tensor, part: int) -> tuple[torch.Tensor, torch.Tensor]:
        side_by_side = mask.ndim == 3   # C masks of (modules, r)
        copies = mask.shape[0] if side_by_side else 1
        gated.set_gates(mask)
        gated.gates.grad = None
        value = torch.zeros((), device=gated.gates.device)
        for b in ([part] if per_batch else range(len(batches))):
            loss = run(**batch(b, copies)).loss * (weights[b] * copies if side_by_side else weights[b])
            loss.backward()
            value += loss.detach().to(value.device)   # the loss sits on the last GPU of a split model
        return value, gated.gates.grad

    def value_at(mask: torch.Tensor) -> float:
        """v(mask); under a data-parallel launch each process evaluates its share of the batches."""
        gated.set_gates(mask)
        with torch.no_grad():
            return parallel.total(sum((float(gated.model(**batches[b]).loss) * weights[b]
                                       for b in parallel.shard(len(batches))), 0.0))

    return gradient_at, value_at, len(batches) if per_batch else 1


def _measured_per_pass(gated, batches: list[dict], task: str, shape: tuple[int, ...], samples: int) -> int:
    """shapley.coalitions_per_pass=0: measured on the largest validation batch (pass_size.py)."""
    largest = max(batches, key=lambda b: b["input_ids"].numel())
    one_batch, _, _ = loss_function(gated, [largest], task, per_batch=False)
    devices = sorted({p.device for p in gated.model.parameters()}, key=str)
    return pass_size.coalitions_per_pass(one_batch, shape, devices, samples)


def _per_layer(samples: torch.Tensor, modules) -> tuple[list[int], torch.Tensor]:
    """The layers and, per sample, each layer's summed value (samples already signed as the table): (T, layers)."""
    layers = sorted({m.layer for m in modules})
    index = torch.tensor([layers.index(m.layer) for m in modules])
    sums = torch.zeros(samples.shape[0], len(layers), dtype=samples.dtype)
    return layers, sums.index_add_(1, index, samples.sum(dim=2))


def _sums(samples: torch.Tensor, modules, by: str) -> pd.DataFrame:
    """Per-module or per-layer sums of the per-sample values, with the standard error of each sum."""
    if by == "layer":
        layers, sums = _per_layer(samples, modules)
        return pd.DataFrame({"layer": layers, "value": sums.mean(0).tolist(),
                             "stderr": shapley.standard_error(sums).tolist()})
    per_module = samples.sum(dim=2)                                      # (T, modules)
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


def _exact_reference(gradient_at, value_at, parts: int, shape: tuple[int, int], modules,
                     estimate_values: torch.Tensor, reading: str) -> tuple[pd.DataFrame, dict]:
    """Every rank's exact Shapley value of the loss reduction (true loss differences over all 2^n
    coalitions), its exact first-order value (gate gradients at every coalition) and our estimate
    (of the run's reading: only a Shapley estimate has a gap to the exact value; a sensitivity
    estimate is compared by rank order alone)."""
    n = shape[0] * shape[1]
    if n > exact.MAX_PLAYERS:
        raise UserError(f"The exact reference enumerates all 2^n coalitions of ranks; this model has n = {n} ranks "
                        f"(at most {exact.MAX_PLAYERS}). Use it on a tiny model with a small r_max.")
    masks = exact.all_coalitions(n)
    values, gradients = [], []
    for mask in progress(masks, total=len(masks), desc="exact reference", unit="coalition"):
        gates = mask.reshape(shape).to(torch.float32)
        values.append(value_at(gates))
        gradients.append(sum(gradient_at(gates, b)[1].detach().double().cpu().reshape(-1) for b in range(parts)))
    # Loss reduction: the negative of the loss's values.
    true = -exact.shapley_from_values(torch.tensor(values, dtype=torch.float64), n)
    first_order = -exact.first_order_from_gradients(torch.stack(gradients), n)
    ours = estimate_values.reshape(-1).double()
    scale = float(true.abs().max()) or 1.0
    table = pd.DataFrame({"layer": [m.layer for m in modules for _ in range(shape[1])],
                          "module": [m.name for m in modules for _ in range(shape[1])],
                          "rank": [j for _ in modules for j in range(shape[1])],
                          "exact": true.tolist(), "first_order": first_order.tolist(), "estimate": ours.tolist()})
    meta = {"reference_first_order_gap": float((first_order - true).abs().max()) / scale,
            **({"reference_estimate_gap": float((ours - true).abs().max()) / scale} if reading == "shapley" else {}),
            "reference_exact_total": float(true.sum()),
            "reference_spearman": float(table["estimate"].corr(table["exact"], method="spearman"))}
    return table, meta


def compute(context, config: ShapleyConfig) -> Result:
    model = context.model
    with warm_adapter(context, warmup_options(config)) as (gated, warm):
        gated.freeze_adapter(next(model.parameters()).dtype)
        batches = list(context.batches(config.split, config.batch_size or None, desc=f"tokenize {config.split}",
                                       frame=context.measured(config.split)))
        per_batch = config.coalition_per == "batch"
        forward = torch.compile(gated.model) if config.compile else None
        gradient_at, value_at, parts = loss_function(gated, batches, context.prepared.task, per_batch, forward)
        generator = torch.Generator().manual_seed(parallel.process_seed(context.settings.seed))
        shape = tuple(gated.gates.shape)
        with checkpointing_in_eval(model, config.gradient_checkpointing):
            per_pass = 1 if per_batch else config.coalitions_per_pass or _measured_per_pass(
                gated, batches, context.prepared.task, shape, config.samples)
            estimate = shapley.estimate(
                gradient_at, shape, config.samples, generator,
                parts=parts, min_samples=config.min_samples,
                tolerance=config.tolerance, groups=lambda sample: sample.sum(dim=1),
                iterate=lambda steps: progress(steps, total=len(steps), desc="shapley", unit="sample"),
                reading=config.reading, per_pass=per_pass)
        # Table sign: the loss reduction for Shapley values, the sensitivity itself for the other reading.
        signed = -estimate.samples if config.reading == "shapley" else estimate.samples
        all_on, all_off = value_at(torch.ones(shape)), value_at(torch.zeros(shape))
        reference = (_exact_reference(gradient_at, value_at, parts, shape, context.modules,
                                      signed.mean(0), config.reading) if config.reference else None)
    table = per_rank_table("shapley", context.modules, signed.mean(0), shapley.standard_error(signed))
    table["reading"] = config.reading
    modules = _sums(signed, context.modules, "module")
    tables = {"modules": modules, "layers": _sums(signed, context.modules, "layer"),
              "convergence": _convergence(signed, context.modules, parts)}
    meta = {"reading": config.reading, "split": config.split, "samples": estimate.count,
            "pilot_samples": estimate.pilot, "coalitions_per_pass": per_pass, "loss_all_ranks": all_on, "loss_no_ranks": all_off,
            "warmup_key": warm.key, "exact_total": all_off - all_on}
    if reference is not None:
        tables["reference"], reference_meta = reference
        meta.update(reference_meta)
    return Result(table, tables=tables, tensors={"samples": estimate.samples, "masks": estimate.masks}, meta=meta)


FIRST_ORDER = "Shapley first-order (ours)"


def variant(config: dict) -> str:
    """Entries computed before the sensitivity reading became the default hold first-order Shapley values."""
    return FIRST_ORDER if config.get("reading", "shapley") == "shapley" else ""


register(Signal(
    name="shapley", title="Shapley sensitivity (ShapLoRA)",
    description="ShapLoRA's sensitivity |g dL/dg| of each LoRA rank averaged over Shapley-weighted coalitions (or, "
                "as an option, our first-order Shapley value of the validation loss), from gate gradients (our "
                "reading of ShapLoRA; its code is not public).",
    config=ShapleyConfig, compute=compute, version=2, trains=True, variant=variant,
    exhibits=deferred("analysis.signals.shapley.shapley_figures"),
    page=Page(title="Shapley sensitivity (ShapLoRA)", icon=":material/grid_on:",
              caption="Each LoRA rank's importance for lowering the validation loss, estimated from gate gradients at "
                      "sampled coalitions of a warmed-up uniform LoRA. The ShapLoRA paper's code is not public: this "
                      "is our reading of the method, checked against exact enumeration on toy problems and on a tiny "
                      "model.",
              results="Shapley or AdaLoRA",
              draw=deferred("analysis.signals.shapley.shapley_page", "draw"), shows=("adalora",))))
