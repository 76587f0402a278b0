"""Progress for long loops: a tqdm bar on the terminal, and a JSON file a dashboard can poll.

Inside a dashboard job (see analysis/jobs/folder.py) every bar also reports to the job folder at
most twice a second: {"desc", "n", "total", "elapsed", "eta"}.
"""
from __future__ import annotations

import time
from typing import Iterable, Iterator, TypeVar

from tqdm.auto import tqdm

from analysis.jobs import folder

T = TypeVar("T")


def _report(bar: tqdm) -> None:
    elapsed = bar.format_dict["elapsed"]
    rate = bar.n / elapsed if elapsed > 0 else None
    eta = (bar.total - bar.n) / rate if rate and bar.total else None
    folder.write_progress({"desc": bar.desc, "n": bar.n, "total": bar.total, "elapsed": elapsed, "eta": eta})


def progress(iterable: Iterable[T], total: int | None = None, desc: str = "", unit: str = "batch") -> Iterator[T]:
    job_dir = folder.current()
    bar = tqdm(iterable, total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=False)
    last = 0.0
    for item in bar:
        yield item
        if job_dir and time.monotonic() - last > 0.5:
            last = time.monotonic()
            _report(bar)
    if job_dir:
        _report(bar)
