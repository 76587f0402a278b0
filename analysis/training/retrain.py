"""Retrain with a plan: a fresh LoRA with the plan's ranks, trained on train, evaluated on test (or on
validation, which is what learning-rate tuning selects on; `TrainSettings.eval_split`).

Allocate-then-retrain: the adapter starts from scratch (peft's initialisation, B = 0), whatever
signal produced the plan, unless `init` asks for EVA's or GoRA's data-driven start at the same ranks
(training/adapter_init.py); the run's table and metadata say which. For classification the task head
is trained alongside, from the same seeded initialisation every method gets. The run is one store entry (metrics, learning curve,
saved adapter, head), keyed by the setting, the plan's LoRA config, the options and the seed, so
a comparison never trains the same thing twice.

Crash safety: every `checkpoint_every` steps the trainable weights, optimizer, scheduler, loss
curve and random state go to <cache>/retrain/<key>/checkpoint.pt (written whole, then renamed);
the same command started again resumes from there and gives the same result as an uninterrupted
run. The data order is a function of (seed, step), so a resumed run sees the same batches.

Speed: the train split is tokenised once, padded to its longest example and kept on the device; a step
gathers its rows and trims them to the longest of the batch (the lengths live on the host), so a step
costs what a plain pre-tokenised peft loop costs, with no host synchronisation except every 10 steps.

A run that did not train (one predicted class for every example, a NaN loss, or a loss that ends above
where it started; `did_not_train`) says so in its entry's meta, so a comparison can leave it out.

Several GPUs: the same entry point under `accelerate launch` trains data-parallel (each process
takes its own `batch_size` slice of every step's examples; only the main process writes).
"""
from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from analysis.model.capture import tokenize_batches
from analysis.settings import RunSettings, TrainSettings, from_dict, to_dict
from analysis.signals.context import prepare, with_lm_labels
from analysis.store.hashing import hash_json
from analysis.model.layout import layout_of
from analysis.planning.plan_json import LORA_KEYS, check_peft_model, lora_config, plan_file, plan_name, validate
from analysis.jobs import folder
from analysis.jobs.progress import progress
from analysis.store.atomic import write_json_atomic
from analysis.model.sources import load_model
from analysis.store.cache import Entry, Result, Store, files_under
from analysis.signals.lora.warmup import head_parameters
from analysis.training.adapter_init import initialise

VERSION = 2   # 2: eval_split, predicted classes and the did-not-train flag
CHECKPOINT = "checkpoint.pt"


def retrain_key(context_key: str, plan: dict, config: TrainSettings, processes: int = 1) -> str:
    lora = {k: plan[k] for k in LORA_KEYS if k in plan}
    settings = to_dict(config)
    if settings["init"] == "default":   # runs cached before there was a choice keep their keys
        del settings["init"]
    return "retrain-" + hash_json({"context": context_key, "lora": lora, "config": settings,
                                   "processes": processes, "version": VERSION})[:24]


def batch_indices(step: int, size: int, n: int, seed: int) -> np.ndarray:
    """Examples of global step `step`: consecutive slices of per-epoch permutations seeded by (seed, epoch)."""
    positions = np.arange(step * size, (step + 1) * size)
    epochs = positions // n
    return np.concatenate([np.random.default_rng([seed, int(e)]).permutation(n)[positions[epochs == e] % n]
                           for e in np.unique(epochs)])


def _schedule(config: TrainSettings):
    warm = max(1, int(config.warmup_fraction * config.steps))
    return lambda step: min((step + 1) / warm, max(0.0, (config.steps - step) / max(1, config.steps - warm)))


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


