"""Setup: pick model, data and split, start the analyses in the background (progress and time left while they
run), and reopen any cached run on the other pages."""
import pandas as pd
import streamlit as st

from analysis.jobs import launch as jobs
from analysis.jobs.launch import duration
from analysis.errors import UserError
from analysis.settings import RunSettings, field_of, to_argv
from analysis.signals.context import prepare
from analysis.signals.registry import all_signals
from analysis.contract.run import when
from analysis.store.lookups import runs
from analysis.store.cache import Store
from analysis.store.timings import signal_costs
from views.shared.widgets import choose_run, gpu_present, job_panel, setting_input

store = Store()
signals = all_signals()
defaults = RunSettings()

st.title("Where should the LoRA rank go?")
st.caption("Per-layer, per-module importance signals for LoRA fine-tuning, each computed on the split its method's "
           "source uses (train or validation, never test) and cached on disk; the same cache serves "
           "`python -m analysis` on a GPU server.")

MODELS = {"minilm": "all-MiniLM-L6-v2 encoder (embedded)", "smollm2": "SmolLM2-135M decoder, 30 layers (embedded)",
          "other": "Hub name or local directory"}
DATA = {"rotten_tomatoes": "Rotten Tomatoes snippets (embedded)", "other": "Local file or hub dataset"}
TASKS = {"minilm": "classification", "smollm2": "causal-lm"}   # what `auto` makes of the embedded models

# Model, data and device outside the form, so the rest of the page follows them as they change.
left, right = st.columns(2)
model_choice = left.selectbox("Model", list(MODELS), format_func=MODELS.get)
model_other = left.text_input("Hub name or local directory", placeholder="e.g. /data/models/my-bert") \
    if model_choice == "other" else ""
data_choice = right.selectbox("Dataset", list(DATA), format_func=DATA.get)
data_other = right.text_input("Local .csv / .jsonl / .parquet file or hub dataset name") \
    if data_choice == "other" else ""
task = TASKS.get(model_choice) or setting_input(left, RunSettings, "task", label="Task")
if model_choice in TASKS:
    left.caption(f"Task: {task} (" + ("a decoder trains as a causal language model, so no label column" if
                                     task == "causal-lm" else "an encoder classifies the labels") + ").")
device_field = field_of(RunSettings, "device").metadata
device = left.selectbox("Device", device_field["offered"], help=device_field["help"])
split = device != "cpu" and gpu_present() and left.checkbox(
    "Split the model across every GPU", help="For a model larger than one GPU: accelerate places its layers across "
                                             "the GPUs (--device-map auto).")
model = model_other.strip() if model_choice == "other" else model_choice
data = data_other.strip() if data_choice == "other" else data_choice
costs = signal_costs(store, model, "gpu" if device == "cuda" or (device == "auto" and gpu_present()) else "cpu")


def cost_text(name: str) -> str:
    """What the signal took here before (warm-up included), or a word on what it costs."""
    cost = costs.get(name)
    if cost is not None:
        warm = f", incl. a {duration(cost.warmup_seconds)} warm-up shared by the signals that need one" \
            if cost.warmup_seconds else ""
        return f"about {duration(cost.total)}{warm}"
    return "trains; minutes on a CPU" if signals[name].trains else "one pass over the data; seconds to minutes"


on_cpu = device == "cpu" or (device == "auto" and not gpu_present())
cheap = [n for n in signals if not (on_cpu and (signals[n].trains if n not in costs else costs[n].total > 120))]
with st.form("setup"):
    a, b = st.columns(2)
    text_column = a.text_input("Text column", value=defaults.text_column) if data_choice == "other" else "text"
    label_column = b.text_input("Label column", value=defaults.label_column) \
        if data_choice == "other" and task != "causal-lm" else defaults.label_column
    chosen = st.multiselect("Signals", list(signals), default=cheap,
                            help="Signals that train a model are left out by default on a CPU; see their costs below.")
    st.dataframe(pd.DataFrame({"signal": list(signals), "what": [s.title for s in signals.values()],
                               "cost here": [cost_text(n) for n in signals]}), hide_index=True,
                 column_config={"cost here": st.column_config.TextColumn(width=540)})   # the warm-up's note whole
    st.caption(f"Costs are the medians of earlier runs of {model or 'this model'} on this kind of device."
               if costs else "No earlier runs of this model on this kind of device: the costs are rough guides.")
    force = st.checkbox("Recompute even when cached")
    with st.expander("Split and sizes"):
        a, b = st.columns(2)
        # each fraction above the field's lower bound by a step, leaving a step for each other split
        share = field_of(RunSettings, "fractions").metadata
        step = 0.01
        low, high = share["above"] + step, share["maximum"] - 2 * step
        train = a.number_input("Train fraction", low, high, defaults.fractions[0], 0.05, help=share["help"])
        validation = b.number_input("Validation fraction", low, high, defaults.fractions[1], step, help=share["help"])
        val_size = setting_input(a, RunSettings, "val_size", label="Validation examples used", step=64)
        seed = setting_input(b, RunSettings, "seed", label="Split seed")
        max_length = setting_input(a, RunSettings, "max_length", label="Tokens per example")
        batch_size = setting_input(b, RunSettings, "batch_size", label="Batch size")
    submitted = st.form_submit_button("Run analysis", type="primary")

if submitted:
    test = round(1 - train - validation, 6)   # 0.7 + 0.3 leaves 5.6e-17 in floating point, which is no test split
    if not model or not data or not chosen:
        st.error("Choose a model, a dataset and at least one signal.")
    elif test < 0.01:
        st.error(f"Train and validation fractions add up to {train + validation:.2f}; leave some for test.")
    else:
        try:
            settings = RunSettings(model=model, data=data, text_column=text_column, label_column=label_column,
                                   task=task, device=device, device_map="auto" if split else "none",
                                   val_size=int(val_size), seed=int(seed),
                                   max_length=int(max_length), batch_size=int(batch_size),
                                   fractions=(train, validation, test))
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
        st.switch_page("views/overview.py")
