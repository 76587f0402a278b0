"""Retrain the plans at the budget set here or on the Budget page (or at several budgets), next to uniform LoRA and
uniform LoRA on the attention only, the MLP only and every linear, over several seeds, with the learning rate tuned
per method on validation, in the background with live loss curves; then the results table (runs that did not train
flagged and left out, paired differences from uniform), the budget curve, and the Pareto figure with the parameters
each method needs to reach uniform."""
import streamlit as st

from analysis.jobs import launch as jobs
from analysis.reporting.exhibits import comparison_exhibits
from analysis.planning.methods import UNIFORM
from analysis.signals.registry import adapter_starts, all_signals
from analysis.contract.run import when
from analysis.store.lookups import comparisons
from analysis.errors import UserError
from analysis.settings import MODULE_FAMILIES, CompareSettings, RunSettings, TrainSettings, from_dict, to_argv
from analysis.reporting.comparison_tables import too_small
from analysis.training.savings import RESAMPLES
from analysis.store.cache import Store
from views.shared.planning import plans_at_budget, summary_table
from views.shared.widgets import choose_run, download_buttons, job_panel, setting_input, show

store = Store()
signals = all_signals()

st.title("Retrain and compare")
st.caption("Each method turns its signal into per-module ranks under the same parameter budget; each plan is "
           "trained from scratch on the train split and evaluated on test, next to uniform LoRA at that budget and "
           "to uniform LoRA on only the attention, only the MLP or every linear at that budget (the module baselines). "
           "Every method runs the same seeds (same data order and head initialisation) as uniform LoRA, and its "
           "learning rate is chosen from the grid on the validation split with the first seed.")

run = choose_run(set(signals), "No signals computed yet: run an analysis on the Setup page, or "
                 "`python -m analysis run`.")
layout, budget, amount, limits, outcomes = plans_at_budget(run, signals)
planned = [o.method for o in outcomes if o.allocation is not None]
st.subheader("Plans at this budget")
summary_table(outcomes, amount)
st.caption("The Budget page shows each plan as a heatmap and offers its JSON.")

st.subheader("Retrain")
with st.form("retrain"):
    a, b, c, d = st.columns(4)
    seeds = setting_input(a, CompareSettings, "seeds", label="Seeds")
    steps = setting_input(b, TrainSettings, "steps", label="Steps")
    lr = setting_input(c, TrainSettings, "lr", label="Learning rate (without tuning)")
    test_size = setting_input(d, TrainSettings, "test_size", label="Test examples (0 = all)")
    e, f, g, h = st.columns([2, 2, 1, 2])
    budgets = setting_input(e, CompareSettings, "budgets", label="Budgets", value=budget)
    grid = setting_input(f, CompareSettings, "tune_lr")
    init = setting_input(g, TrainSettings, "init", label="Adapter start",
                         help="; ".join(["default: peft's (B = 0)", *(f"{name}: {start.help}" for name, start in
                                                                       adapter_starts().items())]) +
                         ". Every method, uniform included, starts this way, and the results table says which.")
    families = setting_input(h, CompareSettings, "baselines",
                             format_func=lambda family: f"{family}: {MODULE_FAMILIES[family]}")
    at_once = setting_input(st, CompareSettings, "adapters_at_once", label="Adapters trained at once (empty: as many "
                                                                           "as fit)")
    start = st.form_submit_button("Retrain and compare", type="primary", disabled=len(planned) < 2)
if start:
    chosen = [m for m in planned if m != UNIFORM]
    try:
        training = TrainSettings(steps=steps, lr=lr, test_size=test_size, init=init)
        comparing = CompareSettings(seeds=seeds, budgets=budgets, tune_lr=grid, baselines=tuple(families),
                                    adapters_at_once=at_once)
    except UserError as error:
        st.error(str(error))
    else:
        argv = ["compare", *to_argv(from_dict(RunSettings, run.description["settings"])), "--signals",
                ",".join(chosen), *to_argv(comparing), *to_argv(training, exclude=("seed", "eval_split")),
                *limits.argv()]
        job_id = jobs.start_job(argv, store.root, label=f"Compare at {', '.join(comparing.budgets)}: uniform, "
                                                         f"{', '.join(chosen)}", run_key=run.key)
        st.toast(f"Started comparison job {job_id}")

