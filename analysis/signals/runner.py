"""Run signals for one setting: compute what the cache lacks, return every signal's entry.

Under `torchrun` / `accelerate launch` every process runs this; they compute each signal together
(parallel.py) and the main process alone writes the store.
"""
from __future__ import annotations

import dataclasses
import sys

from analysis.signals import parallel
from analysis.signals.context import AnalysisContext, RunIdentity, identify, prepare, report, resolve_device
from analysis.settings import RunSettings, keyed_options
from analysis.errors import UserError
from analysis.contract.progress import phase, step
from analysis.store.hashing import hash_json
from analysis.contract.signal import Signal
from analysis.signals.registry import get_signal, make_config
from analysis.store.cache import Entry, Store
from analysis.store.runs import chosen_entry, run_of


def signal_key(context_key: str, signal: Signal, config, processes: int = 1) -> str:
    """The entry's key. The number of processes joins it, as in retrain's key, only where the numbers depend on it
    (a config's `depends_on_processes`: a global training batch, per-process random streams) and only above one,
    so a one-process run keeps the keys it always had. A config's `key_fields` may leave out options added later
    where their values reproduce what ran before them, so those entries keep their keys too; options that only
    change speed (`keyed_options`) are never in it."""
    fields = config.key_fields() if hasattr(config, "key_fields") else dataclasses.asdict(config)
    parts = {"context": context_key, "signal": signal.name, "version": signal.version,
             "config": keyed_options(type(config), fields)}
    if processes > 1 and getattr(config, "depends_on_processes", False):
        parts["processes"] = processes
    return hash_json(parts)


def parse_signal_list(text: str) -> list[Signal]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise UserError("No signals were named; pass --signals with a comma-separated list.")
    return [get_signal(name) for name in names]


def run_signals(settings: RunSettings, signals: list[Signal], overrides: dict[str, dict[str, str]] | None = None,
                store: Store | None = None, force: bool = False) -> list[tuple[Signal, Entry, bool]]:
    """Compute (or fetch) each signal; returns (signal, entry, computed_now) in order."""
    store = store or Store()
    configs = [make_config(signal, (overrides or {}).get(signal.name)) for signal in signals]  # before any work
    parallel.start(resolve_device(settings.device))
    if parallel.is_main():
        store.clean_tmp()
    cached = None if force or parallel.count() > 1 else _all_cached(settings, store, signals, configs)
    if cached is not None:
        return cached
    step("reading the data")
    with parallel.main_first():   # the main process fills the fingerprint memos the others then read
        prepared = prepare(settings, store)
    context = AnalysisContext(prepared)
    context.plan_collections(configs)  # signals that collect pooled states share one capture pass
    results = []
    for k, (signal, config) in enumerate(zip(signals, configs), 1):
        phase(f"signal {signal.name}", k, len(signals))
        key = signal_key(prepared.key, signal, config, parallel.count())
        if force and parallel.is_main() and store.get(key):
            store.discard(key)
        warnings = list(prepared.warnings)
        meta = {"signal": signal.name, "title": signal.title, "config": dataclasses.asdict(config),
                "version": signal.version, "context_key": prepared.key, **prepared.description,
                "warnings": warnings, "processes": parallel.count()}

        def compute(signal=signal, config=config, warnings=warnings):
            examples = len(prepared.validation)
            if examples < signal.min_examples:
                message = (f"{signal.name} uses {examples} validation examples, fewer than the {signal.min_examples} "
                           f"it needs to mean much; give more with --val-size or a larger validation fraction.")
                report(message)
                warnings.append(message)
            context.warnings = warnings   # what the signal itself reports (context.warn) lands in its meta
            return signal.compute(context, config)

        def waiting(name=signal.name):
            step(f"waiting for another job computing {name}")
            print(f"Another process is computing {name} for this setting; waiting for it.", file=sys.stderr)
        entry, computed = parallel.shared_entry(store, key, compute, meta, on_wait=waiting)
        results.append((signal, entry, computed))
    return results


def _all_cached(settings: RunSettings, store: Store, signals: list[Signal], configs: list
                ) -> list[tuple[Signal, Entry, bool]] | None:
    """Every signal's entry when all are cached, found by the run's identity alone (no data read, no model or
    transformers loaded); None when any must be computed, or when the identity itself would read the data. The
    run's setup warnings are said again, from the entries, as a run that reads the data says them."""
    identity = identify(settings, store, read_data=False)
    if identity is None:
        return None
    entries = []
    for signal, config in zip(signals, configs):
        entry = store.get(signal_key(identity.key, signal, config))
        if entry is None:
            return None
        entries.append((signal, entry, False))
    for message in entries[0][1].meta.get("setup_warnings", []) if entries else []:
        report(message)
    return entries


def find_entry(identity: RunIdentity, signal: Signal, overrides: dict[str, str] | None = None) -> Entry | None:
    """The signal's cached entry for `show`, `plan`, `export` and the plans: with options (`--set`), the entry
    computed with exactly those options; without, the run's entry by `store.runs.chosen_entry`, the rule the
    pages follow too. None when there is none."""
    if overrides:
        return identity.store.get(signal_key(identity.key, signal, make_config(signal, overrides)))
    run = run_of(identity.store, identity.key, {signal.name})
    chosen = chosen_entry(run, signal) if run else None
    return identity.store.get(chosen.key) if chosen else None   # get: its files checked, as with --set


def not_computed(name: str, overrides: dict[str, str] | None = None) -> str:
    """What to say when find_entry finds nothing."""
    if overrides:
        options = " ".join(f"--set {name}.{k}={v}" for k, v in overrides.items())
        return (f"Signal '{name}' has not been computed with {options} for this model and data yet; run: "
                f"python -m analysis run --signals {name} {options}.")
    return (f"Signal '{name}' has not been computed for this model and data yet; run: "
            f"python -m analysis run --signals {name}.")
