"""The training loss of a short LoRA training (the warm-up, SoRA) as CUDA graphs, on a GPU.

A small model's training step at batch 16 is bound by kernel launches and host synchronisations
(transformers checks every attention mask for padding, which waits for the GPU): the GPU idles
while Python launches a thousand small kernels. torch's make_graphed_callables records the forward
and the backward pass once and replays each as one graph per step; the optimizer, the clip and the
gate rule stay eager. Replays compute what the eager pass computes on the same inputs, with two
differences: every batch is padded to --max-length (a graph has one shape; padding is masked, so
losses and gradients change only by float rounding) and dropout draws other random numbers.

Used on a single CUDA device, unless ANALYSIS_CUDA_GRAPHS=0; elsewhere, or when the capture fails (the
reason goes to the run's log), the model runs eagerly as before.
"""
from __future__ import annotations

import os
from typing import Callable

import torch
from torch import nn

ENVIRONMENT = "ANALYSIS_CUDA_GRAPHS"


def wanted(model: nn.Module) -> bool:
    """Graphs for this model: all of it on one CUDA device, and not switched off."""
    devices = {p.device for p in model.parameters()}
    return (os.environ.get(ENVIRONMENT, "1") != "0" and len(devices) == 1
            and next(iter(devices)).type == "cuda")


class _Loss(nn.Module):
    """The model's loss as a module of positional tensors (what make_graphed_callables takes); `extra`
    parameters outside the model that the loss depends on (the gates, used by hooks) become its own, so the
    graphed backward pass returns their gradients too."""

    def __init__(self, model: nn.Module, names: list[str], extra: list[nn.Parameter]):
        super().__init__()
        self.model, self.names = model, names
        self.extra = nn.ParameterList(extra)

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.names, tensors))).loss


def loss_function(model: nn.Module, first: dict[str, torch.Tensor], extra: list[nn.Parameter] = (),
                  warn: Callable[[str], None] | None = None) -> tuple[Callable[[dict], torch.Tensor], bool]:
    """(batch -> loss ready for .backward(), graphed). Graphed where `wanted`, captured on the batch `first`;
    later batches of its shape replay the graph (fixed_length batches), any other runs eagerly. The model must be
    in training mode already."""
    def eager(batch: dict) -> torch.Tensor:
        return model(**batch).loss

    if not wanted(model):
        return eager, False
    names = sorted(first)
    module = _Loss(model, names, list(extra))
    try:
        # Copies: the graph keeps its sample inputs as the buffers every later batch is copied into.
        graphed = torch.cuda.make_graphed_callables(module, tuple(first[n].clone() for n in names),
                                                    allow_unused_input=True)
    except Exception as exc:   # an operation that cannot be captured: run eagerly, as without graphs
        if warn is not None:
            warn(f"CUDA graphs could not be captured ({type(exc).__name__}: {str(exc)[:200]}); training eagerly.")
        return eager, False

    shapes = [first[n].shape for n in names]

    def replayed(batch: dict) -> torch.Tensor:
        # The graph's output is overwritten by the next replay: what outlives the step is a copy (callers clone).
        tensors = [batch[n] for n in names]
        if any(t.shape != shape for t, shape in zip(tensors, shapes)):
            return eager(batch)   # the split's shorter last batch: a graph has one shape
        return graphed(*tensors)

    return replayed, True
