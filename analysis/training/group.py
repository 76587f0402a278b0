"""Train K runs (plans, seeds, learning rates, starts) together on one frozen copy of the model, in one process.

Each run is what `retrain` would train alone, and ends as the same cache entry under the same key: its
adapter and head start from the values peft and the model loader give that run (training/adapter_stack.py
explains the sharing), its batches are its own (seed, step) slices of the train split, and its learning rate,
schedule, weight decay and clipping are its own (training/grouped_adamw.py). Its loss is the mean over its
own rows, so the sum the backward pass takes gives each adapter exactly its own gradient.

A group needs runs of one setting (data, model, split) and one step count, batch size and evaluation;
training/many_runs.py forms the groups. Every `checkpoint_every` steps the whole group's state goes to
<cache>/retrain/group-<members>/checkpoint.pt; started again with the same runs, it resumes there.
"""
from __future__ import annotations

import os
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from analysis.contract import job_folder
from analysis.contract.progress import progress
from analysis.model.capture import tokenize_batches
from analysis.model.layout import layout_of
from analysis.model.sources import load_model
from analysis.planning.plan_json import check_peft_model, lora_config, validate
from analysis.settings import TrainSettings
from analysis.signals import parallel
from analysis.signals.context import with_lm_labels
from analysis.store.cache import Entry, Store
from analysis.training.adapter_init import initialise
from analysis.training.adapter_stack import AdapterStack, StartingWeights, float32_head
from analysis.training.grouped_adamw import GroupedAdamW
from analysis.training.outcome import classification_metrics, language_model_metrics, token_losses
from analysis.training.peft_form import adapter_files, default_start
from analysis.training.retrain import by_length, evaluation_frame, head_names, store_run
from analysis.training.steps import DataOrder, Pretokenised, lr_factor

CHECKPOINT = "checkpoint.pt"


@dataclass(frozen=True)
class TrainingRun:
    """One run to train: its plan, its settings, its cache key and the label its live curve is drawn under."""
    plan: dict
    config: TrainSettings
    key: str
    label: str


def shared_settings(config: TrainSettings) -> tuple:
    """What the runs of one group must share; the rest (lr, seed, init, weight decay, warm-up, clipping) is
    each run's own."""
    return (config.steps, config.batch_size, config.eval_batch_size, config.eval_split, config.test_size,
            config.checkpoint_every)


