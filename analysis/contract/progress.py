"""Progress for long work: a tqdm bar on the terminal, and what a dashboard job reports about itself.

A job reports three things to its folder (job_folder.py), at most twice a second:
- the phase it is in: `phase("signal sora", k, n)` for item k of n of a job made of several;
- the step within it, for long silent work: `step("loading the model")`, `step("waiting for another job")`;
- the current bar: {"desc", "n", "total", "elapsed", "eta"}.
From both it estimates the time left for the whole job: the current item's time left, plus the items
still to come at the average duration of the finished ones (or of the current one, before any finished).
"""
from __future__ import annotations

import time
from typing import Iterable, Iterator, TypeVar

from tqdm.auto import tqdm

from analysis.contract import job_folder

T = TypeVar("T")

# The job's current phase: what it is doing, item k of n, and when items started (for the total estimate).
_phase: dict = {}
_silent = False


def silence() -> None:
    """No bars from this process from now on: another process of its data-parallel launch draws them."""
    global _silent
    _silent = True


def phase(text: str, k: int | None = None, n: int | None = None) -> None:
    """Enter a phase (written at once, so a long silent step such as loading a model says what it is doing);
    `k` of `n` numbers the items of a job made of several (signals, retrain runs)."""
    now = time.monotonic()
    if k is not None and _phase.get("k") != k:
        finished = _phase.get("finished", []) + ([now - _phase["item_started"]] if "item_started" in _phase else [])
        _phase.update(finished=finished, item_started=now)
    _phase.update(text=text, k=k, n=n, step=None)
    _write({"desc": "", "n": 0, "total": 0, "elapsed": 0.0, "eta": None})


def step(text: str) -> None:
    """Say what the job is doing inside its phase (until the next bar or step)."""
    _phase["step"] = text
    _write({"desc": "", "n": 0, "total": 0, "elapsed": 0.0, "eta": None})


def total_left(item_elapsed: float, item_eta: float | None) -> float | None:
    """Seconds left for the whole job, or None when nothing can be estimated yet."""
    k, n = _phase.get("k"), _phase.get("n")
    if item_eta is None:
        return None
    if not k or not n:
        return item_eta
    finished = _phase.get("finished", [])
    per_item = sum(finished) / len(finished) if finished else item_elapsed + item_eta
    return item_eta + (n - k) * per_item


def _write(bar: dict) -> None:
    elapsed_item = time.monotonic() - _phase["item_started"] if "item_started" in _phase else bar["elapsed"]
    job_folder.write_progress({**bar, "phase": _phase.get("text"), "step": _phase.get("step"), "k": _phase.get("k"),
                               "of": _phase.get("n"), "total_eta": total_left(elapsed_item, bar["eta"])})


def _report(bar: tqdm) -> None:
    _phase["step"] = None   # a bar is running: it says what the job does now
    elapsed = bar.format_dict["elapsed"]
    rate = bar.n / elapsed if elapsed > 0 else None
    eta = (bar.total - bar.n) / rate if rate and bar.total else None
    _write({"desc": bar.desc, "n": bar.n, "total": bar.total, "elapsed": elapsed, "eta": eta})


def progress(iterable: Iterable[T], total: int | None = None, desc: str = "", unit: str = "batch") -> Iterator[T]:
    job_dir = job_folder.current()
    bar = tqdm(iterable, total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=False, disable=_silent)
    last = 0.0
    for item in bar:
        yield item
        if job_dir and time.monotonic() - last > 0.5:
            last = time.monotonic()
            _report(bar)
    if job_dir:
        _report(bar)