job_panel(store, {"compare", "retrain"}, curves=True, run_key=run.key)

st.subheader("Results")
found = comparisons(run)
if not found:
    st.info("No comparison has finished for this setting yet.")
else:
    def describe(entry):
        meta = entry.meta
        budgets = meta.get("budgets") or [meta.get("budget_spec")]
        where = f"budget {meta['budget']:,} ({budgets[0]})" if len(budgets) == 1 else f"budgets {', '.join(budgets)}"
        tuned = " · lr tuned" if meta.get("tune_lrs") else ""
        return f"{where} · seeds {meta['seeds']} · {meta['config']['steps']} steps{tuned} · " \
               f"{when(meta.get('created', 0))}"

    entry = st.selectbox("Comparison", found, format_func=describe)
    exhibits = {exhibit.name: exhibit for exhibit in comparison_exhibits(entry)}
    results = exhibits["comparison_summary"]
    st.dataframe(results.data(), hide_index=True)
    runs = entry.table("runs")
    left_out = int(runs["did_not_train"].notna().sum()) if "did_not_train" in runs else 0
    st.caption("Mean ± standard deviation over the seeds that trained (no spread with one seed); Δ is the paired "
               "difference from uniform LoRA on the same seeds with its 95% interval and the paired t-test's p-value; "
               "a method beats uniform only where the interval excludes zero. The learning rate (lr) is the one "
               "chosen on validation. The test split is never used for the importance signals or the tuning.")
    if left_out:
        st.warning(f"{left_out} run(s) did not train (one predicted class for every example, a NaN loss, or a "
                   "loss ending above its start): they are flagged under Every run and left out of the means.")
    for caveat in too_small(entry):
        if "did not train" not in caveat:   # said just above
            st.warning(f"Too small to mean much: {caveat}")
    download_buttons(results, ["csv", "tex"])
    st.subheader("Budget curve")
    if exhibits["comparison_budgets"].data()["mean"].notna().any():
        show(exhibits["comparison_budgets"])
    else:
        st.info("No run trained, so there is no point to draw; see Every run below.")
    st.subheader("Pareto frontier and parameters to reach uniform")
    saved = exhibits["comparison_savings"].data()
    if exhibits["comparison_pareto"].data()["mean"].notna().any():
        show(exhibits["comparison_pareto"])
    if len(saved):
        st.dataframe(saved, hide_index=True)
        st.caption("Each method's budget curve is read where it reaches uniform LoRA's result at the largest budget: "
                   "linear in log-parameters between the two budgets around it; '≤' where it already reaches it at "
                   "its smallest budget, 'not reached' where it never does. The interval resamples the seeds "
                   f"({RESAMPLES} times, the same seeds for every method). A ringed point is on the Pareto frontier: "
                   "no other point has fewer parameters and a better result.")
        download_buttons(exhibits["comparison_savings"], ["csv", "tex"])
    with st.expander("Per budget (table)"):
        st.dataframe(exhibits["comparison_budget_table"].data(), hide_index=True)
        download_buttons(exhibits["comparison_budget_table"], ["csv", "tex"])
    with st.expander("Every run"):
        runs_table = exhibits["comparison_runs"]
        st.dataframe(runs_table.data(), hide_index=True)
        download_buttons(runs_table, ["csv"])
    if "comparison_tuning" in exhibits:
        with st.expander("Learning-rate tuning (validation)"):
            st.dataframe(exhibits["comparison_tuning"].data(), hide_index=True)
            download_buttons(exhibits["comparison_tuning"], ["csv"])
