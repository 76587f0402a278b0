"""AdamW for K adapters held as the rows of one (K, P) parameter: each row has its own learning rate, weight
decay and gradient clipping, and the update is torch.optim.AdamW's (decoupled weight decay, bias-corrected
moments, eps outside the square root) applied row by row, in a handful of operations whatever K is.
Tested against torch's AdamW and clip_grad_norm_ run on each row as a separate parameter."""
from __future__ import annotations

import math

import torch


class GroupedAdamW:
    def __init__(self, flat: torch.nn.Parameter, weight_decay: list[float], betas=(0.9, 0.999), eps: float = 1e-8):
        self.flat, self.betas, self.eps = flat, betas, eps
        self.weight_decay = torch.tensor(weight_decay, dtype=flat.dtype, device=flat.device).unsqueeze(1)
        self.exp_avg = torch.zeros_like(flat)
        self.exp_avg_sq = torch.zeros_like(flat)
        self.steps = 0

    def clip(self, max_norms: list[float]) -> torch.Tensor:
        """Scale each row's gradient to at most its max norm (0: no clipping), as clip_grad_norm_ does over one
        run's parameters; returns the norms before clipping."""
        grad = self.flat.grad
        norms = grad.norm(dim=1)
        limits = torch.tensor(max_norms, dtype=grad.dtype, device=grad.device)
        factor = torch.where(limits > 0, (limits / (norms + 1e-6)).clamp(max=1.0), torch.ones_like(norms))
        grad.mul_(factor.unsqueeze(1))
        return norms

    @torch.no_grad()
    def step(self, lrs: torch.Tensor) -> None:
        """One update with each row's learning rate `lrs` (K,)."""
        beta1, beta2 = self.betas
        self.steps += 1
        lr = lrs.to(self.flat.dtype).unsqueeze(1)
        grad = self.flat.grad
        self.flat.mul_(1 - lr * self.weight_decay)
        self.exp_avg.lerp_(grad, 1 - beta1)
        self.exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        denom = (self.exp_avg_sq.sqrt() / math.sqrt(1 - beta2 ** self.steps)).add_(self.eps)
        self.flat.sub_(lr / (1 - beta1 ** self.steps) * self.exp_avg / denom)

    def zero_grad(self) -> None:
        self.flat.grad = None

    def state_dict(self) -> dict:
        return {"exp_avg": self.exp_avg, "exp_avg_sq": self.exp_avg_sq, "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.exp_avg.copy_(state["exp_avg"])
        self.exp_avg_sq.copy_(state["exp_avg_sq"])
        self.steps = state["steps"]
