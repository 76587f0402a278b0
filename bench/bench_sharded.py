"""Benchmark: a model larger than one GPU, split across the GPUs of one host (what `--device-map auto` does).

    python bench/bench_sharded.py --shape 70b --out sharded.json          # two H200s: Llama-3.1-70B shape
    python bench/bench_sharded.py --shape tiny --examples 16 --length 32  # a check on a CPU

The model is built from the config with random bfloat16 weights drawn on the GPU each layer is placed on
(bench/llama_shapes.split_llama; nothing is downloaded, and 141 GB of weights never pass through host
memory). Then, with the engine's own functions:

- capture: last-token states of every layer over `--examples` random sequences of `--length` tokens, then
  the CKA matrix of all states and TwoNN's intrinsic dimension of each (what `run --signals cka,id` does);
- one Shapley coalition: a gated rank-8 LoRA on every adaptable matrix, one forward+backward over the same
  examples with activation checkpointing (shapley.gradient_checkpointing), giving every gate's gradient.

Prints seconds and peak memory per GPU for each part, one JSON object at the end.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from analysis.model.capture import adaptable_modules, pooled_hidden_states  # noqa: E402
from analysis.signals.cka.linear_cka import cka_matrix  # noqa: E402
from analysis.signals.id.twonn import twonn  # noqa: E402
from analysis.signals.lora.gated_lora import gated_lora  # noqa: E402
from analysis.signals.shapley import checkpointing_in_eval, loss_function  # noqa: E402
from analysis.signals.shapley.sampling import sample_coalitions  # noqa: E402
from llama_shapes import VOCAB, make_batches, split_llama  # noqa: E402


def gpus() -> list[int]:
    return list(range(torch.cuda.device_count()))


def synchronise() -> None:
    for gpu in gpus():
        torch.cuda.synchronize(gpu)


def peaks_gib() -> dict[str, float]:
    return {f"cuda:{gpu}": round(torch.cuda.max_memory_allocated(gpu) / 2**30, 2) for gpu in gpus()}


def reset_peaks() -> None:
    for gpu in gpus():
        torch.cuda.reset_peak_memory_stats(gpu)


def timed_part(name: str, function, report: dict):
    synchronise()
    reset_peaks()
    started = time.perf_counter()
    result = function()
    synchronise()
    report[name] = {"seconds": round(time.perf_counter() - started, 2), "peak_gib": peaks_gib()}
    print(f"{name}: {report[name]['seconds']} s, peak memory per GPU {report[name]['peak_gib']} GiB", flush=True)
    return result


def capture(model, batches: list[dict]) -> dict:
    per_batch = [by["last"] for by in pooled_hidden_states(model, batches, ["last"])]
    states = [torch.cat(layer) for layer in zip(*per_batch)]
    matrix = cka_matrix(states)
    dimensions = [twonn(state.float()) for state in states]
    return {"states": len(states), "cka_consecutive_min": float(matrix.diagonal(1).nan_to_num(1.0).min()),
            "id_median": float(torch.tensor(dimensions).nanmedian())}


def one_coalition(model, batches: list[dict], rank: int) -> dict:
    modules = adaptable_modules(model)
    with gated_lora(model, modules, r_max=rank, alpha=2.0 * rank) as gated:
        gated.freeze_adapter(torch.bfloat16)
        gradient_at, _, _ = loss_function(gated, batches, "causal-lm", per_batch=False)
        mask = sample_coalitions(1, tuple(gated.gates.shape), torch.Generator().manual_seed(0))[0]
        with checkpointing_in_eval(model, True):
            loss, gradient = gradient_at(mask.to(gated.gates.device), 0)
        return {"modules": len(modules), "gates": gated.gates.numel(), "loss": float(loss),
                "gradient_finite": bool(gradient.isfinite().all())}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="70b", help="70b, 8b, 1b or tiny")
    parser.add_argument("--layers", type=int, default=None, help="fewer layers than the shape (a quick check)")
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank of the Shapley coalition's adapter")
    parser.add_argument("--weights-gib", type=float, default=100.0,
                        help="most weights per GPU; the rest of its memory is left to activations")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    max_memory = {gpu: f"{args.weights_gib}GiB" for gpu in gpus()} if cuda else {"cpu": "64GiB"}
    report: dict = {"shape": args.shape, "layers": args.layers, "examples": args.examples, "length": args.length,
                    "batch_size": args.batch_size,
                    "gpus": [torch.cuda.get_device_name(gpu) for gpu in gpus()] if cuda else []}
    model, placement = timed_part("build", lambda: split_llama(args.shape, max_memory, args.layers), report)
    devices = sorted({str(device) for device in placement.values()})
    report["placement"] = {device: sum(1 for d in placement.values() if str(d) == device) for device in devices}
    report["parameters_billion"] = round(sum(p.numel() for p in model.parameters()) / 1e9, 2)
    print(f"{report['parameters_billion']}B parameters; modules per device {report['placement']}", flush=True)
    first = f"cuda:{placement[next(iter(placement))]}" if cuda else "cpu"
    batches = make_batches(VOCAB.get(args.shape, 128256), args.examples, args.length, args.batch_size, first)
    report["capture_result"] = timed_part("capture + CKA + ID", lambda: capture(model, batches), report)
    report["coalition_result"] = timed_part("one Shapley coalition (checkpointed)",
                                            lambda: one_coalition(model, batches, args.rank), report)
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
