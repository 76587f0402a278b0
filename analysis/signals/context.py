"""One analysis setting (model, data, split, device) and what signals get to compute with.

`prepare` does the cheap part (find files, fingerprint, load and split the data) and yields the
context key shared by every signal of the run; the model itself is loaded only when a signal
actually has to be computed, so a run whose results are all cached never touches the weights.
"""
from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field
from functools import cached_property

import pandas as pd
import torch

from analysis.model import capture
from analysis.errors import UserError, shorten
from analysis.store.hashing import hash_json
from analysis.jobs.progress import progress
from analysis.model.sources import Splits, TextData, load_data, load_model, resolve_model, split_data
from analysis.model.sources.models import (LoadedModel, ModelSource, is_decoder_config, resolve_dtype,
                                           resolve_task)
from analysis.settings import RunSettings, to_dict
from analysis.store.cache import Store

# Bump when capture or data preparation changes in a way that changes every signal's numbers.
CONTEXT_VERSION = 1


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


def _model_config(source: ModelSource):
    from transformers import AutoConfig

    from analysis.model.sources.models import check_architecture
    try:
        config = AutoConfig.from_pretrained(source.path)
    except (OSError, ValueError) as exc:
        raise UserError(f"transformers cannot read the model config in '{source.path}' ({shorten(str(exc))}).") \
            from None
    check_architecture(config)
    return config


def model_max_length(source: ModelSource, config) -> int | None:
    """The most tokens per example the model takes: its position embeddings, or less where its tokenizer says
    so (RoBERTa has 514 positions for 512 tokens); None when neither is stated."""
    limits = [getattr(config, name) for name in ("max_position_embeddings", "n_positions")
              if isinstance(getattr(config, name, None), int) and getattr(config, name) > 0]
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
    """A warning in the run's log (stderr, which a dashboard job's log.txt holds)."""
    print(f"warning: {message}", file=sys.stderr)


@dataclass
class Prepared:
    settings: RunSettings
    source: ModelSource
    task: str
    is_decoder: bool
    data: TextData
    splits: Splits
    device: torch.device
    dtype: torch.dtype
    key: str
    description: dict
    store: Store            # where signals cache intermediate work (a warmed-up adapter, say)
    warnings: list[str] = field(default_factory=list)   # what was adjusted or left out, in sentences

    @property
    def validation(self) -> pd.DataFrame:
        return self.splits.validation.iloc[: self.settings.val_size]


def prepare(settings: RunSettings, store: Store, warn=report) -> Prepared:
    """Resolve and check everything short of loading the weights. What had to be adjusted (a --max-length beyond
    the model's, a --val-size beyond the validation split) or left out (rows without text or label) is said
    through `warn` (default: the run's log), kept in `Prepared.warnings` and in the description every cache entry
    of the run carries."""
    device = resolve_device(settings.device)
    dtype = resolve_dtype(settings.dtype, device)
    source = resolve_model(settings.model, store.root)
    config = _model_config(source)
    decoder = is_decoder_config(config)
    task = resolve_task(settings.task, decoder)
    label_column = settings.label_column if task == "classification" else None
    data = load_data(settings.data, settings.text_column, label_column, settings.hub_split,
                     settings.allow_many_classes)
    splits = split_data(data, settings.seed, tuple(settings.fractions))
    warnings = []
    if data.dropped_sentence():
        warnings.append(data.dropped_sentence())
    limit = model_max_length(source, config)
    if limit is not None and settings.max_length > limit:
        warnings.append(f"--max-length {settings.max_length} is beyond what {source.display_name} takes; "
                        f"using {limit} tokens per example.")
        settings = dataclasses.replace(settings, max_length=limit)
    available = len(splits.validation)
    if settings.val_size > available:
        warnings.append(f"--val-size {settings.val_size} is more than the {available} validation examples there "
                        f"are; using {available}.")
        settings = dataclasses.replace(settings, val_size=available)
    for message in warnings:
        if warn is not None:
            warn(message)
    identity = {
        "version": CONTEXT_VERSION, "model": source.fingerprint, "task": task,
        "labels": data.label_names, "data": data.fingerprint, "seed": settings.seed,
        "fractions": list(settings.fractions), "val_size": settings.val_size,
        "max_length": settings.max_length, "dtype": str(dtype),
    }
    description = {"model": settings.model, "model_name": source.display_name, "data": settings.data,
                   "task": task, "is_decoder": decoder, "settings": to_dict(settings),
                   "split_sizes": {n: len(splits[n]) for n in ("train", "validation", "test")},
                   "dropped_rows": data.dropped, "setup_warnings": warnings}
    return Prepared(settings, source, task, decoder, data, splits, device, dtype, hash_json(identity), description,
                    store, warnings)


