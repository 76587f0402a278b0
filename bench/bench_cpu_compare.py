"""A comparison on the CPU, its runs trained together against one at a time: the same command twice into fresh
caches, `--adapters-at-once 1` and the default, with the wall time of each and a check that both wrote the same
runs (same keys, same metrics).

    python bench/bench_cpu_compare.py --out /tmp/cpu_compare.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ARGS = ["compare", "--device", "cpu", "--signals", "grad_norm", "--budgets", "r2", "--seeds", "0,1,2", "--tune-lr",
        "off", "--lr", "3e-3", "--steps", "30", "--test-size", "200", "--val-size", "64"]


def timed(cache: Path, extra: list[str]) -> float:
    env = {**os.environ, "ANALYSIS_CACHE_DIR": str(cache)}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "analysis", *ARGS, *extra], cwd=REPO, env=env, capture_output=True,
                          text=True)
    if done.returncode:
        raise SystemExit(done.stderr[-2000:])
    return time.perf_counter() - started


def runs(cache: Path) -> dict[str, dict]:
    return {p.name: json.loads((p / "meta.json").read_text())["metrics"] for p in (cache / "entries").glob("retrain-*")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="cpu-compare-"))
    signals = root / "signals"
    subprocess.run([sys.executable, "-m", "analysis", "run", "--device", "cpu", "--signals", "grad_norm",
                    "--val-size", "64"], cwd=REPO, env={**os.environ, "ANALYSIS_CACHE_DIR": str(signals)}, check=True,
                   capture_output=True)
    result = {"command": "python -m analysis " + " ".join(ARGS), "cpus": os.cpu_count()}
    for name, extra in (("one_at_a_time", ["--adapters-at-once", "1"]), ("grouped", [])):
        cache = root / name
        subprocess.run(["cp", "-r", str(signals), str(cache)], check=True)
        result[f"{name}_s"] = round(timed(cache, extra), 1)
        print(f"{name}: {result[f'{name}_s']} s", flush=True)
    alone, together = runs(root / "one_at_a_time"), runs(root / "grouped")
    result["runs"] = len(alone)
    result["same_keys"] = sorted(alone) == sorted(together)
    result["largest_accuracy_difference"] = max(abs(alone[k]["accuracy"] - together[k]["accuracy"]) for k in alone)
    result["ratio_grouped_to_one_at_a_time"] = round(result["grouped_s"] / result["one_at_a_time_s"], 3)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