def _evaluate(model, tokenizer, frame: pd.DataFrame, task: str, settings: RunSettings, config: TrainSettings,
              accelerator) -> dict:
    """Metrics on `frame` (the test split, or validation when tuning); each process evaluates its share and the
    main process combines them. Sums stay on the device until the end (one synchronisation, not one a batch)."""
    from accelerate.utils import gather_object
    from sklearn.metrics import accuracy_score, f1_score
    shard = frame.iloc[accelerator.process_index::accelerator.num_processes]
    # shortest first: each batch is padded to its own longest example, so sorting cuts the padding (the
    # metrics do not depend on the order; predictions and labels stay aligned)
    lengths = [len(ids) for ids in tokenizer(shard["text"].tolist(), truncation=True,
                                             max_length=settings.max_length)["input_ids"]]
    shard = shard.iloc[np.argsort(lengths, kind="stable")]
    labels = shard["label"].tolist() if task == "classification" else None
    predictions, loss_sum, count = [], torch.zeros((), device=accelerator.device, dtype=torch.float64), 0
    model.eval()
    with torch.no_grad():
        for batch in tokenize_batches(tokenizer, shard["text"].tolist(), config.eval_batch_size,
                                      settings.max_length, accelerator.device, labels):
            if task == "classification":
                logits = model(**batch).logits.float()
                loss_sum += torch.nn.functional.cross_entropy(logits, batch["labels"], reduction="sum")
                count += len(logits)
                predictions.append(logits.argmax(-1))
            else:
                batch = with_lm_labels(batch)
                logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.float()
                targets = batch["labels"][:, 1:]
                loss_sum += torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), targets.flatten(),
                                                              ignore_index=-100, reduction="sum")
                count += (targets != -100).sum()
    predictions = torch.cat(predictions).tolist() if predictions else []
    loss_sum, count = float(loss_sum), int(count)
    gathered = gather_object([(predictions, labels or [], loss_sum, count)])
    loss = sum(g[2] for g in gathered) / max(1, sum(g[3] for g in gathered))
    if task != "classification":
        return {"test_loss": loss, "perplexity": math.exp(min(loss, 50.0)), "test_tokens": sum(g[3] for g in gathered)}
    predicted = [p for g in gathered for p in g[0]]
    truth = [t for g in gathered for t in g[1]]
    return {"accuracy": accuracy_score(truth, predicted), "f1": f1_score(truth, predicted, average="macro"),
            "test_loss": loss, "test_examples": len(truth), "predicted_classes": len(set(predicted))}


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


def _save_checkpoint(path: Path, step: int, trainable: dict, optimizer, scheduler, losses: list[float],
                     elapsed: float) -> None:
    state = {"step": step, "trainable": {k: v.detach().cpu() for k, v in trainable.items()},
             "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "losses": losses,
             "elapsed": elapsed, "torch_rng": torch.get_rng_state(),
             "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _peft_model(plan: dict, prepared, seed: int, init: str = "default", device=None):
    """The base model with a fresh LoRA of the plan's ranks (checked against the plan) started as `init`
    says, and, for classification, a trainable head initialised from `seed`; plus what to record of the init."""
    from peft import get_peft_model

    labels = prepared.data.label_names
    loaded = load_model(prepared.source, prepared.task, len(labels) if labels else None, seed, prepared.dtype)
    validate(plan, layout_of(loaded.model))
    torch.manual_seed(seed)
    with warnings.catch_warnings():  # transformers' deprecation note on a name peft still calls
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        model = get_peft_model(loaded.model, lora_config(plan))
    check_peft_model(plan, model)
    if device is not None:
        model.to(device)
    recorded = initialise(model, init, prepared, loaded.tokenizer, device or torch.device("cpu"))
    check_peft_model(plan, model)   # an initialisation never changes the plan's ranks
    for p in head_parameters(model.base_model.model, prepared.task).values():
        p.requires_grad_(True)
    return loaded, model, {"init": init, **recorded}


def _restore(path: Path, trainable: dict, optimizer, scheduler) -> tuple[int, list[float], float]:
    """Load a checkpoint into the live weights, optimizer, scheduler and random state; (step, losses, elapsed)."""
    state = torch.load(path, weights_only=False)
    with torch.no_grad():
        for name, value in state["trainable"].items():
            trainable[name].copy_(value)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return state["step"], state["losses"], state["elapsed"]


def _adapter_files(peft_model) -> dict[str, bytes]:
    with tempfile.TemporaryDirectory() as scratch:
        peft_model.save_pretrained(scratch)
        return files_under(Path(scratch), "adapter")


def retrain(plan: dict, config: TrainSettings, store: Store | None = None, device: str | None = None,
            label: str | None = None) -> Entry | None:
    """Train the plan (or fetch the cached run); the store entry with metrics and curve (None in the
    non-main processes of a data-parallel launch)."""
    from accelerate import Accelerator

    store = store or Store()
    settings = from_dict(RunSettings, plan.get("settings"), **({"device": device} if device else {}))
    prepared = prepare(settings, store)
    accelerator = Accelerator(cpu=prepared.device.type == "cpu")
    key = retrain_key(prepared.key, plan, config, accelerator.num_processes)  # processes set the global batch
    cached = store.get(key)
    if cached:
        return cached
    if accelerator.num_processes > 1:   # every process trains its share: no lock between them
        return _train(plan, config, store, settings, prepared, accelerator, key, label)
    # One process trains a key at a time: a second one (a parallel study that shares uniform's runs) waits
    # for it and then reads its entry, instead of training the same run into the same checkpoint folder.
    from filelock import FileLock
    store.locks_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(store.locks_dir / f"{key}.lock")):
        return store.get(key) or _train(plan, config, store, settings, prepared, accelerator, key, label)


