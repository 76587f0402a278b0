"""Benchmark: the default analysis end to end, as a user runs it, and the pieces that made it slow.

    python bench/bench_analysis_speed.py --out analysis_speed.json        # on the GPU machine (MiniLM, bfloat16)
    python bench/bench_analysis_speed.py --smoke                          # on a CPU: a tiny model, to check it runs

1. `python -m analysis run --device D` into a fresh cache: each signal's seconds (from its entry, the warm-up
   its own), the `done in` the run prints and the process's wall time; then the same command again, all cached.
   With --before, the same run also with CUDA graphs off (ANALYSIS_CUDA_GRAPHS=0) and one Shapley coalition per
   pass, into another fresh cache: this code with its two switches off. With --baseline-repo DIR, the run and
   the cached re-run of the code in DIR too (a checkout of the commit before, for a before/after on one GPU).
2. In one process on the same device: the warm-up's and SoRA's milliseconds per step with CUDA graphs on and off
   (the marginal cost: the difference between a run of 2N steps and one of N, over N); Shapley coalitions per
   second at coalitions_per_pass 1 and at the default (measured from memory), with the largest difference
   between their estimates (the same draws: it is float rounding); and with --check, a graph against eager steps
   on the same fixed-length batches in float32 with dropout off (they should agree to rounding).

JSON goes to --out, or $OUT/bench_analysis_speed.json when $OUT is set. Every number says which device gave it.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from analysis.settings import RunSettings  # noqa: E402
from analysis.signals.context import AnalysisContext, prepare  # noqa: E402
from analysis.signals.lora import graphed_loss  # noqa: E402
from analysis.signals.lora.warmup import WarmupConfig, _train as train_warmup  # noqa: E402
from analysis.signals.registry import get_signal, make_config  # noqa: E402
from analysis.signals.sora.gate_training import SoraConfig, train as train_sora  # noqa: E402
from analysis.store.cache import Store  # noqa: E402


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def tiny_setting(root: Path) -> list[str]:
    """--smoke: a two-block BERT classifier from a config with the embedded tokenizer, 300 made-up reviews."""
    import pandas as pd
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from analysis.model.sources.models import model_files

    tokenizer = AutoTokenizer.from_pretrained(model_files("minilm", root)[0])
    torch.manual_seed(0)
    BertForSequenceClassification(BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=64, num_labels=2)).save_pretrained(root / "bert")
    tokenizer.save_pretrained(root / "bert")
    words = ["good", "bad", "fine", "awful", "great", "dull"]
    texts = [f"the film {i} was {words[i % 6]} " + "and long " * (i % 7) for i in range(300)]
    pd.DataFrame({"text": texts, "label": [i % 2 for i in range(300)]}).to_csv(root / "reviews.csv", index=False)
    return ["--model", str(root / "bert"), "--data", str(root / "reviews.csv"), "--val-size", "16", "--max-length",
            "32"]


# --smoke: every training signal at a handful of steps, so the whole bench takes a minute on a CPU.
SMOKE_OPTIONS = ["--set", "shapley.warmup_steps=4", "--set", "adalora.warmup_steps=4", "--set", "shapley.samples=4",
                 "--set", "sora.steps=4", "--set", "sora.rounds=1", "--set", "sora.round_steps=2"]


def run_cli(setting: list[str], cache: Path, device: str, env: dict | None = None, repo: Path = REPO) -> dict:
    """One `python -m analysis run` of the code in `repo`: wall seconds, the printed `done in`, and each entry's
    seconds as stored (the first signal computed includes loading the model; adalora's, the warm-up it starts)."""
    command = [sys.executable, "-m", "analysis", "run", "--device", device, "--cache-dir", str(cache), *setting]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=repo, capture_output=True, text=True, env={**os.environ, **(env or {})})
    wall = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    printed = re.search(r"done in ([\d.]+)s", done.stdout)
    seconds = {}
    for entry in Store(cache).entries():
        name = entry.meta.get("signal") or entry.kind
        seconds[name] = entry.meta.get("seconds")
    graphs = [e.meta.get("cuda_graphs") for e in Store(cache).entries() if e.kind == "warmup"]
    return {"wall_s": round(wall, 2), "done_in_s": float(printed.group(1)) if printed else None,
            "computed": sorted(re.findall(r"^(\w+)\s+computed", done.stdout, re.M)),
            "signal_s": seconds, "warmup_cuda_graphs": graphs[0] if graphs else None, "stdout": done.stdout[-3000:]}


