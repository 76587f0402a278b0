"""The signal registry: every signal is one folder under analysis/signals whose __init__ calls `register`.

A signal declares its name, a config dataclass (defaults and help text in field metadata), a
function (context, config) -> Result whose main table is tidy (signal, layer, module, value, plus
stderr and rank where they apply), the plan family that turns the table into ranks, and
optionally its own figures. Pages, the command line and the allocator use only this record.

Where a signal implements a paper, its defaults are that paper's code; an option that departs from it
names itself (`variant`), and every plan, table row and page that shows an entry computed with it
carries that name, so no row is called after a paper whose rule it did not follow.
"""
from __future__ import annotations

import dataclasses
import importlib
import os
import pkgutil
from dataclasses import dataclass
from typing import Callable

from analysis.errors import UserError

@dataclass(frozen=True)
class Signal:
    name: str
    title: str
    description: str
    config: type                  # a dataclass; its field metadata["help"] documents each option
    compute: Callable             # (AnalysisContext, config) -> store.Result
    version: int = 1              # bump when the computation changes, so old cache entries are not reused
    trains: bool = False          # trains a model (a warm-up, gates): minutes on a CPU, so not chosen by default
    min_examples: int = 0         # fewer validation examples than this: the run warns that the result means little
    plan_family: str | None = None   # a name from planning.allocate.FAMILIES; None: inferred from the table
    exhibits: Callable | None = None  # (store Entry) -> its figures and tables; None: reporting's generic one
    variant: Callable | None = None   # (an entry's config dict) -> what its rows are called where an option departs
                                      # from the paper's code ("" where none does); None: no such options


def variant_of(signal: Signal, config: dict) -> str:
    """The name of the non-paper options an entry was computed with ("" for the paper's own)."""
    return signal.variant(config) if signal.variant else ""


def deferred(module: str, function: str = "exhibits") -> Callable:
    """`module.function`, imported on the first call: a signal's figures load plotly only when drawn."""
    def call(*args, **kwargs):
        return getattr(importlib.import_module(module), function)(*args, **kwargs)
    return call


_REGISTRY: dict[str, Signal] = {}


def register(signal: Signal) -> Signal:
    from analysis.planning.allocate import FAMILIES

    if signal.name in _REGISTRY:
        raise ValueError(f"signal {signal.name!r} registered twice")
    if signal.plan_family is not None and signal.plan_family not in FAMILIES:
        raise ValueError(f"signal {signal.name!r} declares plan family {signal.plan_family!r}; the families are "
                         f"{', '.join(FAMILIES)}")
    _REGISTRY[signal.name] = signal
    return signal


# Packages whose sub-folders are signals: ours, plus any named in this variable (comma-separated), so a
# signal kept outside the repository registers the same way.
EXTRA_PACKAGES = "ANALYSIS_SIGNAL_PACKAGES"


def _signal_packages() -> list[str]:
    extra = [name.strip() for name in os.environ.get(EXTRA_PACKAGES, "").split(",") if name.strip()]
    return ["analysis.signals", *extra]


def _load_all() -> None:
    """Import every signal folder (a sub-package); its __init__ registers the signal."""
    for name in _signal_packages():
        try:
            package = importlib.import_module(name)
        except ImportError as exc:
            raise UserError(f"The signal package '{name}' named in {EXTRA_PACKAGES} cannot be imported ({exc}).") \
                from None
        for info in pkgutil.iter_modules(package.__path__):
            if info.ispkg:
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
    """Build the signal's config from string overrides (command line `--set name.key=value`), with every value
    converted to its field's type and checked against the range in the field's metadata (minimum, maximum,
    above, choices; see settings.setting), so a bad option is one sentence before any model is loaded."""
    from analysis.settings import check_values

    fields = {f.name: f for f in dataclasses.fields(signal.config)}
    for key in overrides or {}:
        if key not in fields:
            options = f"its options are: {', '.join(fields)}" if fields else "it has no options"
            raise UserError(f"Signal '{signal.name}' has no option '{key}'; {options}.")
    try:
        config = signal.config(**(overrides or {}))
    except (TypeError, ValueError) as exc:   # a config's own __post_init__ refusing a raw value
        raise UserError(f"Signal '{signal.name}' cannot use these options ({exc}).") from None
    check_values(config, signal.name)
    if hasattr(config, "check"):   # checks across options (sora: xi below xi_max)
        config.check()
    return config


def config_help(signal: Signal) -> list[tuple[str, object, str]]:
    return [(f.name, f.default, f.metadata.get("help", "")) for f in dataclasses.fields(signal.config)]
