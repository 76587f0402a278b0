"""Every signal through the real command line on the GPU, on a small config-built Llama and synthetic
text (nothing downloaded): the GPU paths of warm-up, Shapley (eager, compiled, per batch, with the
the sensitivity reading), AdaLoRA, SoRA, CKA and ID run end to end and land in the store. Prints each step's time.

    python bench/gpu_signals.py --layers 4 --examples 128
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_representation import build_data, build_model_dir  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--examples", type=int, default=128)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", type=Path, default=Path("gpu_signals.json"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp())
    model = build_model_dir(work / "model", args.layers)
    data = build_data(work / "data.parquet", args.examples, args.length)
    common = ["--model", str(model), "--data", str(data), "--task", "causal-lm", "--device", args.device,
              "--val-size", str(args.examples), "--max-length", str(args.length), "--batch-size", "16",
              "--cache-dir", str(work / "cache")]
    warmup = ["--set", "{s}.warmup_steps=20", "--set", "{s}.warmup_batch_size=8"]
    runs = {
        "cka,id": [],
        "eva,alpha,gora": [],
        "shapley,adalora": [a.format(s=s) for s in ("shapley", "adalora") for a in warmup]
                           + ["--set", "shapley.samples=16", "--set", "shapley.tolerance=0"],
        "sora": ["--set", "sora.steps=30", "--set", "sora.round_steps=10", "--set", "sora.batch_size=8"],
        # The exact reference needs a model of at most 16 ranks, so it is not benched here.
        "shapley (compiled, a coalition per batch)":
            [a.format(s="shapley") for a in warmup]
            + ["--set", "shapley.samples=16", "--set", "shapley.tolerance=0", "--set", "shapley.compile=true",
               "--set", "shapley.coalition_per=batch"],
        "shapley (sensitivity reading)":
            [a.format(s="shapley") for a in warmup]
            + ["--set", "shapley.samples=16", "--set", "shapley.tolerance=0", "--set", "shapley.reading=sensitivity"],
    }
    results = {}
    for label, extra in runs.items():
        signals = label.split(" ")[0]
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "analysis", "run", "--signals", signals, *common, *extra],
                              cwd=HERE.parent, capture_output=True, text=True)
        results[label] = {"returncode": done.returncode, "seconds": time.perf_counter() - started,
                          "stdout": done.stdout[-2000:], "stderr": done.stderr[-3000:] if done.returncode else ""}
        print(f"{label}: exit {done.returncode} in {results[label]['seconds']:.1f} s\n{done.stdout}", flush=True)
        if done.returncode:
            print(done.stderr[-3000:])
    shown = subprocess.run([sys.executable, "-m", "analysis", "list", "--cache-dir", str(work / "cache")],
                           cwd=HERE.parent, capture_output=True, text=True)
    print(shown.stdout)
    args.out.write_text(json.dumps(results, indent=1))
    sys.exit(max(r["returncode"] for r in results.values()))


if __name__ == "__main__":
    main()
