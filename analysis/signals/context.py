"""One analysis setting (model, data, split, device) and what signals get to compute with.

`prepare` does the cheap part (find files, fingerprint, load and split the data) and yields the
context key shared by every signal of the run; the model itself is loaded only when a signal
actually has to be computed, so a run whose results are all cached never touches the weights.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import os
import sys
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd
import torch

from analysis.model import capture
from analysis.signals import parallel
from analysis.errors import UserError
from analysis.contract.run import Run
from analysis.contract.progress import progress, step
from analysis.model.sources import Splits, TextData, load_data, load_model, resolve_model, split_data
from analysis.model.sources.data import data_identity, remember_identity, split_sizes
from analysis.model.sources.models import (ConfigFacts, LoadedModel, ModelSource, config_facts, resolve_dtype,
                                           resolve_task)
from analysis.settings import RunSettings, to_dict
from analysis.store.cache import Store

# Bump when capture or data preparation changes in a way that changes every signal's numbers.
CONTEXT_VERSION = 1
DATA_MEMO = "data-fingerprints.json"   # under the cache root, beside the models' fingerprints.json
CONFIG_MEMO = "model-configs.json"     # what identifying a run reads from each model's config (config_facts)

# The splits an analysis may measure on (test is kept for the retrain's report).
MEASURED_SPLITS = ("validation", "train")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"Device '{name}' was requested but this machine has no CUDA GPU; use --device cpu or auto.")
        device = torch.device(name)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"Device '{name}' does not exist; this machine has {torch.cuda.device_count()} GPU(s).")
        return device
    if name == "cpu":
        return torch.device("cpu")
    raise UserError(f"Unknown device '{name}'; use auto, cpu, cuda or cuda:N.")


def model_max_length(source: ModelSource, config: ConfigFacts) -> int | None:
    """The most tokens per example the model takes: its position embeddings, or less where its tokenizer says
    so (RoBERTa has 514 positions for 512 tokens); None when neither is stated."""
    limits = list(config.positions)
    tokenizer_config = source.path / "tokenizer_config.json"
    if tokenizer_config.is_file():
        try:
            stated = json.loads(tokenizer_config.read_text()).get("model_max_length")
        except (OSError, ValueError, AttributeError):
            stated = None
        if isinstance(stated, (int, float)) and 1 < stated < 10**7:
            limits.append(int(stated))
    return min(limits) if limits else None


def report(message: str) -> None:
    """A warning in the run's log (stderr, which a dashboard job's log.txt holds); once, by the main process."""
    if parallel.is_main():
        print(f"warning: {message}", file=sys.stderr)


def _adjusted(settings: RunSettings, source: ModelSource, config: ConfigFacts, validation_rows: int
              ) -> tuple[RunSettings, list[str]]:
    """The settings a run really uses, and a sentence for each change: --max-length within what the model
    takes, --val-size within the validation split. prepare and identify both key the run by these."""
    warnings = []
    limit = model_max_length(source, config)
    if limit is not None and settings.max_length > limit:
        warnings.append(f"--max-length {settings.max_length} is beyond what {source.display_name} takes; "
                        f"using {limit} tokens per example.")
        settings = dataclasses.replace(settings, max_length=limit)
    if settings.val_size > validation_rows:
        warnings.append(f"--val-size {settings.val_size} is more than the {validation_rows} validation examples "
                        f"there are; using {validation_rows}.")
        settings = dataclasses.replace(settings, val_size=validation_rows)
    return settings, warnings


def _context_key(settings: RunSettings, model_fingerprint: str, task: str, dtype: torch.dtype,
                 data_fingerprint: str, labels: list[str] | None) -> str:
    return Store.key("run", {
        "version": CONTEXT_VERSION, "model": model_fingerprint, "task": task, "labels": labels,
        "data": data_fingerprint, "seed": settings.seed, "fractions": list(settings.fractions),
        "val_size": settings.val_size, "max_length": settings.max_length, "dtype": str(dtype)})


def _task_of(settings: RunSettings, config: ConfigFacts) -> tuple[str, bool]:
    return resolve_task(settings.task, config.is_decoder), config.is_decoder


def _description(settings: RunSettings, source: ModelSource, task: str, labels: list[str] | None) -> dict:
    """What every entry of the run records about it (contract/run.py's DESCRIPTION)."""
    return {"model": settings.model, "model_name": source.display_name, "data": settings.data, "task": task,
            "labels": labels, "settings": to_dict(settings)}


def identify(settings: RunSettings, store: Store, read_data: bool = True) -> Run | None:
    """The run and its key from fingerprints remembered by file path, size and modification time: no data is read
    and no weights are loaded while the files are unchanged (its entries are read from the store when asked for).
    read_data=False: None where the data would have to be read (a hub dataset, a new or changed file), for a caller
    that reads it next anyway."""
    dtype = resolve_dtype(settings.dtype, resolve_device(settings.device))
    source = resolve_model(settings.model, store.root)
    config = config_facts(source.path, store.root / CONFIG_MEMO)
    task, _ = _task_of(settings, config)
    label_column = settings.label_column if task == "classification" else None
    data = data_identity(settings.data, settings.text_column, label_column, settings.hub_split,
                         store.root / DATA_MEMO, settings.allow_many_classes, load=read_data)
    if data is None:
        return None
    settings, _ = _adjusted(settings, source, config, split_sizes(data.rows, tuple(settings.fractions))[1])
    key = _context_key(settings, source.fingerprint, task, dtype, data.fingerprint, data.labels)
    return Run(key, _description(settings, source, task, data.labels), store=store)


@dataclass
class Prepared:
    """A run with its data read and split, and the device and dtype it computes with."""
    run: Run
    source: ModelSource
    is_decoder: bool
    data: TextData
    splits: Splits
    device: torch.device
    dtype: torch.dtype
    description: dict       # run.description, and how the data was split and what was left out
    warnings: list[str] = field(default_factory=list)   # what was adjusted or left out, in sentences

    @property
    def key(self) -> str:
        return self.run.key

    @property
    def settings(self) -> RunSettings:   # as adjusted to the model and the data (prepare)
        return self.run.settings

    @property
    def task(self) -> str:
        return self.run.task

    @property
    def store(self) -> Store:   # where signals cache intermediate work (a warmed-up adapter, say)
        return self.run.store

    @property
    def validation(self) -> pd.DataFrame:
        return self.splits.validation.iloc[: self.settings.val_size]


def prepare(settings: RunSettings, store: Store, warn=report) -> Prepared:
    """Resolve and check everything short of loading the weights, with the key `identify` computes. What had to
    be adjusted (a --max-length beyond the model's, a --val-size beyond the validation split) or left out (rows
    without text or label) is said through `warn` (default: the run's log), kept in `Prepared.warnings` and in
    the description every cache entry of the run carries."""
    device = resolve_device(settings.device)
    if settings.device_map != "none" and int(os.environ.get("LOCAL_WORLD_SIZE", "1")) > 1:
        # each process would place the model on every GPU of the host
        raise UserError("--device-map auto gives one process every GPU of its host; launch one process per host "
                        "(--nproc_per_node 1) to combine it with data parallelism.")
    if settings.device_map != "none" and device.type != "cuda":
        raise UserError("--device-map auto splits a model across GPUs, and this run is on the CPU; leave it out "
                        "there (--device-map none).")
    device = parallel.local_device(device)   # under a launcher: this process's own GPU
    dtype = resolve_dtype(settings.dtype, device)
    source = resolve_model(settings.model, store.root)
    config = config_facts(source.path, store.root / CONFIG_MEMO)
    task, decoder = _task_of(settings, config)
    label_column = settings.label_column if task == "classification" else None
    data = load_data(settings.data, settings.text_column, label_column, settings.hub_split,
                     settings.allow_many_classes)
    remember_identity(data, settings.text_column, label_column, settings.hub_split, store.root / DATA_MEMO)
    splits = split_data(data, settings.seed, tuple(settings.fractions))
    settings, adjusted = _adjusted(settings, source, config, len(splits.validation))
    warnings = [*([data.dropped_sentence()] if data.dropped_sentence() else []), *adjusted]
    for message in warnings:
        if warn is not None:
            warn(message)
    key = _context_key(settings, source.fingerprint, task, dtype, data.fingerprint, data.label_names)
    run = Run(key, _description(settings, source, task, data.label_names), store=store)
    description = {**run.description, "is_decoder": decoder, "device": device.type,
                   "split_sizes": {n: len(splits[n]) for n in ("train", "validation", "test")},
                   "dropped_rows": data.dropped, "setup_warnings": warnings}
    return Prepared(run, source, decoder, data, splits, device, dtype, description, warnings)


class AnalysisContext:
    """What a signal computes with: the loaded model on its device and the split data."""

    def __init__(self, prepared: Prepared):
        self.prepared = prepared
        self.settings = prepared.settings
        self.device = prepared.device
        self._planned_poolings: set[tuple[str, str]] = set()   # (split, pooling)
        self._collected: dict[tuple[str, str], list[torch.Tensor]] = {}
        self.warnings: list[str] = []   # the running signal's; the runner keeps them in its entry's meta

    def warn(self, message: str) -> None:
        """A warning from a signal: in the run's log and in the signal's cache entry."""
        report(message)
        self.warnings.append(message)

    @cached_property
    def loaded(self) -> LoadedModel:
        step("loading the model")
        num_labels = len(self.prepared.data.label_names) if self.prepared.data.label_names else None
        sharded = self.settings.device_map != "none"
        loaded = load_model(self.prepared.source, self.prepared.task, num_labels, self.settings.seed,
                            self.prepared.dtype, device_map=self.settings.device_map if sharded else None)
        if not sharded:
            loaded.model.to(self.device)
        return loaded

    @property
    def model(self) -> torch.nn.Module:
        return self.loaded.model

    @cached_property
    def modules(self) -> list[capture.AdaptableModule]:
        return capture.adaptable_modules(self.model)

    def frame(self, split: str = "validation") -> pd.DataFrame:
        return self.prepared.validation if split == "validation" else self.prepared.splits[split]

    def measured(self, split: str = "validation") -> pd.DataFrame:
        """The examples an analysis measures on: the first val_size of `split` (validation or train;
        each signal's paper says which, e.g. CKA's code measures on train)."""
        if split not in MEASURED_SPLITS:
            raise UserError(f"An analysis measures on the validation or train split, not '{split}' "
                            "(test is kept for the retrain's report).")
        return self.frame(split).iloc[: self.settings.val_size]

    def batches(self, split: str = "validation", batch_size: int | None = None, desc: str | None = None,
                frame: pd.DataFrame | None = None, show_progress: bool = True, shard: bool = False,
                fixed_length: bool = False):
        """Tokenized batches with labels (class ids, or next-token targets for causal LM); of `frame`
        when given, else of the whole split. `show_progress=False` for batches consumed inside another
        loop's progress bar (a warm-up's steps). `shard`: only this process's batches under a data-parallel
        launch (`parallel.shard` of the one-process batching, so every example is in the same batch as
        in a one-process run); the caller reduces or gathers what it computes from them. fixed_length: every
        batch padded to --max-length (capture.tokenize_batches)."""
        frame = self.frame(split) if frame is None else frame
        size = batch_size or self.settings.batch_size
        if shard and parallel.count() > 1:
            batches = -(-len(frame) // size)
            parallel.require_shares(batches, f"batch(es) of up to {size} {split} examples")
            frame = frame.iloc[np.concatenate([np.arange(b * size, min((b + 1) * size, len(frame)))
                                               for b in parallel.shard(batches)])]
        labels = frame["label"].tolist() if self.prepared.task == "classification" else None
        raw = capture.tokenize_batches(self.loaded.tokenizer, frame["text"].tolist(), size,
                                       self.settings.max_length, self.device, labels, fixed_length)
        if self.prepared.task == "causal-lm":
            raw = (with_lm_labels(batch) for batch in raw)
        if not show_progress:
            return raw
        return progress(raw, total=-(-len(frame) // size), desc=desc or split)

    def training_batches(self, batch_size: int, fixed_length: bool = False):
        """Endless batches of the train split for a training loop: consecutive slices of `batch_size`,
        cycled. Under a data-parallel launch this process's slice of each step's batch_size x P examples,
        as retrain takes them, over whole steps only (every process trains on as many examples).
        fixed_length: each padded to --max-length (for a CUDA graph's static shapes)."""
        frame = self.frame("train")
        if parallel.count() > 1:
            step = batch_size * parallel.count()
            frame = frame.iloc[: len(frame) // step * step]
        return itertools.cycle(self.batches("train", batch_size, frame=frame, show_progress=False, shard=True,
                                            fixed_length=fixed_length))

    def pooled_states(self, pooling: str = "auto", desc: str = "capture", tokens_per_example: int = 8,
                      split: str = "validation"):
        """Per batch of the measured examples of `split`, the L+1 pooled hidden states (embedding
        output, then each block; the last after the final norm where there is one). Under a data-parallel
        launch, this process's batches only: the caller reduces what it sums."""
        pooling = capture.resolve_pooling(pooling, self.prepared.is_decoder)
        batches = self.batches(split, desc=desc, frame=self.measured(split), shard=True)
        for by_pooling in capture.pooled_hidden_states(self.model, batches, [pooling], tokens_per_example,
                                                       parallel.process_seed(self.settings.seed)):
            yield by_pooling[pooling]

    def plan_pooling(self, pooling: str, split: str = "validation") -> None:
        """Announce a pooling a later signal will collect, so one capture pass serves every signal."""
        self._planned_poolings.add((split, capture.resolve_pooling(pooling, self.prepared.is_decoder)))

    def plan_collections(self, configs) -> None:
        """Plan the pooling of every signal config that will collect states (says `collects_states`);
        signals that only stream batches through `pooled_states` need no shared pass."""
        for config in configs:
            if getattr(config, "collects_states", False):
                self.plan_pooling(config.pooling, getattr(config, "split", "validation"))

    def collected_states(self, pooling: str = "auto", split: str = "validation") -> list[torch.Tensor] | None:
        """All measured examples' pooled states on `split`: one (N, D) tensor per state, on the device.

        The first call runs one capture pass for this pooling and every planned one of the same
        split; later calls for any of them are free. Memory: N x D x (L+1) per pooling (285 MB in
        bf16 for 4096 examples of a 16-layer, 2048-wide model). Under a data-parallel launch each
        process captures its share of the batches and the main process gets everyone's states in
        the one-process order; the other processes get None (their signal ends there).
        """
        pooling = capture.resolve_pooling(pooling, self.prepared.is_decoder)
        if (split, pooling) not in self._collected:
            planned = {p for s, p in self._planned_poolings if s == split}
            wanted = sorted(({pooling} | planned) - {p for s, p in self._collected if s == split})
            chunks: dict[str, list[list[torch.Tensor]]] = {p: [] for p in wanted}
            frame = self.measured(split)
            batches = self.batches(split, desc=f"capture ({split})", frame=frame, shard=True)
            for by_pooling in capture.pooled_hidden_states(self.model, batches, wanted,
                                                           seed=parallel.process_seed(self.settings.seed)):
                for p, states in by_pooling.items():
                    chunks[p].append(states)
            mine = parallel.shard(-(-len(frame) // self.settings.batch_size))
            for p, per_batch in chunks.items():
                self._collected[(split, p)] = parallel.gather_batches(per_batch, mine)
        return self._collected[(split, pooling)]


def with_lm_labels(batch: dict) -> dict:
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    return {**batch, "labels": labels}
