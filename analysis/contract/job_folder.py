"""The job-folder protocol: everything a background job and the dashboard tell each other, as files.

A job started by the dashboard runs with ANALYSIS_JOB_DIR pointing at <cache>/jobs/<id>/, which holds:
- job.json       how it was started (argv, label, pid and its creation time), written by the launcher;
- log.txt        the process's stdout and stderr;
- progress.json  the phase, step and current bar, and the time left for the whole job:
                 {"phase", "step", "k", "of", "desc", "n", "total", "elapsed", "eta", "total_eta"};
- curve.jsonl    learning-curve rows {"run", "step", "loss"} appended by retrains;
- result.json    {"status": "done" | "failed", ...} written once at the end;
- cancelled      an empty marker the dashboard leaves when the user cancels.
Only this module knows the names; a process outside a job (no ANALYSIS_JOB_DIR) writes nothing.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pandas as pd

from analysis.contract.atomic import write_json_atomic

ENVIRONMENT = "ANALYSIS_JOB_DIR"
JOB, LOG, PROGRESS, CURVE, RESULT, CANCELLED = ("job.json", "log.txt", "progress.json", "curve.jsonl",
                                                "result.json", "cancelled")


def current() -> Path | None:
    """This process's job folder, or None when it was not started as a job."""
    directory = os.environ.get(ENVIRONMENT)
    return Path(directory) if directory else None


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# --- written by the job itself ----------------------------------------------------------------------------

def write_progress(value: dict) -> None:
    directory = current()
    if directory:
        write_json_atomic(directory / PROGRESS, value)


def append_curve(label: str, rows: list[tuple[int, float]]) -> None:
    directory = current()
    if directory and rows:
        with open(directory / CURVE, "a") as out:
            out.writelines(json.dumps({"run": label, "step": s, "loss": l}) + "\n" for s, l in rows)


def write_result(value: dict) -> None:
    directory = current()
    if directory:
        write_json_atomic(directory / RESULT, {**value, "finished": time.time()})


# --- written and read by the launcher and the dashboard ----------------------------------------------------

def write_job(directory: Path, value: dict) -> None:
    write_json_atomic(directory / JOB, value)


def read_curve(directory: Path) -> pd.DataFrame:
    """The live learning curve (run, step, loss); empty before any row."""
    path = directory / CURVE
    if not path.exists() or path.stat().st_size == 0:
        return pd.DataFrame(columns=["run", "step", "loss"])
    lines = path.read_text().splitlines()
    rows = pd.DataFrame([json.loads(line) for line in lines if line.endswith("}")])  # not a line being written
    return rows.drop_duplicates(["run", "step"], keep="last")  # a resumed run repeats steps after its checkpoint


def log_tail(directory: Path, size: int = 4000) -> str:
    path = directory / LOG
    return path.read_text(errors="replace")[-size:] if path.exists() else ""


def mark_cancelled(directory: Path) -> None:
    (directory / CANCELLED).touch()


def is_cancelled(directory: Path) -> bool:
    return (directory / CANCELLED).exists()


def clear_for_resume(directory: Path) -> None:
    """Forget how the last attempt ended (its log and curve stay)."""
    for name in (CANCELLED, RESULT, PROGRESS):
        (directory / name).unlink(missing_ok=True)
    with open(directory / LOG, "a") as log:
        log.write(f"\n--- resumed {time.strftime('%Y-%m-%d %H:%M:%S')} ---\n")
