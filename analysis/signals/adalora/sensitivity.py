"""AdaLoRA's sensitivity scores, collected while the shared warm-up trains (lora/warmup.py).

AdaLoRA's score (peft's RankAllocator, b1 = b2 = 0.85): per element I = |p * dL/dp|, smoothed
I' <- b1 I' + (1 - b1) I, uncertainty U' <- b2 U' + (1 - b2) |I - I'|, score I' U'. A rank's score
is the mean of its row of A plus the mean of its column of B (AdaLoRA's triplet score without the
singular value, which plain LoRA does not have). The scores are updated after each backward pass,
before the optimizer step (peft updates them just after it; the two differ by one step's drift).
"""
from __future__ import annotations

import torch

BETA1 = BETA2 = 0.85


class AdaLoRAScores:
    """AdaLoRA's smoothed sensitivity x uncertainty, element-wise, over the steps it is updated."""

    def __init__(self, params: list[torch.nn.Parameter]):
        self.params = params
        self.smoothed = [torch.zeros_like(p, dtype=torch.float32) for p in params]
        self.uncertainty = [torch.zeros_like(p, dtype=torch.float32) for p in params]

    @torch.no_grad()
    def update(self) -> None:
        # The same element-wise arithmetic over all matrices at once (a few multi-tensor kernels, not ~8 per matrix).
        sensitivity = torch._foreach_mul(self.params, [p.grad for p in self.params])
        torch._foreach_abs_(sensitivity)
        sensitivity = [s.float() for s in sensitivity]
        torch._foreach_mul_(self.smoothed, BETA1)
        torch._foreach_add_(self.smoothed, sensitivity, alpha=1 - BETA1)
        deviation = torch._foreach_sub(sensitivity, self.smoothed)
        torch._foreach_abs_(deviation)
        torch._foreach_mul_(self.uncertainty, BETA2)
        torch._foreach_add_(self.uncertainty, deviation, alpha=1 - BETA2)

    def per_rank(self) -> torch.Tensor:
        """(modules, r): mean score of each rank's row of A plus column of B (params are A0, B0, A1, B1, ...)."""
        scores = [s * u for s, u in zip(self.smoothed, self.uncertainty)]
        rows = [a.mean(dim=1) + b.mean(dim=0) for a, b in zip(scores[0::2], scores[1::2])]
        return torch.stack(rows).cpu()
