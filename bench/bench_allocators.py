"""Benchmark: the allocators practitioners already have (eva, alpha, gora) against the passes they need.

    python bench/bench_allocators.py --device cuda --out allocators.json            # the GPU machine
    python bench/bench_allocators.py --device cpu --shape tiny --alpha-shape tiny   # a check on a CPU

- eva: peft's EVA as the signal runs it (all examples in one step) vs one forward pass over the same
  examples in batches: EVA is forward-only, so a forward is its floor.
- gora: gradients averaged over the batches plus the importance vs one forward+backward pass with
  gradients of the adapted weights (its floor).
- alpha: spectra + WeightWatcher fits of every adaptable matrix (weights only), on the 1B shape and on
  the 8B shape (224 matrices, up to 4096 x 14336), vs one forward pass of that model over the batches.

Models are Llama-3.x shapes with random weights (bench/llama_shapes.py; timing does not depend on the
weights). Prints each ratio as soon as it is measured (the 8B alpha alone takes minutes); numbers go to
BENCHMARKS.md.
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
from analysis.model.capture import adaptable_modules  # noqa: E402
from analysis.signals.alpha.esd_fit import fit_power_law, spectra  # noqa: E402
from analysis.signals.eva.peft_eva import eva_lora_config, run_eva  # noqa: E402
from analysis.signals.gora.gradient_importance import averaged_gradients, importance  # noqa: E402
from llama_shapes import make_batches, random_llama  # noqa: E402

TINY = dict(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
TINY_VOCAB = 512


def build(shape: str, layers: int | None, device: str):
    if shape != "tiny":
        return random_llama(shape, layers, device), 128256
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=TINY_VOCAB, **{**TINY, **({"num_hidden_layers": layers} if layers else {})})
    with torch.device(device):
        model = LlamaForCausalLM(config).to(torch.bfloat16 if device == "cuda" else torch.float32)
    return model.eval(), TINY_VOCAB


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(function, repeats: int, device: str) -> dict:
    function()  # warm-up: kernels, allocator, lazy imports
    times = []
    for _ in range(repeats):
        sync(device)
        started = time.perf_counter()
        function()
        sync(device)
        times.append(time.perf_counter() - started)
    return {"times_s": times, "median_s": statistics.median(times)}


def forward_pass(model, batches):
    def run():
        with torch.no_grad():
            for batch in batches:
                model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=1)
    return run


def forward_backward_pass(model, weights, batches):
    """The floor of GoRA: loss forward+backward with gradients of the adapted weights only."""
    def run():
        for p in model.parameters():
            p.requires_grad_(False)
        for w in weights:
            w.requires_grad_(True)
        for batch in batches:
            torch.autograd.grad(model(**batch).loss, weights)
        for w in weights:
            w.requires_grad_(False)
    return run


def bench_eva(model, batches, r: int, repeats: int, device: str) -> dict:
    modules = adaptable_modules(model)
    one_step = [{"input_ids": torch.cat([b["input_ids"] for b in batches]),
                 "attention_mask": torch.cat([b["attention_mask"] for b in batches])}]
    config = eva_lora_config([m.path for m in modules], r, 2.0, 0.99)
    forwards = {}

    def run():
        forwards["count"] = run_eva(model, one_step, config).forwards
    result = timed(run, repeats, device)
    return {**result, "forwards": forwards["count"]}


def bench_gora(model, batches, repeats: int, device: str) -> dict:
    weights = [model.get_submodule(m.path).weight for m in adaptable_modules(model)]

    def run():
        grads, _ = averaged_gradients(model, weights, batches)
        return [importance(w, g) for w, g in zip(weights, grads)]
    return timed(run, repeats, device)


def bench_alpha(model, repeats: int, device: str, method: str = "svdvals") -> dict:
    modules = adaptable_modules(model)
    weights = [model.get_submodule(m.path).weight for m in modules]
    parts = {}

    def run():
        started = time.perf_counter()
        with torch.no_grad():
            evals = spectra(weights, torch.float32, method=method)
            sync(device)
            middle = time.perf_counter()
            [fit_power_law(e) for e in evals]
        sync(device)
        parts.update(svd_s=middle - started, fit_s=time.perf_counter() - middle)
    result = timed(run, repeats, device)
    largest = max(weights, key=lambda w: w.numel())
    return {**result, **parts, "matrices": len(weights), "largest": list(largest.shape)}


def say(shape: str, name: str, result: dict) -> None:
    """One measurement as soon as it is taken (a whole run takes minutes on the 8B shape)."""
    if name == "eva":
        line = (f"{result['median_s']:.3f} s = {result['vs_forward']:.2f}x one forward pass "
                f"({result['forwards']} forwards of all examples)")
    elif name == "gora":
        line = f"{result['median_s']:.3f} s = {result['vs_forward_backward']:.2f}x one forward+backward pass"
    else:
        kind = "svd" if name == "alpha" else "eigvalsh"
        line = (f"{result['median_s']:.3f} s for {result['matrices']} matrices ({kind} {result['svd_s']:.3f} s, "
                f"fit {result['fit_s']:.3f} s) = {result['vs_forward']:.2f}x one forward pass")
    print(f"{shape} {name.replace('_gram', ' (spectrum=gram)')}: {line}", flush=True)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shape", default="1b", help="model for eva and gora: 1b, 8b or tiny")
    parser.add_argument("--alpha-shape", default="1b,8b", help="comma-separated shapes for alpha")
    parser.add_argument("--layers", type=int, default=None, help="fewer layers than the shape (for a quick check)")
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--r", type=int, default=8, help="EVA's r (rho 2)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--signals", default="eva,gora,alpha")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    signals = set(args.signals.split(","))
    report: dict = {"device": args.device, "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None,
                    "examples": args.examples, "length": args.length, "batch_size": args.batch_size}
    if signals & {"eva", "gora"}:
        model, vocab = build(args.shape, args.layers, args.device)
        batches = make_batches(vocab, args.examples, args.length, args.batch_size, args.device)
        weights = [model.get_submodule(m.path).weight for m in adaptable_modules(model)]
        floor = {"forward": timed(forward_pass(model, batches), args.repeats, args.device),
                 "forward_backward": timed(forward_backward_pass(model, weights, batches), args.repeats, args.device)}
        report[args.shape] = {"floor": floor}
        if "eva" in signals:
            eva = bench_eva(model, batches, args.r, args.repeats, args.device)
            eva["vs_forward"] = eva["median_s"] / floor["forward"]["median_s"]
            report[args.shape]["eva"] = eva
            say(args.shape, "eva", eva)
        if "gora" in signals:
            gora = bench_gora(model, batches, args.repeats, args.device)
            gora["vs_forward_backward"] = gora["median_s"] / floor["forward_backward"]["median_s"]
            report[args.shape]["gora"] = gora
            say(args.shape, "gora", gora)
        del model, batches, weights
        if args.device == "cuda":
            torch.cuda.empty_cache()
    if "alpha" in signals:
        for shape in [s for s in args.alpha_shape.split(",") if s]:
            model, vocab = build(shape, args.layers, args.device)
            batches = make_batches(vocab, args.examples, args.length, args.batch_size, args.device)
            forward = timed(forward_pass(model, batches), args.repeats, args.device)
            alpha = bench_alpha(model, args.repeats, args.device)
            alpha["vs_forward"] = alpha["median_s"] / forward["median_s"]
            gram = bench_alpha(model, args.repeats, args.device, "gram")     # the --set alpha.spectrum=gram option
            gram["vs_forward"] = gram["median_s"] / forward["median_s"]
            report.setdefault(shape, {})["alpha"] = {**alpha, "forward": forward}
            report[shape]["alpha_gram"] = gram
            say(shape, "alpha", alpha)
            say(shape, "alpha_gram", gram)
            del model, batches
            if args.device == "cuda":
                torch.cuda.empty_cache()
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
