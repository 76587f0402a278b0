"""AdaLoRA sensitivity (baseline): smoothed sensitivity x uncertainty of each LoRA rank after the warm-up.

value per (layer, module, rank) = AdaLoRA's score of that rank (sensitivity.py), collected over the shared
warm-up's steps (lora/warmup.py) with b1 = b2 = 0.85. Extra table "modules": the per-module sums.

What it implies for a plan: keep the globally best-scoring ranks until the budget is spent.
"""
from __future__ import annotations

from dataclasses import dataclass

from analysis.contract.tidy import per_module, per_rank_table
from analysis.contract.signal import Signal
from analysis.signals.registry import register
from analysis.contract.result import Result
from analysis.signals.adalora.sensitivity import AdaLoRAScores
from analysis.signals.lora.warmup import WarmupConfig, collect_during_warmup, warm_up, warmup_options


@dataclass
class AdaLoRAConfig(WarmupConfig):
    pass


def compute(context, config: AdaLoRAConfig) -> Result:
    warm = warm_up(context, warmup_options(config))
    scores = warm.tensors()["adalora"].double()
    table = per_rank_table("adalora", context.modules, scores)
    return Result(table, tables={"modules": per_module(table)}, meta={"warmup_key": warm.key})


def _exhibits(entry):
    from analysis.contract.exhibit import Exhibit
    from analysis.charts.tidy_figures import module_heatmap
    return [Exhibit("adalora_modules", "AdaLoRA sensitivity per module", lambda: entry.table("modules"),
                    lambda: module_heatmap(entry.table("modules"), value_label="score"))]


register(Signal(
    name="adalora", title="AdaLoRA sensitivity",
    description="AdaLoRA's smoothed sensitivity x uncertainty per LoRA rank, collected during a uniform warm-up.",
    config=AdaLoRAConfig, compute=compute, version=1, trains=True, exhibits=_exhibits))
collect_during_warmup("adalora", AdaLoRAScores)
