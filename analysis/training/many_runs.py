"""Many retrains at once: what a comparison, its tuning and a study hand over to be trained.

`train_runs` returns every run's entry in the order asked. Runs already in the store are read; the others are
trained `adapters_at_once` at a time on one copy of the model (training/group.py), or one by one through
`retrain` when that is 1. Either way a run ends as the entry `retrain` would write, under the same key, so
each path finds the other's results. A run another process is training (its key locked) is left to that
process and read once it is done. Under a launcher with several processes (one GPU each), the runs are
spread over the processes and each process trains its share together.

The default group size is what fits in the device's memory, from a measured cost (`group_sizes`): one training
step of one adapter and of two, at the split's longest examples, gives the memory a further adapter costs in a
forward and backward pass (CUDA's peak allocation; on the CPU, the bytes autograd saves for the backward pass)
and what it keeps between steps. A step may take several passes, runs of similar lengths together.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from analysis.errors import UserError
from analysis.contract.progress import phase
from analysis.settings import RunSettings, TrainSettings, from_dict
from analysis.signals import parallel
from analysis.signals.context import prepare, resolve_device
from analysis.store.cache import Entry, Store
from analysis.training.group import FrozenModel, TrainingRun, shared_settings, train_group
from analysis.training.retrain import retrain, retrain_key

MEMORY_SHARE = 0.85   # of the free memory a group may plan for (the rest: allocator slack, evaluation)
MAX_AT_ONCE = 512
CPU_PASS_ROWS = 128   # rows per pass on the CPU: its matrix products are as fast per row from about here


@dataclass(frozen=True)
class Request:
    plan: dict
    config: TrainSettings
    label: str


def train_runs(requests: list[Request], store: Store, adapters_at_once: int | None = None,
               device: str | None = None, counted: tuple[int, int] | None = None) -> list[Entry]:
    """Every request's retrain entry, in order (cached, grouped, or one at a time). `counted` = (runs before these,
    all runs) numbers the job's progress across several calls (a comparison's tuning, then its seeds)."""
    if not requests:
        return []
    settings = {repr(r.plan.get("settings")) for r in requests}
    if len(settings) != 1:
        raise UserError("Runs trained together must share one model, data set and split.")
    run_settings = from_dict(RunSettings, requests[0].plan.get("settings"), **({"device": device} if device else {}))
    # Under a launcher (torchrun, accelerate launch) the runs are spread over the processes, each run trained
    # whole by one of them on its own GPU (one at a time, a run is trained data-parallel by all of them instead).
    spread = int(os.environ.get("WORLD_SIZE", "1")) > 1 and adapters_at_once != 1
    if spread:
        parallel.start(resolve_device(run_settings.device))   # compare has joined already; a direct caller may not
    prepared = prepare(run_settings, store, warn=None)
    runs = [TrainingRun(r.plan, r.config, retrain_key(prepared.key, r.plan, r.config), r.label) for r in requests]
    found: dict[str, Entry] = {}
    for run in runs:
        entry = store.get(run.key)
        if entry:
            found[run.key] = entry
    todo = list({run.key: run for run in runs if run.key not in found}.values())
    before, total = counted or (0, len(runs))
    done = before + len(runs) - len(todo)
    if todo and adapters_at_once != 1:
        share = todo[parallel.rank()::parallel.count()] if spread else todo
        trained = _grouped(share, prepared, adapters_at_once, done, total)
        if spread:   # every process's runs, once all are stored
            parallel.barrier()
            trained = {run.key: entry for run in todo if (entry := store.get(run.key))}
        found.update(trained)
        done += len(trained)
    for run in [r for r in todo if r.key not in found]:   # one at a time, or held by another process
        done += 1
        phase(f"run {done} of {total}: {run.label}", done, total)
        found[run.key] = retrain(run.plan, run.config, store, device=device, label=run.label)
    if parallel.count() > 1:   # data-parallel runs: only the main process wrote them
        parallel.barrier()
        found = {run.key: found.get(run.key) or store.get(run.key) for run in runs}
    return [found[run.key] for run in runs]


def _grouped(todo: list[TrainingRun], prepared, adapters_at_once: int | None, done: int,
             total: int) -> dict[str, Entry]:
    """Train the runs no other process holds, in groups of runs that share their step settings."""
    store = prepared.store
    locks = {}
    for run in todo:
        lock = store.try_lock(run.key)
        if lock is not None:
            if store.get(run.key):   # finished between the look-up and the lock
                lock.release()
            else:
                locks[run.key] = lock
    mine = [run for run in todo if run.key in locks]
    found = {}
    try:
        if not mine:
            return found
        frozen = FrozenModel(prepared)
        size, per_pass = group_sizes(frozen, mine, adapters_at_once)
        batches = {}
        for run in mine:
            batches.setdefault(shared_settings(run.config), []).append(run)
        groups = [same[i: i + size] for same in batches.values() for i in range(0, len(same), size)]
        for group in groups:
            phase(f"runs {done + 1}-{done + len(group)} of {total}, {len(group)} trained together", done + 1, total)
            parallel.say(f"runs {done + 1}-{done + len(group)} of {total}: {len(group)} adapters together, "
                         f"{min(per_pass, len(group))} per pass", flush=True)
            for entry in train_group(group, frozen, per_pass):
                found[entry.key] = entry
            done += len(group)
    finally:
        for lock in locks.values():
            lock.release()
    return found


def group_sizes(frozen: FrozenModel, runs: list[TrainingRun], adapters_at_once: int | None = None) -> tuple[int, int]:
    """(runs trained together, runs per forward and backward pass). Measured: one training step of one adapter
    and of two, in one pass at the split's longest examples with the runs' largest plan, gives what a further
    adapter costs in a pass (its activations) and what every adapter of the group keeps (its weights, gradient
    and AdamW moments). The group is as many runs as half the free memory keeps, at most MAX_AT_ONCE (or
    `adapters_at_once`); a pass as many as the rest holds, on the CPU at most CPU_PASS_ROWS rows."""
    from analysis.training.adapter_stack import AdapterStack
    from analysis.training.grouped_adamw import GroupedAdamW
    from analysis.training.group import train_step
    from analysis.training.steps import DataOrder, Pretokenised

    if len(runs) == 1 or adapters_at_once == 1:
        return 1, 1
    prepared = frozen.prepared
    largest = max(runs, key=lambda r: r.plan["trainable_params"])
    start = frozen.start(largest)
    train = prepared.splits.train
    longest = np.argsort(-_lengths(frozen, train["text"].tolist(), prepared.settings.max_length),
                         kind="stable")[: largest.config.batch_size]
    labels = train["label"].to_numpy()[longest] if prepared.task == "classification" else None
    tokens = Pretokenised(frozen.tokenizer, train["text"].iloc[longest].tolist(), prepared.settings.max_length,
                          prepared.device, labels)
    costs = []
    for k in (1, 2):
        probe = [largest] * k   # the probe split holds one batch: every seed's step takes all of it
        stack = AdapterStack(frozen.model, [start] * k, prepared.device)
        try:
            optimizer = GroupedAdamW(stack.flat, [0.0] * k)
            order = DataOrder(len(longest))
            costs.append(_peak_bytes(lambda: train_step(stack, optimizer, tokens, order, probe, 0, prepared.task,
                                                        [lambda step: 1.0] * k), stack, optimizer, prepared.device))
            state = 4 * stack.flat[0].numel() * stack.flat.element_size()   # weights, gradient, two moments
        finally:
            stack.remove()
    per_adapter = max(1, costs[1] - costs[0])
    fixed = max(0, costs[0] - per_adapter)
    free = _free_bytes(prepared.device)
    available = free * MEMORY_SHARE - fixed
    size = adapters_at_once or int(max(2, min(MAX_AT_ONCE, len(runs), available / 2 // state)))
    size = min(size, len(runs))
    per_pass = int(max(1, min(size, (available - size * state) // per_adapter)))
    if prepared.device.type == "cpu":   # the CPU gains little from wide passes and pays for their padding
        per_pass = min(per_pass, max(1, CPU_PASS_ROWS // largest.config.batch_size))
    parallel.say(f"adapters at once: {size}, {per_pass} per pass (a further adapter costs "
                 f"{per_adapter / 2**20:.0f} MiB in a pass at the longest batch and keeps {state / 2**20:.1f} MiB; "
                 f"{free / 2**30:.1f} GiB free)",
                 flush=True)
    return size, per_pass


def _lengths(frozen: FrozenModel, texts: list[str], max_length: int) -> np.ndarray:
    return np.array([len(ids) for ids in frozen.tokenizer(texts, truncation=True, max_length=max_length)
                     ["input_ids"]])


def _peak_bytes(step, stack, optimizer, device: torch.device) -> int:
    """Memory one training step needs: CUDA's peak allocation; on the CPU what autograd saves for backward
    plus the adapters' parameters, gradients and AdamW moments."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device)
    saved = [0]

    def pack(tensor):
        saved[0] += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        step()
    return saved[0] + 4 * stack.flat.numel() * stack.flat.element_size()


def _free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free
    import psutil
    return psutil.virtual_memory().available
