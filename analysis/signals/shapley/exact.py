"""Exact Shapley values by enumerating every coalition: the reference the sampled estimate is checked
against, where the players are few (a tiny model's ranks; 2^n value evaluations).

Coalition c is the integer whose bit j says whether player j is in it. The Shapley value of player
i is the sum over coalitions S without i of |S|! (n - |S| - 1)! / n! * (v(S + i) - v(S)); the
first-order version replaces each difference by the mean of dv/dg_i at its two ends (what the
gradient estimator converges to; the two agree when v is quadratic in the gates).
"""
from __future__ import annotations

import math

import torch

MAX_PLAYERS = 16


def all_coalitions(n: int) -> torch.Tensor:
    """(2^n, n) 0/1 float64 masks; row c holds the bits of c (player j = bit j)."""
    if n > MAX_PLAYERS:
        raise ValueError(f"exact enumeration of {n} players needs 2^{n} evaluations; at most {MAX_PLAYERS}")
    codes = torch.arange(2 ** n).unsqueeze(1)
    return ((codes >> torch.arange(n)) & 1).to(torch.float64)


def _weights(n: int) -> torch.Tensor:
    """Shapley weight of a coalition of each size 0..n-1 for a player outside it."""
    return torch.tensor([math.factorial(k) * math.factorial(n - k - 1) / math.factorial(n) for k in range(n)],
                        dtype=torch.float64)


def _shapley_sum(n: int, marginal) -> torch.Tensor:
    """For each player i, the Shapley-weighted sum over every coalition c without i of marginal(i, c, c + i)
    (coalitions as integer codes, tensors of them)."""
    masks = all_coalitions(n)
    sizes = masks.sum(dim=1).long()
    weights = _weights(n)
    result = torch.zeros(n, dtype=torch.float64)
    for i in range(n):
        codes = torch.nonzero(masks[:, i] == 0).squeeze(1)
        result[i] = (weights[sizes[codes]] * marginal(i, codes, codes | (1 << i))).sum()
    return result


def shapley_from_values(values: torch.Tensor, n: int) -> torch.Tensor:
    """Exact Shapley values from v at every coalition (values[c] = v(coalition c))."""
    return _shapley_sum(n, lambda i, without, with_i: values[with_i] - values[without])


def first_order_from_gradients(gradients: torch.Tensor, n: int) -> torch.Tensor:
    """Exact first-order Shapley values from dv/dg at every coalition (gradients[c] = dv/dg at coalition c):
    each marginal is the trapezoid of the player's gradient at the coalition's two ends."""
    return _shapley_sum(n, lambda i, without, with_i: 0.5 * (gradients[without, i] + gradients[with_i, i]))
