"""The store's lookups: its entries grouped by run, a run's comparisons, and the one rule that picks a signal's
entry in a run.

A run is one context key (contract/run.py); within it one entry of each signal stands for that signal
(`chosen_entry`: the one with default options, else the newest, of the signal's current version), entries with
other options stay reachable as variants, and `find_entry` finds the entry of exactly the options named.
"""
from __future__ import annotations

from dataclasses import asdict

from analysis.contract.run import DESCRIPTION, Run
from analysis.settings import keyed_options
from analysis.store.cache import Entry, Store
from analysis.store.hashing import hash_json
from analysis.store.keys import signal_parts


def runs(store: Store, signals: set[str] | None = None) -> list[Run]:
    """Runs holding an entry of at least one of `signals` (any signal when None), newest first; each carries its
    signals' entries (from this one reading of the store)."""
    found: dict[str, Run] = {}
    for entry in store.entries():  # newest first, so each list stays newest first
        name, key = entry.meta.get("signal"), entry.meta.get("context_key")
        if entry.kind != "signal" or key is None or (signals is not None and name not in signals):
            continue
        run = found.setdefault(key, Run(key, {k: entry.meta.get(k) for k in DESCRIPTION}, {}, store))
        run.entries.setdefault(name, []).append(entry)
    return sorted(found.values(), key=lambda r: r.newest, reverse=True)


def describe_options(entry: Entry) -> str:
    """The entry's signal options in one line, for telling variants apart."""
    config = entry.meta.get("config", {})
    return ", ".join(f"{k}={v}" for k, v in config.items()) or "defaults"


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


def find_entry(run: Run, signal, config=None) -> Entry | None:
    """The signal's cached entry for `show`, `plan`, `export` and the plans: with a config (options named with
    `--set`), the entry computed with exactly those options; without, the run's entry by `chosen_entry`, the rule
    the pages follow too. Read through `Store.get`, so its files are checked. None when there is none."""
    if config is not None:
        return run.store.get(Store.key("signal", signal_parts(run.key, signal, config)))
    chosen = chosen_entry(run, signal)
    return run.store.get(chosen.key) if chosen else None


def comparisons(run: Run) -> list[Entry]:
    """The retrain comparisons of a run, newest first."""
    return [e for e in run.store.entries() if e.kind == "comparison" and e.meta.get("context_key") == run.key]
