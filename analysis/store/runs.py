"""Cached results grouped by analysis run (same model, data, split and settings), for the pages.

A run is one context key; within it one entry of each signal stands for that signal (`chosen_entry`: the one
with default options, else the newest, of the signal's current version), and entries with other options stay
reachable as variants.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

from analysis.store.cache import Entry, Store
from analysis.settings import keyed_options
from analysis.store.hashing import hash_json


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


def run_of(store: Store, key: str, signals: set[str] | None = None) -> Run | None:
    """The run filed under context key `key` (holding any of `signals`), or None."""
    return next((r for r in runs(store, signals) if r.key == key), None)


def variants(run: Run, signal) -> list[Entry]:
    """A signal's entries in the run from its current code version (an older version's tables may have another
    schema), newest first; `signal` is its registry record (name, version, config dataclass)."""
    return [e for e in run.entries.get(signal.name, []) if e.meta.get("version") == signal.version]


def chosen_entry(run: Run, signal) -> Entry | None:
    """The one rule by which every command and page picks a signal's entry in a run when no options are named:
    of its `variants`, the one computed with default options, or else the newest. None when there is none."""
    current = variants(run, signal)
    defaults = hash_json(keyed_options(signal.config, asdict(signal.config())))
    return next((e for e in current
                 if hash_json(keyed_options(signal.config, e.meta.get("config", {}))) == defaults),
                current[0] if current else None)


def chosen_entries(run: Run, signals: dict) -> dict[str, Entry]:
    """Each registered signal's entry in the run by `chosen_entry`'s rule, in registry order."""
    found = {name: chosen_entry(run, signal) for name, signal in signals.items()}
    return {name: entry for name, entry in found.items() if entry is not None}


def comparisons(store: Store, run_key: str) -> list[Entry]:
    """The retrain comparisons of one analysis setting, newest first."""
    return [e for e in store.entries() if e.meta.get("signal") == "comparison" and e.meta.get("context_key") == run_key]
