"""Background jobs: a `python -m analysis ...` process the dashboard starts, watches and can cancel.

A job's whole state is on disk under <cache>/jobs/<id>/ (job.json, log.txt, progress.json,
result.json), so a restarted dashboard finds running and finished jobs again.
"""
from __future__ import annotations

import dataclasses
import json
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

from analysis.progress import write_json_atomic

REPO = Path(__file__).resolve().parent.parent


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

    @property
    def log_tail(self) -> str:
        path = self.directory / "log.txt"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    @property
    def curve(self) -> pd.DataFrame:
        """The live learning curve a retrain or comparison writes (run, step, loss); empty before any."""
        path = self.directory / "curve.jsonl"
        if not path.exists() or path.stat().st_size == 0:
            return pd.DataFrame(columns=["run", "step", "loss"])
        lines = path.read_text().splitlines()
        rows = pd.DataFrame([json.loads(line) for line in lines if line.endswith("}")])  # not a line being written
        return rows.drop_duplicates(["run", "step"], keep="last")  # a resumed run repeats steps after its checkpoint


def settings_argv(settings: dict) -> list[str]:
    """Command-line flags that reproduce an analysis setting (RunSettings as a dict): each field is a flag of
    the same name; the split fractions are written comma-separated."""
    from analysis.context import RunSettings

    def text(value) -> str:
        return ",".join(repr(float(v)) for v in value) if isinstance(value, (list, tuple)) else str(value)

    flags = [f.name for f in dataclasses.fields(RunSettings)]
    return [part for name in flags if name in settings for part in (f"--{name.replace('_', '-')}", text(settings[name]))]


def limits_argv(limits) -> list[str]:
    """Command-line flags that reproduce plan limits (allocate.Limits); the inverse of the CLI's --min-rank,
    --max-rank, --block-rank and --modules."""
    argv = ["--min-rank", str(limits.min_rank), "--max-rank", str(limits.max_rank), "--block-rank",
            str(limits.block_rank)]
    return argv + (["--modules", ",".join(limits.module_types)] if limits.module_types is not None else [])


def jobs_dir(cache_root: Path) -> Path:
    return cache_root / "jobs"


def _launch(directory: Path, argv: list[str], cache_root: Path, label: str) -> None:
    env = {**os.environ, "ANALYSIS_JOB_DIR": str(directory), "ANALYSIS_CACHE_DIR": str(cache_root),
           "PYTHONUNBUFFERED": "1"}
    with open(directory / "log.txt", "ab") as log:
        process = subprocess.Popen([sys.executable, "-m", "analysis", *argv], cwd=REPO, env=env,
                                   stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)  # outlives the dashboard, cancellable as a group
    write_json_atomic(directory / "job.json", {"id": directory.name, "argv": argv, "label": label,
                                               "pid": process.pid,
                                               "create_time": psutil.Process(process.pid).create_time(),
                                               "started": time.time()})


def start_job(argv: list[str], cache_root: Path, label: str = "") -> str:
    job_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
    directory = jobs_dir(cache_root) / job_id
    directory.mkdir(parents=True)
    _launch(directory, argv, cache_root, label)
    return job_id


def resume_job(cache_root: Path, job_id: str) -> None:
    """Run a died or cancelled job's command again in its directory; a retrain continues from its checkpoint
    and signals already in the cache are not computed again."""
    directory = jobs_dir(cache_root) / job_id
    info = _read(directory / "job.json")
    if info is None or _alive(info):
        return
    for name in ("cancelled", "result.json", "progress.json"):
        (directory / name).unlink(missing_ok=True)
    with open(directory / "log.txt", "a") as log:
        log.write(f"\n--- resumed {time.strftime('%Y-%m-%d %H:%M:%S')} ---\n")
    _launch(directory, info["argv"], cache_root, info.get("label", ""))


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _alive(info: dict) -> bool:
    try:
        process = psutil.Process(info["pid"])
        same = abs(process.create_time() - info["create_time"]) < 1  # not a recycled pid
        return same and process.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, KeyError):
        return False


def job_status(directory: Path) -> JobStatus | None:
    info = _read(directory / "job.json")
    if info is None:
        return None
    result = _read(directory / "result.json")
    if (directory / "cancelled").exists():
        state = "cancelled"
    elif result is not None:
        state = result.get("status", "done")
    elif _alive(info):
        state = "running"
    else:
        state = "died"
    return JobStatus(info["id"], directory, info["argv"], state, info["started"],
                     _read(directory / "progress.json"), result, info.get("label", ""))


def list_jobs(cache_root: Path) -> list[JobStatus]:
    root = jobs_dir(cache_root)
    if not root.exists():
        return []
    found = [job_status(d) for d in root.iterdir() if d.is_dir()]
    return sorted((j for j in found if j), key=lambda j: j.started, reverse=True)


def cancel_job(cache_root: Path, job_id: str) -> None:
    directory = jobs_dir(cache_root) / job_id
    info = _read(directory / "job.json")
    (directory / "cancelled").touch()
    if info and _alive(info):
        os.killpg(info["pid"], signal.SIGTERM)
