"""The budget and the plans at it, shared by the Budget and Retrain pages: the controls (so a budget set on one
page is the budget on the other), the run's layout and scores read once, and the preview at the budget."""
import dataclasses
from typing import NamedTuple

import streamlit as st

from analysis.allocation.budgets import parse_budget, uniform_cost
from analysis.settings import Limits, to_argv
from analysis.errors import UserError
from analysis.planning.methods import UNIFORM, layout_for, method_scores
from analysis.planning.preview import Outcome, preview, summary
from analysis.contract.signal import Signal
from analysis.signals.registry import signal_limits
from analysis.contract.run import Run
from views.shared.widgets import setting_input


class ChosenLimits(NamedTuple):
    """The limits as chosen: what any plan may give a module, and the limits of signals' own plan rules."""
    limits: Limits
    signal_limits: tuple

    def argv(self) -> list[str]:
        """The flags a job is started with to plan under these limits."""
        return [*to_argv(self.limits), *(flag for own in self.signal_limits for flag in to_argv(own))]


def limit_groups() -> list[type]:
    """Limits, then each signal's own plan limits (CKA's block rank, GoRA's rank range), in registry order."""
    return [Limits, *signal_limits()]


def limit_keys() -> list[str]:
    """Session-state keys of the limits: their field names (the module types have a chooser of their own)."""
    return [f.name for group in limit_groups() for f in dataclasses.fields(group) if f.name != "module_types"]


@st.cache_resource(show_spinner="Reading the model's layout from its config", max_entries=8)
def _layout(run_key: str, _run: Run):
    return layout_for(_run)


def run_layout(run: Run):
    """The model's layout of the run (from its config: no data, no weights), once per run; a model this machine
    cannot find stops the page with its one-sentence reason."""
    try:
        return _layout(run.key, run)
    except UserError as error:
        st.error(f"Cannot plan for this run here: {error}")
        st.stop()


@st.cache_resource(show_spinner=False, max_entries=64)
def _scores(run_key: str, method: str, entries: tuple, _run: Run, _layout):
    return method_scores(_run, method, _layout)


def cached_scores(run: Run, method: str, layout):
    """A method's scores, read from the cache once per state of the run's entries, so moving the budget only
    re-allocates. An entry recomputed with --force keeps its key, so its creation time is part of the state."""
    entries = tuple((variants[0].key, variants[0].meta.get("created")) for variants in run.entries.values())
    return _scores(run.key, method, entries, run, layout)


def _model_of(layout) -> str:
    return ",".join(layout.module_types)


def chosen_module_types(layout) -> tuple[str, ...]:
    """The module types last chosen for this model (all of them at first). Kept per model in plain session
    state, not in a widget's, so switching runs between models or switching pages never empties the choice."""
    return tuple(st.session_state.get("module_types_by_model", {}).get(_model_of(layout), layout.module_types))


def module_types_control(container, layout) -> tuple[str, ...]:
    """The module-types multiselect for this model; its widget is this model's, opened on its last choice."""
    model = _model_of(layout)
    value = container.multiselect("Module types that may receive rank", layout.module_types,
                                  default=list(chosen_module_types(layout)), key=f"module_types::{model}")
    st.session_state.setdefault("module_types_by_model", {})[model] = list(value)
    return tuple(value)


def chosen_methods(available: list[str]) -> list[str]:
    """The methods to plan for this run: each one it offers that the user has not turned off. What is kept is the
    methods turned off (on any run), not those chosen, so a switch to a run of other signals never empties the
    choice, and a method turned off stays off on every run that has it."""
    state = st.session_state
    off = set(state.get("plan_methods_off", ()))
    shown, offered = state.get("plan_methods"), state.get("plan_methods_offered")
    if shown is not None and offered is not None:   # the multiselect as last drawn: what it offered, what it held
        off = (off | set(offered)) - set(shown)
    state["plan_methods_off"] = off
    return [m for m in available if m not in off]


def current_budget() -> str:
    """The budget last set on the Budget or Retrain page, as a budget string (r4 by default)."""
    state = st.session_state
    if state.get("budget_unit") == "parameters" and "budget_params" in state:
        return str(state["budget_params"])
    return f"r{state.get('budget_rank', 4.0):g}"


