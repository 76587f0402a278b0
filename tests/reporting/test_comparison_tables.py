"""A comparison's tables and Pareto points: the frontier against the definition checked pair by pair, and the files
`compare --out` writes for a real small comparison with the three module baselines."""
from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from analysis.reporting.comparison_tables import pareto_points


def dominated_by_some_other(points: list[tuple[float, float]], i: int, higher: bool) -> bool:
    p, y = points[i]
    for j, (q, z) in enumerate(points):
        if j == i or np.isnan(z):
            continue
        no_worse = q <= p and (z >= y if higher else z <= y)
        if no_worse and (q < p or z != y):
            return True
    return False


@pytest.mark.parametrize("task, metric, higher", [("classification", "accuracy", True),
                                                  ("causal-lm", "test_loss", False)])
def test_the_frontier_is_every_point_no_other_point_dominates(task, metric, higher):
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(1, 12))
        # few distinct counts and values, so that ties in either coordinate happen
        summary = pd.DataFrame({"method": [f"m{i % 4}" for i in range(n)], "budget": [f"r{i}" for i in range(n)],
                                "trainable_params": rng.choice([500, 1000, 1500, 2000], n),
                                f"{metric}_mean": rng.choice([0.7, 0.75, 0.8, np.nan], n)})
        points = pareto_points(summary, task)
        pairs = list(zip(summary["trainable_params"], summary[f"{metric}_mean"]))
        expected = [not np.isnan(y) and not dominated_by_some_other(pairs, i, higher) for i, (_, y) in
                    enumerate(pairs)]
        assert points["frontier"].tolist() == expected
        assert (points["metric"] == metric).all() and points["mean"].tolist() == pytest.approx(
            summary[f"{metric}_mean"].tolist(), nan_ok=True)


@pytest.mark.slow
def test_compare_out_writes_the_baselines_the_savings_and_the_pareto_points(small_comparison):
    """The small comparison (tiny Llama, uniform on q_proj and v_proj, r8 and r16): each baseline's rank worked by
    hand from the config, the savings section of table.md, savings.csv and pareto.csv."""
    _, out = small_comparison
    summary = pd.read_csv(out / "summary.csv")
    assert summary["method"].tolist() == ["uniform", "uniform-attention", "uniform-mlp", "uniform-all",
                                          "grad_norm"] * 2
    # One rank per block: q_proj 32 + 32, v_proj 32 + 16 (2 key-value heads of 8): 112, so r8 is 8 x 112 x 2 blocks.
    # The attention (q, k, v, o) costs 224 a rank, the MLP 3 x (32 + 64) = 288, every linear 512.
    for budget, rank in (("r8", 8), ("r16", 16)):
        here = summary[summary["budget"] == budget].set_index("method")["trainable_params"]
        total = rank * 112 * 2
        assert here["uniform"] == total
        for method, per_rank in (("uniform-attention", 224), ("uniform-mlp", 288), ("uniform-all", 512)):
            assert here[method] == (total // (per_rank * 2)) * per_rank * 2
    text = (out / "table.md").read_text()
    assert "Parameters each method needs to reach uniform LoRA at its largest budget" in text
    assert "params to reach uniform's test loss at r16" in text
    saved = pd.read_csv(out / "savings.csv")
    assert saved["method"].tolist() == summary["method"].tolist()[:5]
    assert (saved["reference_params"] == 16 * 112 * 2).all() and (saved["resamples"] == 2000).all()
    uniform = saved.set_index("method").loc["uniform"]
    runs = pd.read_csv(out / "runs.csv")
    assert uniform["target"] == pytest.approx(runs[(runs["method"] == "uniform") & (runs["budget"] == "r16")]
                                              ["test_loss"].mean())
    pareto = pd.read_csv(out / "pareto.csv")
    assert len(pareto) == 10 and pareto["frontier"].any() and (pareto["metric"] == "test_loss").all()
    best = pareto.loc[pareto["mean"].idxmin()]
    assert best["frontier"]   # the lowest loss is never dominated
    for (_, a), (_, b) in itertools.permutations(pareto[pareto["frontier"]].iterrows(), 2):   # a loss: lower wins
        assert not (a["trainable_params"] <= b["trainable_params"] and a["mean"] < b["mean"])
