"""A small model's retrain step against a plain pre-tokenised peft loop.

The embedded MiniLM (22M parameters) on Rotten Tomatoes, a uniform rank-4 plan, the same batch size and the
same batches for both: `analysis.training.retrain.retrain` (in process, no cache hit) and a plain loop
(get_peft_model, AdamW, the train split tokenised once, `model(**batch).loss.backward()`). Each is timed at
two step counts and the difference is divided by the extra steps, so loading and evaluation drop out.
Prints a table and writes JSON.

    python bench/bench_small_retrain.py --device cuda --dtype bfloat16 --out small-bf16.json
    python bench/bench_small_retrain.py --device cuda --dtype float32 --out small-fp32.json
    python bench/bench_small_retrain.py --device cpu --dtype float32 --steps 4,8 --batch 8   # a smoke test
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from analysis.settings import RunSettings, TrainSettings  # noqa: E402
from analysis.signals.context import prepare  # noqa: E402
from analysis.store.cache import Store  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain_loop_seconds(plan: dict, prepared, steps: int, batch: int, lr: float) -> float:
    """Seconds for `steps` steps of a plain peft loop on pre-tokenised batches (the same rows as retrain)."""
    from peft import get_peft_model

    from analysis.model.sources import load_model
    from analysis.planning.plan_json import lora_config
    from analysis.signals.lora.warmup import head_parameters
    from analysis.training.steps import Pretokenised, batch_indices

    loaded = load_model(prepared.source, prepared.task, len(prepared.data.label_names), 0, prepared.dtype)
    model = get_peft_model(loaded.model, lora_config(plan))
    for p in head_parameters(model.base_model.model, prepared.task).values():
        p.requires_grad_(True)
    model.to(prepared.device).train()
    train = prepared.splits.train
    tokens = Pretokenised(loaded.tokenizer, train["text"].tolist(), prepared.settings.max_length, prepared.device,
                          train["label"].to_numpy())
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr,
                                  fused=prepared.device.type == "cuda")
    _sync(prepared.device)
    started = time.perf_counter()
    for step in range(steps):
        loss = model(**tokens.batch(batch_indices(step, batch, len(train), 0))).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    _sync(prepared.device)
    return time.perf_counter() - started


def retrain_seconds(plan: dict, steps: int, batch: int, lr: float, device: str) -> float:
    from analysis.training.retrain import retrain
    with tempfile.TemporaryDirectory() as cache:
        config = TrainSettings(steps=steps, batch_size=batch, lr=lr, test_size=64, checkpoint_every=100_000)
        entry = retrain(plan, config, Store(Path(cache)), device=device)
        return entry.meta["train_seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--steps", default="50,250", help="two step counts; the per-step time is their difference")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    short, long = (int(s) for s in args.steps.split(","))
    with tempfile.TemporaryDirectory() as cache:
        store = Store(Path(cache))
        settings = RunSettings(device=args.device, dtype=args.dtype)
        prepared = prepare(settings, store)
        from analysis.planning.methods import make_plan
        plan = make_plan(prepared.run, "uniform", "r4")
        plain, ours = [], []
        for _ in range(args.repeats):
            plain.append((plain_loop_seconds(plan, prepared, long, args.batch, args.lr)
                          - plain_loop_seconds(plan, prepared, short, args.batch, args.lr)) / (long - short))
            ours.append((retrain_seconds(plan, long, args.batch, args.lr, args.device)
                         - retrain_seconds(plan, short, args.batch, args.lr, args.device)) / (long - short))
    result = {"device": torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor(),
              "dtype": args.dtype, "batch": args.batch, "steps": [short, long], "repeats": args.repeats,
              "torch": torch.__version__, "plain_step_ms": [1000 * s for s in plain],
              "retrain_step_ms": [1000 * s for s in ours],
              "plain_median_ms": 1000 * statistics.median(plain), "retrain_median_ms": 1000 * statistics.median(ours)}
    result["ratio"] = result["retrain_median_ms"] / result["plain_median_ms"]
    print(f"| {args.dtype} | batch {args.batch} | plain loop {result['plain_median_ms']:.1f} ms/step | retrain "
          f"{result['retrain_median_ms']:.1f} ms/step | ratio {result['ratio']:.2f} (target <= 1.3) |")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
