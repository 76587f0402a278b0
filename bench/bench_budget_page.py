"""Server-side time of a budget move on the Budget page, for an 8B-shaped model (32 layers x 7 modules = 224
adaptable modules) with every planning signal cached.

    python bench/bench_budget_page.py --repeats 20

The page runs under Streamlit's AppTest, which executes the whole script on the server as a browser rerun
does (no network, no drawing in a browser). The store is filled by the real runner with random tables in each
signal's schema (tests/synthetic_store.py); the model directory holds the Llama-3.1-8B config and a
placeholder weights file, since the page reads the config only. Prints the median milliseconds of one budget
move, and of its parts: allocating every method, the summary table, and building the heatmap figure.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from analysis.allocation.budgets import parse_budget  # noqa: E402
from analysis.signals.context import prepare  # noqa: E402
from analysis.settings import RunSettings  # noqa: E402
from analysis.planning.methods import UNIFORM, layout_for, method_scores  # noqa: E402
from analysis.planning.preview import preview, summary  # noqa: E402
from analysis.reporting.figures import plan_figure  # noqa: E402
from bench.llama_shapes import SHAPES  # noqa: E402
from tests.synthetic_store import fill  # noqa: E402


def model_dir(root: Path) -> Path:
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    directory = root / "llama-8b-shape"
    LlamaConfig(vocab_size=128256, **SHAPES["8b"]).save_pretrained(directory)
    save_file({"placeholder": torch.zeros(1)}, str(directory / "model.safetensors"))
    return directory


def median_ms(values) -> float:
    return statistics.median(values) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    from streamlit.testing.v1 import AppTest

    root = Path(tempfile.mkdtemp(prefix="bench-budget-"))
    os.environ["ANALYSIS_CACHE_DIR"] = str(root / "cache")
    settings = RunSettings(model=str(model_dir(root)), val_size=64, device="cpu")
    store = fill(root / "cache", settings)
    prepared = prepare(settings, store)
    layout = layout_for(prepared.run)
    print(f"{len(layout.modules)} modules in {layout.num_layers} layers, signals: "
          f"{', '.join(e.meta['signal'] for e in store.entries())}")

    app = AppTest.from_file(str(REPO / "pages" / "budget.py"), default_timeout=600).run()
    assert not app.exception, app.exception
    ranks = [2.0, 6.5, 3.0, 8.0, 4.5, 1.5, 5.0]
    moves = []
    for repeat in range(args.repeats):
        started = time.perf_counter()
        app.slider[0].set_value(ranks[repeat % len(ranks)]).run()
        moves.append(time.perf_counter() - started)
        assert not app.exception, app.exception

    scores = {m: method_scores(prepared.run, m, layout) for m in [UNIFORM, "shapley", "adalora", "sora", "id", "cka"]}
    parts = {"allocate all methods": [], "summary table": [], "heatmap figure": [], "figure to JSON": []}
    for repeat in range(args.repeats):
        budget = parse_budget(f"r{ranks[repeat % len(ranks)]:g}", layout)
        started = time.perf_counter()
        outcomes = preview(scores, layout, budget)
        parts["allocate all methods"].append(time.perf_counter() - started)
        started = time.perf_counter()
        summary(outcomes, budget)
        parts["summary table"].append(time.perf_counter() - started)
        started = time.perf_counter()
        figure = plan_figure(outcomes, layout)
        parts["heatmap figure"].append(time.perf_counter() - started)
        started = time.perf_counter()
        figure.to_json()
        parts["figure to JSON"].append(time.perf_counter() - started)
    print(f"budget move, whole page script (AppTest rerun): {median_ms(moves):.1f} ms median of {args.repeats} "
          f"(min {min(moves) * 1000:.1f}, max {max(moves) * 1000:.1f})")
    for name, values in parts.items():
        print(f"  {name:22s} {median_ms(values):7.1f} ms")


if __name__ == "__main__":
    main()
