"""Eigenvalue spectra of weight matrices and power-law fits of their tails, in torch: AlphaLoRA's own
(`fit_alphalora`, the alpha signal's default) and WeightWatcher's (`fit_power_law`).

Spectrum (ESD) of W: the eigenvalues of W^T W, i.e. the squared singular values, computed with
torch.linalg.svdvals on whole stacks of equally shaped matrices at once (one call per shape).

WeightWatcher's fit: its 0.7.7 default (`pl_package='ww'`, no finger fixing; `WW_powerlaw.WWFit`).
Eigenvalues <= 1e-5 are dropped (its EVALS_THRESH). For every candidate xmin = x_i (all but the
largest eigenvalue, ascending) the continuous power-law MLE alpha_i = 1 + n_i / sum_{j>=i} log(x_j/x_i)
over the n_i eigenvalues >= x_i, and the KS distance D_i = max_j |1 - (x_j/x_i)^(1-alpha_i) - (j-i)/n_i|
(D_i = 1 where alpha_i <= 1); the fit is the first i with the smallest D. With fewer than 20
eigenvalues WeightWatcher switches to its small-N fit: bias-corrected alpha = 1 + (n_i - 1)/s_i on tails of at
least 8 (others alpha 0, D 1), xmin again the first smallest D; both are reproduced here.
AlphaLoRA's fit (`fix_finger`) uses the same MLE and KS distance on candidates in a window around the
spectrum's histogram peak, with no threshold (see fit_alphalora).
Both fits run in float64, vectorised over all candidates, in row chunks so memory stays bounded.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

EVALS_THRESH = 1e-5     # WeightWatcher's constants.EVALS_THRESH
SMALL_N_CUTOFF = 20     # WW_powerlaw.SMALL_N_CUTOFF
SMALL_N_MIN_TAIL = 8    # WWFit.fit_powerlaw_smallN's k_min


@dataclass
class PowerLawFit:
    alpha: float
    xmin: float
    D: float
    sigma: float
    n_evals: int     # eigenvalues above the threshold (what was fitted)
    n_tail: int      # eigenvalues >= xmin


def spectra(weights: list[torch.Tensor], dtype: torch.dtype = torch.float32, chunk: int = 16,
            method: str = "svdvals") -> list[torch.Tensor]:
    """Ascending eigenvalues of W^T W for each matrix, on the matrices' device, in `dtype`.

    Matrices of one shape are processed together, `chunk` at a time (a stack of 16 4096 x 14336
    matrices in float32 is 3.8 GB). `method` "svdvals": squared singular values (as WeightWatcher);
    "gram": eigvalsh of the smaller Gram matrix W W^T or W^T W, a matmul and a symmetric eigensolver,
    usually much faster on a GPU than an SVD of a wide matrix; it loses the smallest eigenvalues to
    rounding (relative error ~ eps * lambda_max / lambda), so use it in float64 where those matter."""
    out: list[torch.Tensor | None] = [None] * len(weights)
    by_shape: dict[tuple, list[int]] = {}
    for i, w in enumerate(weights):
        by_shape.setdefault(tuple(w.shape), []).append(i)
    for indices in by_shape.values():
        for start in range(0, len(indices), chunk):
            part = indices[start:start + chunk]
            stack = torch.stack([weights[i].detach().to(dtype) for i in part])
            if method == "gram":
                gram = stack @ stack.mT if stack.shape[-2] <= stack.shape[-1] else stack.mT @ stack
                values = torch.linalg.eigvalsh(gram).clamp_min(0)       # ascending already
            else:
                sv = torch.linalg.svdvals(stack)
                values = (sv * sv).flip(-1)          # svdvals are descending; squared and ascending
            for i, v in zip(part, values):
                out[i] = v
    return out


def _ks_distances(x: torch.Tensor, log_x: torch.Tensor, alphas: torch.Tensor, rows: int) -> torch.Tensor:
    """D_i for candidates i < len(alphas), computed `rows` candidates at a time."""
    n_all = len(x)
    j = torch.arange(n_all, device=x.device)
    out = torch.ones(len(alphas), dtype=x.dtype, device=x.device)
    for start in range(0, len(alphas), rows):
        i = torch.arange(start, min(start + rows, len(alphas)), device=x.device)
        a = alphas[i].unsqueeze(1)
        n = (n_all - i).to(x.dtype).unsqueeze(1)
        ratio = x.unsqueeze(0) / x[i].unsqueeze(1)
        theory = 1 - ratio ** (1 - a)
        empirical = (j.unsqueeze(0) - i.unsqueeze(1)).to(x.dtype) / n
        gap = (theory - empirical).abs().masked_fill(j.unsqueeze(0) < i.unsqueeze(1), 0)
        distances = gap.max(dim=1).values
        out[i] = torch.where(alphas[i] > 1, distances, out[i])
    return out


def fit_power_law(evals: torch.Tensor, rows: int = 512) -> PowerLawFit:
    """WeightWatcher's power-law fit of one spectrum (any order; any device)."""
    x = evals.detach().to(torch.float64)
    x = torch.sort(x[x > EVALS_THRESH]).values
    n_all = len(x)
    if n_all < 2:
        return PowerLawFit(float("nan"), float("nan"), float("nan"), float("nan"), n_all, 0)
    log_x = torch.log(x)
    suffix = torch.flip(torch.cumsum(torch.flip(log_x, [0]), 0), [0])        # sum_{j>=i} log x_j
    i = torch.arange(n_all - 1, device=x.device)
    n = (n_all - i).to(torch.float64)
    s = suffix[:-1] - n * log_x[:-1]                                         # sum_{j>=i} log(x_j / x_i)
    if n_all >= SMALL_N_CUTOFF:
        alphas = 1 + n / s
        distances = _ks_distances(x, log_x, alphas, rows)
        best = int(torch.argmin(distances))      # first minimum, as np.argmin
    else:
        # Small-N fit: bias-corrected alphas on tails of at least 8. WWFit.__init__ then picks the first
        # smallest D over all candidates (overriding the J objective its small-N method computed), and that
        # is what the package reports, so that is what is reproduced.
        usable = (n >= SMALL_N_MIN_TAIL) & (s > 1e-12)
        alphas = torch.where(usable, 1 + (n - 1) / s, torch.zeros_like(s))
        distances = _ks_distances(x, log_x, alphas, rows)
        best = int(torch.argmin(distances))
    alpha = float(alphas[best])
    sigma = (alpha - 1) / float(n[best].sqrt())
    xmin = float(x[best])
    return PowerLawFit(alpha, xmin, float(distances[best]), sigma, n_all, int((x >= xmin).sum()))


