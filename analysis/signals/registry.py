"""The signal registry: every signal is one folder under analysis/signals (or under a package named in
ANALYSIS_SIGNAL_PACKAGES, or a module an installed package names under the `analysis.signals` entry points) that
calls `register` with its record (contract/signal.py) when imported. Pages, the command line, planning and training
find a signal and what it brings (its plan family and limits, its adapter start, its page) here, by name.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
import os
import pkgutil
import sys
from importlib.metadata import entry_points

from analysis.contract.signal import AdapterStart, Signal
from analysis.errors import UserError
from analysis.settings import ADAPTER_STARTS, Limits, SignalOptions, flag_of

_REGISTRY: dict[str, Signal] = {}


def register(signal: Signal) -> Signal:
    if signal.name in _REGISTRY:
        raise ValueError(f"signal {signal.name!r} registered twice")
    if not issubclass(signal.config, SignalOptions):
        raise ValueError(f"signal {signal.name!r}: its config must derive from settings.SignalOptions, so that it "
                         "checks its options when made")
    taken = {flag_of(f) for f in dataclasses.fields(Limits)} | {flag for other in _REGISTRY.values()
                                                                for flag in _limit_flags(other)}
    clash = sorted(taken & _limit_flags(signal))
    if clash:
        raise ValueError(f"signal {signal.name!r} declares plan limits {', '.join(clash)}, which another signal or "
                         "the generic limits have")
    signal.config.signal = signal.name   # what its options are called in a sentence: signal.option
    _REGISTRY[signal.name] = signal
    return signal


def _limit_flags(signal: Signal) -> set[str]:
    """The command-line flags of a signal's own plan limits (each flag may belong to one signal only)."""
    if signal.plan is None or signal.plan.limits is None:
        return set()
    return {flag_of(f) for f in dataclasses.fields(signal.plan.limits)}


def adapter_starts() -> dict[str, AdapterStart]:
    """The adapter starts signals bring (EVA's, GoRA's), by the signal's name."""
    return {name: s.start for name, s in all_signals().items() if s.start is not None}


ADAPTER_STARTS.source = adapter_starts   # TrainSettings.init accepts these beside peft's own default


def signal_limits() -> list[type]:
    """The limits of every signal's own plan rule (CKA's block rank, GoRA's rank range), in registry order."""
    return [s.plan.limits for s in all_signals().values() if s.plan is not None and s.plan.limits is not None]


# Where signals come from: every folder of analysis/signals; every folder of a package named in this variable
# (comma-separated), so a signal kept outside the repository is one folder there; and every module an installed
# package names under the entry-point group below (`[project.entry-points."analysis.signals"]` in its
# pyproject.toml), which registers its signal when imported.
EXTRA_PACKAGES = "ANALYSIS_SIGNAL_PACKAGES"
ENTRY_POINTS = "analysis.signals"


def _signal_packages() -> list[str]:
    extra = [name.strip() for name in os.environ.get(EXTRA_PACKAGES, "").split(",") if name.strip()]
    return ["analysis.signals", *extra]


@functools.lru_cache(maxsize=4)
def _plugins(path: tuple[str, ...]) -> tuple:
    """The installed packages' signal entry points, looked up once for a search path (a look-up reads every
    installed package's metadata)."""
    return tuple(entry_points(group=ENTRY_POINTS))


def _load_all() -> None:
    """Import every signal folder (a sub-package) and every plugin module; each registers its signal."""
    for name in _signal_packages():
        try:
            package = importlib.import_module(name)
        except ImportError as exc:
            raise UserError(f"The signal package '{name}' named in {EXTRA_PACKAGES} cannot be imported ({exc}).") \
                from None
        for info in pkgutil.iter_modules(package.__path__):
            if info.ispkg:
                importlib.import_module(f"{package.__name__}.{info.name}")
    for point in _plugins(tuple(sys.path)):
        try:
            point.load()
        except ImportError as exc:
            raise UserError(f"The signal plugin '{point.name}' ({point.value}, installed by "
                            f"{point.dist.name if point.dist else 'a package'}) cannot be imported ({exc}).") from None


def all_signals() -> dict[str, Signal]:
    _load_all()  # every module under analysis/signals, even when one was imported directly first
    return dict(sorted(_REGISTRY.items()))  # by name: import order would differ between processes


def get_signal(name: str) -> Signal:
    signals = all_signals()
    if name not in signals:
        raise UserError(f"Unknown signal '{name}'; available: {', '.join(sorted(signals))}.")
    return signals[name]


def make_config(signal: Signal, overrides: dict[str, str] | None = None):
    """Build the signal's config from string overrides (command line `--set name.key=value`); the config converts
    and checks its values itself (SignalOptions), so a bad option is one sentence before any model is loaded."""
    fields = {f.name: f for f in dataclasses.fields(signal.config)}
    for key in overrides or {}:
        if key not in fields:
            options = f"its options are: {', '.join(fields)}" if fields else "it has no options"
            raise UserError(f"Signal '{signal.name}' has no option '{key}'; {options}.")
    try:
        config = signal.config(**(overrides or {}))
    except (TypeError, ValueError) as exc:   # a config's own __post_init__ refusing a raw value
        raise UserError(f"Signal '{signal.name}' cannot use these options ({exc}).") from None
    return config


def config_help(signal: Signal) -> list[tuple[str, object, str]]:
    return [(f.name, f.default, f.metadata.get("help", "")) for f in dataclasses.fields(signal.config)]