@contextlib.contextmanager
def environment(name: str, value: str):
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def context_for(setting: list[str], device: str, store: Path, dtype: str = "auto") -> AnalysisContext:
    pairs = dict(zip(setting[::2], setting[1::2]))
    fields = {"model": pairs.get("--model", "minilm"), "data": pairs.get("--data", "rotten_tomatoes"), "device": device,
              "dtype": dtype}
    if "--val-size" in pairs:
        fields["val_size"] = int(pairs["--val-size"])
    if "--max-length" in pairs:
        fields["max_length"] = int(pairs["--max-length"])
    return AnalysisContext(prepare(RunSettings(**fields), Store(store), warn=None))


def timed(function, device: str) -> float:
    synchronize(device)
    started = time.perf_counter()
    function()
    synchronize(device)
    return time.perf_counter() - started


def ms_per_step(train, steps: int, device: str) -> dict:
    """Marginal milliseconds per step: (time of 2N steps - time of N) / N, so the fixed costs (a graph's
    capture, tokenizer start-up) cancel; with the totals."""
    train(steps)   # once to warm kernels and the allocator
    short, long = timed(lambda: train(steps), device), timed(lambda: train(2 * steps), device)
    return {"steps": steps, "ms_per_step": round(1e3 * (long - short) / steps, 2),
            f"total_s_{steps}": round(short, 3), f"total_s_{2 * steps}": round(long, 3)}


def step_timings(context: AnalysisContext, steps: int, device: str) -> dict:
    out = {}
    for graphs in ("1", "0"):
        with environment(graphed_loss.ENVIRONMENT, graphs):
            label = "graphs_on" if graphs == "1" else "graphs_off"
            out[f"warmup_{label}"] = ms_per_step(
                lambda n: train_warmup(context, WarmupConfig(warmup_steps=n)), steps, device)
            out[f"sora_{label}"] = ms_per_step(
                lambda n: train_sora(context, SoraConfig(steps=n, rounds=0)), steps, device)
    return out


def shapley_rates(context: AnalysisContext, samples: int, device: str, warmup_steps: int) -> dict:
    """Coalitions per second at one per pass and at the default, same draws (the warm-up cached first)."""
    signal = get_signal("shapley")
    options = {"samples": str(samples), "tolerance": "0", "warmup_steps": str(warmup_steps)}
    signal.compute(context, make_config(signal, {**options, "samples": "2", "coalitions_per_pass": "1"}))  # warm-up
    results, seconds = {}, {}
    for per_pass in ("1", "0"):
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        config = make_config(signal, {**options, "coalitions_per_pass": per_pass})
        seconds[per_pass] = timed(lambda: results.__setitem__(per_pass, signal.compute(context, config)), device)
    one, default = results["1"], results["0"]
    scale = float(one.tensors["samples"].abs().max())
    return {"samples": samples,
            "per_pass_1": {"coalitions_per_s": round(samples / seconds["1"], 2), "seconds": round(seconds["1"], 3)},
            "per_pass_default": {"coalitions_per_pass": default.meta["coalitions_per_pass"],
                                 "coalitions_per_s": round(samples / seconds["0"], 2),
                                 "seconds": round(seconds["0"], 3),
                                 "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)
                                 if device.startswith("cuda") else None},
            "same_masks": bool(torch.equal(one.tensors["masks"], default.tensors["masks"])),
            "largest_sample_difference_relative": float((one.tensors["samples"] - default.tensors["samples"]).abs()
                                                        .max()) / (scale or 1.0)}


