"""Every signal of one run side by side: layer x module heatmaps on a shared layer axis, per-layer curves with
standard errors, and how far the signals agree."""
import streamlit as st

from analysis.reporting.exhibits import overview_exhibits
from analysis.signals.registry import all_signals
from analysis.store.lookups import chosen_entries
from views.shared.widgets import choose_run, show

signals = all_signals()

st.title("All signals")
st.caption("Each signal is scaled by its largest |value| (they come in different units: loss reduction, rank, "
           "1 - CKA, ...), so the colours compare where each signal puts its weight, not magnitudes. Layer-level "
           "signals (CKA, intrinsic dimension) have one column, `block`.")

run = choose_run(set(signals), "No signals computed yet: run an analysis on the Setup page, or "
                 "`python -m analysis run`.")
entries = chosen_entries(run, signals)
missing = [f"{signals[name].title} (`{name}`)" for name in signals if name not in entries]

# The split each entry measured on, where the signal has that option (CKA, EVA, GoRA: train by default, as their
# sources do; intrinsic dimension, Shapley: validation).
splits = {name: entry.meta.get("config", {}).get("split") for name, entry in entries.items()}
st.caption(" · ".join(f"**{name}**: {signals[name].title}" + (f" (**{splits[name]}** split)" if splits[name] else "")
                      for name in entries))
if missing:
    st.info(f"Not computed for this run yet: {', '.join(missing)}. Run them on the Setup page.")

heatmaps, layers, agreement = overview_exhibits(entries)
st.subheader("Per layer and module")
show(heatmaps)
st.subheader("Per layer")
st.caption("Shaded: ± one standard error, for signals estimated by sampling (Shapley).")
show(layers)
st.subheader("Agreement")
if len(entries) < 2:
    st.info("Agreement needs at least two signals.")
else:
    st.caption("Spearman rank correlation of the signals' per-layer values: 1 means they order the layers alike. "
               "Blank: fewer than three layers scored by both, or a signal constant on them.")
    show(agreement)
