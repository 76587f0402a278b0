"""Shapley sensitivity (ShapLoRA) per rank, module and layer, its convergence, and its agreement with
AdaLoRA's sensitivity and with the exact Shapley value where it was enumerated: all read from the store."""
import streamlit as st

from analysis.charts.agreement import agreement_exhibit
from analysis.reporting.exhibits import signal_exhibits
from analysis.signals.shapley.shapley_figures import NAMES, reading_of
from pages.shared.widgets import choose_run, pick, show

st.title("Shapley sensitivity (ShapLoRA)")
st.caption("Each LoRA rank's importance for lowering the validation loss, estimated from gate gradients at "
           "sampled coalitions of a warmed-up uniform LoRA. The ShapLoRA paper's code is not public: this is "
           "our reading of the method, checked against exact enumeration on toy problems and on a tiny model.")
READINGS = {
    "shapley": "**Shapley first-order (ours)**, not ShapLoRA's measure: the first-order Shapley value of each rank "
               "(its loss reduction, from signed gate gradients; the values add up to about the total loss change)",
    "sensitivity": "**ShapLoRA's sensitivity**: each rank's |g dL/dg| averaged over Shapley-weighted coalitions "
                   "(the paper's AdaLoRA-style sensitivity over coalitions; not a Shapley value, never negative)",
}

run = choose_run({"shapley", "adalora"}, "No Shapley or AdaLoRA results yet: run an analysis with the shapley and "
                 "adalora signals on the Setup page, or `python -m analysis run --signals shapley,adalora`.")
shapley_entry = pick(run, "shapley", "Shapley options")
adalora_entry = pick(run, "adalora", "AdaLoRA options")

if shapley_entry is None:
    st.info("Shapley sensitivity is not computed for this run yet (signal `shapley`).")
else:
    meta, exhibits = shapley_entry.meta, {e.name: e for e in signal_exhibits(shapley_entry)}
    reading = reading_of(shapley_entry)
    split = meta.get("split") or meta.get("config", {}).get("split", "validation")
    st.info(f"These tables hold {READINGS.get(reading, reading)}, measured on the **{split}** split.")
    table = shapley_entry.table()
    left, middle, right = st.columns(3)
    left.metric("Coalition samples", meta.get("samples"))
    middle.metric("Loss, all ranks on", f"{meta.get('loss_all_ranks', float('nan')):.4f}")
    right.metric("Loss, all ranks off", f"{meta.get('loss_no_ranks', float('nan')):.4f}")
    if reading == "shapley":
        st.caption(f"Sum of the estimates {table['value'].sum():.4g} vs the exact total loss reduction "
                   f"{meta.get('exact_total', float('nan')):.4g} (Shapley values add up to it; the gap is the "
                   "first-order approximation plus Monte Carlo noise).")
    stopping = (f" A stopping rule chose the number of coalitions on a pilot of {meta['pilot_samples']}; the "
                "estimates and their errors come from as many fresh ones." if meta.get("pilot_samples") else "")
    st.caption("Values are ± one standard error." + stopping)
    tabs = st.tabs(["Per layer", "Per module", "Per rank", "Convergence"])
    for tab, name in zip(tabs, ["shapley_layers", "shapley_modules", "shapley_ranks", "shapley_convergence"]):
        with tab:
            show(exhibits[name])

st.header("Agreement")
if shapley_entry is not None and adalora_entry is not None:
    show(agreement_exhibit(shapley_entry, adalora_entry, NAMES[reading_of(shapley_entry)], "AdaLoRA"))
elif adalora_entry is not None:
    show(signal_exhibits(adalora_entry)[0])
    st.info("Compute `shapley` for this run to compare it with AdaLoRA's sensitivity.")
else:
    st.info("AdaLoRA's sensitivity is not computed for this run yet (signal `adalora`); it is the baseline "
            "the Shapley estimate is compared with.")
if shapley_entry is not None and "reference" in shapley_entry.table_names:
    estimate_gap = meta.get("reference_estimate_gap")
    st.caption(f"Exact Shapley values by enumerating every coalition of ranks (true loss differences). Largest gap, "
               f"as a share of the largest exact value: first-order {meta.get('reference_first_order_gap', 0):.1%}"
               + (f", our estimate {estimate_gap:.1%}" if estimate_gap is not None else
                  " (the sensitivity reading is not a Shapley value, so only its rank order is compared)")
               + f"; Spearman of the estimate against the exact values {meta.get('reference_spearman', float('nan')):.2f}.")
    show(exhibits["shapley_vs_exact"])
elif shapley_entry is not None:
    st.caption("On a tiny model (at most 16 ranks in all), `--set shapley.reference=true` also enumerates every "
               "coalition for the exact Shapley value of each rank and reports the first-order gap.")