def _train(plan: dict, config: TrainSettings, store: Store, settings: RunSettings, prepared, accelerator, key: str,
           label: str | None) -> Entry | None:
    work = store.root / "retrain" / key
    work.mkdir(parents=True, exist_ok=True)
    checkpoint_path = work / CHECKPOINT
    loaded, model, init = _peft_model(plan, prepared, config.seed, config.init, accelerator.device)
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    # fused: one kernel for every parameter's update on a GPU (the foreach default launches several)
    optimizer = torch.optim.AdamW(trainable.values(), lr=config.lr, weight_decay=config.weight_decay,
                                  fused=prepared.device.type == "cuda")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(config))
    start, losses, elapsed = 0, [], 0.0
    if checkpoint_path.exists():
        start, losses, elapsed = _restore(checkpoint_path, trainable, optimizer, scheduler)
        accelerator.print(f"Resuming from the checkpoint at step {start} of {config.steps}.")
    model, optimizer = accelerator.prepare(model, optimizer)
    train = prepared.splits.train
    labels = train["label"].to_numpy() if prepared.task == "classification" else None
    tokens = Pretokenised(loaded.tokenizer, train["text"].tolist(), settings.max_length, accelerator.device, labels)
    label = label or plan_name(plan)
    size = config.batch_size * accelerator.num_processes
    mine = slice(accelerator.process_index * config.batch_size, (accelerator.process_index + 1) * config.batch_size)
    started = time.perf_counter() - elapsed
    pending: list[torch.Tensor] = []
    model.train()
    steps = range(start, config.steps)
    for step in (progress(steps, total=len(steps), desc="retrain", unit="step") if accelerator.is_main_process
                 else steps):
        batch = tokens.batch(batch_indices(step, size, len(train), config.seed)[mine])
        if prepared.task != "classification":
            batch = with_lm_labels(batch)
        loss = model(**batch).loss
        accelerator.backward(loss)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        pending.append(accelerator.reduce(loss.detach(), "mean"))  # synchronised only when written out
        done = step + 1
        if done % 10 == 0 or done % config.checkpoint_every == 0 or done == config.steps:
            new = torch.stack(pending).float().cpu().tolist()
            if accelerator.is_main_process:
                folder.append_curve(label, list(zip(range(done - len(new) + 1, done + 1), new)))
            losses += new
            pending = []
        if done % config.checkpoint_every == 0 and done < config.steps and accelerator.is_main_process:
            _save_checkpoint(checkpoint_path, done, {n: p for n, p in accelerator.unwrap_model(model)
                                                     .named_parameters() if p.requires_grad},
                             optimizer, scheduler, losses, time.perf_counter() - started)
    train_seconds = time.perf_counter() - started
    test = prepared.splits[config.eval_split]
    if config.test_size:
        test = test.iloc[: config.test_size]
    metrics = _evaluate(model, loaded.tokenizer, test, prepared.task, settings, config, accelerator)
    failure = did_not_train(metrics, losses, prepared.task)
    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    if not accelerator.is_main_process:
        return None
    head = {f"head.{k}": v.detach().cpu() for k, v in
            head_parameters(unwrapped.base_model.model, prepared.task).items()}
    curve = pd.DataFrame({"step": range(1, len(losses) + 1), "loss": losses})
    meta = {"signal": "retrain", "title": f"Retrain: {plan_name(plan)}", "context_key": prepared.key,
            **prepared.description, "plan": plan, "config": to_dict(config), "metrics": metrics,
            "trainable_params": plan["trainable_params"], "train_seconds": round(train_seconds, 3),
            "eval_split": config.eval_split, "did_not_train": failure,
            "seconds": round(time.perf_counter() - started, 3), "processes": accelerator.num_processes,
            "device": str(accelerator.device), **init}
    entry = store.put(key, Result(pd.DataFrame([{"method": plan_name(plan), "seed": config.seed,
                                                 "init": config.init, **metrics}]),
                                  tables={"curve": curve}, tensors=head, files=_adapter_files(unwrapped)), meta)
    shutil.rmtree(work, ignore_errors=True)
    return entry


def write_outputs(entry: Entry, out: Path) -> None:
    """DIR/metrics.json, DIR/curve.csv, DIR/plan.json and DIR/adapter/ for the retrain command's --out."""
    out.mkdir(parents=True, exist_ok=True)
    meta = entry.meta
    write_json_atomic(out / "metrics.json", {**meta["metrics"], "method": meta["plan"].get("signal"),
                                             "trainable_params": meta["trainable_params"],
                                             "seed": meta["config"]["seed"], "train_seconds": meta["train_seconds"],
                                             "entry": entry.key})
    write_json_atomic(out / "plan.json", plan_file(meta["plan"]))
    entry.table("curve").to_csv(out / "curve.csv", index=False)
    shutil.copytree(entry.directory / "adapter", out / "adapter", dirs_exist_ok=True)