class FrozenModel:
    """The model loaded once for a group, frozen, on the device, in evaluation mode, its head in float32;
    and the head each seed's run starts from (the loader initialises a classification head from the seed)."""

    def __init__(self, prepared):
        self.prepared = prepared
        labels = prepared.data.label_names
        self.num_labels = len(labels) if labels else None
        loaded = load_model(prepared.source, prepared.task, self.num_labels, 0, prepared.dtype)
        self.tokenizer, self.model = loaded.tokenizer, loaded.model
        self.layout = layout_of(self.model)
        self.head_names = head_names(self.model, prepared.task)
        float32_head(self.model, self.head_names)
        self.model.requires_grad_(False)
        self.model.to(prepared.device)
        self.model.eval()
        self._heads: dict[int, dict[str, torch.Tensor]] = {}
        self._fast_start: bool | None = None   # whether peft_form.default_start matches peft (see start)

    def head(self, seed: int) -> dict[str, torch.Tensor]:
        if seed not in self._heads:
            model = load_model(self.prepared.source, self.prepared.task, self.num_labels, seed,
                               self.prepared.dtype).model
            state = dict(model.named_parameters())
            self._heads[seed] = {name: state[name].detach().float().clone() for name in self.head_names}
        return self._heads[seed]

    def peft(self, plan: dict, seed: int | None = None):
        """The plan's peft model around the shared weights (seed: its initialisation, as the run alone makes
        it); `unpeft` takes it off again."""
        from peft import get_peft_model
        if seed is not None:
            torch.manual_seed(seed)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
            model = get_peft_model(self.model, lora_config(plan))
        check_peft_model(plan, model)
        return model

    def unpeft(self, peft_model) -> None:
        self.model = peft_model.unload()
        self.model.eval()

    def load_head(self, head: dict[str, torch.Tensor]) -> None:
        state = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, value in head.items():
                state[name].copy_(value)

    def start(self, run: TrainingRun) -> StartingWeights:
        """The run's starting adapter and head: peft's initialisation under the run's seed, then its `init`
        (EVA's or GoRA's start, computed with the run's own head in place)."""
        validate(run.plan, self.layout)
        head = self.head(run.config.seed)
        if run.config.init == "default" and self._default_start_agrees(run):
            return StartingWeights(default_start(self.model, run.plan, run.config.seed), head, run.config.seed,
                                {"init": "default"})
        self.load_head(head)
        peft_model = self.peft(run.plan, run.config.seed)
        try:
            recorded = initialise(peft_model, run.config.init, self.prepared, self.tokenizer, self.prepared.device)
            check_peft_model(run.plan, peft_model)
            lora = _lora_values(peft_model)
        finally:
            self.unpeft(peft_model)
        return StartingWeights(lora, head, run.config.seed, {"init": run.config.init, **recorded})

    def _default_start_agrees(self, run: TrainingRun) -> bool:
        """Whether peft_form.default_start gives what peft gives (checked once, on the first run)."""
        if self._fast_start is None:
            peft_model = self.peft(run.plan, run.config.seed)
            try:
                made = _lora_values(peft_model)
            finally:
                self.unpeft(peft_model)
            mine = default_start(self.model, run.plan, run.config.seed)
            self._fast_start = made.keys() == mine.keys() and all(
                torch.equal(made[p][0], mine[p][0].to(made[p][0].device)) and torch.equal(made[p][1], mine[p][1])
                and made[p][2:] == mine[p][2:] for p in made)
            if not self._fast_start:
                print("note: peft starts adapters otherwise than peft_form.default_start expects; building each "
                      "run's start with peft (slower).", flush=True)
        return self._fast_start

    def saved_adapter(self, plan: dict, lora: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, bytes]:
        """The trained adapter's files, as PeftModel.from_pretrained loads them."""
        return adapter_files(plan, lora, getattr(self.model, "name_or_path", None))


def _lora_values(peft_model) -> dict[str, tuple]:
    """{path: (A, B, scaling, dropout)} of a peft model's LoRA layers, float32 on the CPU."""
    from peft.tuners.lora import LoraLayer
    values = {}
    for name, module in peft_model.base_model.model.named_modules():
        if isinstance(module, LoraLayer):
            values[name] = (module.lora_A["default"].weight.detach().float().cpu().clone(),
                            module.lora_B["default"].weight.detach().float().cpu().clone(),
                            float(module.scaling["default"]), float(getattr(module.lora_dropout["default"], "p", 0.0)))
    return values


def per_run_losses(logits: torch.Tensor, batch: dict, k: int, task: str) -> torch.Tensor:
    """(K,) each run's mean loss over its own rows: cross-entropy of its classes, or of its next tokens."""
    if task == "classification":
        losses = torch.nn.functional.cross_entropy(logits.float(), batch["labels"], reduction="none")
        return losses.view(k, -1).mean(1)
    per_token = token_losses(logits, batch["labels"]).view(k, -1)
    counts = (batch["labels"][:, 1:] != -100).view(k, -1).sum(1)
    return per_token.sum(1) / counts


def group_key(runs: list[TrainingRun]) -> str:
    return Store.key("group", sorted(r.key for r in runs))


def passes(lengths: list[int], per_pass: int) -> list[slice | list[int]]:
    """The forward passes of one step: every run in one pass when they fit, else runs of similar longest
    examples together (each pass is padded to its own longest, so sorting by length saves the padding)."""
    if per_pass >= len(lengths):
        return [slice(0, len(lengths))]
    by_length = np.argsort(lengths, kind="stable").tolist()
    return [by_length[first: first + per_pass] for first in range(0, len(lengths), per_pass)]


