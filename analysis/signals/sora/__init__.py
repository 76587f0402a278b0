"""SoRA gate sparsity: the ranks a sparse, gated LoRA keeps when trained with proximal-gradient gates.

value per (layer, module) = the learned rank, the number of non-zero gates of the training stage's
best checkpoint on validation (the official scripts' load_best_model_at_end; `checkpoint=last`: its
last step) (gate_training.py, best_checkpoint.py); meta `learned_at` is that step and table
"validation" every evaluation; `magnitude` = the mean |gate| of the kept ranks; `update` = the gate
rule the run used (official: the SoRA code's masked update, the default; soft: a plain soft
threshold), also in the entry's meta. Extra tables: "layers" (learned rank summed per layer),
"gates" (every learned gate, per rank; 0 = pruned), "snapshots" (per module, non-zero gates and
mean |gate| every `snapshot_every` steps and at the end of each stage), "history" (task loss, total
non-zero gates and the gates' learning rate per step), "schedule" (the sparsifying scheduler: total
learned rank at the end of each round against its threshold xi). Options that depart from the
official scripts name themselves in plans and rows (`variant`).
The pruned adapter (a plain peft LoRA with rank_pattern = the learned ranks) is saved in the store
entry's `adapter/` folder, loadable with PeftModel.from_pretrained.

What it implies for a plan: the learned ranks, shrunk or grown by gate magnitude to meet a budget.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd

from analysis.model.layout import lora_parameter_count
from analysis.contract.tidy import per_rank_table
from analysis.contract.signal import Page, Signal, deferred
from analysis.signals.registry import register
from analysis.signals.sora.sora_plan import LEARNED
from analysis.signals.sora.gate_training import SoraConfig, learned_ranks, train
from analysis.contract.result import Result, files_under


def _per_module(gates) -> tuple[list[int], list[float]]:
    ranks = learned_ranks(gates)
    magnitude = [float(g[g != 0].abs().mean()) if r else 0.0 for g, r in zip(gates, ranks)]
    return ranks, magnitude


def compute(context, config: SoraConfig) -> Result:
    modules = context.modules
    with tempfile.TemporaryDirectory() as scratch:
        out = train(context, config, Path(scratch) / "adapter")
        adapter = files_under(Path(scratch) / "adapter", "adapter")
    ranks, magnitude = _per_module(out["learned"])
    table = pd.DataFrame({"signal": "sora", "layer": [m.layer for m in modules],
                          "module": [m.name for m in modules], "value": ranks, "magnitude": magnitude,
                          "update": config.update})
    rows = []
    for step, stage, xi, gates in out["snapshots"]:
        nonzero, mean = _per_module(gates)
        rows += [(step, stage, xi, m.layer, m.name, n, g) for m, n, g in zip(modules, nonzero, mean)]
    snapshots = pd.DataFrame(rows, columns=["step", "stage", "xi", "layer", "module", "nonzero", "magnitude"])
    history = pd.DataFrame(out["history"], columns=["step", "stage", "xi", "gate_lr", "loss", "nonzero"])
    ends = history.groupby("stage", sort=False).tail(1)
    schedule = ends[["stage", "xi", "nonzero"]].rename(columns={"nonzero": "total_rank"}).reset_index(drop=True)
    meta = {"update": config.update, "trainable_before": lora_parameter_count(modules, [config.r_max] * len(modules)),
            "trainable_after": lora_parameter_count(modules, ranks),
            "adapter_files": sorted(Path(name).name for name in adapter),
            "checkpoint": config.checkpoint, "learned_at": out["learned_at"], "validation_metric": out["metric"]}
    layers = table.groupby("layer", as_index=False)["value"].sum()
    tables = {"snapshots": snapshots, "history": history, "schedule": schedule, "layers": layers,
              "gates": per_rank_table("sora", modules, out["learned"].double().cpu())}
    if out["validation"]:
        validation = pd.DataFrame(out["validation"], columns=["step", "value"])
        tables["validation"] = validation.assign(metric=out["metric"], best=validation["step"] == out["learned_at"])
    return Result(table, tables=tables,
                  files=adapter, meta=meta)


def variant(config: dict) -> str:
    """Our options that change the learned ranks. Entries from before the checkpoint option read the last step."""
    ours = {"last-step gates": config.get("checkpoint", "last") == "last",
            "soft threshold": config.get("update", "soft") == "soft",
            "constant learning rate": config.get("schedule", "constant") == "constant"}
    return ", ".join(name for name, used in ours.items() if used) + (" (ours)" if any(ours.values()) else "")


register(Signal(
    name="sora", title="SoRA gate sparsity",
    description="Learned rank per module from sparse LoRA training with thresholded gates (the official "
                "SoRA update by default), and how ranks shrink as the threshold rises.",
    config=SoraConfig, compute=compute, version=3, trains=True, plan=LEARNED, variant=variant,
    exhibits=deferred("analysis.signals.sora.sora_figures"),
    page=Page(title="SoRA gate sparsity", icon=":material/filter_alt:",
              caption="A gated LoRA trained with thresholded gates (sparse LoRA): a rank whose gate is zero is pruned. "
                      "The learned rank of a module is its number of non-zero gates at the training stage's best "
                      "checkpoint on validation (the official scripts' load_best_model_at_end); the scheduler then "
                      "raises the threshold, from that checkpoint, to show how ranks shrink. xi is that threshold: the "
                      "size of the sparsifying step applied to the gates after each update; the larger it is, the "
                      "more gates become zero.",
              results="SoRA",
              draw=deferred("analysis.signals.sora.sora_page", "draw"))))
