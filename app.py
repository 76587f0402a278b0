"""Streamlit entry point: builds the navigation (a page per signal that has one, from the registry) and keeps the
choices that span pages, nothing else."""
from pathlib import Path

import streamlit as st

from views.shared.planning import limit_keys
from views.shared.signal_page import signal_pages
from views.shared.widgets import PERSISTENT_KEYS, keep

# The icon is a file on disk (a material icon would be fetched from a font server): the dashboard works offline.
ICON = Path(__file__).parent / "views" / "shared" / "icon.png"
st.set_page_config(page_title="LoRA rank importance", layout="wide", page_icon=str(ICON))
keep(*PERSISTENT_KEYS, *limit_keys())
navigation = st.navigation({
    "Setup": [st.Page("views/setup.py", title="Setup and runs", icon=":material/settings:", default=True)],
    "Signals": [st.Page("views/overview.py", title="All signals", icon=":material/dashboard:"), *signal_pages()],
    "Budget": [st.Page("views/budget.py", title="Budget and plans", icon=":material/tune:")],
    "Retrain": [st.Page("views/retrain.py", title="Retrain and compare", icon=":material/model_training:")],
    "Export": [st.Page("views/export.py", title="Export for papers", icon=":material/download:")],
})
navigation.run()
