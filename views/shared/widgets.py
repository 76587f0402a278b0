"""Widgets the pages share: the current run, a variant of a signal in it, figures with their downloads,
the budget controls, and the job panel.

Kept under views/shared/, apart from the pages app.py lists.
"""
import json
import time

import streamlit as st

from analysis.jobs import launch as jobs
from analysis.settings import field_of, kind_of
from analysis.contract.exhibit import Exhibit
from analysis.reporting.exhibits import render
from analysis.reporting.figures import learning_curves_figure
from analysis.reporting.paper import FORMATS, MIME, WIDTHS
from analysis.reporting.screen import on_screen
from analysis.signals.registry import all_signals
from analysis.contract.run import Run
from analysis.store.lookups import chosen_entry, describe_options, runs, variants
from analysis.store.cache import Store

RUN_KEY = "current_run"   # the run every page opens with: the one last chosen on any page
RUN_CHOICE = "run_choice"  # the Run select box's own state
# Choices that span pages (app.py keeps them alive, with the limits: shared/planning.py's limit_keys): the budget,
# the methods, the export style.
PERSISTENT_KEYS = ("budget_unit", "budget_rank", "budget_params", "plan_methods", "plan_blend", "plan_difference",
                   "export_width", "export_grayscale")


@st.cache_resource(show_spinner=False)
def gpu_present() -> bool:
    import torch
    return torch.cuda.is_available()


def setting_input(container, group: type, name: str, key: str | None = None, label: str | None = None, **widget):
    """A widget for one field of an option group, made from the field itself: a number input within its range, a
    radio (two choices), select box or multiselect (a list) over its choices, a checkbox for a flag, a text input
    otherwise (a list comma-separated), with the field's help. With a `key` the widget's value lives in session
    state (set it first); without one it opens on `value` (in `widget`) or the field's default. The group, made
    from what the widgets return, checks the values."""
    f, kind = field_of(group, name), kind_of(group, name)
    meta = f.metadata
    label = label or meta.get("label") or meta["help"][0].upper() + meta["help"][1:]
    widget = {"help": meta["help"], **widget}
    opened = key is None
    value = widget.pop("value", f.default)
    if not opened:
        widget["key"] = key
    if meta.get("choices"):
        options = list(meta["choices"])
        if kind is tuple:
            return container.multiselect(label, options, **({"default": list(value)} if opened else {}), **widget)
        chosen = {"index": options.index(value)} if opened else {}
        if len(options) == 2:
            return container.radio(label, options, horizontal=True, **chosen, **widget)
        return container.selectbox(label, options, **chosen, **widget)
    if kind is bool:
        return container.checkbox(label, **({"value": value} if opened else {}), **widget)
    if kind in (int, float):
        low = meta.get("minimum") if meta.get("minimum") is not None else meta.get("above")
        bounds = {"min_value": kind(low) if low is not None else None,
                  "max_value": kind(meta["maximum"]) if meta.get("maximum") is not None else None}
        if kind is float:
            widget.setdefault("format", "%.4g")
        return container.number_input(label, **bounds, **({"value": value} if opened else {}), **widget)
    if isinstance(value, tuple):
        value = ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return container.text_input(label, **({"value": "" if value is None else str(value)} if opened else {}),
                                **widget)


def keep(*keys: str) -> None:
    """Keep these widgets' values when the user switches pages (Streamlit drops the state of widgets a
    page does not draw)."""
    for key in keys:
        if key in st.session_state:
            st.session_state[key] = st.session_state[key]


def choose_run(signals: set[str] | None, empty_message: str, found: list[Run] | None = None) -> Run:
    """A select box over the runs holding any of `signals` (any signal: None; or the runs a page already
    read, `found`), opened on the current run; stops the page with `empty_message` if there is none.

    The box has a key of its own, so that it stays one widget whichever run is current (without a key, its
    identity would follow the option it opens on, and the choice made in it would be dropped on the rerun it
    starts); a choice there becomes the current run before the page runs again."""
    found = runs(Store(), signals) if found is None else found
    if not found:
        st.info(empty_message)
        st.stop()
    by_key = {r.key: r for r in found}
    current = st.session_state.get(RUN_KEY)
    st.session_state[RUN_CHOICE] = current if current in by_key else found[0].key
    differences = run_differences(found)
    chosen = st.selectbox("Run", list(by_key), key=RUN_CHOICE, on_change=_run_chosen,
                          format_func=lambda key: " · ".join(filter(None, [by_key[key].label, differences[key]])))
    st.session_state[RUN_KEY] = chosen
    return by_key[chosen]


def _run_chosen() -> None:
    st.session_state[RUN_KEY] = st.session_state[RUN_CHOICE]


# Already in Run.label, or the same for every run of a cache by construction.
_LABELLED = ("model", "data", "val_size")


