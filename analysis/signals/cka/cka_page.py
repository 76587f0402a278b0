"""The CKA page: each block's importance 1 - CKA(input, output) and the layer x layer CKA matrix of one cached run.
Streamlit (`ui`) and the dashboard's widgets (`kit`) are handed over."""
from __future__ import annotations

from analysis.signals.cka.cka_figures import exhibits


def draw(ui, kit, run) -> None:
    entry = kit.pick(run, "cka", "CKA options")
    table, shown = entry.table(), {e.name: e for e in exhibits(entry)}
    split = entry.meta.get("config", {}).get("split", "validation")  # entries before the option: validation
    ui.caption(f"Measured on the **{split}** split" + (" (the paper's choice)." if split == "train" else
                                                       " (our option; the paper measures on train)."))
    kit.show(shown["cka_importance"])
    degenerate = table.loc[table["degenerate"], "layer"].tolist()
    if degenerate:
        ui.caption(f"Block(s) {', '.join(map(str, degenerate))}: the state on one side is the same vector for "
                   "every example (an encoder's CLS at the embedding output), so CKA is undefined there; "
                   "the plan leaves such blocks out.")
    ui.caption("The CKA plan adapts the most important blocks at one uniform rank: as many as the budget allows, "
               "or floor(L/2) with the paper's rule (Limits on the Budget page, `--block-count paper`).")
    if "cka_matrix" in shown:
        ui.subheader("Layer x layer CKA")
        kit.show(shown["cka_matrix"])
        if degenerate:
            ui.caption("Blank rows and columns: a constant state, with which CKA is undefined.")
    else:
        ui.caption("This CKA run streamed its statistics batch by batch (accumulate), which gives the "
                   "consecutive pairs only, not the full layer x layer matrix.")
