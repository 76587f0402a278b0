"""Intrinsic dimension (GeLoRA): a lower bound on each block's LoRA rank from how much it adds.

d_j is the intrinsic dimension of hidden state j over the measured examples (state 0 =
embedding output, state i+1 = output of block i; the last after the final norm, as transformers'
hidden_states[-1]), by TwoNN unless another estimator is chosen. Split: validation by default
(held out, as our other analyses); train as an option.
value for block i = ceil(max(d_{i+1} - d_i, 0)) + 1: GeLoRA's bound r_i >= max(d_{i+1} - d_i, 0) + 1,
rounded up to the smallest integer rank that satisfies it (d is real-valued).

What it implies for a plan: rank r_i for every adapted matrix of block i, with alpha = 32 r_i so
the paper's alpha / r ratio is kept. GeLoRA itself has no budget; scaling these ranks to one (never
below the bound while the budget allows, with a warning where it does not) is the allocator's job.

Pooling defaults to the mean over tokens: an encoder's CLS at the embedding output is one point
repeated, which has no dimension. "tokens" (sampled real tokens) gives more points per state.

Extra table "dimensions": the estimate d_j for every state j = 0..L.

Data-parallel: the processes capture their shares of the batches and the main process estimates
from everyone's points, gathered in the one-process order (context.collected_states).
"""
from __future__ import annotations

import inspect
import math
import warnings
from dataclasses import dataclass, field

import pandas as pd
import torch

from analysis.errors import UserError
from analysis.signals.context import MEASURED_SPLITS
from analysis.contract.signal import Page, Signal, deferred
from analysis.signals.registry import register
from analysis.contract.result import Result
from analysis.signals.id.id_plan import BOUNDS
from analysis.signals.id.twonn import twonn
from analysis.settings import SignalOptions


# TwoNN fits a line through the neighbour-ratio distribution of the points: tens of points at the least.
MIN_EXAMPLES = 32


@dataclass
class IntrinsicDimConfig(SignalOptions):
    split: str = field(default="validation", metadata={"choices": MEASURED_SPLITS,
                                                       "help": "validation or train: the examples measured"})
    pooling: str = field(default="mean", metadata={"choices": ("auto", "cls", "last", "mean", "tokens"),
        "help": "mean (default: an encoder's CLS is constant at the embedding output), tokens, last, cls or auto"})
    estimator: str = field(default="twonn", metadata={
        "help": "twonn (fast TwoNN in torch on the device) or a scikit-dimension estimator class run on "
                "the CPU: TwoNN, MLE, lPCA, DANCo, ..."})
    discard_fraction: float = field(default=0.1, metadata={"above": 0, "maximum": 0.9,
        "help": "fraction of the largest neighbour-distance ratios TwoNN leaves out of its fit"})

    def check(self) -> None:
        """When the options are made, before anything is computed: the estimator must exist."""
        if self.estimator != "twonn":
            estimator_for(self)

    @property
    def collects_states(self) -> bool:
        """Every example's states are kept: the estimate needs them all at once (the shared capture pass)."""
        return True

    @property
    def depends_on_processes(self) -> bool:
        """Sampled tokens come from each process's own random stream, so they depend on the number of processes."""
        return self.pooling == "tokens"


def _scikit_estimators() -> dict[str, type]:
    import skdim.id
    return {name: obj for name, obj in vars(skdim.id).items()
            if isinstance(obj, type) and hasattr(obj, "fit") and not name.startswith("_")}


def estimator_for(config: IntrinsicDimConfig):
    """A function (N, D) tensor -> intrinsic dimension for the configured estimator. Duplicate points are removed
    before a scikit-dimension estimator sees them (its neighbour distances of 0 give an ID of 0 or infinity),
    as the torch TwoNN drops them; `distinct_points` counts them for the warning."""
    if config.estimator == "twonn":
        return lambda points: twonn(points, config.discard_fraction)
    classes = _scikit_estimators()
    if config.estimator not in classes:
        raise UserError(f"Unknown intrinsic-dimension estimator '{config.estimator}'; use twonn or a "
                        f"scikit-dimension estimator: {', '.join(sorted(classes, key=str.lower))}.")
    cls = classes[config.estimator]
    takes_fraction = "discard_fraction" in inspect.signature(cls).parameters

    def estimate(points: torch.Tensor) -> float:
        estimator = cls(discard_fraction=config.discard_fraction) if takes_fraction else cls()
        distinct = distinct_points(points)
        if distinct.shape[0] < 3:
            raise ValueError(f"only {distinct.shape[0]} distinct points")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # the degenerate cases are reported by compute, in one sentence
            return float(estimator.fit(distinct.detach().double().cpu().numpy()).dimension_)
    return estimate


