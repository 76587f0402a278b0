"""The signal registry: every signal is one module that calls `register` at import time.

A signal declares its name, a config dataclass (defaults and help text in field metadata) and a
function (context, config) -> Result whose main table is tidy: signal, layer, module, value
(+ stderr, rank where they apply). Pages, the command line and the allocator use only this.
"""
from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from dataclasses import dataclass
from typing import Callable

from analysis.errors import UserError

TIDY_COLUMNS = ("signal", "layer", "module", "value")


@dataclass(frozen=True)
class Signal:
    name: str
    title: str
    description: str
    config: type                  # a dataclass; its field metadata["help"] documents each option
    compute: Callable             # (AnalysisContext, config) -> store.Result
    version: int = 1              # bump when the computation changes, so old cache entries are not reused
    needs_labels: bool = False
    plan: str | None = None       # how allocation reads the table (analysis/allocate.py); None: inferred


_REGISTRY: dict[str, Signal] = {}


def register(signal: Signal) -> Signal:
    if signal.name in _REGISTRY:
        raise ValueError(f"signal {signal.name!r} registered twice")
    _REGISTRY[signal.name] = signal
    return signal


def _load_all() -> None:
    import analysis.signals as package

    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{info.name}")


def all_signals() -> dict[str, Signal]:
    _load_all()  # every module under analysis/signals, even when one was imported directly first
    return dict(sorted(_REGISTRY.items()))  # by name: import order would differ between processes


def get_signal(name: str) -> Signal:
    signals = all_signals()
    if name not in signals:
        raise UserError(f"Unknown signal '{name}'; available: {', '.join(sorted(signals))}.")
    return signals[name]


def make_config(signal: Signal, overrides: dict[str, str] | None = None):
    """Build the signal's config from string overrides (command line `--set name.key=value`)."""
    fields = {f.name: f for f in dataclasses.fields(signal.config)}
    values = {}
    for key, raw in (overrides or {}).items():
        if key not in fields:
            options = f"its options are: {', '.join(fields)}" if fields else "it has no options"
            raise UserError(f"Signal '{signal.name}' has no option '{key}'; {options}.")
        default = getattr(signal.config(), key)
        values[key] = _parse_value(raw, type(default), f"{signal.name}.{key}")
    return signal.config(**values)


def _parse_value(raw, kind: type, label: str):
    if not isinstance(raw, str):
        return raw
    try:
        if kind is bool:
            if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return raw.lower() in ("true", "1", "yes")
        return kind(raw)
    except ValueError:
        raise UserError(f"Option {label} expects a {kind.__name__}, not '{raw}'.") from None


def config_help(signal: Signal) -> list[tuple[str, object, str]]:
    return [(f.name, f.default, f.metadata.get("help", "")) for f in dataclasses.fields(signal.config)]