def train_step(stack: AdapterStack, optimizer: GroupedAdamW, tokens: Pretokenised, order: DataOrder,
               runs: list[TrainingRun], step: int, task: str, schedules: list,
               per_pass: int | None = None) -> torch.Tensor:
    """One step of every run of the group, `per_pass` runs per forward and backward pass (default: all); each
    run's rows are in one pass, so its gradient is its own whatever the passes; (K,) losses, on the device."""
    rows = [order.rows(step, r.config.batch_size, r.config.seed) for r in runs]
    stack.lengths = [int(tokens.lengths[r].max()) for r in rows]
    losses = torch.empty(stack.k, device=stack.device)
    for adapters in passes(stack.lengths, per_pass or stack.k):
        ids = list(range(stack.k))[adapters] if isinstance(adapters, slice) else adapters
        batch = tokens.batch(np.concatenate([rows[k] for k in ids]))
        if task != "classification":
            batch = with_lm_labels(batch)
        with stack.only(adapters):
            logits = stack.model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        part = per_run_losses(logits, batch, len(ids), task)
        part.sum().backward()
        losses[adapters if isinstance(adapters, slice) else torch.as_tensor(ids, device=stack.device)] = part.detach()
    optimizer.clip([r.config.max_grad_norm for r in runs])
    lrs = torch.tensor([r.config.lr * schedule(step) for r, schedule in zip(runs, schedules)])
    optimizer.step(lrs.to(stack.device, non_blocking=True))
    optimizer.zero_grad()
    return losses


