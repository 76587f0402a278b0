"""What each signal took in earlier runs of the same model on the same kind of device: the Setup page's
estimate of what a new run will cost.

A signal that trains a warm-up (shapley, adalora) is charged for it: when the warm-up was trained inside
the signal's own computation, its time is split out of the signal's, so both signals show the same warm-up
(which a new run pays once) beside their own time.
"""
from __future__ import annotations

from dataclasses import dataclass
from statistics import median

from analysis.store.cache import Entry, Store


@dataclass(frozen=True)
class Cost:
    seconds: float          # the signal's own time (median over earlier runs)
    warmup_seconds: float   # the warm-up it needs (0 for signals without one)
    examples: int           # validation examples of those runs (median)
    runs: int

    @property
    def total(self) -> float:
        return self.seconds + self.warmup_seconds


def device_kind(meta: dict) -> str:
    """cpu or gpu: where an entry was computed (entries before the device was recorded: from their settings)."""
    recorded = meta.get("device")
    if recorded:
        return "cpu" if recorded == "cpu" else "gpu"
    settings = meta.get("settings") or {}
    if settings.get("device") == "cpu" or settings.get("dtype") == "float32":
        return "cpu"
    return "gpu" if "cuda" in str(settings.get("device")) or settings.get("dtype") == "bfloat16" else "cpu"


def _own_and_warmup(entry: Entry, warmups: dict[str, Entry]) -> tuple[float, float]:
    seconds = float(entry.meta.get("seconds", 0.0))
    warm = warmups.get(entry.meta.get("warmup_key"))
    if warm is None:
        return seconds, 0.0
    warm_seconds = float(warm.meta.get("seconds", 0.0))
    started = entry.meta.get("created", 0) - seconds
    inside = started <= warm.meta.get("created", 0) <= entry.meta.get("created", 0)
    return (max(seconds - warm_seconds, 0.0) if inside else seconds), warm_seconds


def signal_costs(store: Store, model: str, device: str) -> dict[str, Cost]:
    """Per signal, the median cost of computing it for `model` on `device` ("cpu" or "gpu") in earlier runs."""
    entries = store.entries()
    warmups = {e.key: e for e in entries if e.kind == "warmup"}
    samples: dict[str, list[tuple[float, float, int]]] = {}
    for entry in entries:
        meta = entry.meta
        if meta.get("model") != model or device_kind(meta) != device or "seconds" not in meta:
            continue
        if entry.kind != "signal" or meta.get("signal") is None:
            continue
        own, warm = _own_and_warmup(entry, warmups)
        samples.setdefault(meta["signal"], []).append((own, warm, (meta.get("settings") or {}).get("val_size", 0)))
    return {name: Cost(median(s[0] for s in rows), median(s[1] for s in rows), int(median(s[2] for s in rows)),
                       len(rows))
            for name, rows in samples.items()}
