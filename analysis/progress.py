"""Progress for long loops: a tqdm bar on the terminal, and a JSON file a dashboard can poll.

When ANALYSIS_JOB_DIR is set (the dashboard starts jobs that way), every bar also writes
progress.json there at most twice a second: {"desc", "n", "total", "elapsed", "eta"}.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Iterable, Iterator, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write whole or not at all: a reader (or a crash) never sees half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(path: Path, value) -> None:
    write_bytes_atomic(path, json.dumps(value, default=str).encode())


def _report(job_dir: Path, bar: tqdm) -> None:
    elapsed = bar.format_dict["elapsed"]
    rate = bar.n / elapsed if elapsed > 0 else None
    eta = (bar.total - bar.n) / rate if rate and bar.total else None
    write_json_atomic(job_dir / "progress.json",
                      {"desc": bar.desc, "n": bar.n, "total": bar.total, "elapsed": elapsed, "eta": eta})


def progress(iterable: Iterable[T], total: int | None = None, desc: str = "", unit: str = "batch") -> Iterator[T]:
    job_dir = os.environ.get("ANALYSIS_JOB_DIR")
    bar = tqdm(iterable, total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=False)
    last = 0.0
    for item in bar:
        yield item
        if job_dir and time.monotonic() - last > 0.5:
            last = time.monotonic()
            _report(Path(job_dir), bar)
    if job_dir:
        _report(Path(job_dir), bar)
