"""Warm-up: a short uniform-rank LoRA training on the train split, cached, with what signals collect meanwhile.

Shapley sensitivity needs a trained adapter to measure (at initialisation B = 0 and every rank is
worth nothing), and AdaLoRA's sensitivity is collected while training. Both signals ask for the
same warm-up, so it is one store entry keyed by the analysis context and the warm-up options;
the second signal reuses it.

A signal may collect something while the warm-up trains (`collect_during_warmup`): AdaLoRA's sensitivity scores
are collected so (signals/adalora/sensitivity.py), after each backward pass and before the optimizer step.

For classification the head is trained with the adapter and stored beside it; `warm_adapter`
puts both into the live model and restores the original head on exit.

On a single GPU the forward and backward passes are replayed as CUDA graphs (graphed_loss.py, off with
ANALYSIS_CUDA_GRAPHS=0): the batches are then padded to --max-length, which changes the numbers by float
rounding only, and dropout draws other random numbers than eager steps would.

Data-parallel, as retrain: each process trains on its `warmup_batch_size` slice of every step
(context.training_batches) and the gradients are averaged before the scores and the optimizer see
them, so every process holds the same adapter; the main process writes it. The global batch grows
with the processes, so the number of processes is part of the key (above one).
"""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
import time
from dataclasses import dataclass, field
from typing import Callable

import pandas as pd
import torch

from analysis.signals import parallel
from analysis.signals.lora import graphed_loss
from analysis.signals.lora.gated_lora import gated_lora
from analysis.contract.progress import progress
from analysis.contract.result import Result
from analysis.store.cache import Entry, Store
from analysis.settings import MAX_RANK, SignalOptions
from analysis.signals.registry import all_signals

VERSION = 1


@dataclass
class WarmupConfig(SignalOptions):
    r_max: int = field(default=8, metadata={"minimum": 1, "maximum": MAX_RANK,
                                            "help": "rank of the uniform LoRA warmed up and analysed"})
    alpha: float = field(default=16.0, metadata={"above": 0, "help": "LoRA alpha of the warm-up adapter (scale alpha / r_max)"})
    warmup_steps: int = field(default=200, metadata={"minimum": 1, "help": "optimizer steps of the warm-up on the train split"})
    warmup_lr: float = field(default=1e-3, metadata={"above": 0, "help": "AdamW learning rate of the warm-up"})
    warmup_batch_size: int = field(default=16, metadata={"minimum": 1,
                                                         "help": "examples per warm-up step (and process)"})

    @property
    def depends_on_processes(self) -> bool:
        """The warm-up's global batch grows with the processes (and Shapley draws a stream per process)."""
        return True


def warmup_options(config) -> WarmupConfig:
    """The warm-up fields of a signal config that embeds them."""
    return WarmupConfig(**{f.name: getattr(config, f.name) for f in dataclasses.fields(WarmupConfig)})


def head_parameters(model: torch.nn.Module, task: str) -> dict[str, torch.nn.Parameter]:
    """The task head trained with the adapter: parameters outside the backbone, for classification only."""
    if task != "classification":
        return {}
    prefix = model.base_model_prefix + "."
    return {name: p for name, p in model.named_parameters() if not name.startswith(prefix)}


@contextlib.contextmanager
def head_kept(model: torch.nn.Module, task: str):
    """Yields the task head's parameters (see head_parameters); on exit, however it comes, puts back
    their values and the model's train/eval mode, so training a head here leaves no trace."""
    head = head_parameters(model, task)
    original = {name: p.detach().clone() for name, p in head.items()}
    was_training = model.training
    try:
        yield head
    finally:
        model.train(was_training)
        with torch.no_grad():
            for name, p in head.items():
                p.copy_(original[name])


# What signals collect while the warm-up trains, by name: a factory (the trained LoRA parameters A0, B0, A1, B1, ...)
# -> an object whose update() runs after each backward pass (its gradients averaged over the processes, before the
# optimizer step) and whose per_rank() gives a (modules, r) tensor at the end, stored in the warm-up's entry under
# that name. AdaLoRA's sensitivity is collected so (signals/adalora/). The warm-up's key does not hold the collectors:
# a collector added later finds warm-ups cached before it without its tensor.
_COLLECTORS: dict[str, Callable] = {}


