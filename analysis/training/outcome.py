"""What a finished retrain reports: its metrics from summed losses and predictions, and whether it trained at all.
Both training paths (one run alone, many adapters together) call these, so their entries read alike."""
from __future__ import annotations

import math

import numpy as np
import torch


def classification_metrics(predicted: list[int], truth: list[int], loss_sum: float, count: int) -> dict:
    from sklearn.metrics import accuracy_score, f1_score
    return {"accuracy": accuracy_score(truth, predicted), "f1": f1_score(truth, predicted, average="macro"),
            "test_loss": loss_sum / max(1, count), "test_examples": len(truth),
            "predicted_classes": len(set(predicted))}


def language_model_metrics(loss_sum: float, tokens: int) -> dict:
    loss = loss_sum / max(1, tokens)
    return {"test_loss": loss, "perplexity": math.exp(min(loss, 50.0)), "test_tokens": tokens}


def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy of every position (0 where the target is padding, -100), in float32:
    transformers' causal-LM loss before its mean."""
    targets = labels[:, 1:]
    losses = torch.nn.functional.cross_entropy(logits[:, :-1].float().flatten(0, 1), targets.flatten(),
                                               ignore_index=-100, reduction="none")
    return losses.view(targets.shape)


def did_not_train(metrics: dict, losses: list[float], task: str) -> str | None:
    """Why a run did not train (one predicted class for every example, a NaN loss, or a training loss that
    ends above where it started: the mean of its last tenth of steps, at most 10, against its first), or None."""
    values = np.asarray(losses, dtype=float)
    if not np.isfinite(metrics.get("test_loss", 0.0)) or (len(values) and not np.isfinite(values).all()):
        return "NaN loss"
    if task == "classification" and metrics.get("predicted_classes") == 1 and metrics.get("test_examples", 0) > 1:
        return "one class predicted for every example"
    if len(values) >= 2:
        k = max(1, min(10, len(values) // 10))
        if values[-k:].mean() > values[:k].mean():
            return "loss ended above its start"
    return None