def graph_check(setting: list[str], device: str, store: Path, steps: int) -> dict:
    """Graphed against eager steps on the same fixed-length batches: float32, every dropout off, so the two should
    agree to float rounding. Eager here is the fallback a failed capture takes."""
    context = context_for(setting, device, store, dtype="float32")
    for module in context.model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    runs = {}
    for graphed in (True, False):
        with contextlib.ExitStack() as stack:
            if not graphed:   # pretend the capture failed: same batches, eager passes
                original = torch.cuda.make_graphed_callables
                torch.cuda.make_graphed_callables = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("eager"))
                stack.callback(setattr, torch.cuda, "make_graphed_callables", original)
            context.warn = lambda message: None
            warm = train_warmup(context, WarmupConfig(warmup_steps=steps))
            sora = train_sora(context, SoraConfig(steps=steps, rounds=0))
        runs[graphed] = (warm, sora)
    (warm_g, sora_g), (warm_e, sora_e) = runs[True], runs[False]
    losses = [torch.tensor(w.tables["losses"]["loss"].to_numpy()) for w in (warm_g, warm_e)]
    sora_losses = [torch.tensor([row[4] for row in s["history"]]) for s in (sora_g, sora_e)]

    def relative(a, b):
        return float((a - b).abs().max()) / (float(b.abs().max()) or 1.0)

    return {"graphed": bool(warm_g.meta.get("cuda_graphs")), "steps": steps,
            "warmup_loss_max_relative_difference": relative(losses[0], losses[1]),
            "warmup_adapter_max_relative_difference": max(relative(warm_g.tensors[k], warm_e.tensors[k])
                                                          for k in warm_e.tensors),
            "sora_loss_max_relative_difference": relative(sora_losses[0], sora_losses[1]),
            "sora_gates_max_relative_difference": relative(sora_g["learned"], sora_e["learned"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--smoke", action="store_true", help="a tiny model on the CPU: checks the bench runs")
    parser.add_argument("--before", action="store_true", help="also run the default analysis with CUDA graphs off "
                                                              "and one Shapley coalition per pass")
    parser.add_argument("--check", action="store_true", help="graphs against eager steps in float32, dropout off")
    parser.add_argument("--baseline-repo", type=Path, default=None,
                        help="another checkout (the code before this work, say): its default run and cached re-run "
                             "too, on the same device in the same session")
    parser.add_argument("--steps", type=int, default=100, help="N of the marginal ms/step (runs of N and 2N steps)")
    parser.add_argument("--samples", type=int, default=64, help="Shapley coalitions per timed estimate")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.smoke:
        args.device, args.steps, args.samples = "cpu", 3, 8
    out = args.out or (Path(os.environ["OUT"]) / "bench_analysis_speed.json" if os.environ.get("OUT")
                       else Path("bench_analysis_speed.json"))
    work = Path(tempfile.mkdtemp(prefix="analysis-speed-"))
    setting = tiny_setting(work) if args.smoke else []
    options = SMOKE_OPTIONS if args.smoke else []
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    results = {"device": device_name, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M"),
               "args": {k: str(v) for k, v in vars(args).items()}}

    def save():
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1))

    results["default_run"] = run_cli(setting + options, work / "cache", args.device)
    results["cached_rerun"] = run_cli(setting + options, work / "cache", args.device)
    print(f"default run: done in {results['default_run']['done_in_s']} s (wall {results['default_run']['wall_s']} s); "
          f"cached re-run: done in {results['cached_rerun']['done_in_s']} s (wall {results['cached_rerun']['wall_s']} s)"
          f"\nper signal: {results['default_run']['signal_s']}", flush=True)
    save()
    if args.baseline_repo:
        baseline = args.baseline_repo.resolve()
        results["baseline_run"] = run_cli(setting + options, work / "cache-baseline", args.device, repo=baseline)
        results["baseline_cached_rerun"] = run_cli(setting + options, work / "cache-baseline", args.device,
                                                   repo=baseline)
        print(f"baseline ({baseline}): done in {results['baseline_run']['done_in_s']} s, cached re-run done in "
              f"{results['baseline_cached_rerun']['done_in_s']} s (wall {results['baseline_cached_rerun']['wall_s']} s)"
              f"\nper signal: {results['baseline_run']['signal_s']}", flush=True)
        save()
    if args.before:
        results["before_run"] = run_cli(setting + options + ["--set", "shapley.coalitions_per_pass=1"],
                                        work / "cache-before", args.device, {graphed_loss.ENVIRONMENT: "0"})
        print(f"graphs off, one coalition per pass: done in {results['before_run']['done_in_s']} s\n"
              f"per signal: {results['before_run']['signal_s']}", flush=True)
        save()
    context = context_for(setting, args.device, work / "cache-steps")
    results["steps"] = step_timings(context, args.steps, args.device)
    print(json.dumps(results["steps"], indent=1), flush=True)
    save()
    results["shapley"] = shapley_rates(context, args.samples, args.device, warmup_steps=args.steps)
    print(json.dumps(results["shapley"], indent=1), flush=True)
    save()
    if args.check:
        results["check"] = graph_check(setting, args.device, work / "cache-check", min(args.steps, 20))
        print(json.dumps(results["check"], indent=1), flush=True)
        save()
    print(f"written to {out}")


if __name__ == "__main__":
    main()
