"""The budget and the plans at it, shared by the Budget and Retrain pages: the controls (so a budget set on one
page is the budget on the other), the run's layout and scores read once, and the preview at the budget."""
import streamlit as st

from analysis.allocate import Limits, parse_budget, uniform_cost
from analysis.context import RunSettings, prepare
from analysis.errors import UserError
from analysis.methods import UNIFORM, layout_for, method_scores
from analysis.preview import Outcome, preview, summary
from analysis.registry import Signal
from analysis.results import Run
from analysis.store import Store


@st.cache_resource(show_spinner="Reading the model's layout")
def planning(run_key: str, _settings: dict):
    """The run's prepared setting and the model's layout (from its config, no weights), once per run."""
    prepared = prepare(RunSettings(**_settings), Store())
    return prepared, layout_for(prepared)


@st.cache_resource(show_spinner=False)
def _scores(run_key: str, method: str, entries: tuple, _prepared, _layout):
    return method_scores(_prepared, method, _layout)


def cached_scores(run: Run, method: str, prepared, layout):
    """A method's scores, read from the cache once per state of the run's entries, so moving the budget only
    re-allocates. An entry recomputed with --force keeps its key, so its creation time is part of the state."""
    entries = tuple((variants[0].key, variants[0].meta.get("created")) for variants in run.entries.values())
    return _scores(run.key, method, entries, prepared, layout)


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
    for key, default in (("min_rank", 0), ("max_rank", 64), ("block_rank", 8)):
        state.setdefault(key, default)
    state["plan_methods"] = [m for m in state.get("plan_methods", available) if m in available]
    state["module_types"] = [t for t in state.get("module_types", layout.module_types) if t in layout.module_types]
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
        a, b, c = st.columns(3)
        limits = Limits(min_rank=a.number_input("Minimum rank per module", 0, 64, key="min_rank"),
                        max_rank=b.number_input("Maximum rank per module", 1, 256, key="max_rank"),
                        module_types=tuple(c.multiselect("Module types that may receive rank", layout.module_types,
                                                         key="module_types")),
                        block_rank=a.number_input("Rank of each block a CKA plan selects", 1, 256, key="block_rank"))
    return current_budget(), [*methods, *([blend.strip()] if blend.strip() else [])], limits


def plans_at_budget(run: Run, signals: dict[str, Signal]):
    """The budget controls and every chosen method's allocation at that budget: (prepared, layout, budget
    string, budget in parameters, limits, outcomes); a budget that cannot be read stops the page with its
    one-sentence reason."""
    prepared, layout = planning(run.key, run.description["settings"])
    available = [name for name in signals if name in run.entries]
    budget, methods, limits = budget_controls(layout, available, {n: s.title for n, s in signals.items()})
    try:
        amount = parse_budget(budget, layout, limits)
        outcomes = preview({m: cached_scores(run, m, prepared, layout) for m in [UNIFORM, *methods]}, layout,
                           amount, limits)
    except UserError as error:
        st.error(str(error))
        st.stop()
    return prepared, layout, budget, amount, limits, outcomes


def summary_table(outcomes: list[Outcome], layout, amount: int) -> None:
    st.dataframe(summary(outcomes, layout, amount), hide_index=True,
                 column_config={"trainable params": st.column_config.NumberColumn(format="localized"),
                                "of budget": st.column_config.NumberColumn(format="percent")})
