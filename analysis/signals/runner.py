"""Run signals for one setting: compute what the cache lacks, return every signal's entry.

Under `torchrun` / `accelerate launch` every process runs this; they compute each signal together
(parallel.py) and the main process alone writes the store.
"""
from __future__ import annotations

import dataclasses
import sys

from analysis.signals import parallel
from analysis.signals.context import AnalysisContext, identify, prepare, report, resolve_device
from analysis.settings import RunSettings
from analysis.errors import UserError
from analysis.contract.progress import phase, step
from analysis.contract.signal import Signal
from analysis.signals.registry import get_signal, make_config
from analysis.store.cache import Entry, Store
from analysis.store.keys import signal_parts


def signal_key(run_key: str, signal: Signal, config, processes: int = 1) -> str:
    """The key of a signal's entry in a run (store/keys.py's signal_parts says what it holds)."""
    return Store.key("signal", signal_parts(run_key, signal, config, processes))


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
    run = identify(settings, store, read_data=False)
    if run is None:
        return None
    entries = []
    for signal, config in zip(signals, configs):
        entry = store.get(signal_key(run.key, signal, config))
        if entry is None:
            return None
        entries.append((signal, entry, False))
    for message in entries[0][1].meta.get("setup_warnings", []) if entries else []:
        report(message)
    return entries


def not_computed(name: str, overrides: dict[str, str] | None = None) -> str:
    """What to say when store.lookups.find_entry finds nothing."""
    if overrides:
        options = " ".join(f"--set {name}.{k}={v}" for k, v in overrides.items())
        return (f"Signal '{name}' has not been computed with {options} for this model and data yet; run: "
                f"python -m analysis run --signals {name} {options}.")
    return (f"Signal '{name}' has not been computed for this model and data yet; run: "
            f"python -m analysis run --signals {name}.")
