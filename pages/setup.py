"""Setup: pick model, data and split, start the analyses in the background (progress and time left while they
run), and reopen any cached run on the other pages."""
import pandas as pd
import streamlit as st

from analysis.jobs import launch as jobs
from analysis.errors import UserError
from analysis.settings import RunSettings, to_argv
from analysis.signals.context import prepare
from analysis.signals.registry import all_signals
from analysis.store.runs import runs, when
from analysis.store.cache import Store
from pages.shared.widgets import choose_run, job_panel

store = Store()
signals = all_signals()
defaults = RunSettings()

st.title("Where should the LoRA rank go?")
st.caption("Per-layer, per-module importance signals for LoRA fine-tuning, computed on the validation split "
           "(never test) and cached on disk; the same cache serves `python -m analysis` on a GPU server.")

MODELS = {"minilm": "all-MiniLM-L6-v2 encoder (embedded)", "smollm2": "SmolLM2-135M decoder, 30 layers (embedded)",
          "other": "Hub name or local directory"}
DATA = {"rotten_tomatoes": "Rotten Tomatoes snippets (embedded)", "other": "Local file or hub dataset"}

with st.form("setup"):
    left, right = st.columns(2)
    model_choice = left.selectbox("Model", list(MODELS), format_func=MODELS.get)
    model_other = left.text_input("Hub name or local directory", placeholder="e.g. /data/models/my-bert")
    data_choice = right.selectbox("Dataset", list(DATA), format_func=DATA.get)
    data_other = right.text_input("Local .csv / .jsonl / .parquet file or hub dataset name")
    text_column = right.text_input("Text column", value=defaults.text_column)
    label_column = right.text_input("Label column", value=defaults.label_column)
    chosen = left.multiselect("Signals", list(signals), default=list(signals),
                              format_func=lambda name: f"{signals[name].title} ({name})")
    device = left.selectbox("Device", ["auto", "cpu", "cuda"], help="auto uses the GPU when there is one")
    force = left.checkbox("Recompute even when cached")
    with right.expander("Split and sizes"):
        a, b = st.columns(2)
        train = a.number_input("Train fraction", 0.05, 0.95, defaults.fractions[0], 0.05)
        validation = b.number_input("Validation fraction", 0.01, 0.9, defaults.fractions[1], 0.01)
        val_size = a.number_input("Validation examples used", min_value=8, max_value=100_000,
                                  value=defaults.val_size, step=64)
        seed = b.number_input("Split seed", 0, 2**31 - 1, defaults.seed)
        max_length = a.number_input("Tokens per example", 8, 8192, defaults.max_length)
        batch_size = b.number_input("Batch size", 1, 4096, defaults.batch_size)
    submitted = st.form_submit_button("Run analysis", type="primary")

if submitted:
    model = model_other.strip() if model_choice == "other" else model_choice
    data = data_other.strip() if data_choice == "other" else data_choice
    test = round(1 - train - validation, 6)   # 0.7 + 0.3 leaves 5.6e-17 in floating point, which is no test split
    if not model or not data or not chosen:
        st.error("Choose a model, a dataset and at least one signal.")
    elif test < 0.01:
        st.error(f"Train and validation fractions add up to {train + validation:.2f}; leave some for test.")
    else:
        try:
            settings = RunSettings(model=model, data=data, text_column=text_column, label_column=label_column,
                                   device=device, val_size=int(val_size), seed=int(seed), max_length=int(max_length),
                                   batch_size=int(batch_size), fractions=(train, validation, test))
            # The checks the job would make before loading the model (files, columns, labels, architecture), here, so
            # a bad input is the same one sentence on this page as on the command line.
            prepared = prepare(settings, store, warn=None)
        except UserError as error:
            st.error(str(error))
        else:
            for warning in prepared.warnings:   # what the run adjusts or leaves out (also in the job's log)
                st.warning(warning)
            argv = ["run", *to_argv(settings), "--signals", ",".join(chosen), *(["--force"] if force else [])]
            job_id = jobs.start_job(argv, store.root, label=f"{model} / {data}")
            st.toast(f"Started analysis job {job_id}")

found = runs(store, set(signals))   # the cache is read once for the timings and the runs table

# What each signal took before, so a researcher knows what a run will cost.
past = pd.DataFrame([{"signal": e.meta["signal"], "model": e.meta.get("model"), "seconds": e.meta["seconds"],
                      "examples": (e.meta.get("settings") or {}).get("val_size")}
                     for run in found for variants in run.entries.values() for e in variants if e.meta.get("seconds")])
if len(past):
    typical = past.groupby(["signal", "model"], as_index=False).agg(seconds=("seconds", "median"),
                                                                     examples=("examples", "median"))
    st.caption("Earlier runs took (median seconds): " + ", ".join(
        f"{row.signal} {row.seconds:.0f} s ({row.model}, {row.examples:.0f} examples)"
        for row in typical.itertuples()))

job_panel(store, {"run"})

st.subheader("Cached runs")
if not found:
    st.info("No results yet: run an analysis above (or `python -m analysis run` on a GPU server with the same "
            "cache directory).")
else:
    def setup_of(run) -> dict:
        """The run's setup as its entries recorded it: rows left out and other adjustments (see prepare)."""
        return next(iter(run.entries.values()))[0].meta

    st.dataframe(pd.DataFrame([{
        "model": r.description.get("model_name") or r.description.get("model"), "data": r.description.get("data"),
        "validation examples": (r.description.get("settings") or {}).get("val_size"),
        "rows left out": sum((setup_of(r).get("dropped_rows") or {}).values()),
        "signals": ", ".join(name for name in signals if name in r.entries),
        "missing": ", ".join(name for name in signals if name not in r.entries) or "—",
        "newest": when(r.newest)} for r in found]), hide_index=True)
    for run in found[:5]:   # the newest runs' adjustments, as their logs said them
        for warning in setup_of(run).get("setup_warnings") or []:
            st.caption(f"{run.description.get('data')}: {warning}")
    choose_run(set(signals), "", found)
    if st.button("Open on the signal pages", icon=":material/open_in_new:"):
        st.switch_page("pages/overview.py")
