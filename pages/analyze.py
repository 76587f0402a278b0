"""Pick model and data, start an analysis in the background, and look at cached results."""
import streamlit as st

from analysis import jobs
from analysis.figures import signal_figure
from analysis.registry import all_signals
from analysis.results import when
from analysis.store import Store
from pages.shared.widgets import job_panel

store = Store()
signals = all_signals()

st.title("Where should the LoRA rank go?")
st.caption("Per-layer, per-module importance signals for LoRA fine-tuning, computed on the validation split "
           "and cached on disk.")

MODELS = {"minilm": "all-MiniLM-L6-v2 encoder (embedded)", "smollm2": "SmolLM2-135M decoder (embedded)",
          "other": "Hub name or local directory"}
DATA = {"rotten_tomatoes": "Rotten Tomatoes snippets (embedded)", "other": "Local file or hub dataset"}

with st.form("setup"):
    left, right = st.columns(2)
    model_choice = left.selectbox("Model", list(MODELS), format_func=MODELS.get)
    model_other = left.text_input("Hub name or local directory", placeholder="e.g. /data/models/my-bert")
    data_choice = right.selectbox("Dataset", list(DATA), format_func=DATA.get)
    data_other = right.text_input("Local .csv / .jsonl / .parquet file or hub dataset name")
    text_column = right.text_input("Text column", value="text")
    label_column = right.text_input("Label column", value="label")
    chosen = left.multiselect("Signals", list(signals), default=list(signals),
                              format_func=lambda name: f"{signals[name].title} ({name})")
    device = left.selectbox("Device", ["auto", "cpu", "cuda"], help="auto uses the GPU when there is one")
    val_size = right.number_input("Validation examples", min_value=8, max_value=100_000, value=512, step=64)
    submitted = st.form_submit_button("Run analysis", type="primary")

if submitted:
    model = model_other.strip() if model_choice == "other" else model_choice
    data = data_other.strip() if data_choice == "other" else data_choice
    if not model or not data or not chosen:
        st.error("Choose a model, a dataset and at least one signal.")
    else:
        argv = ["run", "--model", model, "--data", data, "--text-column", text_column,
                "--label-column", label_column, "--signals", ",".join(chosen), "--device", device,
                "--val-size", str(int(val_size))]
        job_id = jobs.start_job(argv, store.root, label=f"{model} / {data}")
        st.toast(f"Started analysis job {job_id}")


job_panel(store, {"run"})

st.subheader("Results")
entries = [e for e in store.entries() if e.meta.get("signal") in signals]  # not the warm-ups they train
if not entries:
    st.info("No results yet: run an analysis above (or `python -m analysis run` on a GPU server with the same "
            "cache directory).")
else:
    def describe(entry):
        meta = entry.meta
        return f"{meta.get('title', meta.get('signal'))} · {meta.get('model_name', meta.get('model'))} · " \
               f"{meta.get('data')} · {when(meta.get('created', 0))}"

    entry = st.selectbox("Cached result", entries, format_func=describe)
    table = entry.table()
    st.plotly_chart(signal_figure(table, entry.meta.get("title", "")))
    with st.expander("Tidy table", expanded=False):
        st.dataframe(table, hide_index=True)
        st.download_button("Download CSV", table.to_csv(index=False), file_name=f"{entry.meta['signal']}.csv",
                           mime="text/csv")
