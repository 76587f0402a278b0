"""How long re-planning takes when the budget moves: every method's allocation from cached tables for a
32-layer model with 7 adaptable modules per layer (the Llama-3.1-8B shape, built on the meta device).

    python bench/bench_budget_preview.py --repeats 20

Prints the median milliseconds per budget move, for each method and for all of them together.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from analysis.allocation.allocate import allocate, blend, scores_from_tables  # noqa: E402
from analysis.allocation.budgets import parse_budget  # noqa: E402
from analysis.signals.registry import get_signal  # noqa: E402
from analysis.model.layout import layout_of  # noqa: E402


def llama_8b_layout():
    from transformers import LlamaConfig, LlamaForCausalLM
    config = LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8)
    with torch.device("meta"):
        return layout_of(LlamaForCausalLM(config))


def tables(layout, rng):
    modules = layout.modules
    per_rank = pd.DataFrame([(m.layer, m.name, float(rng.normal()), j) for m in modules for j in range(16)],
                            columns=["layer", "module", "value", "rank"]).assign(signal="s")
    gates = per_rank.assign(value=per_rank["value"] * (rng.random(len(per_rank)) < 0.5))
    learned = gates.groupby(["layer", "module"], sort=False, as_index=False)["value"].agg(lambda v: (v != 0).sum())
    blocks = pd.DataFrame({"layer": range(layout.num_layers), "module": "block", "signal": "b"})
    return {   # each planned by its signal's own plan family (None: the shared rules)
        "shapley": {"main": per_rank},
        "sora": {"main": learned, "gates": gates},
        "id": {"main": blocks.assign(value=rng.integers(1, 9, layout.num_layers))},
        "cka": {"main": blocks.assign(value=rng.random(layout.num_layers))},
        "grad_norm": {"main": per_rank.drop(columns="rank")},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    layout = llama_8b_layout()
    rng = np.random.default_rng(0)
    scores = {name: scores_from_tables(name, get_signal(name).plan, t, layout)
              for name, t in tables(layout, rng).items()}
    methods = {"uniform": None, **scores, "blend": blend([(scores["shapley"], 0.5), (scores["cka"], 0.5)])}
    print(f"{len(layout.modules)} modules in {layout.num_layers} layers")
    timings = {name: [] for name in methods}
    totals = []
    for repeat in range(args.repeats):
        budget = parse_budget(f"r{rng.uniform(1, 8):.2f}", layout)
        started = time.perf_counter()
        for name, score in methods.items():
            begun = time.perf_counter()
            allocate(score, layout, budget)
            timings[name].append(time.perf_counter() - begun)
        totals.append(time.perf_counter() - started)
    for name, values in timings.items():
        print(f"{name:10s} {statistics.median(values) * 1000:7.2f} ms")
    print(f"all {len(methods)} methods per budget move: {statistics.median(totals) * 1000:.1f} ms (median of "
          f"{args.repeats})")


if __name__ == "__main__":
    main()
