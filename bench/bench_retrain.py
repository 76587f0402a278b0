"""Retraining on the GPU through the real command line, against a plain peft LoRA training loop.

On a Llama-3.2-1B-shaped model (random weights, nothing downloaded) with synthetic text: a uniform
plan, `python -m analysis retrain` for a short and a long run (the difference is the cost of the
extra steps, so model loading and evaluation drop out), the same for a plain loop (peft + AdamW on
pre-tokenised batches), a killed retrain resumed from its checkpoint, and with two GPUs the same
entry point under `accelerate launch --multi_gpu`. Prints and writes JSON.

    python bench/bench_retrain.py --out retrain.json
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))
from bench_representation import build_data, build_model_dir  # noqa: E402


def cli(args: list[str], cache: Path, launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "ANALYSIS_CACHE_DIR": str(cache)}
    command = (launcher or [sys.executable]) + ["-m", "analysis", *args]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode:
        print(done.stdout[-2000:], done.stderr[-4000:])
    return done


def retrain_seconds(plan: Path, cache: Path, steps: int, seed: int, batch: int, launcher=None) -> float:
    out = cache / f"out-{steps}-{seed}-{bool(launcher)}"
    done = cli(["retrain", "--plan", str(plan), "--steps", str(steps), "--train-seed", str(seed), "--train-batch-size",
                str(batch), "--test-size", "32", "--checkpoint-every", "1000", "--out", str(out)], cache, launcher)
    assert done.returncode == 0, "retrain failed"
    return json.loads((out / "metrics.json").read_text())["train_seconds"]


def plain_loop_seconds(model_dir: Path, data: Path, steps: int, batch: int, length: int) -> list[float]:
    """Seconds per step of peft LoRA r8 on every linear + AdamW, batches tokenised up front."""
    import pandas as pd
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).cuda()
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
    texts = pd.read_parquet(data)["text"].tolist()
    batches = []
    for i in range(steps):
        encoded = tokenizer(texts[i * batch:(i + 1) * batch], padding=True, truncation=True, max_length=length,
                            return_tensors="pt").to("cuda")
        batches.append({**encoded, "labels": encoded["input_ids"]})
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    times = []
    for step_batch in batches:
        torch.cuda.synchronize()
        started = time.perf_counter()
        model(**{k: v for k, v in step_batch.items() if k != "token_type_ids"}).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    del model, optimizer
    torch.cuda.empty_cache()
    return times[5:]


def resume_check(plan: Path, cache: Path, batch: int) -> dict:
    env = {**os.environ, "ANALYSIS_CACHE_DIR": str(cache)}
    args = [sys.executable, "-m", "analysis", "retrain", "--plan", str(plan), "--steps", "60", "--train-seed", "7",
            "--train-batch-size", str(batch), "--test-size", "32", "--checkpoint-every", "20"]
    process = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and not list(cache.glob("retrain/*/checkpoint.pt")):
        time.sleep(0.5)
    time.sleep(1.0)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    checkpoint = torch.load(next(cache.glob("retrain/*/checkpoint.pt")), weights_only=False)["step"]
    again = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True)
    return {"killed_after_checkpoint_step": checkpoint, "returncode": again.returncode,
            "resumed": f"Resuming from the checkpoint at step {checkpoint}" in again.stdout + again.stderr}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("retrain.json"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp())
    model_dir = build_model_dir(work / "model", args.layers)
    data = build_data(work / "data.parquet", 4000, args.length)
    cache = work / "cache"
    plan = work / "plan.json"
    made = cli(["plan", "--model", str(model_dir), "--data", str(data), "--task", "causal-lm", "--budget", "r8",
                "--max-length", str(args.length), "--out", str(plan)], cache)
    assert made.returncode == 0
    print(made.stdout.strip(), flush=True)
    short, long = 10, 40
    results = {"device": torch.cuda.get_device_name(0), "gpus": torch.cuda.device_count(), "layers": args.layers,
               "batch": args.batch, "length": args.length, "steps": [short, long]}
    per_step = []
    for repeat in range(args.repeats):
        seconds = [retrain_seconds(plan, cache, steps, 100 + repeat, args.batch) for steps in (short, long)]
        per_step.append((seconds[1] - seconds[0]) / (long - short))
        print(f"retrain repeat {repeat}: {seconds} s -> {per_step[-1] * 1000:.0f} ms/step", flush=True)
    plain = plain_loop_seconds(model_dir, data, 45, args.batch, args.length)
    results["retrain_ms_per_step"] = statistics.median(per_step) * 1000
    results["plain_ms_per_step"] = statistics.median(plain) * 1000
    results["ratio"] = results["retrain_ms_per_step"] / results["plain_ms_per_step"]
    print(f"retrain {results['retrain_ms_per_step']:.0f} ms/step vs plain loop {results['plain_ms_per_step']:.0f} "
          f"ms/step: {results['ratio']:.3f}x", flush=True)
    results["resume"] = resume_check(plan, cache, args.batch)
    print("resume:", results["resume"], flush=True)
    if torch.cuda.device_count() >= 2:
        launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                    "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
        two = []
        for repeat in range(args.repeats):
            seconds = [retrain_seconds(plan, cache, steps, 200 + repeat, args.batch, launcher) for steps in (short, long)]
            two.append((seconds[1] - seconds[0]) / (long - short))
            print(f"2 GPUs repeat {repeat}: {seconds} s -> {two[-1] * 1000:.0f} ms/step", flush=True)
        results["two_gpu_ms_per_step"] = statistics.median(two) * 1000
        results["two_gpu_speedup_examples_per_s"] = 2 * results["retrain_ms_per_step"] / results["two_gpu_ms_per_step"]
        print(f"2 GPUs: {results['two_gpu_ms_per_step']:.0f} ms/step for twice the examples: "
              f"{results['two_gpu_speedup_examples_per_s']:.2f}x the examples per second", flush=True)
    args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