class AnalysisContext:
    """What a signal computes with: the loaded model on its device and the split data."""

    def __init__(self, prepared: Prepared):
        self.prepared = prepared
        self.settings = prepared.settings
        self.device = prepared.device
        self._planned_poolings: set[str] = set()
        self.warnings: list[str] = []   # the running signal's; the runner keeps them in its entry's meta
        self._collected: dict[str, list[torch.Tensor]] = {}

    def warn(self, message: str) -> None:
        """A warning from a signal: in the run's log and in the signal's cache entry."""
        report(message)
        self.warnings.append(message)

    @cached_property
    def loaded(self) -> LoadedModel:
        num_labels = len(self.prepared.data.label_names) if self.prepared.data.label_names else None
        loaded = load_model(self.prepared.source, self.prepared.task, num_labels, self.settings.seed,
                            self.prepared.dtype)
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

    def num_batches(self, split: str = "validation", batch_size: int | None = None) -> int:
        size = batch_size or self.settings.batch_size
        return -(-len(self.frame(split)) // size)

    def batches(self, split: str = "validation", batch_size: int | None = None, desc: str | None = None,
                show_progress: bool = True):
        """Tokenized batches with labels (class ids, or next-token targets for causal LM); `show_progress=False`
        for batches consumed inside another loop's progress bar (a warm-up's steps)."""
        frame = self.frame(split)
        size = batch_size or self.settings.batch_size
        labels = frame["label"].tolist() if self.prepared.task == "classification" else None
        raw = capture.tokenize_batches(self.loaded.tokenizer, frame["text"].tolist(), size,
                                       self.settings.max_length, self.device, labels)
        if self.prepared.task == "causal-lm":
            raw = (with_lm_labels(batch) for batch in raw)
        if not show_progress:
            return raw
        return progress(raw, total=self.num_batches(split, size), desc=desc or split)

    def pooled_states(self, pooling: str = "auto", desc: str = "capture", tokens_per_example: int = 8):
        """Per validation batch, the L+1 pooled hidden states (embedding output, then each block)."""
        pooling = capture.resolve_pooling(pooling, self.prepared.is_decoder)
        for by_pooling in capture.pooled_hidden_states(self.model, self.batches(desc=desc), [pooling],
                                                       tokens_per_example, self.settings.seed):
            yield by_pooling[pooling]

    def plan_pooling(self, pooling: str) -> None:
        """Announce a pooling a later signal will collect, so one capture pass serves every signal."""
        self._planned_poolings.add(capture.resolve_pooling(pooling, self.prepared.is_decoder))

    def plan_collections(self, configs) -> None:
        """Plan the pooling of every signal config that will collect states (says `collects_states`);
        signals that only stream batches through `pooled_states` need no shared pass."""
        for config in configs:
            if getattr(config, "collects_states", False):
                self.plan_pooling(config.pooling)

    def collected_states(self, pooling: str = "auto") -> list[torch.Tensor]:
        """All validation examples' pooled states: one (N, D) tensor per state, on the device.

        The first call runs one capture pass for this pooling and every planned one; later calls
        for any of them are free. Memory: N x D x (L+1) per pooling (285 MB in bf16 for 4096
        examples of a 16-layer, 2048-wide model).
        """
        pooling = capture.resolve_pooling(pooling, self.prepared.is_decoder)
        if pooling not in self._collected:
            wanted = sorted(({pooling} | self._planned_poolings) - set(self._collected))
            chunks: dict[str, list[list[torch.Tensor]]] = {p: [] for p in wanted}
            for by_pooling in capture.pooled_hidden_states(self.model, self.batches(desc="capture"), wanted,
                                                           seed=self.settings.seed):
                for p, states in by_pooling.items():
                    chunks[p].append(states)
            for p, per_batch in chunks.items():
                self._collected[p] = [torch.cat(layer) for layer in zip(*per_batch)]
        return self._collected[pooling]


def with_lm_labels(batch: dict) -> dict:
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    return {**batch, "labels": labels}
