"""State change: how much each block moves the pooled hidden state.

value for block i = mean over validation examples of ||R_{i+1} - R_i|| / ||R_i||, with R_0 the
embedding output. Layer-level (module = "block"); a simple signal that exercises the capture path.
Data-parallel: each process sums over its batches; the sums and counts are added over the processes.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
import torch

from analysis.signals import parallel
from analysis.contract.signal import Signal
from analysis.signals.registry import register
from analysis.contract.result import Result
from analysis.settings import SignalOptions


@dataclass
class StateChangeConfig(SignalOptions):
    pooling: str = field(default="mean", metadata={"choices": ("auto", "cls", "last", "mean", "tokens"), "help": "auto, cls, last, mean or tokens"})

    @property
    def depends_on_processes(self) -> bool:
        """Sampled tokens come from each process's own random stream, so they depend on the number of processes."""
        return self.pooling == "tokens"


def compute(context, config: StateChangeConfig) -> Result:
    sums = None
    count = 0
    for states in context.pooled_states(config.pooling, desc="state_change"):
        stacked = torch.stack([s.float() for s in states])            # (L+1, B, D)
        change = (stacked[1:] - stacked[:-1]).norm(dim=-1) / stacked[:-1].norm(dim=-1).clamp_min(1e-12)
        batch_sum = change.sum(dim=1).double().cpu()
        sums = batch_sum if sums is None else sums + batch_sum
        count += change.shape[1]
    values = (parallel.sum_([sums])[0] / parallel.total(count)).tolist()
    table = pd.DataFrame({"signal": "state_change", "layer": range(len(values)), "module": "block",
                          "value": values})
    return Result(table)


register(Signal(
    name="state_change", title="Hidden-state change",
    description="Mean relative change of the pooled hidden state across each block.",
    config=StateChangeConfig, compute=compute, version=2))
