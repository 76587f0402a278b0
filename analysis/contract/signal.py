"""What a signal is: the record every signal folder registers (analysis/signals/registry.py), and the parts of
it a signal may bring beyond computing its table: its own plan family, a start for a retrain's adapter and a page
of the dashboard.

A signal declares its name, a config dataclass (defaults and help text in field metadata), a function
(context, config) -> Result whose main table is tidy (contract/result.py), optionally its own plan family, its
own figures and the name of options that depart from its paper's code.

Where a signal implements a paper, its defaults are that paper's code; an option that departs from it names
itself (`variant`), and every plan, table row and page that shows an entry computed with it carries that name,
so no row is called after a paper whose rule it did not follow.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class PlanFamily:
    """How a signal's tables become a plan: `read(name, tables, layout)` aligns them with a model's modules
    (allocation.Scores; `tables` maps a table's name to it, read when asked for), `allocate(scores, room, limits)`
    spends the budget (allocation.Room) by the signal's own rule and returns (ranks, warnings); `limits` is the
    frozen dataclass of that rule's own limits (flags of plan, compare and export; the Budget page's Limits),
    whose instance `allocate` gets, None when the rule has none."""
    read: Callable
    allocate: Callable
    limits: type | None = None


@dataclass(frozen=True)
class AdapterStart:
    """A data-driven start for a retrain's adapter at a plan's ranks, chosen by the signal's name (`--init NAME`).
    `initialise(peft_model, layers, batches)` sets the adapter's values in place and returns what to record of it;
    `layers` maps each LoRA layer's module path (peft's names) to it, and `batches(one)` gives the first val_size
    examples of the train split tokenised with labels, as one batch or in the run's batch size: a start is part
    of training, so it never sees the validation or test split."""
    help: str
    initialise: Callable


@dataclass(frozen=True)
class Page:
    """A signal's page of the dashboard, listed under Signals. The dashboard writes its title and caption, lets the
    user choose a run holding the signal or one of those the page `shows` besides (or says that there are no
    `results` yet and what to run), then calls `draw(ui, kit, run)`: `ui` is Streamlit itself, handed over so that
    the engine never imports it, and `kit` the dashboard's widgets for a signal's entries (pick(run, name, label)
    -> the entry the user chose, show(exhibit), chart(figure, data, name), exhibits(entry) -> any signal's
    figures)."""
    title: str
    icon: str                       # a Material icon, ":material/grid_on:"
    caption: str
    results: str                    # what its results are called in a sentence: "CKA", "Shapley or AdaLoRA"
    draw: Callable
    shows: tuple[str, ...] = ()


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
    plan: PlanFamily | None = None   # its own plan family; None: the shared rules (best ranks or proportional)
    start: AdapterStart | None = None   # a start for a retrain's adapter (EVA's, GoRA's), offered as --init NAME
    page: Page | None = None        # its own page of the dashboard (its figures are on the All signals page anyway)
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
