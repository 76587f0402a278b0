"""Gradient norm: how strongly the validation loss pulls on each adaptable weight matrix.

value = || dL/dW ||_F for the mean validation loss L, per (layer, module). A cheap first look
at where fine-tuning would move the weights; not one of the four papers' signals.
Data-parallel: each process backpropagates its batches and the gradients are added over the processes.
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from analysis.signals import parallel
from analysis.contract.signal import Signal
from analysis.signals.registry import register
from analysis.contract.result import Result
from analysis.settings import SignalOptions


@dataclass
class GradNormConfig(SignalOptions):
    pass


def compute(context, config: GradNormConfig) -> Result:
    model = context.model
    modules = context.modules
    weights = {m.path: model.get_submodule(m.path).weight for m in modules}
    saved = {name: p.requires_grad for name, p in model.named_parameters()}
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    for weight in weights.values():
        weight.requires_grad_(True)
        weight.grad = None
    total = len(context.frame("validation"))
    try:
        for batch in context.batches(desc="grad_norm", shard=True):
            # Sum of per-batch mean losses weighted by batch share = mean loss over all examples.
            loss = model(**batch).loss * (batch["input_ids"].shape[0] / total)
            loss.backward()
        parallel.sum_(list({id(w): w.grad for w in weights.values()}.values()))   # a shared weight once
        norms = [weights[m.path].grad.float().norm().item() for m in modules]
    finally:
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(saved[name])
            parameter.grad = None
    table = pd.DataFrame({"signal": "grad_norm", "layer": [m.layer for m in modules],
                          "module": [m.name for m in modules], "value": norms})
    return Result(table)


register(Signal(
    name="grad_norm", title="Gradient norm",
    description="Frobenius norm of the validation-loss gradient of each adaptable weight matrix.",
    config=GradNormConfig, compute=compute, version=1))
