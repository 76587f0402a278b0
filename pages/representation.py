"""CKA layer importance and intrinsic dimension (GeLoRA) of one cached run, read from the store."""
import streamlit as st

from analysis.reporting.exhibits import signal_exhibits
from pages.shared.widgets import choose_run, pick, show

st.title("CKA and intrinsic dimension")
st.caption("How much each block re-shapes the pooled hidden states (CKA) and how the states' intrinsic "
           "dimension grows with depth (GeLoRA). A decoder's last state is taken after its final norm, as "
           "transformers' hidden_states[-1] and the papers' code have it.")

run = choose_run({"cka", "id"}, "No CKA or intrinsic-dimension results yet: run an analysis with the cka and id "
                 "signals on the Setup page, or `python -m analysis run --signals cka,id`.")

st.header("Intrinsic dimension and GeLoRA rank bounds")
entry = pick(run, "id", "Intrinsic-dimension options")
if entry is None:
    st.info("Intrinsic dimension is not computed for this run yet (signal `id`).")
else:
    show(signal_exhibits(entry)[0])
    config = entry.meta.get("config", {})
    st.caption(f"{config.get('estimator', 'twonn')} on {config.get('pooling', '?')}-pooled states of "
               f"{entry.meta.get('points', '?')} examples of the **{config.get('split', 'validation')}** split. GeLoRA gives every adapted matrix of block i at "
               "least this rank (alpha = 32 r); scaling the bounds to a budget is the Budget page's work.")

st.header("CKA layer importance")
entry = pick(run, "cka", "CKA options")
if entry is None:
    st.info("CKA is not computed for this run yet (signal `cka`).")
else:
    table, exhibits = entry.table(), {e.name: e for e in signal_exhibits(entry)}
    split = entry.meta.get("config", {}).get("split", "validation")  # entries before the option: validation
    st.caption(f"Measured on the **{split}** split" + (" (the paper's choice)." if split == "train" else
                                                        " (our option; the paper measures on train)."))
    show(exhibits["cka_importance"])
    degenerate = table.loc[table["degenerate"], "layer"].tolist()
    if degenerate:
        st.caption(f"Block(s) {', '.join(map(str, degenerate))}: the state on one side is the same vector for "
                   "every example (an encoder's CLS at the embedding output), so CKA is undefined there; "
                   "the plan leaves such blocks out.")
    st.caption("The CKA plan adapts the most important blocks at one uniform rank: as many as the budget allows, "
               "or floor(L/2) with the paper's rule (Limits on the Budget page, `--block-count paper`).")
    if "cka_matrix" in exhibits:
        st.subheader("Layer x layer CKA")
        show(exhibits["cka_matrix"])
        if degenerate:
            st.caption("Blank rows and columns: a constant state, with which CKA is undefined.")
    else:
        st.caption("This CKA run streamed its statistics batch by batch (accumulate), which gives the "
                   "consecutive pairs only, not the full layer x layer matrix.")