@torch.no_grad()
def evaluate(stack: AdapterStack, frozen: FrozenModel, runs: list[TrainingRun], rows_per_pass: int) -> list[dict]:
    """Each run's metrics on its evaluation split: every batch repeated for the runs, `rows_per_pass` rows
    at most per forward pass (the group is split into as many passes as that takes)."""
    prepared, config = frozen.prepared, runs[0].config
    frame = by_length(frozen.tokenizer, evaluation_frame(prepared, config), prepared.settings.max_length)
    task = prepared.task
    labels = frame["label"].tolist() if task == "classification" else None
    k = stack.k
    loss_sums = torch.zeros(k, dtype=torch.float64, device=stack.device)
    counts = torch.zeros(k, dtype=torch.long, device=stack.device)
    predictions = []
    per_pass = max(1, rows_per_pass // config.eval_batch_size)
    for batch in tokenize_batches(frozen.tokenizer, frame["text"].tolist(), config.eval_batch_size,
                                  prepared.settings.max_length, stack.device, labels):
        if task != "classification":
            batch = with_lm_labels(batch)
        n = len(batch["input_ids"])
        inputs = {key: value.repeat(per_pass, *[1] * (value.dim() - 1)) for key, value in batch.items()
                  if key != "labels"}
        batch_predictions = []
        for first in range(0, k, per_pass):   # a pass over the runs first..first+m-1 only
            m = min(per_pass, k - first)
            with stack.only(slice(first, first + m)):
                logits = stack.model(**{key: value[: m * n] for key, value in inputs.items()}).logits
            # losses right after each pass: a causal LM's logits for the whole group need not fit (44 SmolLM2 runs
            # over 64 tweets asked for 17 GiB more on an H100)
            if task == "classification":
                logits = logits.float().view(m, n, -1)
                loss_sums[first: first + m] += torch.nn.functional.cross_entropy(
                    logits.flatten(0, 1), batch["labels"].repeat(m), reduction="none").view(m, n).sum(1)
                batch_predictions.append(logits.argmax(-1))
            else:
                targets = batch["labels"].repeat(m, 1)
                loss_sums[first: first + m] += token_losses(logits, targets).view(m, -1).sum(1)
                counts[first: first + m] += (targets[:, 1:] != -100).view(m, -1).sum(1)
            del logits
        if task == "classification":
            counts += n
            predictions.append(torch.cat(batch_predictions))
    if task != "classification":
        return [language_model_metrics(float(s), int(c)) for s, c in zip(loss_sums.tolist(), counts.tolist())]
    predicted = torch.cat(predictions, dim=1).tolist()
    return [classification_metrics(predicted[i], labels, float(loss_sums[i]), int(counts[i])) for i in range(k)]


def _save(path: Path, stack: AdapterStack, optimizer: GroupedAdamW, step: int, losses: list[list[float]],
          elapsed: float) -> None:
    state = {"step": step, "flat": stack.flat.detach().cpu(), "optimizer": optimizer.state_dict(),
             "losses": losses, "elapsed": elapsed, "dropout_rng": [g.get_state() for g in stack.generators]}
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _restore(path: Path, stack: AdapterStack, optimizer: GroupedAdamW) -> tuple[int, list[list[float]], float]:
    state = torch.load(path, weights_only=False)
    with torch.no_grad():
        stack.flat.copy_(state["flat"])
    optimizer.load_state_dict(state["optimizer"])
    for generator, saved in zip(stack.generators, state["dropout_rng"]):
        generator.set_state(saved)
    return state["step"], state["losses"], state["elapsed"]


def train_group(runs: list[TrainingRun], frozen: FrozenModel, per_pass: int | None = None) -> list[Entry]:
    """Train the runs together (each as `retrain` would alone) and store each one's entry under its key,
    `per_pass` runs per forward and backward pass (default: all)."""
    prepared, store, config = frozen.prepared, frozen.prepared.store, runs[0].config
    assert len({shared_settings(r.config) for r in runs}) == 1, "a group's runs share steps, batch and evaluation"
    work = store.root / "retrain" / group_key(runs)
    work.mkdir(parents=True, exist_ok=True)
    checkpoint = work / CHECKPOINT
    starts = [frozen.start(run) for run in runs]
    stack = AdapterStack(frozen.model, starts, prepared.device)
    try:
        optimizer = GroupedAdamW(stack.flat, [r.config.weight_decay for r in runs])
        start, losses, elapsed = 0, [[] for _ in runs], 0.0
        if checkpoint.exists():
            start, losses, elapsed = _restore(checkpoint, stack, optimizer)
            print(f"Resuming {len(runs)} runs from their checkpoint at step {start} of {config.steps}.", flush=True)
        train = prepared.splits.train
        labels = train["label"].to_numpy() if prepared.task == "classification" else None
        tokens = Pretokenised(frozen.tokenizer, train["text"].tolist(), prepared.settings.max_length,
                              prepared.device, labels)
        schedules = [lr_factor(r.config) for r in runs]
        order = DataOrder(len(train))
        started = time.perf_counter() - elapsed
        pending: list[torch.Tensor] = []
        stack.training = True
        steps = range(start, config.steps)
        for step in progress(steps, total=len(steps), desc=f"retrain {len(runs)} adapters", unit="step"):
            pending.append(train_step(stack, optimizer, tokens, order, runs, step, prepared.task, schedules,
                                      per_pass))
            done = step + 1
            if done % 10 == 0 or done % config.checkpoint_every == 0 or done == config.steps:
                new = torch.stack(pending).float().cpu().T.tolist()
                for run, curve, values in zip(runs, losses, new):
                    job_folder.append_curve(run.label, list(zip(range(done - len(values) + 1, done + 1), values)))
                    curve += values
                pending = []
            if done % config.checkpoint_every == 0 or done == config.steps:   # the last too: evaluating may fail
                _save(checkpoint, stack, optimizer, done, losses, time.perf_counter() - started)
        stack.training = False
        train_seconds = time.perf_counter() - started
        del optimizer   # its moments, and the training passes' cached blocks, make room for evaluation's
        if stack.device.type == "cuda":
            torch.cuda.empty_cache()
        metrics = evaluate(stack, frozen, runs, (per_pass or len(runs)) * config.batch_size)
        seconds = time.perf_counter() - started
        entries = []
        for k, run in enumerate(runs):
            # each run's share of the group's time, and the group it trained in
            timing = {"train_seconds": round(train_seconds / len(runs), 3), "seconds": round(seconds / len(runs), 3),
                      "processes": 1, "device": str(prepared.device), "adapters_at_once": len(runs),
                      "launched_rank": parallel.rank(),
                      "group_seconds": round(seconds, 3)}
            entries.append(store_run(store, run.key, run.plan, run.config, prepared, metrics[k], losses[k],
                                     stack.head_state(k), frozen.saved_adapter(run.plan, stack.lora_state(k)),
                                     timing, starts[k].recorded))
    finally:
        stack.remove()
    shutil.rmtree(work, ignore_errors=True)
    return entries
