"""What each step of a retrain takes, the same whether the run trains alone or with other adapters: its
examples (a function of the seed and the step only, so a resumed or grouped run sees the same batches), its
learning rate, and the tokenised split it gathers them from."""
from __future__ import annotations

import numpy as np
import torch

from analysis.settings import TrainSettings


def batch_indices(step: int, size: int, n: int, seed: int) -> np.ndarray:
    """Examples of global step `step`: consecutive slices of per-epoch permutations seeded by (seed, epoch)."""
    return DataOrder(n).rows(step, size, seed)


class DataOrder:
    """batch_indices, each (seed, epoch) permutation drawn once: a group asks for every run's batch at every
    step, and runs share seeds. Epochs before the previous one are forgotten."""

    def __init__(self, n: int):
        self.n = n
        self._permutations: dict[tuple[int, int], np.ndarray] = {}

    def _permutation(self, seed: int, epoch: int) -> np.ndarray:
        key = (seed, epoch)
        if key not in self._permutations:
            for old in [k for k in self._permutations if k[0] == seed and k[1] < epoch - 1]:
                del self._permutations[old]
            self._permutations[key] = np.random.default_rng([seed, epoch]).permutation(self.n)
        return self._permutations[key]

    def rows(self, step: int, size: int, seed: int) -> np.ndarray:
        positions = np.arange(step * size, (step + 1) * size)
        epochs = positions // self.n
        return np.concatenate([self._permutation(seed, int(e))[positions[epochs == e] % self.n]
                               for e in np.unique(epochs)])


def lr_factor(config: TrainSettings):
    """The schedule as a multiple of the peak rate at each step: linear warm-up, then linear decay to zero."""
    warm = max(1, int(config.warmup_fraction * config.steps))
    return lambda step: min((step + 1) / warm, max(0.0, (config.steps - step) / max(1, config.steps - warm)))


class Pretokenised:
    """A split tokenised once: ids (and masks) padded to its longest example on the device, lengths on the host.
    `batch(rows)` gathers rows and trims the padding to the longest of them, without a host synchronisation."""

    def __init__(self, tokenizer, texts: list[str], max_length: int, device, labels=None):
        encoded = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        self.tensors = {k: v.to(device) for k, v in encoded.items()
                        if k in ("input_ids", "attention_mask", "token_type_ids")}
        self.lengths = encoded["attention_mask"].sum(1).numpy()
        if labels is not None:
            self.tensors["labels"] = torch.as_tensor(np.array(labels), device=device)
        self.device = device

    def batch(self, rows: np.ndarray) -> dict[str, torch.Tensor]:
        length = int(self.lengths[rows].max())
        index = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.int64)).to(self.device, non_blocking=True)
        return {k: v.index_select(0, index) if k == "labels" else v.index_select(0, index)[:, :length]
                for k, v in self.tensors.items()}