def run_differences(found: list[Run]) -> dict[str, str]:
    """Per run, the settings in which the runs differ beyond what their labels show (max-length, dtype, task,
    seed, split, ...), e.g. 'max-length 64, dtype float32'; '' where nothing else differs."""
    settings = [{**(r.description.get("settings") or {}), "task": r.description.get("task")} for r in found]
    names = sorted({name for s in settings for name in s if name not in _LABELLED})
    differing = [name for name in names if len({json.dumps(s.get(name), sort_keys=True) for s in settings}) > 1]

    def shown(value) -> str:
        return ",".join(map(str, value)) if isinstance(value, list) else str(value)
    return {r.key: ", ".join(f"{name.replace('_', '-')} {shown(s.get(name))}" for name in differing)
            for r, s in zip(found, settings)}


def pick(run: Run, signal: str, label: str):
    """A signal's entry in the run by the rule every command and page follows (`store.lookups.chosen_entry`); where
    its current version was computed with several option sets, a select box opened on that entry lets the user
    choose another."""
    record = all_signals()[signal]
    offered, chosen = variants(run, record), chosen_entry(run, record)
    if len(offered) > 1:
        return st.selectbox(label, offered, index=offered.index(chosen), format_func=describe_options,
                            key=f"{signal}-{run.key}")
    return chosen


def export_style() -> tuple[str, bool]:
    """The paper style chosen on the Export page (one column, colour by default)."""
    return st.session_state.get("export_width", "column"), st.session_state.get("export_grayscale", False)


def download_buttons(exhibit: Exhibit, formats, container=st, key: str = "{fmt}-{name}") -> None:
    """One button per format, each file made on click by exhibits.render in the Export page's paper style."""
    width, grayscale = export_style()
    for column, fmt in zip(container.columns(len(formats)), formats):
        column.download_button("LaTeX" if fmt == "tex" else fmt.upper(),
                               lambda fmt=fmt: render(exhibit, fmt, width, grayscale),
                               file_name=f"{exhibit.name}.{fmt}", mime=MIME[fmt],
                               key=key.format(fmt=fmt, name=exhibit.name), on_click="ignore")


def dark_theme() -> bool:
    """Whether the page is drawn in the dark theme: the server's configured theme, or the one the browser reports
    (Streamlit may not know that one yet on a session's first run)."""
    return st.get_option("theme.base") == "dark" or st.context.theme.type == "dark"


def show(exhibit: Exhibit, figure=None) -> None:
    """A figure on the page (`figure` when already built), readable in the light and the dark theme, with a
    Download popover: PDF, SVG and PNG of it in paper style, and the CSV behind it."""
    st.plotly_chart(on_screen(figure or exhibit.figure(), dark_theme()), key=f"chart-{exhibit.name}")
    width, grayscale = export_style()
    with st.popover("Download", icon=":material/download:"):
        st.caption(f"Paper style: {WIDTHS[width]} in wide{', grayscale' if grayscale else ''} "
                   "(change it on the Export page).")
        download_buttons(exhibit, [*FORMATS, "csv"])


def chart(figure, data, name: str) -> None:
    """A figure built on the page, shown as an exhibit; `data` returns the table behind it."""
    show(Exhibit(name, name, data, lambda: figure), figure)


def _job_title(job: jobs.JobStatus) -> str:
    return job.label or " ".join(job.argv[:5])


@st.fragment(run_every=2.0)
def job_panel(store: Store, verbs: set[str], limit: int = 5, curves: bool = False, run_key: str | None = None) -> None:
    """The newest background jobs of these kinds (of one run, when `run_key` is given), read from disk on every
    tick (so a restarted dashboard finds them): progress and cancel while running, resume when killed or cancelled, live loss curves."""
    recent = [job for job in jobs.list_jobs(store.root) if job.argv and job.argv[0] in verbs
              and (run_key is None or job.run_key == run_key)][:limit]
    running = {job.id for job in recent if job.state == "running"}
    watched = f"running-{'-'.join(sorted(verbs))}"
    ended = st.session_state.get(watched, set()) - running
    st.session_state[watched] = running
    if ended:  # a job this page watched has finished: open its run and redraw the whole page with its results
        for job in recent:
            keys = (job.result or {}).get("keys") or {}
            entry = store.get(next(iter(keys.values()))) if job.id in ended and keys else None
            if entry is not None and entry.meta.get("context_key"):
                st.session_state[RUN_KEY] = entry.meta["context_key"]
        st.rerun()
    if not recent:
        return
    st.subheader("Jobs")
    for job in recent:
        title = _job_title(job)
        if job.state == "running":
            fraction, text = jobs.describe_progress(job.progress)
            st.progress(fraction, text=f"{title}: {text}")
            if st.button("Cancel", key=f"cancel-{job.id}"):
                jobs.cancel_job(store.root, job.id)
        elif job.state == "failed":
            st.error(f"{title}: {job.result.get('message', 'failed')}")
        elif job.state == "done":
            st.success(f"{title}: finished {time.strftime('%H:%M:%S', time.localtime(job.result['finished']))}")
        else:
            st.warning(f"{title}: {job.state}; resuming continues from its last checkpoint and reuses cached work.")
            if st.button("Resume", key=f"resume-{job.id}"):
                jobs.resume_job(store.root, job.id)
        if curves and job.state in ("running", "died", "cancelled"):
            curve = job.curve
            if len(curve):
                st.plotly_chart(on_screen(learning_curves_figure(curve, f"Training loss: {title}"), dark_theme()),
                                key=f"curve-{job.id}")
