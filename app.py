"""Streamlit entry point: builds the navigation (and keeps the choices that span pages), nothing else."""
from pathlib import Path

import streamlit as st

from pages.shared.planning import limit_keys
from pages.shared.widgets import PERSISTENT_KEYS, keep

# The icon is a file on disk (a material icon would be fetched from a font server): the dashboard works offline.
ICON = Path(__file__).parent / "pages" / "shared" / "icon.png"
st.set_page_config(page_title="LoRA rank importance", layout="wide", page_icon=str(ICON))
keep(*PERSISTENT_KEYS, *limit_keys())
navigation = st.navigation({
    "Setup": [st.Page("pages/setup.py", title="Setup and runs", icon=":material/settings:", default=True)],
    "Signals": [st.Page("pages/overview.py", title="All signals", icon=":material/dashboard:"),
                st.Page("pages/shapley.py", title="Shapley sensitivity", icon=":material/grid_on:"),
                st.Page("pages/sora.py", title="SoRA gate sparsity", icon=":material/filter_alt:"),
                st.Page("pages/representation.py", title="CKA and intrinsic dimension",
                        icon=":material/stacked_line_chart:")],
    "Budget": [st.Page("pages/budget.py", title="Budget and plans", icon=":material/tune:")],
    "Retrain": [st.Page("pages/retrain.py", title="Retrain and compare", icon=":material/model_training:")],
    "Export": [st.Page("pages/export.py", title="Export for papers", icon=":material/download:")],
})
navigation.run()
