"""The budget preview: drag the budget and see the plan every selected method implies, side by side, re-planned
from the cached tables only (no model), with parameter counts, the difference from uniform LoRA and each plan's
JSON."""
import json
import re

import streamlit as st

from analysis.reporting.exhibits import plan_exhibit
from analysis.planning.plan_json import plan_file
from analysis.planning.preview import drawn, plan_json, uniform_ranks
from analysis.signals.registry import all_signals
from views.shared.planning import plans_at_budget, summary_table
from views.shared.widgets import chart, choose_run

signals = all_signals()

st.title("Budget and plans")
st.caption("Every method spends the same number of trainable LoRA parameters (a rank r costs r x (d_in + d_out) "
           "in a module). Uniform LoRA is the reference; an average rank of 4 means what uniform rank 4 costs.")

run = choose_run(set(signals), "No signals computed yet: run an analysis on the Setup page, or "
                 "`python -m analysis run`; until then only uniform LoRA can be planned.")
layout, budget, amount, limits, outcomes = plans_at_budget(run, signals)
missing = [signals[name].title for name in signals if name not in run.entries]
if missing:
    st.caption(f"Not computed for this run yet, so not offered: {', '.join(missing)}.")

st.subheader(f"Plans at {amount:,} trainable parameters")
summary_table(outcomes, amount)
difference = st.toggle("Show each plan minus uniform LoRA's ranks", key="plan_difference")
exhibit = plan_exhibit(outcomes, layout, amount, difference)
if drawn(outcomes, difference):
    chart(exhibit.figure(), exhibit.data, exhibit.name)
elif difference and uniform_ranks(outcomes) is None:
    st.info("Uniform LoRA has no plan at this budget, so there is nothing to subtract.")
else:
    st.info("No method has a plan at this budget.")

st.subheader("Plan JSON")
st.caption("Part `peft`: peft's own adapter_config.json (full module paths in rank_pattern and alpha_pattern, checked "
           "against the model's module names), for `PeftConfig.from_peft_type(**plan['peft'])`; part `analysis`: the "
           "method, budget and parameter count. Train one with `python -m analysis retrain --plan plan.json`, or "
           "compare them all on the Retrain page.")
planned = [o for o in outcomes if o.allocation is not None]
PER_ROW = 4   # buttons per row: eight methods in one row cut their names off
columns = [column for start in range(0, len(planned), PER_ROW) for column in st.columns(PER_ROW)]
for column, outcome in zip(columns, planned):
    stem = re.sub(r"[^\w.+-]", "_", outcome.method)   # a blend such as 0.7*shapley+0.3*cka
    column.download_button(
        outcome.name,
        lambda o=outcome: json.dumps(plan_file(plan_json(o, layout, amount, run.description["settings"])), indent=1),
        file_name=f"plan-{stem}-{amount}.json", mime="application/json", key=f"plan-{outcome.method}",
        on_click="ignore", icon=":material/download:")
st.caption("To train these plans next to uniform LoRA, open **Retrain and compare**: it starts at this budget.")
