"""Retrain with a plan: a fresh LoRA with the plan's ranks, trained on train, evaluated on test (or on
validation, which is what learning-rate tuning selects on; `TrainSettings.eval_split`).

Allocate-then-retrain: the adapter starts from scratch (peft's initialisation, B = 0), whatever
signal produced the plan, unless `init` asks for a signal's data-driven start at the same ranks (EVA's, GoRA's;
training/adapter_init.py); the run's table and metadata say which. For classification the task head
is trained alongside, from the same seeded initialisation every method gets. The run is one store entry
(metrics, learning curve, saved adapter, head), keyed by the setting, the plan's LoRA config, the options
and the seed, so a comparison never trains the same thing twice.

What a run is (version 3), on this path and on the many-adapters path (training/group.py) alike: the frozen
model runs as in evaluation (its own dropout off; decoders such as Llama have none anyway), so a run's
randomness is its seed's: the data order, the head's and the adapter's initialisation and the LoRA dropout
masks, drawn from a generator of the run's own. LoRA weights and the head are float32 whatever the base
model's dtype. Each step clips the run's gradient to `max_grad_norm` (when set) and takes an AdamW step.

This module trains one run in its own process: peft's model, torch's AdamW. It is the reference the
grouped path is tested against, and the path `retrain --plan` and data-parallel launches take.

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

import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from analysis.contract import job_folder
from analysis.contract.progress import progress
from analysis.model.capture import tokenize_batches
from analysis.model.layout import layout_of
from analysis.model.sources import load_model
from analysis.planning.plan_json import LORA_KEYS, check_peft_model, lora_config, plan_file, plan_name, validate
from analysis.settings import RunSettings, TrainSettings, from_dict, to_dict
from analysis.signals.context import prepare, with_lm_labels
from analysis.signals.lora.warmup import head_parameters
from analysis.contract.atomic import write_json_atomic
from analysis.contract.result import Result, files_under
from analysis.store.cache import Entry, Store
from analysis.training.adapter_init import initialise
from analysis.training.adapter_stack import SeededDropout, dropout_seed, float32_head
from analysis.training.outcome import classification_metrics, did_not_train, language_model_metrics, token_losses
from analysis.training.steps import Pretokenised, batch_indices, lr_factor

VERSION = 3   # 2: eval_split, predicted classes and the did-not-train flag; 3: see the module's docstring
CHECKPOINT = "checkpoint.pt"


def retrain_key(context_key: str, plan: dict, config: TrainSettings, processes: int = 1) -> str:
    lora = {k: plan[k] for k in LORA_KEYS if k in plan}
    settings = to_dict(config)
    if settings["init"] == "default":   # runs cached before there was a choice keep their keys
        del settings["init"]
    return Store.key("retrain", {"context": context_key, "lora": lora, "config": settings, "processes": processes,
                                 "version": VERSION})


def evaluation_frame(prepared, config: TrainSettings) -> pd.DataFrame:
    """The examples a run's metrics come from: the test split (validation when tuning), its first test_size."""
    frame = prepared.splits[config.eval_split]
    return frame.iloc[: config.test_size] if config.test_size else frame


def by_length(tokenizer, frame: pd.DataFrame, max_length: int) -> pd.DataFrame:
    """Shortest first: each evaluation batch is padded to its own longest example, so sorting cuts the padding
    (metrics do not depend on the order)."""
    lengths = [len(ids) for ids in tokenizer(frame["text"].tolist(), truncation=True, max_length=max_length)
               ["input_ids"]]
    return frame.iloc[np.argsort(lengths, kind="stable")]


def _evaluate(model, tokenizer, frame: pd.DataFrame, task: str, settings: RunSettings, config: TrainSettings,
              accelerator) -> dict:
    """Metrics on `frame` (the test split, or validation when tuning); each process evaluates its share and the
    main process combines them. Sums stay on the device until the end (one synchronisation, not one a batch)."""
    from accelerate.utils import gather_object
    shard = by_length(tokenizer, frame.iloc[accelerator.process_index::accelerator.num_processes],
                      settings.max_length)
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
                logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
                loss_sum += token_losses(logits, batch["labels"]).sum()
                count += (batch["labels"][:, 1:] != -100).sum()
    predictions = torch.cat(predictions).tolist() if predictions else []
    gathered = gather_object([(predictions, labels or [], float(loss_sum), int(count))])
    loss_sum, count = sum(g[2] for g in gathered), sum(g[3] for g in gathered)
    if task != "classification":
        return language_model_metrics(loss_sum, count)
    return classification_metrics([p for g in gathered for p in g[0]], [t for g in gathered for t in g[1]],
                                  loss_sum, count)


