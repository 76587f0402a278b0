"""TwoNN intrinsic dimension (Facco et al. 2017) in torch, on whatever device the points are on.

Matches scikit-dimension's `TwoNN().fit(X).dimension_` (method "linear"): mu = r2 / r1 for every
point, sorted; F(mu_(i)) = i / N over all N ratios; the largest `discard_fraction` are dropped
(k = int(N * (1 - discard_fraction)) kept) and -log(1 - F) = d log(mu) is fitted through the
origin by least squares, d = sum(x y) / sum(x x).

Points whose nearest neighbour is at distance 0 (duplicates) have no ratio and are dropped before
N is counted, with a warning, as scikit-dimension does. Its distances for more than 25 features
come from the rounded ||a||^2 + ||b||^2 - 2 a.b form, so it sees some duplicates as tiny non-zero
distances and keeps them; ours are measured exactly and drop every duplicate.
"""
from __future__ import annotations

import math
import warnings

import torch

# Neighbour candidates per point from the fast distances; re-measured exactly, the spare one
# absorbs a swap of the 2nd and 3rd neighbour caused by rounding in the matmul form.
CANDIDATES = 3
# Elements of the (chunk x N) distance block per chunk: 2^25 float64 values = 256 MiB.
CHUNK_ELEMENTS = 1 << 25


def nearest_two(points: torch.Tensor, chunk_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Distances (float64) from each point to its first and second nearest other point.

    Candidates come from squared distances by matmul, a chunk of rows at a time, so the N x N
    matrix never exists: float64 when the points are float64, else float32 (on centred points,
    whose norms are small, which keeps the cancellation in the matmul form small). The self
    distance is masked by index, not by value, so duplicates stay each other's neighbours.
    The chosen candidates' distances are then recomputed exactly from differences in float64.
    """
    n = points.shape[0]
    exact = points.detach().to(torch.float64)
    exact = exact - exact.mean(dim=0)
    fast = exact if points.dtype == torch.float64 else exact.float()
    norms = (fast.double() ** 2).sum(dim=1)
    k = min(CANDIDATES, n - 1)
    chunk = chunk_size or max(1, CHUNK_ELEMENTS // n)
    r1, r2 = [], []
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        rows = torch.arange(start, stop, device=points.device)
        squared = norms[start:stop, None] + norms[None, :] - 2 * (fast[start:stop] @ fast.T).double()
        squared[rows - start, rows] = math.inf
        candidates = squared.topk(k, dim=1, largest=False).indices            # (chunk, k)
        distances = (exact[start:stop, None, :] - exact[candidates]).norm(dim=-1).sort(dim=1).values
        r1.append(distances[:, 0])
        r2.append(distances[:, 1])
    return torch.cat(r1), torch.cat(r2)


def twonn(points: torch.Tensor, discard_fraction: float = 0.1, chunk_size: int | None = None) -> float:
    """Intrinsic dimension of an (N, D) point cloud; see the module docstring for the exact fit."""
    if points.ndim != 2 or points.shape[0] < 3:
        raise ValueError("TwoNN needs an (N, D) tensor with at least 3 points.")
    if not 0 < discard_fraction < 1:
        raise ValueError("discard_fraction must be strictly between 0 and 1.")
    r1, r2 = nearest_two(points, chunk_size)
    duplicates = int((r1 == 0).sum())
    if duplicates:
        warnings.warn(f"Dropping {duplicates} points with zero distance to their nearest neighbour "
                      "(duplicate points).")
    mu = (r2[r1 > 0] / r1[r1 > 0]).sort().values
    total = mu.numel()
    keep = int(total * (1 - discard_fraction))  # the same expression as scikit-dimension: same rounding
    if keep < 2:
        raise ValueError(f"Only {total} distinct points; TwoNN needs more to fit a dimension.")
    x = mu[:keep].log()
    y = -torch.log1p(-torch.arange(1, keep + 1, dtype=torch.float64, device=mu.device) / total)
    return float((x * y).sum() / (x * x).sum())
