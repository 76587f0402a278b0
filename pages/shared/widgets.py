"""Widgets the signal pages share: choosing a cached run, a variant of a signal in it, CSV downloads.

Kept under pages/shared/ so that Streamlit never mistakes this module for a page of its own.
"""
import streamlit as st

from analysis.results import Run, describe_options, runs
from analysis.store import Store


def choose_run(signals: set[str], empty_message: str) -> Run:
    """A select box over the runs holding any of `signals`; stops the page with `empty_message` if none."""
    found = runs(Store(), signals)
    if not found:
        st.info(empty_message)
        st.stop()
    return st.selectbox("Run", found, format_func=lambda r: r.label)


def pick(run: Run, signal: str, label: str):
    """The newest entry of a signal in the run, or a chosen variant when several option sets exist."""
    variants = run.entries.get(signal, [])
    if len(variants) > 1:
        return st.selectbox(label, variants, format_func=describe_options, key=f"{signal}-{run.key}")
    return variants[0] if variants else None


def csv_button(run: Run, frame, name: str) -> None:
    st.download_button(f"CSV: {name}", frame.to_csv(index=False), file_name=f"{name}.csv", mime="text/csv",
                       key=f"csv-{name}-{run.key}")
