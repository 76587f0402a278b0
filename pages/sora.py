"""SoRA gate sparsity from the store: the learned ranks per layer and module at any training step,
their histogram, and how the total rank shrinks as the scheduler raises the threshold."""
import streamlit as st

from analysis.reporting.exhibits import signal_exhibits
from analysis.charts.tidy_figures import module_heatmap
from analysis.signals.sora.sora_figures import r_max_of
from pages.shared.widgets import chart, choose_run, pick, show

st.title("SoRA gate sparsity")
st.caption("A gated LoRA trained with thresholded gates (sparse LoRA): a rank whose gate is zero is pruned. The "
           "learned rank of a module is its number of non-zero gates at the training stage's best checkpoint on "
           "validation (the official scripts' load_best_model_at_end); the scheduler then raises the threshold, "
           "from that checkpoint, to show how ranks shrink. xi is that threshold: the size of "
           "the sparsifying step applied to the gates after each update; the larger it is, the more gates "
           "become zero.")
UPDATE_RULES = {
    "official": "official SoRA update (the authors' masked update: gates between xi and 2 xi go to zero, zero "
                "gates keep training and may come back)",
    "soft": "soft threshold (sign(g) max(|g| - xi, 0); a zero gate stays zero), not the official rule",
}

run = choose_run({"sora"}, "No SoRA results yet: run an analysis with the sora signal on the Setup page, or "
                 "`python -m analysis run --signals sora`.")
entry = pick(run, "sora", "SoRA options")
table, snapshots, history = entry.table(), entry.table("snapshots"), entry.table("history")
config, meta = entry.meta.get("config", {}), entry.meta
exhibits = {e.name: e for e in signal_exhibits(entry)}
# Entries from before the update option trained with the soft threshold.
rule = meta.get("update") or config.get("update") or "soft"
st.info(f"Gate update rule of this run: **{rule}**, {UPDATE_RULES.get(rule, rule)}. "
        f"Scheduler grid: {config.get('grid', 'exp_linear')}; learning-rate schedule: {config.get('schedule', 'constant')}.")

left, middle, right = st.columns(3)
end_of_training = int(history.loc[history["stage"] == "train", "step"].max())
learned_at = int(meta.get("learned_at") or end_of_training)   # entries from before the option: the last step
if "validation" in entry.table_names:
    best = entry.table("validation").query("best").iloc[0]
    st.caption(f"Validation {best['metric']} every {config.get('eval_every')} steps; the best, {best['value']:.4g}, "
               f"at step {learned_at}: its gates give the learned ranks (as the official scripts' "
               "load_best_model_at_end).")
elif meta.get("checkpoint") == "best":
    st.caption("Training was shorter than one validation interval, so the last step's gates give the learned ranks "
               "(as the official scripts do when nothing was evaluated).")
else:
    st.caption("This run read the learned ranks from the last training step (checkpoint=last, ours).")
left.metric(f"Total learned rank (step {learned_at})", int(table["value"].sum()))
middle.metric("LoRA parameters before", f"{meta.get('trainable_before', 0):,}")
right.metric("After pruning", f"{meta.get('trainable_after', 0):,}")

steps = sorted(snapshots["step"].unique())
step = st.select_slider("Training step", options=steps, value=end_of_training)
shown = snapshots[snapshots["step"] == step]
stage, xi = shown["stage"].iloc[0], shown["xi"].iloc[0]
chart(module_heatmap(shown.rename(columns={"nonzero": "value"})[["layer", "module", "value"]],
                     title=f"Non-zero gates at step {step} ({stage}, xi {xi:.3g})",
                     value_label="non-zero gates", zrange=(0, r_max_of(entry))),
      lambda: snapshots, "sora_snapshots")
show(exhibits["sora_rank_histogram"])
show(exhibits["sora_sparsity_path"])
st.caption(f"The pruned adapter (a plain peft LoRA with rank_pattern = the learned ranks, gates folded into B) "
           f"is in `{entry.path('adapter')}`; load it with `PeftModel.from_pretrained(model, path)`.")
