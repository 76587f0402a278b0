"""EVA (explained variance adaptation, peft): how much of each layer's input variance its top components hold.

peft's own `get_eva_state_dict` runs on the measured examples: forward passes only, an incremental
PCA of every target layer's inputs (non-padding tokens), repeated until the components converge
(cosine similarity >= tau). EVA then pools the explained-variance ratios of the first r * rho
components of every layer and keeps the best r x (number of layers): its budget counts ranks.

Data: the first val_size examples of the train split by default, as peft feeds EVA the training
dataloader (`initialize_lora_eva_weights` / `get_eva_state_dict`); `split=validation` is our option.
By default all those examples form ONE step of EVA (one batch). peft streams a training dataloader
until every kept component is stable; cycling a small, fixed set of examples does not get
there (on 64 MiniLM snippets in batches of 16, some layers still had only 5 of 16 components stable
after 40 passes), whereas one step over all of it is the PCA of exactly that data and is stable on
its repeat (3 forward passes in all). `examples_per_step` > 0 streams as peft does.

Table: one row per (module, component): value = the explained-variance ratio peft ranked, `rank` =
the component's index. Extra table "peft_ranks": the rank EVA itself gives each module at this r
(what `initialize_lora_eva_weights` would put in rank_pattern).

Plan (eva_plan.py): the same pooled ranking, walked from the best component down and stopped at
the first one whose LoRA parameters (d_in + d_out per rank) no longer fit the budget. That is EVA's
rule with the rank count replaced by the parameter count, ties broken as peft's argsort breaks them
and peft's swap for layers sharing one PCA after it; where every module costs the same, a budget of
r x (number of modules) ranks reproduces peft's rank_pattern exactly, ties at the cut included, for
peft run on the CPU (on a GPU peft sorts on the device, whose order of tied values may differ; table
"peft_ranks" is peft's own answer). Components beyond r * rho per module were never fitted, so
larger budgets stop there (with a warning).

Data-parallel: each process takes its share of every step's examples and peft gathers the layer
inputs of all processes (run_eva's `gather`), so every step fits the PCA of the same tokens as one
process does (in another order: equal within float tolerance).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from analysis.signals import parallel
from analysis.signals.eva.eva_plan import EVA
from analysis.signals.eva.eva_start import START
from analysis.signals.eva.peft_eva import eva_lora_config, model_inputs, run_eva
from analysis.signals.context import MEASURED_SPLITS
from analysis.contract.signal import Signal
from analysis.signals.registry import register
from analysis.contract.result import Result
from analysis.settings import MAX_RANK, SignalOptions


@dataclass
class EvaSignalConfig(SignalOptions):
    split: str = field(default="train", metadata={"choices": MEASURED_SPLITS,
        "help": "train (peft feeds EVA the training dataloader) or validation"})
    r: int = field(default=8, metadata={"minimum": 1, "maximum": MAX_RANK,
                                    "help": "EVA's initial rank per module (its budget is r x modules ranks)"})
    rho: float = field(default=2.0, metadata={"minimum": 1.0,
        "help": "EVA's rho (>= 1): each module may get at most round(r * rho) ranks; peft's default 2"})
    tau: float = field(default=0.99, metadata={"above": 0, "maximum": 1.0,
        "help": "EVA's convergence threshold: cosine similarity of components between steps; peft's default"})
    examples_per_step: int = field(default=0, metadata={"minimum": 0,
        "help": "examples per EVA step (0: all of them in one step, the PCA of exactly that data; "
                "> 0: peft's streaming, which may not converge on a small set)"})
    max_passes: int = field(default=50, metadata={"minimum": 1,
        "help": "give up when the PCA has not converged after this many passes over the batches"})


def compute(context, config: EvaSignalConfig) -> Result:
    modules = context.modules
    frame = context.measured(config.split)
    size = config.examples_per_step or len(frame)
    steps = [frame.iloc[start: start + size] for start in range(0, len(frame), size)]
    parallel.require_shares(min(len(step) for step in steps), "example(s) of an EVA step")
    shares = [step.iloc[list(parallel.shard(len(step)))] for step in steps]
    batches = [model_inputs(batch) for share in shares
               for batch in context.batches(config.split, batch_size=len(share), frame=share, show_progress=False)]
    run = run_eva(context.model, batches, eva_lora_config([m.path for m in modules], config.r, config.rho, config.tau),
                  config.max_passes, gather=parallel.count() > 1)
    rows = [{"signal": "eva", "layer": m.layer, "module": m.name, "value": float(v), "rank": j}
            for m in modules for j, v in enumerate(run.ratios[m.path].tolist()[:round(config.r * config.rho)])]
    peft_ranks = pd.DataFrame({"layer": [m.layer for m in modules], "module": [m.name for m in modules],
                               "value": [int(run.state_dict[m.path].shape[0]) for m in modules]})
    shared = {m.path: run.shares_input_with[m.path] for m in modules if run.shares_input_with[m.path] != m.path}
    return Result(pd.DataFrame(rows), tables={"peft_ranks": peft_ranks},
                  meta={"forwards": run.forwards, "batches": len(batches), "shares_input_with": shared,
                        "rank_budget": config.r * len(modules), "split": config.split})


register(Signal(
    name="eva", title="EVA explained variance (peft)",
    description="peft's EVA: explained-variance ratios of an incremental PCA of each layer's inputs (train "
                "data by default, as peft); the plan keeps EVA's pooled ranking while it fits the parameter budget.",
    config=EvaSignalConfig, compute=compute, version=2, plan=EVA, start=START))
