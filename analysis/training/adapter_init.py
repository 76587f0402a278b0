"""A retrain's adapter start at the plan's ranks: peft's own (`default`: A Kaiming-uniform, B = 0) or one a signal
brings by its name (EVA's, GoRA's: analysis/signals/<name>/, `Signal.start`).

A signal's start runs on the first `val_size` examples of the train split (as one batch or in the run's batch size,
as it asks): an initialisation is part of training, so it never sees the validation or test split.
"""
from __future__ import annotations

import torch

from analysis.model.capture import tokenize_batches
from analysis.signals.context import with_lm_labels
from analysis.signals.registry import adapter_starts

DEFAULT = "default"   # peft's own start


def _lora_layers(peft_model) -> dict[str, torch.nn.Module]:
    from peft.tuners.lora import LoraLayer
    return {name: module for name, module in peft_model.named_modules() if isinstance(module, LoraLayer)}


def _train_batches(prepared, tokenizer, device, one: bool = False) -> list[dict]:
    """The first val_size training examples in the run's batch size (`one`: as one batch)."""
    settings = prepared.settings
    frame = prepared.splits.train.iloc[: settings.val_size]
    labels = frame["label"].tolist() if prepared.task == "classification" else None
    batches = list(tokenize_batches(tokenizer, frame["text"].tolist(), len(frame) if one else settings.batch_size,
                                    settings.max_length, device, labels))
    return [with_lm_labels(b) for b in batches] if prepared.task != "classification" else batches


def initialise(peft_model, init: str, prepared, tokenizer, device) -> dict:
    """Set the adapter's starting values for `init`; returns what to record about it."""
    if init == DEFAULT:
        return {}
    return adapter_starts()[init].initialise(peft_model, _lora_layers(peft_model),
                                          lambda one: _train_batches(prepared, tokenizer, device, one))
