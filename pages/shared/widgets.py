"""Widgets the signal pages share: choosing a cached run, a variant of a signal in it, CSV downloads.

Kept under pages/shared/ so that Streamlit never mistakes this module for a page of its own.
"""
import time

import streamlit as st

from analysis import jobs
from analysis.figures import learning_curves_figure
from analysis.results import Run, describe_options, runs
from analysis.store import Store


def choose_run(signals: set[str], empty_message: str) -> Run:
    """A select box over the runs holding any of `signals`; stops the page with `empty_message` if none."""
    found = runs(Store(), signals)
    if not found:
        st.info(empty_message)
        st.stop()
    return st.selectbox("Run", found, format_func=lambda r: r.label)


def pick(run: Run, signal: str, label: str):
    """The newest entry of a signal in the run, or a chosen variant when several option sets exist."""
    variants = run.entries.get(signal, [])
    if len(variants) > 1:
        return st.selectbox(label, variants, format_func=describe_options, key=f"{signal}-{run.key}")
    return variants[0] if variants else None


def csv_button(run: Run, frame, name: str) -> None:
    st.download_button(f"CSV: {name}", frame.to_csv(index=False), file_name=f"{name}.csv", mime="text/csv",
                       key=f"csv-{name}-{run.key}")


def _job_title(job: jobs.JobStatus) -> str:
    return job.label or " ".join(job.argv[:5])


@st.fragment(run_every=2.0)
def job_panel(store: Store, verbs: set[str], limit: int = 5, curves: bool = False) -> None:
    """The newest background jobs of these kinds, read from disk on every tick (so a restarted dashboard
    finds them): progress and cancel while running, resume when killed or cancelled, live loss curves."""
    recent = [job for job in jobs.list_jobs(store.root) if job.argv and job.argv[0] in verbs][:limit]
    running = {job.id for job in recent if job.state == "running"}
    watched = f"running-{'-'.join(sorted(verbs))}"
    ended = st.session_state.get(watched, set()) - running
    st.session_state[watched] = running
    if ended:  # a job this page watched has finished: redraw the whole page, so its results appear
        st.rerun()
    if not recent:
        return
    st.subheader("Jobs")
    for job in recent:
        title = _job_title(job)
        if job.state == "running":
            info = job.progress or {}
            done, total, eta = info.get("n", 0), info.get("total") or 0, info.get("eta")
            text = f"{title}: {info.get('desc', 'starting')} {done}/{total}" + (f", about {eta:.0f}s left" if eta else "")
            st.progress(min(done / total, 1.0) if total else 0.0, text=text)
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
                st.plotly_chart(learning_curves_figure(curve, f"Training loss: {title}"), key=f"curve-{job.id}")
