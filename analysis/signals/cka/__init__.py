"""CKA layer importance (Layer-wise LoRA with CKA): how much each block re-shapes the representation.

R_j is the pooled hidden state j over the measured examples (state 0 = embedding output,
state i+1 = output of block i; the last one after the final norm, as transformers'
hidden_states[-1]). The split defaults to train, as the paper's selection scripts measure on the
training data; `split=validation` is our option. value for block i = 1 - CKA(R_i, R_{i+1}), linear CKA between
its input and output; a block that leaves the representation's geometry unchanged scores 0.
Pooling "auto" is the paper's: the CLS token for encoders, the last real token for decoders.

Degenerate blocks: an encoder's CLS vector at the embedding output is the same for every example,
so CKA with it is undefined. Such a block gets value NaN and `degenerate` True, never a large
importance, and a plan must leave it out of the selection.

What it implies for a plan: adapt the k most important non-degenerate blocks (all adaptable
matrices of each) at one uniform rank. k = floor(L/2) with `--block-count paper` (the paper's
rule), or the largest number that fits the parameter budget (`budget`, our option).

Extra table "matrix": linear CKA between every pair of states, in long form; its `layer` and
`layer2` columns are STATE indices 0..L (0 = embedding output), not block indices. With
`accumulate` the states are streamed a batch at a time into running sums whose size does not
depend on the number of examples; that gives the consecutive pairs only, so no matrix table.

Data-parallel (parallel.py): each process captures its share of the batches. Collected states are
gathered on the main process, which computes the matrix from exactly a one-process run's states;
with `accumulate` every process adds its batches into sums shifted by the same offset (batch 0's
mean, as one process would take), and the sums are added over the processes.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import pandas as pd
import torch

from analysis.errors import UserError
from analysis.signals import parallel
from analysis.signals.cka.cka_plan import BLOCKS
from analysis.signals.cka.linear_cka import CKAAccumulator, cka_matrix
from analysis.signals.context import MEASURED_SPLITS
from analysis.contract.signal import Page, Signal, deferred
from analysis.signals.registry import register
from analysis.contract.result import Result
from analysis.settings import SignalOptions


# Below this many examples CKA between two layers is close to 1 for almost any pair (few points in a wide space).
MIN_EXAMPLES = 32


@dataclass
class CKAConfig(SignalOptions):
    split: str = field(default="train", metadata={"choices": MEASURED_SPLITS,
        "help": "train (the paper's selection code measures on training data) or validation"})
    pooling: str = field(default="auto", metadata={"choices": ("auto", "cls", "last", "mean"),
        "help": "auto (CLS token for encoders, last real token for decoders), cls, last or mean (not tokens: CKA "
                "compares the same examples across layers, and token pooling samples other tokens per layer)"})
    unbiased: bool = field(default=False, metadata={
        "help": "use the unbiased HSIC estimator (less biased for few examples) instead of the plain one"})
    accumulate: bool = field(default=False, metadata={
        "help": "stream batches into running sums (memory independent of the number of examples); "
                "gives the importances but not the layer x layer matrix"})

    @property
    def collects_states(self) -> bool:
        """Whether this run keeps every example's states (the shared capture pass)."""
        return not self.accumulate


def _consecutive_from_stream(context, config: CKAConfig) -> tuple[torch.Tensor, int]:
    stream = context.pooled_states(config.pooling, desc="cka", split=config.split)
    first = next(stream)   # every process has a batch (context.batches' shard); the main one has batch 0
    shift = parallel.broadcast_([s.detach().to(torch.float64).mean(dim=0) for s in first])
    accumulator = CKAAccumulator(unbiased=config.unbiased, shift=shift)
    for states in itertools.chain([first], stream):
        accumulator.update(states)
    parallel.sum_(accumulator.running_sums())
    accumulator.count = parallel.total(accumulator.count)
    try:
        return accumulator.consecutive(), accumulator.count
    except ValueError as exc:
        raise UserError(f"{exc} Use more validation examples.") from None


def compute(context, config: CKAConfig) -> Result:
    tables = {}
    if config.accumulate:
        consecutive, examples = _consecutive_from_stream(context, config)
    else:
        states = context.collected_states(config.pooling, config.split)
        if states is None:   # a data-parallel process other than the main one, which computes from everyone's states
            return None
        try:
            matrix = cka_matrix(states, unbiased=config.unbiased, device=context.device)
        except ValueError as exc:
            raise UserError(f"{exc} Use more validation examples.") from None
        consecutive = matrix.diagonal(1)
        size, examples = len(states), states[0].shape[0]
        tables["matrix"] = pd.DataFrame({"layer": [i for i in range(size) for _ in range(size)],
                                         "layer2": [j for _ in range(size) for j in range(size)],
                                         "value": matrix.flatten().tolist()})
    # NaN exactly where either state is constant across examples (see linear_cka).
    blocks = range(len(consecutive))
    table = pd.DataFrame({"signal": "cka", "layer": blocks, "module": "block",
                          "value": [1 - float(c) for c in consecutive],
                          "degenerate": consecutive.isnan().tolist()})
    return Result(table, tables=tables, meta={"examples": examples, "accumulated": config.accumulate,
                                              "split": config.split})


register(Signal(
    name="cka", title="CKA layer importance",
    description="1 - linear CKA between each block's input and output hidden states; "
                "the plan adapts the most important blocks at a uniform rank.",
    config=CKAConfig, compute=compute, version=3, plan=BLOCKS, min_examples=MIN_EXAMPLES,
    exhibits=deferred("analysis.signals.cka.cka_figures"),
    page=Page(title="CKA layer importance", icon=":material/stacked_line_chart:",
              caption="How much each block re-shapes the pooled hidden states: 1 - linear CKA between its input and "
                      "output. A decoder's last state is taken after its final norm, as transformers' "
                      "hidden_states[-1] and the paper's code have it.",
              results="CKA",
              draw=deferred("analysis.signals.cka.cka_page", "draw"))))
