"""Background jobs: a `python -m analysis ...` process the dashboard starts, watches and can cancel.

A job's whole state is on disk under <cache>/jobs/<id>/ (the files: analysis/contract/job_folder.py), so a
restarted dashboard finds running and finished jobs again.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import psutil

from analysis.contract import job_folder

REPO = Path(__file__).resolve().parents[2]


@dataclass
class JobStatus:
    id: str
    directory: Path
    argv: list[str]
    state: str                 # running, done, failed, cancelled, died
    started: float
    progress: dict | None
    result: dict | None
    label: str = ""
    run_key: str | None = None   # the analysis run a job belongs to (its pages show only that run's jobs)

    @property
    def log_tail(self) -> str:
        return job_folder.log_tail(self.directory)

    @property
    def curve(self) -> pd.DataFrame:
        """The live learning curve a retrain or comparison writes (run, step, loss); empty before any."""
        return job_folder.read_curve(self.directory)


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds} s" if seconds < 120 else f"{seconds // 60} min {seconds % 60:02d} s"


def describe_progress(info: dict | None) -> tuple[float, str]:
    """What a running job's progress.json says, as (fraction of the current bar, one line): the phase (item k
    of n), the step or bar within it, and the time left for the current item and for the whole job."""
    info = info or {}
    parts = []
    if info.get("phase"):
        parts.append(f"{info['phase']} ({info['k']} of {info['of']})" if info.get("of") else info["phase"])
    done, total = info.get("n", 0), info.get("total") or 0
    if info.get("step"):
        parts.append(info["step"])
    elif total:
        parts.append(f"{info.get('desc') or 'working'} {done}/{total}")
    if not parts:
        parts.append("starting Python and reading the settings")
    text = " · ".join(parts)
    left, whole = info.get("eta"), info.get("total_eta")
    if whole is not None and info.get("of") and whole > (left or 0) + 1:
        text += f", about {duration(left or 0)} left in this step and {duration(whole)} in all"
    elif left is not None and total and not info.get("step"):
        text += f", about {duration(left)} left"
    return (min(done / total, 1.0) if total and not info.get("step") else 0.0), text


def jobs_dir(cache_root: Path) -> Path:
    return cache_root / "jobs"


def _launch(directory: Path, argv: list[str], cache_root: Path, label: str, run_key: str | None) -> None:
    env = {**os.environ, job_folder.ENVIRONMENT: str(directory), "ANALYSIS_CACHE_DIR": str(cache_root),
           "PYTHONUNBUFFERED": "1"}
    with open(directory / job_folder.LOG, "ab") as log:
        process = subprocess.Popen([sys.executable, "-m", "analysis", *argv], cwd=REPO, env=env,
                                   stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)  # outlives the dashboard, cancellable as a group
    job_folder.write_job(directory, {"id": directory.name, "argv": argv, "label": label, "run_key": run_key,
                                               "pid": process.pid,
                                               "create_time": psutil.Process(process.pid).create_time(),
                                               "started": time.time()})


def start_job(argv: list[str], cache_root: Path, label: str = "", run_key: str | None = None) -> str:
    job_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
    directory = jobs_dir(cache_root) / job_id
    directory.mkdir(parents=True)
    _launch(directory, argv, cache_root, label, run_key)
    return job_id


def resume_job(cache_root: Path, job_id: str) -> None:
    """Run a died or cancelled job's command again in its directory; a retrain continues from its checkpoint
    and signals already in the cache are not computed again."""
    directory = jobs_dir(cache_root) / job_id
    info = job_folder.read_json(directory / job_folder.JOB)
    if info is None or _alive(info):
        return
    job_folder.clear_for_resume(directory)
    _launch(directory, info["argv"], cache_root, info.get("label", ""), info.get("run_key"))


def _alive(info: dict) -> bool:
    try:
        process = psutil.Process(info["pid"])
        same = abs(process.create_time() - info["create_time"]) < 1  # not a recycled pid
        return same and process.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, KeyError):
        return False


def job_status(directory: Path) -> JobStatus | None:
    info = job_folder.read_json(directory / job_folder.JOB)
    if info is None:
        return None
    result = job_folder.read_json(directory / job_folder.RESULT)
    if job_folder.is_cancelled(directory):
        state = "cancelled"
    elif result is not None:
        state = result.get("status", "done")
    elif _alive(info):
        state = "running"
    else:
        state = "died"
    return JobStatus(info["id"], directory, info["argv"], state, info["started"],
                     job_folder.read_json(directory / job_folder.PROGRESS), result, info.get("label", ""),
                     info.get("run_key"))


def list_jobs(cache_root: Path) -> list[JobStatus]:
    root = jobs_dir(cache_root)
    if not root.exists():
        return []
    found = [job_status(d) for d in root.iterdir() if d.is_dir()]
    return sorted((j for j in found if j), key=lambda j: j.started, reverse=True)


def cancel_job(cache_root: Path, job_id: str) -> None:
    directory = jobs_dir(cache_root) / job_id
    info = job_folder.read_json(directory / job_folder.JOB)
    job_folder.mark_cancelled(directory)
    if info and _alive(info):
        os.killpg(info["pid"], signal.SIGTERM)
