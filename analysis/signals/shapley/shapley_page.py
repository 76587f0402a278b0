"""The Shapley page: ShapLoRA's sensitivity (or our first-order Shapley value) per rank, module and layer, its
convergence, and its agreement with AdaLoRA's sensitivity and with the exact Shapley value where it was
enumerated; all read from the store. Streamlit (`ui`) and the dashboard's widgets (`kit`) are handed over."""
from __future__ import annotations

from analysis.charts.agreement import agreement_exhibit
from analysis.signals.shapley.shapley_figures import NAMES, exhibits, reading_of

READINGS = {
    "shapley": "**Shapley first-order (ours)**, not ShapLoRA's measure: the first-order Shapley value of each rank "
               "(its loss reduction, from signed gate gradients; the values add up to about the total loss change)",
    "sensitivity": "**ShapLoRA's sensitivity**: each rank's |g dL/dg| averaged over Shapley-weighted coalitions "
                   "(the paper's AdaLoRA-style sensitivity over coalitions; not a Shapley value, never negative)",
}


def draw(ui, kit, run) -> None:
    shapley_entry = kit.pick(run, "shapley", "Shapley options")
    adalora_entry = kit.pick(run, "adalora", "AdaLoRA options")
    if shapley_entry is None:
        ui.info("Shapley sensitivity is not computed for this run yet (signal `shapley`).")
    else:
        meta, shown = shapley_entry.meta, {e.name: e for e in exhibits(shapley_entry)}
        reading = reading_of(shapley_entry)
        split = meta.get("split") or meta.get("config", {}).get("split", "validation")
        ui.info(f"These tables hold {READINGS.get(reading, reading)}, measured on the **{split}** split.")
        table = shapley_entry.table()
        left, middle, right = ui.columns(3)
        left.metric("Coalition samples", meta.get("samples"))
        middle.metric("Loss, all ranks on", f"{meta.get('loss_all_ranks', float('nan')):.4f}")
        right.metric("Loss, all ranks off", f"{meta.get('loss_no_ranks', float('nan')):.4f}")
        if reading == "shapley":
            ui.caption(f"Sum of the estimates {table['value'].sum():.4g} vs the exact total loss reduction "
                       f"{meta.get('exact_total', float('nan')):.4g} (Shapley values add up to it; the gap is the "
                       "first-order approximation plus Monte Carlo noise).")
        stopping = (f" A stopping rule chose the number of coalitions on a pilot of {meta['pilot_samples']}; the "
                    "estimates and their errors come from as many fresh ones." if meta.get("pilot_samples") else "")
        ui.caption("Values are ± one standard error." + stopping)
        tabs = ui.tabs(["Per layer", "Per module", "Per rank", "Convergence"])
        for tab, name in zip(tabs, ["shapley_layers", "shapley_modules", "shapley_ranks", "shapley_convergence"]):
            with tab:
                kit.show(shown[name])

    ui.header("Agreement")
    if shapley_entry is not None and adalora_entry is not None:
        kit.show(agreement_exhibit(shapley_entry, adalora_entry, NAMES[reading_of(shapley_entry)], "AdaLoRA"))
    elif adalora_entry is not None:
        kit.show(kit.exhibits(adalora_entry)[0])
        ui.info("Compute `shapley` for this run to compare it with AdaLoRA's sensitivity.")
    else:
        ui.info("AdaLoRA's sensitivity is not computed for this run yet (signal `adalora`); it is the baseline "
                "the Shapley estimate is compared with.")
    if shapley_entry is not None and "reference" in shapley_entry.table_names:
        estimate_gap = meta.get("reference_estimate_gap")
        ui.caption("Exact Shapley values by enumerating every coalition of ranks (true loss differences). Largest gap, "
                   f"as a share of the largest exact value: first-order {meta.get('reference_first_order_gap', 0):.1%}"
                   + (f", our estimate {estimate_gap:.1%}" if estimate_gap is not None else
                      " (the sensitivity reading is not a Shapley value, so only its rank order is compared)")
                   + "; Spearman of the estimate against the exact values "
                   f"{meta.get('reference_spearman', float('nan')):.2f}.")
        kit.show(shown["shapley_vs_exact"])
    elif shapley_entry is not None:
        ui.caption("On a tiny model (at most 16 ranks in all), `--set shapley.reference=true` also enumerates every "
                   "coalition for the exact Shapley value of each rank and reports the first-order gap.")
