"""Plans at a budget from the cached signals, a comparison retrain in the background (uniform LoRA first,
several seeds) with live loss curves, and the results table."""
import json

import streamlit as st

from analysis import jobs
from analysis.allocate import Limits, uniform_cost
from analysis.compare import formatted
from analysis.context import RunSettings, prepare
from analysis.errors import UserError
from analysis.methods import UNIFORM, layout_for, method_scores, plan_from_scores
from analysis.registry import all_signals
from analysis.results import when
from analysis.retrain import RetrainConfig
from analysis.store import Store
from pages.shared.widgets import choose_run, csv_button, job_panel

store = Store()
signals = all_signals()

st.title("Retrain and compare")
st.caption("Each method turns its signal into per-module ranks under the same parameter budget; each plan is "
           "trained from scratch on the train split and evaluated on test, next to uniform LoRA at that budget.")

run = choose_run(set(signals), "No signals computed yet: run an analysis on the Setup page, or "
                 "`python -m analysis run`.")


@st.cache_resource(show_spinner="Reading the model's layout")
def setting(key: str, _settings: dict):
    prepared = prepare(RunSettings(**_settings), store)
    return prepared, layout_for(prepared)


@st.cache_resource(show_spinner=False)
def scores(key: str, method: str, entries: tuple[str, ...], _prepared, _layout):
    """A method's scores, read from the cache once per set of cached entries (`entries` changes when a
    signal is computed again), so moving the budget only re-allocates."""
    return method_scores(_prepared, method, _layout)


prepared, layout = setting(run.key, run.description["settings"])
available = [name for name in signals if name in run.entries]

left, right = st.columns(2)
unit = left.radio("Budget as", ["average rank", "parameters"], horizontal=True)
if unit == "average rank":
    rank = left.number_input("Average rank (what uniform LoRA of this rank costs)", 0.25, 64.0, 4.0, 0.25)
    budget = f"r{rank:g}"
else:
    budget = str(left.number_input("Trainable LoRA parameters", min_value=1, value=uniform_cost(layout, 4),
                                   step=1000))
methods = right.multiselect("Methods (uniform LoRA is always included)", available, default=available,
                            format_func=lambda name: signals[name].title)
blend = right.text_input("Blend (optional)", placeholder="e.g. 0.7*shapley+0.3*cka")
with st.expander("Limits"):
    a, b, c = st.columns(3)
    limits = Limits(min_rank=a.number_input("Minimum rank per module", 0, 64, 0),
                    max_rank=b.number_input("Maximum rank per module", 1, 256, 64),
                    module_types=tuple(c.multiselect("Module types that may receive rank", layout.module_types,
                                                     default=layout.module_types)),
                    block_rank=a.number_input("Rank of each block a CKA plan selects", 1, 256, 8))
methods = [UNIFORM, *methods, *([blend.strip()] if blend.strip() else [])]

newest = tuple(variants[0].key for variants in run.entries.values())
rows, plans = [], {}
for method in methods:
    try:
        plan = plan_from_scores(prepared, scores(run.key, method, newest, prepared, layout), layout, budget,
                                limits)
    except UserError as error:
        rows.append({"method": method, "trainable params": "—", "of budget": "—", "modules": "—", "ranks": "—",
                     "note": str(error)})
        continue
    plans[method] = plan
    ranks = [plan["r"], *plan["rank_pattern"].values()]
    rows.append({"method": plan["signal"], "trainable params": f"{plan['trainable_params']:,}",
                 "of budget": f"{plan['trainable_params'] / plan['budget']:.1%}",
                 "modules": f"{len(plan['target_modules'])} of {len(layout.modules)}",
                 "ranks": f"{min(ranks)}–{max(ranks)}", "note": " ".join(plan["warnings"])})
st.subheader("Plans at this budget")
st.dataframe(rows, hide_index=True)
for column, (method, plan) in zip(st.columns(max(1, len(plans))), plans.items()):
    column.download_button(f"Plan: {method}", json.dumps(plan, indent=1), file_name=f"plan-{method}.json",
                           mime="application/json", key=f"plan-{method}")

st.subheader("Retrain")
defaults = RetrainConfig()
with st.form("retrain"):
    a, b, c, d = st.columns(4)
    seeds = a.text_input("Seeds", "0,1,2")
    steps = b.number_input("Steps", 1, 100_000, defaults.steps)
    lr = c.number_input("Learning rate", 1e-6, 1.0, defaults.lr, format="%.4g")
    test_size = d.number_input("Test examples (0 = all)", 0, 1_000_000, defaults.test_size)
    start = st.form_submit_button("Retrain and compare", type="primary", disabled=len(plans) < 2)
if start:
    chosen = [m for m in plans if m != UNIFORM]
    argv = ["compare", *jobs.settings_argv(run.description["settings"]), "--signals", ",".join(chosen),
            "--budget", budget, "--seeds", seeds, "--steps", str(steps), "--lr", str(lr), "--test-size",
            str(test_size), "--min-rank", str(limits.min_rank), "--max-rank", str(limits.max_rank),
            "--block-rank", str(limits.block_rank), "--modules", ",".join(limits.module_types)]
    job_id = jobs.start_job(argv, store.root, label=f"Compare at {budget}: uniform, {', '.join(chosen)}")
    st.toast(f"Started comparison job {job_id}")

job_panel(store, {"compare", "retrain"}, curves=True)

st.subheader("Results")
comparisons = [e for e in store.entries() if e.meta.get("signal") == "comparison" and e.meta.get("context_key") == run.key]
if not comparisons:
    st.info("No comparison has finished for this setting yet.")
else:
    def describe(entry):
        meta = entry.meta
        return f"budget {meta['budget']:,} ({meta.get('budget_spec')}) · seeds {meta['seeds']} · " \
               f"{meta['config']['steps']} steps · {when(meta.get('created', 0))}"

    entry = st.selectbox("Comparison", comparisons, format_func=describe)
    st.dataframe(formatted(entry.table(), entry.meta["task"]), hide_index=True)
    st.caption("Mean ± standard deviation over seeds; the test split is never used for the importance signals.")
    csv_button(run, entry.table(), "comparison_summary")
    csv_button(run, entry.table("runs"), "comparison_runs")