def collect_during_warmup(name: str, factory: Callable) -> None:
    """Have every warm-up collect `factory(parameters)` under `name` (a signal folder calls this when it registers)."""
    _COLLECTORS[name] = factory


def _collectors() -> dict[str, Callable]:
    all_signals()   # every signal folder has registered what it collects
    return dict(sorted(_COLLECTORS.items()))


def _train(context, config: WarmupConfig) -> Result:
    model = context.model
    # The gates stay at 1 throughout, so the warm-up leaves them out of the forward pass (x * 1 is x).
    with head_kept(model, context.prepared.task) as head, \
            gated_lora(model, context.modules, config.r_max, config.alpha, seed=context.settings.seed,
                       gate_hooks=False) as gated:
        gated.gates.requires_grad_(False)
        for p in head.values():
            p.requires_grad_(True)
        params = gated.lora_parameters()
        trained = params + list(head.values())
        optimizer = torch.optim.AdamW(trained, lr=config.warmup_lr, weight_decay=0.0)
        collectors = {name: factory(params) for name, factory in _collectors().items()}
        # Tokenized as consumed: only the first steps x batch-size training examples, cycled if fewer.
        batches = context.training_batches(config.warmup_batch_size, fixed_length=graphed_loss.wanted(model))
        losses = []
        started = time.perf_counter()
        model.train()
        first = next(batches)
        loss_of, graphed = graphed_loss.loss_function(gated.model, first, warn=context.warn)
        batches = itertools.chain([first], batches)
        for _ in progress(range(config.warmup_steps), total=config.warmup_steps, desc="warm-up"):
            loss = loss_of(next(batches))
            loss.backward()
            parallel.average_gradients(trained)
            for collector in collectors.values():
                collector.update()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.detach().clone())  # kept on the device: no synchronisation per step; a copy, as a
                                                  # graph's next replay overwrites its output
        tensors = {**{f"lora.{k}": v for k, v in gated.adapter_state().items()},
                   **{f"head.{name}": p.detach().cpu() for name, p in head.items()},
                   **{name: collector.per_rank() for name, collector in collectors.items()}}
    losses = parallel.mean(torch.stack(losses).float())   # each step's loss, averaged over the processes
    curve = pd.DataFrame({"step": range(1, len(losses) + 1), "loss": losses.cpu().tolist()})
    return Result(pd.DataFrame(columns=["signal", "layer", "module", "value"]), tables={"losses": curve},
                  tensors=tensors,
                  meta={"seconds": time.perf_counter() - started, "modules": [m.path for m in context.modules],
                        "cuda_graphs": graphed})


def warm_up(context, config: WarmupConfig) -> Entry:
    """The cached warm-up for this context and these options, trained now if missing."""
    parts = {"context": context.prepared.key, "config": dataclasses.asdict(config), "version": VERSION}
    if parallel.count() > 1:   # as retrain's key: the processes set the global batch (one process: the old keys)
        parts["processes"] = parallel.count()
    key = Store.key("warmup", parts)
    meta = {"title": "LoRA warm-up", "config": dataclasses.asdict(config),
            "context_key": context.prepared.key, **context.prepared.description, "processes": parallel.count()}
    entry, _ = parallel.shared_entry(context.prepared.store, key, lambda: _train(context, config), meta)
    return entry


@contextlib.contextmanager
def warm_adapter(context, config: WarmupConfig):
    """The model in eval mode with the warmed-up gated adapter (and trained head) in place; yields
    (GatedLoRA, entry)."""
    entry = warm_up(context, config)
    tensors = entry.tensors()
    model = context.model
    with head_kept(model, context.prepared.task) as head:
        model.eval()
        with torch.no_grad():
            for name, p in head.items():
                p.copy_(tensors[f"head.{name}"])
        with gated_lora(model, context.modules, config.r_max, config.alpha, seed=context.settings.seed) as gated:
            gated.load_adapter_state({k[len("lora."):]: v for k, v in tensors.items() if k.startswith("lora.")})
            yield gated, entry
