"""CKA layer importance and intrinsic dimension (GeLoRA) of one cached run, read from the store."""
import streamlit as st

from analysis.figures import cka_importance_figure, cka_matrix_figure, intrinsic_dimension_figure
from analysis.results import describe_options, runs
from analysis.store import Store

st.title("Representation signals")
st.caption("How much each block re-shapes the pooled hidden states (CKA) and how the states' intrinsic "
           "dimension grows with depth (GeLoRA), on the validation split.")

found = runs(Store(), {"cka", "id"})
if not found:
    st.info("No CKA or intrinsic-dimension results yet: run an analysis with the cka and id signals on the "
            "Setup page, or `python -m analysis run --signals cka,id`.")
    st.stop()

run = st.selectbox("Run", found, format_func=lambda r: r.label)


def pick(signal: str, label: str):
    """The newest entry of a signal in this run, or a chosen variant when several option sets exist."""
    variants = run.entries.get(signal, [])
    if len(variants) > 1:
        return st.selectbox(label, variants, format_func=describe_options, key=f"{signal}-{run.key}")
    return variants[0] if variants else None


def csv_button(frame, name: str):
    st.download_button(f"CSV: {name}", frame.to_csv(index=False), file_name=f"{name}.csv", mime="text/csv",
                       key=f"csv-{name}-{run.key}")


st.header("Intrinsic dimension and GeLoRA rank bounds")
entry = pick("id", "Intrinsic-dimension options")
if entry is None:
    st.info("Intrinsic dimension is not computed for this run yet (signal `id`).")
else:
    table, dimensions = entry.table(), entry.table("dimensions")
    st.plotly_chart(intrinsic_dimension_figure(table, dimensions))
    config = entry.meta.get("config", {})
    st.caption(f"{config.get('estimator', 'twonn')} on {config.get('pooling', '?')}-pooled states of "
               f"{entry.meta.get('points', '?')} examples. GeLoRA gives every adapted matrix of block i at "
               "least this rank (alpha = 32 r); scaling the bounds to a budget is the Budget page's work.")
    csv_button(table, "gelora_bounds")

st.header("CKA layer importance")
entry = pick("cka", "CKA options")
if entry is None:
    st.info("CKA is not computed for this run yet (signal `cka`).")
else:
    table = entry.table()
    st.plotly_chart(cka_importance_figure(table))
    degenerate = table.loc[table["degenerate"], "layer"].tolist()
    if degenerate:
        st.caption(f"Block(s) {', '.join(map(str, degenerate))}: the state on one side is the same vector for "
                   "every example (an encoder's CLS at the embedding output), so CKA is undefined there; "
                   "the plan leaves such blocks out.")
    st.caption("The CKA plan adapts the most important blocks at one uniform rank, as many as the budget allows.")
    csv_button(table, "cka_importance")
    if "matrix" in entry.table_names:
        matrix = entry.table("matrix")
        st.subheader("Layer x layer CKA")
        st.plotly_chart(cka_matrix_figure(matrix))
        if degenerate:
            st.caption("Blank rows and columns: a constant state, with which CKA is undefined.")
        csv_button(matrix, "cka_matrix")
    else:
        st.caption("This CKA run streamed its statistics batch by batch (accumulate), which gives the "
                   "consecutive pairs only, not the full layer x layer matrix.")
