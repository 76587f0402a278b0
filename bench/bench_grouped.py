"""Many adapters on one copy of the model, step by step: time and memory of a grouped step against the same
adapters' steps one at a time.

Part `minilm`: the embedded MiniLM on Rotten Tomatoes (real batches), uniform r4: one retrain step of peft
alone (the `retrain` path: peft model, torch's fused AdamW) against one grouped step of K adapters
(K = 1, 16, 64, 256 in one pass; 256 and 512 in passes of runs of similar lengths), in float32 and bfloat16;
milliseconds per step and per adapter step.
Part `llama`: the Llama-3.2-1B shape (random bfloat16 weights), 8 adapters of different plans, 16 x 512
tokens each: 8 separate peft steps against the 8 in the group engine at the group size it measures itself,
with the peak memory of each.

    python bench/bench_grouped.py --out $OUT/grouped.json                 # on the GPU
    python bench/bench_grouped.py --smoke --out /tmp/grouped.json        # the CPU path, tiny sizes
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from analysis.model.layout import layout_of  # noqa: E402
from bench.bench_allocators import sync, timed  # noqa: E402
from analysis.planning.plan_json import build_plan, lora_config  # noqa: E402
from analysis.settings import PlanOptions, RunSettings, TrainSettings  # noqa: E402
from analysis.signals.context import prepare  # noqa: E402
from analysis.store.cache import Store  # noqa: E402
from analysis.training.adapter_stack import AdapterStack, StartingWeights  # noqa: E402
from analysis.training.group import FrozenModel, TrainingRun, per_run_losses, train_step  # noqa: E402
from analysis.training.grouped_adamw import GroupedAdamW  # noqa: E402
from analysis.training.peft_form import default_start  # noqa: E402
from analysis.training.steps import DataOrder, Pretokenised  # noqa: E402


def _sync(device):
    sync(device.type)


def _timed(step, repeats: int, device) -> float:
    """Median seconds of `step()` over `repeats` calls after a warm-up call."""
    return timed(step, repeats, device.type)["median_s"]


def _peak(device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")


def _reset(device):
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def minilm(device: str, dtype: str, sizes: list[int], repeats: int, cache: Path) -> dict:
    from peft import get_peft_model

    from analysis.model.sources import load_model
    from analysis.planning.methods import make_plan
    from analysis.signals.lora.warmup import head_parameters
    from analysis.training.retrain import float32_head, head_names

    prepared = prepare(RunSettings(device=device, dtype=dtype, val_size=64), Store(cache), warn=None)
    plan = make_plan(prepared.run, "uniform", "r4")
    config = TrainSettings()
    train = prepared.splits.train
    frozen = FrozenModel(prepared)
    tokens = Pretokenised(frozen.tokenizer, train["text"].tolist(), prepared.settings.max_length, prepared.device,
                          train["label"].to_numpy())
    order = DataOrder(len(train))
    out = {"dtype": dtype, "alone_ms": None, "grouped": {}}
    # peft alone, as retrain trains
    loaded = load_model(prepared.source, prepared.task, 2, 0, prepared.dtype)
    float32_head(loaded.model, head_names(loaded.model, prepared.task))
    model = get_peft_model(loaded.model, lora_config(plan)).to(prepared.device)
    for p in head_parameters(model.base_model.model, prepared.task).values():
        p.requires_grad_(True)
    model.eval()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-3, fused=prepared.device.type == "cuda")
    counter = iter(range(10**6))

    def alone():
        step = next(counter)
        loss = model(**tokens.batch(order.rows(step, config.batch_size, 0))).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    out["alone_ms"] = 1e3 * _timed(alone, repeats, prepared.device)
    for k, per_pass in sizes:
        runs = [TrainingRun(plan, dataclasses.replace(config, seed=s), f"k{s}", "") for s in range(k)]
        starts = [frozen.start(run) for run in runs]
        stack = AdapterStack(frozen.model, starts, prepared.device)
        stack.training = True
        grouped_optimizer = GroupedAdamW(stack.flat, [0.0] * k)
        steps = iter(range(10**6))
        _reset(prepared.device)
        seconds = _timed(lambda: train_step(stack, grouped_optimizer, tokens, order, runs, next(steps), prepared.task,
                                            [lambda s: 1.0] * k, per_pass), repeats, prepared.device)
        out["grouped"][f"{k}/{per_pass}"] = {"adapters": k, "per_pass": per_pass, "ms_per_step": 1e3 * seconds,
                                             "ms_per_adapter_step": 1e3 * seconds / k,
                                             "adapter_steps_per_s": k / seconds, "peak_gib": _peak(prepared.device)}
        stack.remove()
        print(f"minilm {dtype}: K={k}, {per_pass} per pass: {1e3 * seconds:.1f} ms/step, {1e3 * seconds / k:.2f} ms "
              f"per adapter step (alone {out['alone_ms']:.1f} ms)", flush=True)
    return out


def llama(device: str, batch: int, length: int, adapters: int, repeats: int, shape: str, layers: int | None) -> dict:
    from peft import get_peft_model

    from analysis.training.many_runs import MEMORY_SHARE
    from bench.llama_shapes import random_llama

    dev = torch.device(device)
    model = random_llama(shape, layers, device).requires_grad_(False)
    layout = layout_of(model)
    kinds = [m.name for m in layout.modules]
    rng = np.random.default_rng(0)
    plans = []
    for i in range(adapters):   # different ranks and target modules per adapter
        ranks = np.where(rng.random(len(kinds)) < 0.7, rng.choice([2, 4, 8, 16], len(kinds)), 0)
        ranks[0] = max(ranks[0], 1)
        plans.append(build_plan(layout, ranks, f"plan{i}", 0, PlanOptions()))
    ids = torch.randint(3, model.config.vocab_size, (batch * adapters, length), device=dev)
    mask = torch.ones_like(ids)
    labels = ids.clone()
    out = {"shape": shape, "layers": layers or model.config.num_hidden_layers, "batch": batch, "length": length,
           "adapters": adapters, "separate": {}, "grouped": {}}
    # eight separate steps: peft around the same weights, one adapter at a time (torch's fused AdamW)
    separate = []
    _reset(dev)
    for i, plan in enumerate(plans):
        torch.manual_seed(i)
        peft_model = get_peft_model(model, lora_config(plan))
        trainable = [p for p in peft_model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=1e-4, fused=dev.type == "cuda")
        rows = slice(i * batch, (i + 1) * batch)

        def step():
            loss = peft_model(input_ids=ids[rows], attention_mask=mask[rows], labels=labels[rows]).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        separate.append(_timed(step, repeats, dev))
        model = peft_model.unload()
    out["separate"] = {"seconds_per_step_each": separate, "seconds_for_all": sum(separate),
                       "peak_gib": _peak(dev)}
    print(f"llama: {adapters} separate steps {sum(separate):.3f} s, peak {_peak(dev):.1f} GiB", flush=True)

    # the group engine: as many adapters at once as its measured memory cost allows
    starts = [StartingWeights(default_start(model, plan, i), {}, i) for i, plan in enumerate(plans)]
    batch_of = lambda lo, hi: {"input_ids": ids[lo * batch: hi * batch], "attention_mask": mask[lo * batch: hi * batch],
                               "labels": labels[lo * batch: hi * batch]}   # noqa: E731

    def grouped_step(stack, optimizer, lo, hi):
        logits = model(input_ids=ids[lo * batch: hi * batch], attention_mask=mask[lo * batch: hi * batch]).logits
        per_run_losses(logits, batch_of(lo, hi), hi - lo, "causal-lm").sum().backward()
        optimizer.clip([1.0] * (hi - lo))
        optimizer.step(torch.full((hi - lo,), 1e-4, device=dev))
        optimizer.zero_grad()

    peaks = []
    for k in (1, 2):
        _reset(dev)
        stack = AdapterStack(model, starts[:k], dev)
        grouped_step(stack, GroupedAdamW(stack.flat, [0.0] * k), 0, k)
        _sync(dev)
        peaks.append(torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else 0)
        stack.remove()
    per_adapter = max(1, peaks[1] - peaks[0])
    free = torch.cuda.mem_get_info(dev)[0] if dev.type == "cuda" else 8 * 2**30
    size = int(max(1, min(adapters, (free * MEMORY_SHARE - max(0, peaks[0] - per_adapter)) // per_adapter)))
    out["grouped"]["per_adapter_gib"] = per_adapter / 2**30
    out["grouped"]["group_size"] = size
    _reset(dev)
    stacks = [(lo, min(adapters, lo + size)) for lo in range(0, adapters, size)]
    built = []
    for lo, hi in stacks:
        stack = AdapterStack(model, starts[lo:hi], dev)
        built.append((stack, GroupedAdamW(stack.flat, [0.0] * (hi - lo)), lo, hi))
        stack.remove()

    def all_groups():
        for stack, optimizer, lo, hi in built:
            stack.attach()
            try:
                grouped_step(stack, optimizer, lo, hi)
            finally:
                stack.remove()

    seconds = _timed(all_groups, repeats, dev)
    out["grouped"].update({"seconds_for_all": seconds, "peak_gib": _peak(dev),
                           "ratio_to_separate": seconds / sum(separate),
                           "base_gib": sum(p.numel() * p.element_size() for p in model.parameters()) / 2**30})
    print(f"llama: {adapters} adapters in groups of {size}: {seconds:.3f} s "
          f"({seconds / sum(separate):.2f}x separate), peak {_peak(dev):.1f} GiB, one more adapter "
          f"{per_adapter / 2**30:.1f} GiB", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--parts", default="minilm,llama")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny sizes: checks the paths run")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/bench-grouped-cache"))
    parser.add_argument("--dtypes", default="bfloat16,float32", help="MiniLM's weights, in this order")
    parser.add_argument("--sizes", default="1/1,16/16,64/64,256/256,256/64,512/128",
                        help="MiniLM: adapters/adapters per pass, comma-separated")
    args = parser.parse_args()
    device = "cpu" if args.smoke else "cuda"
    result = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__}
    if "minilm" in args.parts:
        sizes, repeats = (([1, 1], [4, 4], [4, 2]), 2) if args.smoke else \
            ([[int(n) for n in size.split("/")] for size in args.sizes.split(",")], 10)
        for dtype in (["float32"] if args.smoke else args.dtypes.split(",")):
            result[f"minilm_{dtype}"] = minilm(device, dtype, sizes, repeats, args.cache)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=1))   # what a time limit leaves is kept
    if "llama" in args.parts:
        result["llama"] = (llama(device, 2, 16, 3, 1, "tiny", None) if args.smoke else
                           llama(device, 16, 512, 8, 5, "1b", None))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
