"""Benchmark: CKA + intrinsic dimension on a Llama-3.2-1B-shaped model vs a plain forward pass,
and the torch TwoNN vs scikit-dimension's. Run on the GPU machine; numbers go to BENCHMARKS.md.

    python bench/bench_representation.py --examples 4096 --length 512 --out results.json

Random weights from a config (timing does not depend on them) and a synthetic word-level
tokenizer, so nothing is downloaded. Prints the ratios last.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from analysis.signals.context import AnalysisContext, prepare  # noqa: E402
from analysis.settings import RunSettings  # noqa: E402
from analysis.signals.registry import get_signal, make_config  # noqa: E402
from analysis.store.cache import Store  # noqa: E402
from analysis.signals.id.twonn import twonn  # noqa: E402
from llama_shapes import random_llama  # noqa: E402


def synchronize():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def build_model_dir(root: Path, layers: int) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    random_llama("1b", layers).save_pretrained(root)
    vocab = {"[PAD]": 0, "[UNK]": 1, **{f"w{i}": i + 2 for i in range(20000)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="[PAD]", unk_token="[UNK]",
                            eos_token="[PAD]").save_pretrained(root)
    return root


def build_data(path: Path, examples: int, length: int) -> Path:
    rng = np.random.default_rng(0)
    rows = int(examples / 0.98) + 8  # fractions (0.01, 0.98, 0.01): validation holds >= examples
    words = rng.integers(0, 20000, size=(rows, length + 16))
    pd.DataFrame({"text": [" ".join(f"w{w}" for w in row) for row in words]}).to_parquet(path)
    return path


def time_plain_forward(context: AnalysisContext) -> float:
    backbone = context.model.base_model
    synchronize()
    started = time.perf_counter()
    with torch.no_grad():
        for batch in context.batches(desc="forward"):
            backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    synchronize()
    return time.perf_counter() - started


def time_signals(prepared, loaded, names: list[str]) -> tuple[float, dict]:
    """The runner's work for these signals (one shared capture pass), without the store write."""
    context = AnalysisContext(prepared)
    context.__dict__["loaded"] = loaded  # reuse the loaded model: loading is not part of the analysis
    signals = [get_signal(n) for n in names]
    configs = [make_config(s) for s in signals]
    context.plan_collections(configs)
    synchronize()
    started = time.perf_counter()
    tables = {s.name: s.compute(context, c).table for s, c in zip(signals, configs)}
    synchronize()
    return time.perf_counter() - started, tables


def bench_twonn(n: int, d: int, repeats: int) -> dict:
    import skdim

    rng = np.random.default_rng(1)
    latent = rng.standard_normal((n, 12))
    points = np.tanh(latent @ rng.standard_normal((12, d)) / 3) + 0.01 * rng.standard_normal((n, d))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    on_device = torch.tensor(points, dtype=torch.float32, device=device)
    twonn(on_device)  # warm-up: kernels, cuBLAS handles
    gpu_times = []
    for _ in range(repeats * 3):
        synchronize()
        started = time.perf_counter()
        value = twonn(on_device)
        synchronize()
        gpu_times.append(time.perf_counter() - started)
    cpu_times = []
    for _ in range(repeats):
        started = time.perf_counter()
        reference = skdim.id.TwoNN().fit(points).dimension_
        cpu_times.append(time.perf_counter() - started)
    gpu, cpu = statistics.median(gpu_times), statistics.median(cpu_times)
    return {"n": n, "d": d, "torch_s": gpu, "skdim_s": cpu, "speedup": cpu / gpu, "torch_id": value,
            "skdim_id": reference, "rel_diff": abs(value - reference) / reference}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=4096)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--twonn-large", action="store_true", help="also N=50,000 x D=4096")
    parser.add_argument("--out", type=Path, default=Path("bench_representation.json"))
    args = parser.parse_args()
    results: dict = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                     "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}

    work = Path(tempfile.mkdtemp())
    model_dir = build_model_dir(work / "llama-1b-shape", args.layers)
    data = build_data(work / "data.parquet", args.examples, args.length)
    settings = RunSettings(model=str(model_dir), data=str(data), task="causal-lm", val_size=args.examples,
                           max_length=args.length, batch_size=args.batch_size, fractions=(0.01, 0.98, 0.01))
    prepared = prepare(settings, Store(work / "cache"))
    context = AnalysisContext(prepared)
    loaded = context.loaded
    time_plain_forward(context)  # warm-up pass
    forward = [time_plain_forward(context) for _ in range(args.repeats)]
    torch.cuda.reset_peak_memory_stats() if torch.cuda.is_available() else None
    runs = [time_signals(prepared, loaded, ["cka", "id"]) for _ in range(args.repeats)]
    signal_times = [t for t, _ in runs]
    results["analysis"] = {
        "examples": args.examples, "length": args.length, "batch_size": args.batch_size,
        "forward_s": forward, "cka_id_s": signal_times,
        "forward_median_s": statistics.median(forward), "cka_id_median_s": statistics.median(signal_times),
        "ratio": statistics.median(signal_times) / statistics.median(forward),
        "peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
        "id_dimensions": runs[-1][1]["id"][["layer", "id_in", "id_out", "value"]].to_dict("records"),
        "cka_importance": runs[-1][1]["cka"][["layer", "value"]].to_dict("records"),
    }
    del context, loaded
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    results["twonn"] = [bench_twonn(4096, 2048, args.repeats), bench_twonn(8192, 2048, args.repeats)]
    if args.twonn_large:
        points = torch.randn(50_000, 4096, device="cuda" if torch.cuda.is_available() else "cpu")
        torch.cuda.reset_peak_memory_stats() if torch.cuda.is_available() else None
        synchronize()
        started = time.perf_counter()
        value = twonn(points)
        synchronize()
        results["twonn_50k_4096"] = {"seconds": time.perf_counter() - started, "id": value,
                                     "peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30
                                     if torch.cuda.is_available() else None}
    args.out.write_text(json.dumps(results, indent=1))
    a = results["analysis"]
    print(f"\ndevice {results['device']}, torch {results['torch']}")
    print(f"plain forward  {a['forward_median_s']:.2f} s  ({args.examples} x {args.length} tokens)")
    print(f"CKA + ID       {a['cka_id_median_s']:.2f} s  ratio {a['ratio']:.3f}x  (target <= 1.25x)  "
          f"peak {a['peak_gpu_gib'] or 0:.1f} GiB")
    for row in results["twonn"]:
        print(f"TwoNN {row['n']}x{row['d']}: torch {row['torch_s'] * 1e3:.1f} ms, skdim {row['skdim_s']:.2f} s, "
              f"speedup {row['speedup']:.0f}x (target >= 100x at 8192), ids {row['torch_id']:.4f} vs "
              f"{row['skdim_id']:.4f} (rel {row['rel_diff']:.1e})")
    if "twonn_50k_4096" in results:
        large = results["twonn_50k_4096"]
        print(f"TwoNN 50000x4096: {large['seconds']:.2f} s, peak {large['peak_gpu_gib'] or 0:.1f} GiB")


if __name__ == "__main__":
    main()
