"""Benchmark: one SoRA training step vs one plain LoRA training step at the same r_max, on the
Llama-3.2-1B shape (random weights from a config). Run on the GPU machine; numbers go to BENCHMARKS.md.

    python bench/bench_sora.py --steps 8 --batch-size 16 --length 512

Both steps: forward, backward, AdamW on A and B (peft's float32 adapters). SoRA adds the L1 term on
the gates, one gradient clip, and the gates' own Adam step with the official masked update (the
default rule; BENCHMARKS.md figures before 2026-11-30 were taken with the soft threshold).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from bench_shapley import make_batches, timed  # noqa: E402
from llama_shapes import random_llama  # noqa: E402

from analysis.model.capture import adaptable_modules  # noqa: E402
from analysis.signals.lora.gated_lora import gated_lora, uniform_lora_config  # noqa: E402
from analysis.signals.sora.gate_rules import OfficialGateAdam  # noqa: E402
from analysis.signals.sora.gate_training import sora_step  # noqa: E402


def lora_steps(model, modules, batches, r: int, repeats: int) -> list[float]:
    from peft import get_peft_model

    peft_model = get_peft_model(model, uniform_lora_config(modules, r, 2 * r))
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-4)

    def steps():
        for batch in batches:
            peft_model(**batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    times = timed(steps, repeats)
    peft_model.unload()
    return times


def sora_steps(model, modules, batches, r: int, repeats: int, l1: float, xi: float) -> list[float]:
    gates = torch.randn(len(modules), r, generator=torch.Generator().manual_seed(0))
    with gated_lora(model, modules, r, 2 * r, gates=gates) as gated:
        weights = torch.optim.AdamW(gated.lora_parameters(), lr=1e-4)
        gate_optimizer = OfficialGateAdam([gated.gates], lr=1e-4, xi=xi)

        def steps():
            for batch in batches:
                sora_step(gated, batch, weights, gate_optimizer, l1, xi, "official", max_grad_norm=0.1)

        return timed(steps, repeats)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=8, help="training steps per timed repeat")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench_sora.json"))
    args = parser.parse_args()
    model = random_llama("1b", device="cuda")
    modules = adaptable_modules(model)
    batches = make_batches(args.steps * args.batch_size, args.length, args.batch_size)
    lora = lora_steps(model, modules, batches, args.rank, args.repeats)
    sora = sora_steps(model, modules, batches, args.rank, args.repeats, l1=1e-3, xi=2e-3)
    per_step = {"lora_s": statistics.median(lora) / args.steps, "sora_s": statistics.median(sora) / args.steps}
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
               "args": {k: str(v) for k, v in vars(args).items()}, "lora_times_s": lora, "sora_times_s": sora,
               **per_step, "ratio": per_step["sora_s"] / per_step["lora_s"],
               "peak_gib": torch.cuda.max_memory_allocated() / 2**30}
    args.out.write_text(json.dumps(results, indent=1))
    print(f"\ndevice {results['device']}, torch {results['torch']}")
    print(f"plain LoRA r{args.rank} step {per_step['lora_s'] * 1e3:.0f} ms, "
          f"SoRA step {per_step['sora_s'] * 1e3:.0f} ms ({args.batch_size} x {args.length} tokens): "
          f"ratio {results['ratio']:.3f}x (target <= 1.15x)")


if __name__ == "__main__":
    main()
