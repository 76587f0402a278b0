"""Linear CKA (Kornblith et al. 2019) between pooled hidden states: pure torch, no model code.

CKA(X, Y) = <K, L> / (||K||_F ||L||_F) for centred Gram matrices K of X and L of Y (rows are the
same examples). Biased: K = H X X^T H (column-centred X), so <K, L> = ||Xc^T Yc||_F^2. Unbiased:
K is U-centred (Szekely & Rizzo 2014), <K, L> / (n (n - 3)) being the unbiased HSIC estimator of
Song et al. 2012 (used for CKA by Nguyen et al. 2021). All sums run in float64 on the inputs' device.

A layer whose states do not vary across examples (an encoder's CLS at the embedding output is the
same vector for every input) has a zero Gram matrix: CKA with it is undefined and returned as NaN.
"""
from __future__ import annotations

import math

import torch

DEGENERATE_RELATIVE_NORM = 1e-6
# Elements of the (layers x rows x N) Gram-row block cka_matrix holds per chunk: 256 MiB in float64.
CHUNK_ELEMENTS = 1 << 25


def _centred(x: torch.Tensor) -> torch.Tensor:
    x = x.detach().to(torch.float64)
    return x - x.mean(dim=0)


def is_degenerate(x: torch.Tensor) -> bool:
    """True when the column-centred states are ~0 relative to the states themselves (constant rows)."""
    x64 = x.detach().to(torch.float64)
    return bool(_centred(x64).norm() <= DEGENERATE_RELATIVE_NORM * x64.norm())


def _gram_rows(xc: torch.Tensor, start: int, stop: int, unbiased: bool) -> torch.Tensor:
    """Rows start:stop of the centred Gram matrix of column-centred xc (N, D)."""
    rows = xc[start:stop] @ xc.T
    if not unbiased:
        return rows  # H X X^T H = Xc Xc^T
    # U-centring of K with its diagonal zeroed. With centred columns K 1 = 0, so the row sums of
    # the zero-diagonal K are -||x_i||^2 and every term comes from the squared norms alone.
    n = xc.shape[0]
    squared = (xc * xc).sum(dim=1)
    rows = rows + (squared[start:stop, None] + squared[None, :]) / (n - 2) - squared.sum() / ((n - 1) * (n - 2))
    index = torch.arange(start, stop, device=xc.device)
    rows[index - start, index] = 0
    return rows


def _check_rows(n: int, unbiased: bool) -> None:
    if n < (4 if unbiased else 2):
        raise ValueError(f"{'Unbiased' if unbiased else 'Biased'} CKA needs at least "
                         f"{4 if unbiased else 2} examples, got {n}.")


def linear_cka(x: torch.Tensor, y: torch.Tensor, unbiased: bool = False) -> float:
    """Linear CKA between (N, D1) and (N, D2) states of the same N examples; NaN if either is degenerate.

    The biased estimator uses the feature-space form ||Xc^T Yc||^2 / (||Xc^T Xc|| ||Yc^T Yc||)
    (D x D products) when N exceeds both widths, the Gram form (N x N) otherwise; the unbiased
    one needs the Gram matrices' diagonals and always uses the Gram form.
    """
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"CKA needs the same examples in both: {x.shape[0]} vs {y.shape[0]} rows.")
    _check_rows(x.shape[0], unbiased)
    if is_degenerate(x) or is_degenerate(y):
        return math.nan
    xc, yc = _centred(x), _centred(y.to(x.device))
    n = xc.shape[0]
    if not unbiased and n > max(xc.shape[1], yc.shape[1]):
        cross = (xc.T @ yc).square().sum()
        return float(cross / ((xc.T @ xc).norm() * (yc.T @ yc).norm()))
    k, l = _gram_rows(xc, 0, n, unbiased), _gram_rows(yc, 0, n, unbiased)
    return float((k * l).sum() / (k.norm() * l.norm()))


