"""The intrinsic-dimension page: the ID of every hidden state over depth and GeLoRA's rank bounds of one cached run.
Streamlit (`ui`) and the dashboard's widgets (`kit`) are handed over."""
from __future__ import annotations

from analysis.signals.id.id_figures import exhibits


def draw(ui, kit, run) -> None:
    entry = kit.pick(run, "id", "Intrinsic-dimension options")
    kit.show(exhibits(entry)[0])
    config = entry.meta.get("config", {})
    ui.caption(f"{config.get('estimator', 'twonn')} on {config.get('pooling', '?')}-pooled states of "
               f"{entry.meta.get('points', '?')} examples of the **{config.get('split', 'validation')}** split. "
               "GeLoRA gives every adapted matrix of block i at least this rank (alpha = 32 r); scaling the bounds to "
               "a budget is the Budget page's work.")