def distinct_points(points: torch.Tensor) -> torch.Tensor:
    """The points with exact duplicates removed (one of each kept)."""
    return torch.unique(points.detach(), dim=0)


def degenerate(dim: float, points: torch.Tensor) -> bool:
    """An estimate no hidden state can have: not positive, or beyond both the number of points and the width."""
    return not dim > 0 or dim > max(points.shape[0], points.shape[1])


def compute(context, config: IntrinsicDimConfig) -> Result:
    estimate = estimator_for(config)
    states = context.collected_states(config.pooling, config.split)
    if states is None:   # a data-parallel process other than the main one, which estimates from everyone's points
        return None
    hint = "try pooling mean or tokens, or more validation examples"
    dims, duplicates = [], []
    for j, points in enumerate(states):
        duplicates.append(points.shape[0] - distinct_points(points).shape[0])
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")   # the torch TwoNN's duplicate note: counted and reported below
                dim = estimate(points)
        except ValueError as exc:
            raise UserError(f"The {config.estimator} estimate failed on hidden state {j} ({exc}); {hint}.") from None
        if not math.isfinite(dim):
            raise UserError(f"The {config.estimator} estimate on hidden state {j} is {dim}; {hint}.")
        dims.append(dim)
    if any(duplicates):
        states_with = [j for j, n in enumerate(duplicates) if n]
        context.warn(f"id: {max(duplicates)} of {states[0].shape[0]} points are duplicates in hidden state(s) "
                     f"{', '.join(map(str, states_with))}; the {config.estimator} estimate uses the distinct points "
                     f"only ({hint}).")
    flagged = [degenerate(d, p) for d, p in zip(dims, states)]
    if any(flagged):
        context.warn(f"id: the {config.estimator} estimate is degenerate (not positive, or beyond the number of "
                     f"points) for hidden state(s) {', '.join(str(j) for j, f in enumerate(flagged) if f)}; the "
                     f"bounds of the blocks around them mean little ({hint}).")
    blocks = range(len(dims) - 1)
    table = pd.DataFrame({
        "signal": "id", "layer": blocks, "module": "block",
        "value": [math.ceil(max(dims[i + 1] - dims[i], 0.0)) + 1 for i in blocks],
        "id_in": dims[:-1], "id_out": dims[1:],
        "degenerate": [flagged[i] or flagged[i + 1] for i in blocks],
    })
    dimensions = pd.DataFrame({"state": range(len(dims)), "id": dims, "duplicates": duplicates,
                               "degenerate": flagged})
    return Result(table, tables={"dimensions": dimensions},
                  meta={"points": states[0].shape[0], "estimator": config.estimator, "split": config.split})


register(Signal(
    name="id", title="Intrinsic dimension (GeLoRA)",
    description="Per-block LoRA rank lower bound from the growth of the hidden states' intrinsic dimension.",
    config=IntrinsicDimConfig, compute=compute, version=3, plan=BOUNDS, min_examples=MIN_EXAMPLES,
    exhibits=deferred("analysis.signals.id.id_figures"),
    page=Page(title="Intrinsic dimension (GeLoRA)", icon=":material/show_chart:",
              caption="How the intrinsic dimension of the pooled hidden states grows with depth, and the LoRA rank "
                      "GeLoRA gives each block from it. A decoder's last state is taken after its final norm, as "
                      "transformers' hidden_states[-1] and the paper's code have it.",
              results="intrinsic-dimension",
              draw=deferred("analysis.signals.id.id_page", "draw"))))
