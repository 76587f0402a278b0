"""How SoRA moves its gates after each optimizer step, and the thresholds of its sparsifying scheduler.

Two update rules, chosen by `sora.update`:

- official (default): our re-derivation of what the SoRA authors' optimizer does (TsinghuaC3I/SoRA,
  `src/sparse_optimizer.py`, SparseAdamW.step). Each gate takes a plain Adam step (bias-corrected,
  eps added to sqrt(v) before the correction factor is applied to the step size, no weight decay),
  then three masked assignments run in sequence with the threshold xi as given (not lr * xi):
  gates above xi lose xi, gates below -xi gain xi, and only then every gate whose magnitude is
  below xi is set to zero. Because the last mask looks at the already-shrunk value, a gate with
  xi < |g| < 2 xi ends at zero (0.15 at xi = 0.1: 0.05, then 0), where a soft threshold keeps
  |g| - xi. Nothing pins a zero gate: the next Adam step moves it again, and it is back if that
  step carries it to |g| >= xi.
- soft: the textbook proximal step g <- sign(g) max(|g| - xi, 0) after a torch AdamW step, with
  gates that reached zero held there for good (our earlier behaviour, kept as an option).

Scheduler grids (SparseAdamW._build_lambda_list): `lambda_num` thresholds from xi to xi_max, the
first being the training threshold, so the rounds use the other lambda_num - 1:
linear = evenly spaced; exp_linear = evenly spaced in log xi (geometric); log_linear = evenly
spaced in exp(xi), then the log taken.
"""
from __future__ import annotations

import math

import torch

from analysis.errors import UserError

GRIDS = ("exp_linear", "log_linear", "linear")


@torch.no_grad()
def official_threshold(gates: torch.Tensor, xi: float) -> None:
    """In place: the official masked update (see the module docstring); the order of the masks matters."""
    shrunk = torch.where(gates > xi, gates - xi, torch.where(gates < -xi, gates + xi, gates))
    gates.copy_(torch.where(shrunk.abs() < xi, torch.zeros_like(shrunk), shrunk))


@torch.no_grad()
def proximal_step(gates: torch.Tensor, threshold: float, alive: torch.Tensor | None = None) -> None:
    """In place: soft-threshold every gate by `threshold`; gates outside `alive` are held at exactly 0."""
    gates.copy_(gates.sign() * (gates.abs() - threshold).clamp_min(0))
    if alive is not None:
        gates.mul_(alive)


class OfficialGateAdam(torch.optim.Optimizer):
    """Adam on the gates as the official SparseAdamW steps them, followed by the official threshold.

    The step is lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps), as in the transformers AdamW
    that SparseAdamW extends (eps 1e-6 there); gates have no weight decay. `xi` is read at every
    step, so the scheduler changes it between rounds.
    """

    def __init__(self, params, lr: float, xi: float, betas=(0.9, 0.999), eps: float = 1e-6):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})
        self.xi = xi

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state.update(step=0, m=torch.zeros_like(p), v=torch.zeros_like(p))
                state["step"] += 1
                state["m"].mul_(beta1).add_(p.grad, alpha=1 - beta1)
                state["v"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                t = state["step"]
                size = group["lr"] * math.sqrt(1 - beta2 ** t) / (1 - beta1 ** t)
                p.add_(state["m"] / (state["v"].sqrt() + group["eps"]), alpha=-size)
                if self.xi > 0:
                    official_threshold(p, self.xi)


def scheduler_thresholds(xi: float, xi_max: float, rounds: int, grid: str) -> list[float]:
    """The thresholds of the scheduler's rounds: the official grid of rounds + 1 values from xi to
    xi_max, without its first (the training threshold)."""
    if rounds <= 0:
        return []
    if grid not in GRIDS:
        raise UserError(f"sora.grid must be one of {', '.join(GRIDS)}, not '{grid}'.")
    if not 0 < xi < xi_max:
        raise UserError("sora needs 0 < xi < xi_max.")
    count = rounds + 1
    fractions = [k / rounds for k in range(count)]
    if grid == "linear":
        values = [xi + f * (xi_max - xi) for f in fractions]
    elif grid == "exp_linear":
        values = [math.exp(math.log(xi) + f * (math.log(xi_max) - math.log(xi))) for f in fractions]
    else:  # log_linear
        values = [math.log(math.exp(xi) + f * (math.exp(xi_max) - math.exp(xi))) for f in fractions]
    return values[1:]


def linear_schedule(warmup_steps: int, decay_steps: int):
    """Learning-rate factor at step t: rising linearly over warmup_steps, then falling linearly to 0 at
    decay_steps and staying there (transformers' linear schedule with warm-up, which the official
    code builds over the training stage and keeps stepping through the scheduler's rounds)."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        return max(0.0, (decay_steps - step) / max(1, decay_steps - warmup_steps))
    return factor
