"""Every key the store files things under, and the kind of entry a key names.

A key is a content hash of the parts that change a result (`Store.key(kind, parts)`): the run's key (its context:
model, data, split and sizes), a signal's entry, the shared warm-up, a retrain, a comparison, and the checkpoint
folder of retrains trained together. The forms are those keys have always had, so every entry ever written is
found again: a signal's and a run's key is the whole sha256, the others a prefix naming the kind and 24 digits.
An entry's kind is in its meta (`kind`); entries from before that are told apart as `kind_of` says.
"""
from __future__ import annotations

import dataclasses

from analysis.settings import keyed_options
from analysis.store.hashing import hash_json

# kind -> (prefix, digits of the hash kept; None: all of them)
FORMS = {"run": ("", None), "signal": ("", None), "warmup": ("warmup-", 24), "retrain": ("retrain-", 24),
         "comparison": ("comparison-", 24), "group": ("group-", 24)}
ENTRY_KINDS = ("signal", "warmup", "retrain", "comparison")


def make_key(kind: str, parts) -> str:
    """`parts`: any JSON-able value (a dict of what changes the result; a group's sorted run keys)."""
    prefix, digits = FORMS[kind]
    return prefix + hash_json(parts)[:digits]


def kind_of(key: str, meta: dict) -> str:
    """An entry's kind: as its meta says; for an entry written before the kind was recorded, as its `signal` said
    (warmup, retrain, comparison) or else its key's prefix (none: a signal's)."""
    if meta.get("kind"):
        return meta["kind"]
    if meta.get("signal") in ENTRY_KINDS[1:]:
        return meta["signal"]
    return next((kind for kind in ENTRY_KINDS if FORMS[kind][0] and key.startswith(FORMS[kind][0])), "signal")


def signal_parts(run_key: str, signal, config, processes: int = 1) -> dict:
    """What a signal's entry is keyed by. The number of processes joins it, as in retrain's key, only where the
    numbers depend on it (a config's `depends_on_processes`: a global training batch, per-process random streams)
    and only above one, so a one-process run keeps the keys it always had. A config's `key_fields` may leave out
    options added later where their values reproduce what ran before them, so those entries keep their keys too;
    options that only change speed (`keyed_options`) are never in it."""
    fields = config.key_fields() if hasattr(config, "key_fields") else dataclasses.asdict(config)
    parts = {"context": run_key, "signal": signal.name, "version": signal.version,
             "config": keyed_options(type(config), fields)}
    if processes > 1 and getattr(config, "depends_on_processes", False):
        parts["processes"] = processes
    return parts
