"""Retrain the plans at the budget set here or on the Budget page, next to uniform LoRA and over several seeds,
in the background with live loss curves; then the results table across plans and seeds."""
import streamlit as st

from analysis.jobs import launch as jobs
from analysis.reporting.exhibits import comparison_exhibits
from analysis.planning.methods import UNIFORM
from analysis.signals.registry import all_signals
from analysis.store.runs import comparisons, when
from analysis.errors import UserError
from analysis.settings import RunSettings, TrainSettings, from_dict, to_argv
from analysis.store.cache import Store
from pages.shared.planning import plans_at_budget, summary_table
from pages.shared.widgets import choose_run, download_buttons, job_panel

store = Store()
signals = all_signals()

st.title("Retrain and compare")
st.caption("Each method turns its signal into per-module ranks under the same parameter budget; each plan is "
           "trained from scratch on the train split and evaluated on test, next to uniform LoRA at that budget.")

run = choose_run(set(signals), "No signals computed yet: run an analysis on the Setup page, or "
                 "`python -m analysis run`.")
layout, budget, amount, limits, outcomes = plans_at_budget(run, signals)
planned = [o.method for o in outcomes if o.allocation is not None]
st.subheader("Plans at this budget")
summary_table(outcomes, amount)
st.caption("The Budget page shows each plan as a heatmap and offers its JSON.")

st.subheader("Retrain")
defaults = TrainSettings()
with st.form("retrain"):
    a, b, c, d = st.columns(4)
    seeds = a.text_input("Seeds", "0,1,2")
    steps = b.number_input("Steps", 1, 100_000, defaults.steps)
    lr = c.number_input("Learning rate", 1e-6, 1.0, defaults.lr, format="%.4g")
    test_size = d.number_input("Test examples (0 = all)", 0, 1_000_000, defaults.test_size)
    start = st.form_submit_button("Retrain and compare", type="primary", disabled=len(planned) < 2)
if start:
    chosen = [m for m in planned if m != UNIFORM]
    try:
        training = TrainSettings(steps=steps, lr=lr, test_size=test_size)
    except UserError as error:
        st.error(str(error))
    else:
        argv = ["compare", *to_argv(from_dict(RunSettings, run.description["settings"])), "--signals",
                ",".join(chosen), "--budget", budget, "--seeds", seeds, *to_argv(training, exclude=("seed",)),
                *to_argv(limits)]
        job_id = jobs.start_job(argv, store.root, label=f"Compare at {budget}: uniform, {', '.join(chosen)}",
                                run_key=run.key)
        st.toast(f"Started comparison job {job_id}")

job_panel(store, {"compare", "retrain"}, curves=True, run_key=run.key)

st.subheader("Results")
found = comparisons(store, run.key)
if not found:
    st.info("No comparison has finished for this setting yet.")
else:
    def describe(entry):
        meta = entry.meta
        return f"budget {meta['budget']:,} ({meta.get('budget_spec')}) · seeds {meta['seeds']} · " \
               f"{meta['config']['steps']} steps · {when(meta.get('created', 0))}"

    entry = st.selectbox("Comparison", found, format_func=describe)
    results, runs_table = comparison_exhibits(entry)
    st.dataframe(results.data(), hide_index=True)
    st.caption("Mean ± standard deviation over seeds; the test split is never used for the importance signals.")
    download_buttons(results, ["csv", "tex"])
    with st.expander("Every run"):
        st.dataframe(runs_table.data(), hide_index=True)
        download_buttons(runs_table, ["csv"])