def budget_controls(layout, available: list[str], titles: dict[str, str]) -> tuple[str, list[str], Limits]:
    """Budget (an average rank on a slider, or parameters), methods, an optional blend and limits; shared
    by the Budget and Retrain pages, so a budget set on one is the budget on the other."""
    state = st.session_state
    state.setdefault("budget_unit", "average rank")
    state.setdefault("budget_rank", 4.0)
    state.setdefault("budget_params", uniform_cost(layout, 4))
    for group in limit_groups():
        for f in dataclasses.fields(group):
            if f.name != "module_types":
                state.setdefault(f.name, f.default)
    state["plan_methods"] = chosen_methods(available)
    state["plan_methods_offered"] = available
    left, right = st.columns(2)
    unit = left.radio("Budget as", ["average rank", "parameters"], horizontal=True, key="budget_unit")
    if unit == "average rank":
        left.slider("Average rank (what uniform LoRA of this rank costs)", 0.5, 32.0, step=0.5, key="budget_rank")
    else:
        left.number_input("Trainable LoRA parameters", min_value=1, step=1000, key="budget_params")
    methods = right.multiselect("Methods (uniform LoRA is always included)", available, key="plan_methods",
                                format_func=lambda name: titles.get(name, name))
    blend = right.text_input("Blend (optional)", placeholder="e.g. 0.7*shapley+0.3*cka", key="plan_blend")
    with st.expander("Limits"):
        left, right = st.columns([2, 1])
        module_types_control(right, layout)
        columns = left.columns(2)
        fields = [(group, f.name) for group in limit_groups() for f in dataclasses.fields(group)
                  if f.name != "module_types"]
        for k, (group, name) in enumerate(fields):
            setting_input(columns[k % 2], group, name, key=name)
    return current_budget(), [*methods, *([blend.strip()] if blend.strip() else [])], limits_or_stop(layout)


def limits_or_stop(layout) -> ChosenLimits:
    """The limits as last set (session state), or the page stops with the one sentence saying what is wrong."""
    state = st.session_state
    try:
        groups = [group(**{f.name: state.get(f.name, f.default) for f in dataclasses.fields(group)
                           if f.name != "module_types"}) for group in limit_groups()]
        return ChosenLimits(dataclasses.replace(groups[0], module_types=chosen_module_types(layout)), tuple(groups[1:]))
    except UserError as error:
        st.error(str(error))
        st.stop()


def outcomes_at(run: Run, methods: list[str], budget: str, chosen: ChosenLimits):
    """Uniform LoRA's and each method's allocation at the budget (in parameters, returned too). A method whose
    scores cannot be read (a blend naming a signal this run lacks) becomes an outcome with its reason; a
    budget that cannot be read stops the page with its one-sentence reason."""
    layout = run_layout(run)
    try:
        amount = parse_budget(budget, layout, chosen.limits)
    except UserError as error:
        st.error(str(error))
        st.stop()
    scores, failed = {}, {}
    for method in [UNIFORM, *methods]:
        try:
            scores[method] = cached_scores(run, method, layout)
        except UserError as error:
            failed[method] = Outcome(method, error=str(error))
    planned = {o.method: o for o in preview(scores, layout, amount, *chosen)}
    return amount, [planned.get(m) or failed[m] for m in [UNIFORM, *methods]]


def plans_at_budget(run: Run, signals: dict[str, Signal]):
    """The budget controls, then every chosen method's allocation there: (layout, budget string, budget in
    parameters, limits, outcomes)."""
    layout = run_layout(run)
    available = [name for name in signals if name in run.entries]
    budget, methods, limits = budget_controls(layout, available, {n: s.title for n, s in signals.items()})
    amount, outcomes = outcomes_at(run, methods, budget, limits)
    return layout, budget, amount, limits, outcomes


def current_plans(run: Run, signals: dict[str, Signal]):
    """The plans as last set on the Budget or Retrain page, without drawing the controls (the Export page)."""
    layout = run_layout(run)
    state = st.session_state
    available = [name for name in signals if name in run.entries]
    methods = chosen_methods(available)
    blend = state.get("plan_blend", "").strip()
    limits = limits_or_stop(layout)
    amount, outcomes = outcomes_at(run, [*methods, *([blend] if blend else [])], current_budget(), limits)
    return layout, amount, outcomes


def summary_table(outcomes: list[Outcome], amount: int) -> None:
    """The planned methods as a table; below it, each method's note in full and each method without a plan at
    this budget with its reason (a table would cut long notes off and leave a failed method's cells empty)."""
    table = summary(outcomes, amount)
    planned = table.dropna(subset=["trainable params"]) if "trainable params" in table else table.iloc[0:0]
    if len(planned):
        st.dataframe(planned.drop(columns="note"), hide_index=True, height=35 * (len(planned) + 1) + 3,  # every row
                     column_config={"trainable params": st.column_config.NumberColumn(format="localized"),
                                    "of budget": st.column_config.NumberColumn(format="percent")})
    for row in table.itertuples(index=False):
        if row.method not in set(planned["method"]):
            st.warning(f"**{row.method}** has no plan at this budget: {row.note}")
        elif row.note:
            st.caption(f"**{row.method}**: {row.note}")
