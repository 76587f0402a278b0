"""A run: one analysis setting (model, data, split and the sizes that change numbers), the one notion of a run from
a page to planning.

Its key is the context key every entry of the run is filed under (the store builds it: Store.key("run", ...)); its
description is what each of those entries records about it (model, its display name, data, task, labels and the
settings). A run found in the store carries its entries by signal; one made from settings (signals/context.py's
`identify` and `prepare`) reads them from its store when first asked. Planning needs nothing else: the model's
layout comes from its files and config, and no data is read.
"""
from __future__ import annotations

import time
from functools import cached_property

from analysis.settings import RunSettings, from_dict

# What a run's description holds: the parts of an entry's meta that are the same for every entry of the run.
DESCRIPTION = ("model", "model_name", "data", "task", "labels", "settings")


def when(timestamp: float) -> str:
    """A creation time as the pages and the command line show it."""
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(timestamp))


class Run:
    def __init__(self, key: str, description: dict, entries: dict[str, list] | None = None, store=None):
        self.key = key
        self.description = description
        self.store = store            # the Store its entries are in (None: a run whose entries were handed over)
        self._entries = entries

    @property
    def entries(self) -> dict[str, list]:
        """Each signal's entries in the run, newest first (the store's Entry objects), as first read: a run made again
        sees entries written since."""
        if self._entries is None:
            self._entries = self.store.signal_entries(self.key) if self.store is not None else {}
        return self._entries

    @cached_property
    def settings(self) -> RunSettings:
        return from_dict(RunSettings, self.description.get("settings"))

    @property
    def task(self) -> str:
        return self.description.get("task", "classification")

    @property
    def labels(self) -> list[str] | None:
        """The class names (classification), or None for a language model and for entries written before labels
        were recorded."""
        return self.description.get("labels")

    @property
    def newest(self) -> float:
        return max((e.meta.get("created", 0) for variants in self.entries.values() for e in variants), default=0)

    @property
    def label(self) -> str:
        d = self.description
        settings = d.get("settings") or {}
        return (f"{d.get('model_name', d.get('model'))} · {d.get('data')} · "
                f"{settings.get('val_size', '?')} validation examples · {when(self.newest)}")
