"""Benchmark: one Shapley coalition sample vs a plain LoRA forward+backward, 32 samples (a coalition
per batch, and a coalition per pass over all examples), and an 8B-shaped model with gradient
checkpointing. Run on the GPU machine; numbers go to BENCHMARKS.md.

    python bench/bench_shapley.py --examples 256 --length 512 --out results.json

Models are built from a config with random weights (timing does not depend on them); the
8B-shaped one is only timed for one sample and its peak memory. Prints the ratios last.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from analysis.signals.shapley import sampling as shapley  # noqa: E402
from analysis.model.capture import adaptable_modules  # noqa: E402
from analysis.signals.lora.gated_lora import gated_lora, lora_config  # noqa: E402
from analysis.signals.shapley import checkpointing_in_eval, loss_function  # noqa: E402
from llama_shapes import random_llama  # noqa: E402


def make_batches(examples: int, length: int, batch_size: int) -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    batches = []
    for start in range(0, examples, batch_size):
        ids = torch.randint(0, 128256, (min(batch_size, examples - start), length), generator=generator).cuda()
        batches.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids})
    return batches


def timed(function, repeats: int) -> list[float]:
    function()  # warm-up: kernels, allocator
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        started = time.perf_counter()
        function()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return times


def floor_passes(model, batches, repeats: int) -> dict:
    """The base model alone: a plain forward, and forward+backward to the input embeddings (the least a
    gate gradient in block 0 needs: every block's backward for its input, no weight gradients)."""
    embed = model.get_input_embeddings()

    def forward():
        with torch.no_grad():
            for batch in batches:
                model(**batch)

    def forward_backward():
        for batch in batches:
            embeds = embed(batch["input_ids"]).detach().requires_grad_(True)
            model(inputs_embeds=embeds, attention_mask=batch["attention_mask"], labels=batch["labels"]).loss.backward()

    requires = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    result = {}
    for name, function in (("forward", forward), ("forward_backward", forward_backward)):
        times = timed(function, repeats)
        result[name] = {"times_s": times, "median_s": statistics.median(times)}
    for p, flag in zip(model.parameters(), requires):
        p.requires_grad_(flag)
    return result


def plain_lora_pass(model, modules, batches, r: int, repeats: int) -> dict:
    """peft LoRA (its defaults: float32 adapters, trainable), forward+backward over all batches."""
    from peft import get_peft_model

    peft_model = get_peft_model(model, lora_config(modules, r, 2 * r))

    def step():
        for batch in batches:
            peft_model(**batch).loss.backward()
        peft_model.zero_grad(set_to_none=True)

    torch.cuda.reset_peak_memory_stats()
    times = timed(step, repeats)
    result = {"times_s": times, "median_s": statistics.median(times),
              "peak_gib": torch.cuda.max_memory_allocated() / 2**30}
    peft_model.unload()
    return result


def coalition_samples(model, modules, batches, r: int, repeats: int, samples: int, checkpointing: bool,
                      compile_model: bool = False) -> dict:
    """One coalition over all examples (timed), then `samples` coalitions in both modes of the signal."""
    with gated_lora(model, modules, r, 2 * r) as gated, checkpointing_in_eval(model, checkpointing):
        with torch.no_grad():  # a trained-looking adapter: B non-zero
            for p in gated.lora_parameters()[1::2]:
                p.normal_(0, 0.01)
        gated.freeze_adapter(torch.bfloat16)
        if compile_model:
            gated.model = torch.compile(gated.model)
        shape = tuple(gated.gates.shape)
        mask = shapley.sample_coalitions(1, shape, torch.Generator().manual_seed(1))[0]
        whole, _, _ = loss_function(gated, batches, "causal-lm", per_batch=False)
        torch.cuda.reset_peak_memory_stats()
        times = timed(lambda: whole(mask, 0), repeats)
        result = {"times_s": times, "median_s": statistics.median(times),
                  "peak_gib": torch.cuda.max_memory_allocated() / 2**30, "players": gated.gates.numel()}
        for mode, per_batch in (("per_batch", True), ("per_pass", False)):
            if not samples:
                break
            gradient_at, _, _ = loss_function(gated, batches, "causal-lm", per_batch=per_batch)
            torch.cuda.synchronize()
            started = time.perf_counter()
            estimate = shapley.estimate(gradient_at, shape, samples, torch.Generator().manual_seed(2),
                                        parts=len(batches) if per_batch else 1)
            torch.cuda.synchronize()
            result[mode] = {"samples": estimate.count, "total_s": time.perf_counter() - started,
                            "mean_stderr_over_mean_abs": float(estimate.stderr().mean() / estimate.mean().abs().mean())}
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--large-examples", type=int, default=64, help="examples for the 8B-shaped check (0: skip)")
    parser.add_argument("--compile", action="store_true", help="also time one coalition with torch.compile")
    parser.add_argument("--out", type=Path, default=Path("bench_shapley.json"))
    args = parser.parse_args()
    results: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                     "date": time.strftime("%Y-%m-%d"), "args": {k: str(v) for k, v in vars(args).items()}}

    model = random_llama("1b", device="cuda")
    modules = adaptable_modules(model)
    batches = make_batches(args.examples, args.length, args.batch_size)
    results["floor"] = floor_passes(model, batches, args.repeats)
    results["plain_lora"] = plain_lora_pass(model, modules, batches, args.rank, args.repeats)
    results["coalition"] = coalition_samples(model, modules, batches, args.rank, args.repeats, args.samples, False)
    results["ratio"] = results["coalition"]["median_s"] / results["plain_lora"]["median_s"]
    if args.compile:
        started = time.perf_counter()
        try:
            results["compiled"] = coalition_samples(model, modules, batches, args.rank, args.repeats, 0, False, True)
            results["compiled"]["first_call_included_s"] = time.perf_counter() - started
        except Exception as exc:  # an experiment: record why it failed and go on
            results["compiled"] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
    del model, batches
    torch.cuda.empty_cache()
    if args.large_examples:
        model = random_llama("8b", device="cuda")
        batches = make_batches(args.large_examples, args.length, args.batch_size)
        results["8b_checkpointed"] = coalition_samples(model, adaptable_modules(model), batches, args.rank, 1, 0,
                                                       True)
        results["8b_checkpointed"]["params_b"] = sum(p.numel() for p in model.parameters()) / 1e9
    args.out.write_text(json.dumps(results, indent=1))

    plain, sample, floor = results["plain_lora"], results["coalition"], results["floor"]
    print(f"\ndevice {results['device']}, torch {results['torch']}")
    print(f"base model forward       {floor['forward']['median_s']:.3f} s; forward+backward to the inputs "
          f"{floor['forward_backward']['median_s']:.3f} s (the floor of one coalition)")
    print(f"plain LoRA r{args.rank} fwd+bwd   {plain['median_s']:.3f} s  peak {plain['peak_gib']:.1f} GiB "
          f"({args.examples} x {args.length} tokens)")
    print(f"one coalition sample    {sample['median_s']:.3f} s  peak {sample['peak_gib']:.1f} GiB  "
          f"ratio {results['ratio']:.3f}x (target <= 1.3x), {sample['players']} players")
    if "compiled" in results:
        compiled = results["compiled"]
        print("torch.compile: " + (compiled["error"] if "error" in compiled else
                                   f"one coalition {compiled['median_s']:.3f} s "
                                   f"(compile included in {compiled['first_call_included_s']:.0f} s total)"))
    for mode, label in (("per_batch", "a coalition per batch"), ("per_pass", "a coalition per pass")):
        if mode in sample:
            row = sample[mode]
            print(f"{row['samples']} samples, {label}: {row['total_s']:.1f} s (target < 60 s), "
                  f"mean stderr / mean |value| {row['mean_stderr_over_mean_abs']:.3f}")
    if "8b_checkpointed" in results:
        large = results["8b_checkpointed"]
        print(f"8B-shaped ({large['params_b']:.2f}B), checkpointed: one sample over {args.large_examples} examples "
              f"{large['median_s']:.2f} s, peak {large['peak_gib']:.1f} GiB (must fit 80 GB)")


if __name__ == "__main__":
    main()
