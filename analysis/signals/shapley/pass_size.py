"""How many coalitions one pass evaluates side by side when `shapley.coalitions_per_pass` is 0 (auto).

Side by side, a pass repeats each validation batch C times (one copy per coalition), so its
activations grow with C while the number of kernel launches does not: on a GPU, where a small
model's pass is bound by launches, C coalitions cost little more than one. How many fit is measured,
not guessed: one gradient pass over the largest batch at one coalition and at two, the peak memory
of each above what was allocated before; the difference is what one more coalition costs, the rest
is what any pass costs. C is what the free memory (less a margin) holds, on every GPU the model sits
on, and never more than the samples wanted. On the CPU memory is seldom the limit and wider batches
gain little, so a small fixed number.
"""
from __future__ import annotations

from typing import Callable

import torch

CPU_PER_PASS = 4
HEADROOM = 0.8   # share of the free memory the passes may fill (the allocator rounds and fragments)


def _peaks(gradient_at: Callable, masks: torch.Tensor, devices: list[torch.device]) -> list[int]:
    """Per device, the peak memory of one gradient pass at these masks above what was allocated before it."""
    before = []
    for device in devices:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before.append(torch.cuda.memory_allocated(device))
    gradient_at(masks, 0)
    for device in devices:
        torch.cuda.synchronize(device)
    return [torch.cuda.max_memory_allocated(d) - b for d, b in zip(devices, before)]


def _available(device: torch.device) -> int:
    """Bytes a pass may still take on the device: free on the card plus what torch holds cached but unused."""
    free, _ = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


def coalitions_per_pass(gradient_at: Callable, shape: tuple[int, ...], devices: list[torch.device],
                        limit: int) -> int:
    """The auto number of coalitions per pass, at most `limit`. gradient_at(masks (C, *shape), 0) runs one
    gradient pass over the largest batch; `devices` are those the model's weights are on."""
    cuda = [d for d in devices if d.type == "cuda"]
    if not cuda:
        return max(1, min(CPU_PER_PASS, limit))
    ones = torch.ones(2, *shape)
    gradient_at(ones[:1], 0)   # a first pass allocates workspaces once; they are not a coalition's cost
    one, two = _peaks(gradient_at, ones[:1], cuda), _peaks(gradient_at, ones, cuda)
    fits = []
    for device, single, double in zip(cuda, one, two):
        extra = max(double - single, 1)
        fits.append(1 + int((HEADROOM * _available(device) - single) // extra))
    return max(1, min(min(fits), limit))
