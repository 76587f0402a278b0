"""Benchmark: the analyses data-parallel, one process per GPU. Run it once per process count and compare
the throughputs (targets: >= 1.8x on two GPUs for Shapley and for the capture signals):

    torchrun --standalone --nproc_per_node 1 bench/bench_data_parallel.py --model /tmp/llama-1b-shape
    torchrun --standalone --nproc_per_node 2 bench/bench_data_parallel.py --model /tmp/llama-1b-shape

--model is a model directory with its tokenizer; where it does not exist, the main process first builds
one there (Llama-3.2-1B shape, random weights, a word-level tokenizer; bench_representation's). Timed
as the runner computes them, without loading or the store: CKA + intrinsic dimension (one shared
capture pass, --examples x --length tokens) and Shapley with a fixed number of coalitions (tolerance
0; each a pass over --shapley-examples, after an untimed warm-up). Prints one JSON line (main process).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from analysis.settings import RunSettings  # noqa: E402
from analysis.signals import parallel  # noqa: E402
from analysis.signals.context import AnalysisContext, prepare, resolve_device  # noqa: E402
from analysis.signals.lora.warmup import warm_up, warmup_options  # noqa: E402
from analysis.signals.registry import get_signal, make_config  # noqa: E402
from analysis.store.cache import Store  # noqa: E402
from bench_representation import build_data, build_model_dir, synchronize  # noqa: E402


def timed(work) -> float:
    """Seconds of `work` on every process, from a common start to the last one's end."""
    parallel.barrier()
    synchronize()
    started = time.perf_counter()
    work()
    synchronize()
    parallel.barrier()
    return time.perf_counter() - started


def capture_seconds(prepared, loaded, repeats: int) -> list[float]:
    """CKA (on the validation split) and intrinsic dimension from one shared capture pass, as the runner does."""
    signals = [get_signal("cka"), get_signal("id")]
    configs = [make_config(signals[0], {"split": "validation"}), make_config(signals[1])]

    def once():
        context = AnalysisContext(prepared)
        context.__dict__["loaded"] = loaded   # loading is not part of the analysis
        context.plan_collections(configs)
        for signal, config in zip(signals, configs):
            signal.compute(context, config)
    once()   # warm-up: kernels, allocator
    return [timed(once) for _ in range(repeats)]


def shapley_seconds(prepared, coalitions: int, options: dict[str, str]) -> float:
    signal = get_signal("shapley")
    config = make_config(signal, {"warmup_steps": "2", **options, "samples": str(coalitions), "tolerance": "0"})
    context = AnalysisContext(prepared)
    warm_up(context, warmup_options(config))   # cached before the clock starts
    return timed(lambda: signal.compute(context, config))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="model directory (built here when missing)")
    parser.add_argument("--layers", type=int, default=16, help="blocks of a model built here")
    parser.add_argument("--examples", type=int, default=4096, help="examples of the capture pass")
    parser.add_argument("--length", type=int, default=512, help="tokens per example")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--coalitions", type=int, default=32, help="Shapley coalitions, in all processes together")
    parser.add_argument("--shapley-examples", type=int, default=256, help="examples each coalition is evaluated on")
    parser.add_argument("--shapley-option", action="append", default=[], metavar="KEY=VALUE",
                        help="a shapley option (gradient_checkpointing=true, r_max=8, ...)")
    parser.add_argument("--repeats", type=int, default=3, help="timed capture passes (median reported)")
    parser.add_argument("--work", type=Path, default=Path(__file__).resolve().parent.parent / "cache" / "bench-dp",
                        help="the synthetic data and a cache for the warm-ups (default: under the ignored cache/)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    parallel.start(resolve_device(args.device))
    with parallel.main_first():   # one process builds the model and data, the others read them
        if not args.model.exists():
            build_model_dir(args.model, args.layers)
        args.work.mkdir(parents=True, exist_ok=True)
        data = args.work / f"words-{args.examples}x{args.length}.parquet"
        if not data.exists():
            build_data(data, args.examples, args.length)
        settings = RunSettings(model=str(args.model), data=str(data), task="causal-lm", val_size=args.examples,
                               max_length=args.length, batch_size=args.batch_size, fractions=(0.01, 0.98, 0.01),
                               device=args.device)
        prepared = prepare(settings, Store(args.work / "cache"))
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()   # not the model built above
    context = AnalysisContext(prepared)
    loaded = context.loaded
    capture = capture_seconds(prepared, loaded, args.repeats)
    del context, loaded
    # Shapley's warm-up trains on the train split, which the capture's fractions leave almost empty.
    small = prepare(dataclasses.replace(settings, val_size=args.shapley_examples, fractions=(0.49, 0.49, 0.02)),
                    Store(args.work / "cache"))
    options = dict(option.split("=", 1) for option in args.shapley_option)
    shapley = shapley_seconds(small, args.coalitions, options)
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    peaks = parallel.gather_in_order([peak], [parallel.rank()])
    if parallel.is_main():
        seconds = statistics.median(capture)
        print(json.dumps({
            "processes": parallel.count(), "device": str(prepared.device), "model": str(args.model),
            "capture": {"signals": "cka+id", "examples": args.examples, "length": args.length, "seconds": seconds,
                        "all_seconds": capture, "examples_per_s": args.examples / seconds,
                        "tokens_per_s": args.examples * args.length / seconds},
            "shapley": {"coalitions": args.coalitions, "examples": args.shapley_examples, "options": options,
                        "seconds": shapley, "coalitions_per_s": args.coalitions / shapley},
            "peak_gib_per_process": peaks}))
    parallel.stop()


if __name__ == "__main__":
    main()
