"""GoRA (gradient-driven adaptive LoRA): importance of each matrix from its weight and averaged gradient.

Before any training, gradients of the loss are averaged over a few batches (one mean-loss gradient
per batch, divided by the number of batches, as GoRA's recording hook does). Each adapted matrix
then gets GoRA's importance from W and that gradient G; the default is the paper's avg(|W * G|)
(`union_mean`, what GoRA's published scripts use); GoRA's other deterministic types are options.

Data: the first val_size examples of the train split by default, as GoRA computes its importance on its
first training batches; `split=validation` is our option. The model is in eval mode (no dropout noise;
GoRA's loop is in train mode).

Plan (gora_plan.py, GoRA's `get_allocated_rank`): module i receives a share of the parameter
budget proportional to its importance, rank_i = round(budget * p_i) // (d_in + d_out), clipped to
the limits; what flooring leaves is spent one rank at a time. GoRA's initialisation of B from the
gradient is a retrain option (`--init gora`).

Data-parallel: each process sums the gradients of its share of the batches; sums and counts are added
over the processes, which averages over exactly the batches one process would take.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from analysis.signals import parallel
from analysis.signals.gora.gora_plan import SHARES
from analysis.signals.gora.gora_start import START
from analysis.signals.gora.gradient_importance import IMPORTANCE, importance, summed_gradients
from analysis.signals.context import MEASURED_SPLITS
from analysis.contract.signal import Signal
from analysis.signals.registry import register
from analysis.contract.result import Result
from analysis.settings import SignalOptions


@dataclass
class GoRAConfig(SignalOptions):
    split: str = field(default="train", metadata={"choices": MEASURED_SPLITS,
        "help": "train (GoRA averages the gradients of its first training batches) or validation"})
    importance: str = field(default="union_mean", metadata={"choices": tuple(IMPORTANCE),
        "help": "GoRA's importance type: " + ", ".join(IMPORTANCE) + " (union_mean = avg |W * G|, the paper's)"})
    steps: int = field(default=0, metadata={"minimum": 0,
        "help": "batches whose gradients are averaged (0: every batch of the measured examples; GoRA's scripts "
                "use 32-64)"})


def compute(context, config: GoRAConfig) -> Result:
    model, modules = context.model, context.modules
    weights = [model.get_submodule(m.path).weight for m in modules]
    model.eval()
    frame = context.measured(config.split)
    if config.steps:
        frame = frame.iloc[: config.steps * context.settings.batch_size]
    batches = context.batches(config.split, desc="gora", frame=frame, shard=True)
    sums, steps = summed_gradients(model, weights, batches)
    steps = parallel.total(steps)
    grads = [total / steps for total in parallel.sum_(sums)]
    values = [importance(w, g, config.importance) for w, g in zip(weights, grads)]
    table = pd.DataFrame({"signal": "gora", "layer": [m.layer for m in modules],
                          "module": [m.name for m in modules], "value": values})
    return Result(table, meta={"steps": steps, "importance": config.importance, "split": config.split})


register(Signal(
    name="gora", title="GoRA gradient importance",
    description="GoRA's importance avg|W * G| of each matrix from gradients averaged over batches before training; "
                "the plan gives each module parameters in proportion (GoRA's allocation).",
    config=GoRAConfig, compute=compute, version=2, plan=SHARES, start=START))
