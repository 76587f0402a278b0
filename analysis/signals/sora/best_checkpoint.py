"""Which state of SoRA's training stage the learned ranks are read from: the best checkpoint on validation.

The official scripts (TsinghuaC3I/SoRA, `scripts/run_glue_sora_*.sh` with `run_glue.py`) train with
`--evaluation_strategy steps --eval_steps 1000 --load_best_model_at_end`, the task's metric as
`metric_for_best_model` (accuracy for SST-2, RTE, QNLI, ...) and `--greater_is_better true`. Their
transformers (4.14) evaluates at every multiple of eval_steps only (not at the last step unless it is
one), replaces the best checkpoint only on a strictly better metric, and after training loads the
best checkpoint's weights (gates, A, B, the head) back into the model, keeping the optimizers'
state; with no evaluation at all it keeps the last weights. The sparsifying rounds then continue
from those weights (their trainers have load_best_model_at_end off).

`BestCheckpoint` does the same within one process: every `eval_every` steps of the training stage
the metric on the measured validation examples (accuracy for classification, higher is better; the
mean loss per predicted token for causal LM, lower is better), a copy of the trained tensors where it
is strictly better, and `restore` puts the best copy back. Evaluation runs in eval mode without
gradients and draws no random numbers, so the training itself is the same with or without it.
"""
from __future__ import annotations

import torch

from analysis.signals import parallel


class BestCheckpoint:
    def __init__(self, context, tensors: list[torch.nn.Parameter], every: int):
        self.context, self.model, self.task, self.every = context, context.model, context.prepared.task, every
        self.tensors = tensors
        self.batches: list[dict] | None = None          # tokenized at the first evaluation
        self.metric = "accuracy" if self.task == "classification" else "loss"
        self.history: list[tuple[int, float]] = []      # (step, metric) of every evaluation
        self.best: tuple[int, float, list[torch.Tensor]] | None = None

    def _better(self, value: float) -> bool:
        if self.best is None:
            return True
        return value > self.best[1] if self.metric == "accuracy" else value < self.best[1]

    @torch.no_grad()
    def measure(self) -> float:
        """Accuracy, or loss per predicted token, over the measured validation examples (all processes)."""
        if self.batches is None:
            self.batches = list(self.context.batches("validation", frame=self.context.measured("validation"),
                                                     shard=True, show_progress=False))
        was_training = self.model.training
        self.model.eval()
        total, count = torch.zeros((), dtype=torch.float64), 0
        for batch in self.batches:
            if self.task == "classification":
                logits = self.model(**batch).logits
                total += (logits.argmax(-1) == batch["labels"]).sum().cpu()
                count += len(batch["labels"])
            else:   # the model's loss is the mean over the batch's predicted tokens
                tokens = int((batch["labels"][:, 1:] != -100).sum())
                if tokens:
                    total += self.model(**batch).loss.double().cpu() * tokens
                    count += tokens
        self.model.train(was_training)
        return parallel.total(float(total)) / max(1, parallel.total(count))

    def after(self, step: int) -> None:
        """After training step `step`: evaluate at every multiple of `every`, and keep the state if it is best."""
        if step % self.every:
            return
        value = self.measure()
        self.history.append((step, value))
        if self._better(value):
            self.best = (step, value, [t.detach().clone() for t in self.tensors])

    @torch.no_grad()
    def restore(self) -> int | None:
        """Put the best checkpoint's tensors back; its step (None: no evaluation ran, the last state stays)."""
        if self.best is None:
            return None
        for tensor, kept in zip(self.tensors, self.best[2]):
            tensor.copy_(kept)
        return self.best[0]