def cka_matrix(states: list[torch.Tensor], unbiased: bool = False, device: torch.device | str | None = None
               ) -> torch.Tensor:
    """(L+1, L+1) CKA between every pair of layers' states (each (N, D_l), same N examples), on the CPU.

    Each layer's centred Gram matrix is built a block of rows at a time and the blocks' inner
    products are summed, so no N x N matrix is held whole. Rows and columns of degenerate
    layers are NaN, including their diagonal; every other diagonal entry is 1.
    """
    device = torch.device(device) if device is not None else states[0].device
    n = states[0].shape[0]
    if any(s.shape[0] != n for s in states):
        raise ValueError("CKA needs the same examples in every layer.")
    _check_rows(n, unbiased)
    degenerate = torch.tensor([is_degenerate(s) for s in states])
    centred = [_centred(s.to(device)) for s in states]
    chunk = max(1, CHUNK_ELEMENTS // (len(states) * n))
    inner = torch.zeros(len(states), len(states), dtype=torch.float64, device=device)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        block = torch.stack([_gram_rows(xc, start, stop, unbiased).flatten() for xc in centred])
        inner += block @ block.T
    norms = inner.diagonal().sqrt()
    matrix = (inner / (norms[:, None] * norms[None, :])).cpu()
    matrix[degenerate, :] = math.nan
    matrix[:, degenerate] = math.nan
    return matrix


class CKAAccumulator:
    """Linear CKA between consecutive layers (i, i+1), accumulated over minibatches of pooled states.

    Memory trade-off: CKA between ALL pairs in feature space would keep a D_i x D_j cross
    product for every pair ((L+1) L / 2 of them: 136 x 2048^2 float64 = 4.6 GB for 17 states of
    width 2048), so this keeps only what consecutive pairs need: per layer the sum of rows and
    X^T X, per consecutive pair X_i^T X_{i+1} (plus a few row-norm sums for the unbiased form),
    about 2 L D^2 float64 values whatever the number of examples N. That pays off only when N
    exceeds about 2 D: below it the rows themselves (N x D per layer, what `cka_matrix` needs
    for the full layer x layer matrix anyway) are smaller. The "cka" signal has the context's
    collected states and uses `cka_matrix`; this class serves streaming callers with many examples
    (`AnalysisContext.pooled_states`).

    Rows are shifted by the first batch's mean before summing (or by a given `shift`, one float64
    vector per layer), which leaves CKA unchanged and keeps the sums from cancelling catastrophically
    when states have a large common offset. Accumulators of disjoint examples with the same shift
    add up: `running_sums` (and `count`) of several processes summed are those of all their rows.
    """

    def __init__(self, unbiased: bool = False, shift: list[torch.Tensor] | None = None):
        self.unbiased = unbiased
        self.count = 0
        self._shift: list[torch.Tensor] = []
        self._sum: list[torch.Tensor] = []          # sum_i x_i
        self._gram: list[torch.Tensor] = []         # X^T X
        self._cross: list[torch.Tensor] = []        # X_l^T X_{l+1}
        self._sq: list[torch.Tensor] = []           # sum_i ||x_i||^4
        self._norm_weighted: list[torch.Tensor] = []  # sum_i ||x_i||^2 x_i
        self._pair_sq: list[torch.Tensor] = []      # sum_i ||x_i||^2 ||y_i||^2
        self._pair_weighted: list[tuple[torch.Tensor, torch.Tensor]] = []  # sum ||y_i||^2 x_i, sum ||x_i||^2 y_i
        self._raw_square: list[torch.Tensor] = []  # ||X||_F^2 of the unshifted rows
        if shift is not None:
            self._shift = [s.to(torch.float64) for s in shift]
            self._zero_sums(self._shift)

    def update(self, states: list[torch.Tensor]) -> None:
        xs = [s.detach().to(torch.float64) for s in states]
        if not self._shift:
            self._shift = [x.mean(dim=0) for x in xs]
            self._zero_sums(self._shift)
        elif len(xs) != len(self._shift):
            raise ValueError(f"Expected {len(self._shift)} layers of states, got {len(xs)}.")
        self._raw_square = [acc + x.square().sum() for acc, x in zip(self._raw_square, xs)]
        xs = [x - shift for x, shift in zip(xs, self._shift)]
        squared = [x.square().sum(dim=1) for x in xs]
        self.count += xs[0].shape[0]
        for l, x in enumerate(xs):
            self._sum[l] += x.sum(dim=0)
            self._gram[l] += x.T @ x
            self._sq[l] += squared[l].square().sum()
            self._norm_weighted[l] += squared[l] @ x
        for l, (x, y) in enumerate(zip(xs[:-1], xs[1:])):
            self._cross[l] += x.T @ y
            self._pair_sq[l] += squared[l] @ squared[l + 1]
            wx, wy = self._pair_weighted[l]
            wx += squared[l + 1] @ x
            wy += squared[l] @ y

    def _zero_sums(self, shift: list[torch.Tensor]) -> None:
        def zeros(*shape):
            return torch.zeros(*shape, dtype=torch.float64, device=shift[0].device)
        widths = [s.shape[0] for s in shift]
        self._sum = [zeros(d) for d in widths]
        self._gram = [zeros(d, d) for d in widths]
        self._sq = [zeros(()) for _ in widths]
        self._norm_weighted = [zeros(d) for d in widths]
        self._raw_square = [zeros(()) for _ in widths]
        self._cross = [zeros(d, e) for d, e in zip(widths[:-1], widths[1:])]
        self._pair_sq = [zeros(()) for _ in widths[:-1]]
        self._pair_weighted = [(zeros(d), zeros(e)) for d, e in zip(widths[:-1], widths[1:])]

    def running_sums(self) -> list[torch.Tensor]:
        """Every running sum (the live tensors: adding to them in place adds to the accumulator)."""
        return [*self._sum, *self._gram, *self._sq, *self._norm_weighted, *self._raw_square, *self._cross,
                *self._pair_sq, *(t for pair in self._pair_weighted for t in pair)]

    def _centred_norm(self, l: int) -> torch.Tensor:
        """||Xc||_F^2 = trace(X^T X) - ||sum x||^2 / n on the shifted rows."""
        return self._gram[l].trace() - self._sum[l].square().sum() / self.count

    def degenerate(self) -> list[bool]:
        """Per layer, whether its states are constant across examples (see `is_degenerate`)."""
        return [bool(self._centred_norm(l).clamp_min(0).sqrt()
                     <= DEGENERATE_RELATIVE_NORM * self._raw_square[l].sqrt())
                for l in range(len(self._sum))]

    def _hsic(self, l: int, m: int) -> torch.Tensor:
        """n(n-3) x unbiased HSIC, or ||Xc^T Yc||^2 when biased, between layers l and m (m in {l, l+1})."""
        n = self.count
        sx, sy = self._sum[l], self._sum[m]
        cross = self._gram[l] if m == l else self._cross[l]
        if not self.unbiased:
            centred = cross - torch.outer(sx, sy) / n
            return centred.square().sum()
        if m == l:
            pair_sq = self._sq[l]
            weighted_x = weighted_y = self._norm_weighted[l]
        else:
            pair_sq = self._pair_sq[l]
            weighted_x, weighted_y = self._pair_weighted[l]
        sq_x, sq_y = self._gram[l].trace(), self._gram[m].trace()
        # Song et al.'s estimator with K~, L~ the Gram matrices with zeroed diagonals:
        # tr(K~L~) + (1'K~1)(1'L~1) / ((n-1)(n-2)) - 2 (1'K~L~1) / (n-2), each term a feature-space sum.
        trace = cross.square().sum() - pair_sq
        ones_k = sx.square().sum() - sq_x
        ones_l = sy.square().sum() - sq_y
        ones_kl = sx @ cross @ sy - weighted_x @ sx - weighted_y @ sy + pair_sq
        return trace + ones_k * ones_l / ((n - 1) * (n - 2)) - 2 * ones_kl / (n - 2)

    def consecutive(self) -> torch.Tensor:
        """CKA(R_l, R_{l+1}) for l = 0..L-1 (float64, CPU); NaN where either layer is degenerate."""
        _check_rows(self.count, self.unbiased)
        degenerate = self.degenerate()
        values = []
        for l in range(len(self._cross)):
            if degenerate[l] or degenerate[l + 1]:
                values.append(math.nan)
                continue
            values.append(float(self._hsic(l, l + 1) / (self._hsic(l, l) * self._hsic(l + 1, l + 1)).sqrt()))
        return torch.tensor(values, dtype=torch.float64)
