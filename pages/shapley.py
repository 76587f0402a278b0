"""Shapley sensitivity (ShapLoRA) per rank, module and layer, its convergence, and its agreement with
AdaLoRA's sensitivity and with captum's exact-loss reference: all read from the store."""
import streamlit as st

from analysis.reporting.exhibits import signal_exhibits
from analysis.reporting.figures import agreement_figure
from analysis.signals.tidy import spearman
from pages.shared.widgets import chart, choose_run, pick, show

st.title("Shapley sensitivity (ShapLoRA)")
st.caption("Each LoRA rank's Shapley value for lowering the validation loss, estimated from gate gradients at "
           "sampled coalitions of a warmed-up uniform LoRA. The ShapLoRA paper's code is not public: this is "
           "our faithful reading of the method, checked against exact enumeration on toy problems.")

run = choose_run({"shapley", "adalora"}, "No Shapley or AdaLoRA results yet: run an analysis with the shapley and "
                 "adalora signals on the Setup page, or `python -m analysis run --signals shapley,adalora`.")
shapley_entry = pick(run, "shapley", "Shapley options")
adalora_entry = pick(run, "adalora", "AdaLoRA options")

if shapley_entry is None:
    st.info("Shapley sensitivity is not computed for this run yet (signal `shapley`).")
    shapley_modules = None
else:
    meta, exhibits = shapley_entry.meta, {e.name: e for e in signal_exhibits(shapley_entry)}
    table, shapley_modules = shapley_entry.table(), shapley_entry.table("modules")
    left, middle, right = st.columns(3)
    left.metric("Coalition samples", meta.get("samples"))
    middle.metric("Loss, all ranks on", f"{meta.get('loss_all_ranks', float('nan')):.4f}")
    right.metric("Loss, all ranks off", f"{meta.get('loss_no_ranks', float('nan')):.4f}")
    st.caption(f"Sum of the estimates {table['value'].sum():.4g} vs the exact total loss reduction "
               f"{meta.get('exact_total', float('nan')):.4g} (Shapley values add up to it; the gap is the "
               "first-order approximation plus Monte Carlo noise). Values are ± one standard error.")
    tabs = st.tabs(["Per layer", "Per module", "Per rank", "Convergence"])
    for tab, name in zip(tabs, ["shapley_layers", "shapley_modules", "shapley_ranks", "shapley_convergence"]):
        with tab:
            show(exhibits[name])

st.header("Agreement")
if shapley_modules is not None and adalora_entry is not None:
    adalora_modules = adalora_entry.table("modules")
    rho = spearman(shapley_modules, adalora_modules)
    chart(agreement_figure(shapley_modules, adalora_modules, "Shapley", "AdaLoRA",
                           title=f"Shapley vs AdaLoRA sensitivity per module: Spearman {rho:.2f}"),
          lambda: shapley_modules.merge(adalora_modules, on=["layer", "module"], suffixes=("_shapley", "_adalora")),
          "shapley_vs_adalora")
elif adalora_entry is not None:
    show(signal_exhibits(adalora_entry)[0])
    st.info("Compute `shapley` for this run to compare it with AdaLoRA's sensitivity.")
else:
    st.info("AdaLoRA's sensitivity is not computed for this run yet (signal `adalora`); it is the baseline "
            "the Shapley estimate is compared with.")
if shapley_entry is not None and "reference" in shapley_entry.table_names:
    st.caption(f"Cheap estimate vs captum's ShapleyValueSampling: Spearman "
               f"{shapley_entry.meta.get('reference_spearman'):.2f}")
    show(exhibits["shapley_vs_captum"])
elif shapley_entry is not None:
    st.caption("Run with `--set shapley.reference=true` to compare the estimate with captum's "
               "ShapleyValueSampling on true loss differences (modules as players; slow).")