def fit_alphalora(evals: torch.Tensor, bins: int = 100) -> PowerLawFit:
    """AlphaLoRA's own fit (peijunallin/alphalora expert_number.py `fix_finger`, pl_fitting=True): no
    threshold, and xmin restricted to a window around the peak of the log10-ESD histogram. Its window's
    lower bound compares an eigenvalue with log10(0.95 * peak), a log value, as its code does. Candidates
    outside the window keep alpha 0 and D 1, so a spectrum with none returns alpha 0, as there."""
    x = torch.sort(evals.detach().to(torch.float64)).values
    n_all = len(x)
    if n_all < 2:
        return PowerLawFit(float("nan"), float("nan"), float("nan"), float("nan"), n_all, 0)
    log_x = torch.log(x)
    log10_x = torch.log10(x)
    low, high = log10_x.min(), log10_x.max()
    counts = torch.histc(log10_x, bins, min=float(low), max=float(high))
    peak = 10 ** torch.linspace(float(low), float(high), bins + 1, dtype=torch.float64)[int(torch.argmax(counts))]
    window_low, window_high = torch.log10(0.95 * peak), 1.5 * peak
    candidates = x[:-1]
    past = torch.nonzero(candidates > window_high)
    stop = int(past[0]) if len(past) else len(candidates)        # its loop breaks at the first xmin above
    inside = (candidates >= window_low) & (torch.arange(len(candidates), device=x.device) < stop)
    suffix = torch.flip(torch.cumsum(torch.flip(log_x, [0]), 0), [0])
    n = (n_all - torch.arange(n_all - 1, device=x.device)).to(torch.float64)
    alphas = torch.where(inside, 1 + n / (suffix[:-1] - n * log_x[:-1]), torch.zeros_like(n))
    distances = _ks_distances(x, log_x, alphas, 512)
    best = int(torch.argmin(distances))
    alpha = float(alphas[best])
    return PowerLawFit(alpha, float(x[best]), float(distances[best]), (alpha - 1) / float(n[best].sqrt()), n_all,
                       n_all - best)
