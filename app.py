"""Streamlit entry point: builds the navigation, nothing else."""
import streamlit as st

st.set_page_config(page_title="LoRA rank importance", layout="wide")
navigation = st.navigation({
    "Analysis": [st.Page("pages/analyze.py", title="Setup and results", icon=":material/insights:", default=True)],
    "Signals": [st.Page("pages/shapley.py", title="Shapley sensitivity", icon=":material/grid_on:"),
                st.Page("pages/sora.py", title="SoRA gate sparsity", icon=":material/filter_alt:"),
                st.Page("pages/representation.py", title="CKA and intrinsic dimension",
                        icon=":material/stacked_line_chart:")],
    "Retrain": [st.Page("pages/retrain.py", title="Retrain and compare", icon=":material/model_training:")],
})
navigation.run()