def _save_checkpoint(path: Path, step: int, trainable: dict, optimizer, scheduler, losses: list[float],
                     elapsed: float, dropout: torch.Generator) -> None:
    state = {"step": step, "trainable": {k: v.detach().cpu() for k, v in trainable.items()},
             "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "losses": losses,
             "elapsed": elapsed, "torch_rng": torch.get_rng_state(), "dropout_rng": dropout.get_state(),
             "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def head_names(model: torch.nn.Module, task: str) -> list[str]:
    return list(head_parameters(model, task))


def _peft_model(plan: dict, prepared, seed: int, init: str = "default", device=None):
    """The base model with a fresh LoRA of the plan's ranks (checked against the plan) started as `init`
    says, and, for classification, a trainable float32 head initialised from `seed`; plus what to record of
    the init."""
    from peft import get_peft_model

    labels = prepared.data.label_names
    loaded = load_model(prepared.source, prepared.task, len(labels) if labels else None, seed, prepared.dtype)
    validate(plan, layout_of(loaded.model))
    float32_head(loaded.model, head_names(loaded.model, prepared.task))
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


def _seeded_dropout(model, seed: int, device) -> torch.Generator:
    """Replace each LoRA dropout with one drawing from the run's own generator (as the grouped path draws)."""
    from peft.tuners.lora import LoraLayer
    generator = torch.Generator(device=device).manual_seed(dropout_seed(seed))
    for module in model.modules():
        if isinstance(module, LoraLayer):
            for name, dropout in module.lora_dropout.items():
                module.lora_dropout[name] = SeededDropout(getattr(dropout, "p", 0.0), generator)
    return generator


def training_mode(model) -> None:
    """The frozen model as in evaluation (no dropout of its own); only LoRA's dropout trains."""
    model.eval()
    for module in model.modules():
        if isinstance(module, SeededDropout):
            module.train()


def _restore(path: Path, trainable: dict, optimizer, scheduler, dropout: torch.Generator
             ) -> tuple[int, list[float], float]:
    """Load a checkpoint into the live weights, optimizer, scheduler and random state; (step, losses, elapsed)."""
    state = torch.load(path, weights_only=False)
    with torch.no_grad():
        for name, value in state["trainable"].items():
            trainable[name].copy_(value)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    dropout.set_state(state["dropout_rng"])
    if state["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return state["step"], state["losses"], state["elapsed"]


def adapter_files(peft_model) -> dict[str, bytes]:
    with tempfile.TemporaryDirectory() as scratch:
        peft_model.save_pretrained(scratch)
        return files_under(Path(scratch), "adapter")


def store_run(store: Store, key: str, plan: dict, config: TrainSettings, prepared, metrics: dict,
              losses: list[float], head: dict[str, torch.Tensor], adapter: dict[str, bytes], timing: dict,
              recorded: dict) -> Entry:
    """A finished run's entry (both training paths write the same): metrics, curve, head, saved adapter."""
    curve = pd.DataFrame({"step": range(1, len(losses) + 1), "loss": losses})
    meta = {"title": f"Retrain: {plan_name(plan)}", "context_key": prepared.key,
            **prepared.description, "plan": plan, "config": to_dict(config), "metrics": metrics,
            "trainable_params": plan["trainable_params"], "eval_split": config.eval_split,
            "did_not_train": did_not_train(metrics, losses, prepared.task), **timing, **recorded}
    table = pd.DataFrame([{"method": plan_name(plan), "seed": config.seed, "init": config.init, **metrics}])
    return store.put(key, Result(table, tables={"curve": curve},
                                 tensors={f"head.{k}": v.detach().cpu() for k, v in head.items()}, files=adapter),
                     meta)


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
    with store.lock(key):
        return store.get(key) or _train(plan, config, store, settings, prepared, accelerator, key, label)


def _train(plan: dict, config: TrainSettings, store: Store, settings: RunSettings, prepared, accelerator, key: str,
           label: str | None) -> Entry | None:
    work = store.root / "retrain" / key
    work.mkdir(parents=True, exist_ok=True)
    checkpoint_path = work / CHECKPOINT
    loaded, model, init = _peft_model(plan, prepared, config.seed, config.init, accelerator.device)
    dropout = _seeded_dropout(model, config.seed + accelerator.process_index, accelerator.device)
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    # fused: one kernel for every parameter's update on a GPU (the foreach default launches several)
    optimizer = torch.optim.AdamW(trainable.values(), lr=config.lr, weight_decay=config.weight_decay,
                                  fused=prepared.device.type == "cuda")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(config))
    start, losses, elapsed = 0, [], 0.0
    if checkpoint_path.exists():
        start, losses, elapsed = _restore(checkpoint_path, trainable, optimizer, scheduler, dropout)
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
    training_mode(model)
    steps = range(start, config.steps)
    for step in (progress(steps, total=len(steps), desc="retrain", unit="step") if accelerator.is_main_process
                 else steps):
        batch = tokens.batch(batch_indices(step, size, len(train), config.seed)[mine])
        if prepared.task != "classification":
            batch = with_lm_labels(batch)
        loss = model(**batch).loss
        accelerator.backward(loss)
        if config.max_grad_norm > 0:
            accelerator.clip_grad_norm_(list(trainable.values()), config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        pending.append(accelerator.reduce(loss.detach(), "mean"))  # synchronised only when written out
        done = step + 1
        if done % 10 == 0 or done % config.checkpoint_every == 0 or done == config.steps:
            new = torch.stack(pending).float().cpu().tolist()
            if accelerator.is_main_process:
                job_folder.append_curve(label, list(zip(range(done - len(new) + 1, done + 1), new)))
            losses += new
            pending = []
        if done % config.checkpoint_every == 0 and done < config.steps and accelerator.is_main_process:
            _save_checkpoint(checkpoint_path, done, {n: p for n, p in accelerator.unwrap_model(model)
                                                     .named_parameters() if p.requires_grad},
                             optimizer, scheduler, losses, time.perf_counter() - started, dropout)
    train_seconds = time.perf_counter() - started
    metrics = _evaluate(model, loaded.tokenizer, evaluation_frame(prepared, config), prepared.task, settings,
                        config, accelerator)
    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    if not accelerator.is_main_process:
        return None
    timing = {"train_seconds": round(train_seconds, 3), "seconds": round(time.perf_counter() - started, 3),
              "processes": accelerator.num_processes, "device": str(accelerator.device)}
    entry = store_run(store, key, plan, config, prepared, metrics, losses,
                      head_parameters(unwrapped.base_model.model, prepared.task), adapter_files(unwrapped), timing,
                      init)
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
