"""Figures and tables for the paper: choose the print style once, preview a figure as it will print, and
download any figure as PDF, SVG or PNG with the CSV behind it, the results table also as LaTeX, or
everything at once as a zip."""
import streamlit as st

from analysis.reporting.exhibits import run_exhibits, zipped
from analysis.reporting.paper import FORMATS, WIDTHS, paper_style
from analysis.signals.registry import all_signals
from analysis.store.lookups import chosen_entries, comparisons
from views.shared.planning import current_plans
from views.shared.widgets import choose_run, download_buttons

signals = all_signals()

st.title("Export for papers")
st.caption("Paper style: white background, one embedded sans-serif font (Liberation Sans, Arial's metric twin) "
           "at 7.5 pt, sized for one column or the full text width, colour-blind-safe scales (viridis, a "
           "blue-red diverging scale, Okabe-Ito lines), optionally grayscale. The same files come from "
           "`python -m analysis export`.")

run = choose_run(set(signals), "No signals computed yet: run an analysis on the Setup page, or "
                 "`python -m analysis run`.")
left, right = st.columns(2)
st.session_state.setdefault("export_width", "column")
left.radio("Width", list(WIDTHS), format_func=lambda w: f"{w} ({WIDTHS[w]} in)", horizontal=True, key="export_width")
right.toggle("Grayscale", key="export_grayscale")
width, grayscale = st.session_state["export_width"], st.session_state["export_grayscale"]

layout, amount, outcomes = current_plans(run, signals)
found = comparisons(run)
groups = run_exhibits(chosen_entries(run, signals), {n: s.title for n, s in signals.items()},
                      plans=(outcomes, layout, amount), comparison=found[0] if found else None)
if not found:
    st.caption("No retrain comparison for this run yet; its results table (CSV, LaTeX) appears here once one has "
               "finished.")
st.caption("The plans use the budget and limits set on the Budget page.")
exhibits = [e for group in groups.values() for e in group]

st.subheader("Preview as printed")
figures = [e for e in exhibits if e.figure is not None]
chosen = st.selectbox("Figure", figures, format_func=lambda e: f"{e.title} ({e.name})")
st.plotly_chart(paper_style(chosen.figure(), width, grayscale), theme=None, width="content")


st.download_button("Everything (PDF figures, CSV and LaTeX tables) as a zip",
                   lambda: zipped(exhibits, width, grayscale), file_name="figures.zip",
                   mime="application/zip", on_click="ignore", type="primary", icon=":material/folder_zip:")

for group, members in groups.items():
    st.subheader(group)
    for exhibit in members:
        name, buttons = st.columns([3, 4])
        name.markdown(f"**{exhibit.title}**  \n`{exhibit.name}`")
        formats = [*FORMATS, "csv"] if exhibit.figure is not None else ["csv", "tex"]
        download_buttons(exhibit, formats, container=buttons, key="export-{name}-{fmt}")
