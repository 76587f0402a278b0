"""Cached results grouped by analysis run (same model, data, split and settings), for the pages.

A run is one context key; within it the newest entry of each signal stands for that signal,
and older entries with other options stay reachable as variants.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field


from analysis.store.cache import Entry, Store


def when(timestamp: float) -> str:
    """A creation time as the pages and the command line show it."""
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(timestamp))


@dataclass
class Run:
    key: str
    description: dict
    entries: dict[str, list[Entry]] = field(default_factory=dict)  # signal name -> newest first

    @property
    def label(self) -> str:
        d = self.description
        settings = d.get("settings") or {}
        return (f"{d.get('model_name', d.get('model'))} · {d.get('data')} · "
                f"{settings.get('val_size', '?')} validation examples · {when(self.newest)}")

    @property
    def newest(self) -> float:
        return max(e.meta.get("created", 0) for variants in self.entries.values() for e in variants)


def runs(store: Store, signals: set[str] | None = None) -> list[Run]:
    """Runs holding at least one of `signals` (any signal when None), newest first."""
    found: dict[str, Run] = {}
    for entry in store.entries():  # newest first, so each list stays newest first
        name, key = entry.meta.get("signal"), entry.meta.get("context_key")
        if key is None or (signals is not None and name not in signals):
            continue
        run = found.setdefault(key, Run(key, {k: entry.meta.get(k) for k in
                                              ("model", "model_name", "data", "task", "labels", "settings")}))
        run.entries.setdefault(name, []).append(entry)
    return sorted(found.values(), key=lambda r: r.newest, reverse=True)


def describe_options(entry: Entry) -> str:
    """The entry's signal options in one line, for telling variants apart."""
    config = entry.meta.get("config", {})
    return ", ".join(f"{k}={v}" for k, v in config.items()) or "defaults"


def newest_entry(store: Store, run_key: str, signal: str, version: int) -> Entry | None:
    """The newest entry of `signal` in the run from code version `version` (an older version's tables may
    have another schema): the one lookup every page and command uses when no options are named."""
    return next((e for e in store.entries() if e.meta.get("signal") == signal and e.meta.get("context_key") == run_key
                 and e.meta.get("version") == version), None)


def newest_entries(run: Run, signals: dict) -> dict[str, Entry]:
    """Each registered signal's newest entry in the run from its current code version, in registry order
    (the same rule as newest_entry, over a run already read)."""
    found = {}
    for name, signal in signals.items():
        entry = next((e for e in run.entries.get(name, []) if e.meta.get("version") == signal.version), None)
        if entry is not None:
            found[name] = entry
    return found


def comparisons(store: Store, run_key: str) -> list[Entry]:
    """The retrain comparisons of one analysis setting, newest first."""
    return [e for e in store.entries() if e.meta.get("signal") == "comparison" and e.meta.get("context_key") == run_key]
