"""The SoRA page: the learned ranks per layer and module at any training step, their histogram, and how the total
rank shrinks as the scheduler raises the threshold; all read from the store. Streamlit (`ui`) and the dashboard's
widgets (`kit`) are handed over."""
from __future__ import annotations

from analysis.charts.tidy_figures import module_heatmap
from analysis.signals.sora.sora_figures import exhibits, r_max_of

UPDATE_RULES = {
    "official": "official SoRA update (the authors' masked update: gates between xi and 2 xi go to zero, zero "
                "gates keep training and may come back)",
    "soft": "soft threshold (sign(g) max(|g| - xi, 0); a zero gate stays zero), not the official rule",
}


def draw(ui, kit, run) -> None:
    entry = kit.pick(run, "sora", "SoRA options")
    table, snapshots, history = entry.table(), entry.table("snapshots"), entry.table("history")
    config, meta = entry.meta.get("config", {}), entry.meta
    shown = {e.name: e for e in exhibits(entry)}
    # Entries from before the update option trained with the soft threshold.
    rule = meta.get("update") or config.get("update") or "soft"
    ui.info(f"Gate update rule of this run: **{rule}**, {UPDATE_RULES.get(rule, rule)}. Scheduler grid: "
            f"{config.get('grid', 'exp_linear')}; learning-rate schedule: {config.get('schedule', 'constant')}.")

    left, middle, right = ui.columns(3)
    end_of_training = int(history.loc[history["stage"] == "train", "step"].max())
    learned_at = int(meta.get("learned_at") or end_of_training)   # entries from before the option: the last step
    if "validation" in entry.table_names:
        best = entry.table("validation").query("best").iloc[0]
        ui.caption(f"Validation {best['metric']} every {config.get('eval_every')} steps; the best, "
                   f"{best['value']:.4g}, at step {learned_at}: its gates give the learned ranks (as the official "
                   "scripts' load_best_model_at_end).")
    elif meta.get("checkpoint") == "best":
        ui.caption("Training was shorter than one validation interval, so the last step's gates give the learned "
                   "ranks (as the official scripts do when nothing was evaluated).")
    else:
        ui.caption("This run read the learned ranks from the last training step (checkpoint=last, ours).")
    left.metric(f"Total learned rank (step {learned_at})", int(table["value"].sum()))
    middle.metric("LoRA parameters before", f"{meta.get('trainable_before', 0):,}")
    right.metric("After pruning", f"{meta.get('trainable_after', 0):,}")

    steps = sorted(snapshots["step"].unique())
    step = ui.select_slider("Training step", options=steps, value=end_of_training)
    at_step = snapshots[snapshots["step"] == step]
    stage, xi = at_step["stage"].iloc[0], at_step["xi"].iloc[0]
    kit.chart(module_heatmap(at_step.rename(columns={"nonzero": "value"})[["layer", "module", "value"]],
                             title=f"Non-zero gates at step {step} ({stage}, xi {xi:.3g})",
                             value_label="non-zero gates", zrange=(0, r_max_of(entry))),
              lambda: snapshots, "sora_snapshots")
    kit.show(shown["sora_rank_histogram"])
    kit.show(shown["sora_sparsity_path"])
    ui.caption(f"The pruned adapter (a plain peft LoRA with rank_pattern = the learned ranks, gates folded into B) "
               f"is in `{entry.path('adapter')}`; load it with `PeftModel.from_pretrained(model, path)`.")
