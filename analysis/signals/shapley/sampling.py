"""Monte Carlo Shapley values of gated players from gradients: our reading of ShapLoRA.

The ShapLoRA paper's code is not public; this is what we implement, and what the tests check.

Players are the gates of a gated LoRA (one per rank). A coalition is a 0/1 gate mask m; v(m) is the
validation loss with those gates. The Shapley value of player i averages v(S + i) - v(S) over
coalitions S without i, with weight w(S) = |S|! (n - |S| - 1)! / n!. One backward pass at mask m
gives dv/dg_i for every player at once: with g_i = 0 (i not in m) it is the first-order estimate
of i's marginal contribution to S = m; with g_i = 1 (i in m) the first-order estimate of its
contribution to S = m - i, taken at the other end. Averaging both ends (trapezoid rule) is the
"first-order Shapley value" we estimate; it is exact when v is quadratic in the gates.

Coalitions are drawn with Shapley weights: a size k uniform in 0..n, then k players uniformly
(the players before a cut point of a random order). With q(m) = 1 / ((n + 1) C(n, |m|)), each
sample's contribution for player i is importance-weighted:
    x_i(m) = (n + 1) / (2 (n - |m|)) * dv/dg_i(m)   if m_i = 0,
    x_i(m) = (n + 1) / (2 |m|)       * dv/dg_i(m)   if m_i = 1,
whose expectation under q is exactly the first-order Shapley value above. The estimate is the
mean of x over samples, with standard error std / sqrt(samples); any sum of players (a module, a
layer) gets its own standard error from the per-sample sums, covariances included.

The sensitivity reading (ShapLoRA's paper combines AdaLoRA-style sensitivity |w dL/dw| with
coalitions of ranks) takes x_i(m) = |m_i dv/dg_i(m)| instead: each rank's sensitivity at its gate,
averaged over the same Shapley-weighted coalitions. A rank outside the coalition has g_i = 0 and
contributes 0, and every rank is in half the coalitions on average, so this is half its mean
sensitivity when present. It is not a Shapley value and does not add up to the total loss change.

Early stopping: when a stopping rule decides how many samples to take, the samples it looked at
are a pilot only; the estimate and its standard error come from a fresh stream of as many
coalitions, so stopping when the noise looks small does not make the reported noise look small.

Data-parallel (parallel.py): coalition t of a stream goes to process t mod P, which draws its masks
from its own random stream; the stopping rule's running sums are added over the processes, so all
of them stop at the same round, and every process receives all samples in the order t.

Several coalitions per pass (`per_pass` = C): a process evaluates its next C coalitions in one call,
then feeds their samples to the loop one at a time exactly as if each had had its own pass, so the
masks, the samples, the rounds at which the stopping rule looks and where it stops are those of one
coalition at a time; only the gradients' float rounding differs. Coalitions the pilot computed past
its stopping point are dropped unseen (the pilot's samples are not reported anyway).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import torch

from analysis.signals import parallel


def sample_coalitions(count: int, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """(count, *shape) 0/1 masks: size uniform in 0..n, then a uniformly random set of that size."""
    n = int(torch.Size(shape).numel())
    sizes = torch.randint(0, n + 1, (count, 1), generator=generator)
    order = torch.rand(count, n, generator=generator).argsort(dim=1).argsort(dim=1)  # a random rank per player
    return (order < sizes).to(torch.float64).reshape(count, *shape)


def contribution_weights(mask: torch.Tensor) -> torch.Tensor:
    """Per player, the factor turning dv/dg_i at this mask into an unbiased Shapley sample."""
    flat = mask.reshape(-1)
    n, size = flat.numel(), float(flat.sum())
    off = (n + 1) / (2 * (n - size)) if size < n else 0.0   # players outside the coalition
    on = (n + 1) / (2 * size) if size > 0 else 0.0          # players inside it
    weights = torch.tensor([off, on], dtype=torch.float64)
    return weights[(flat > 0).long()].reshape(mask.shape)


READINGS = ("shapley", "sensitivity")


def sample_contribution(mask: torch.Tensor, gradient: torch.Tensor, parts: int, reading: str) -> torch.Tensor:
    """One coalition's per-player sample x (see the module docstring) for the chosen reading."""
    gradient = gradient.detach().to(torch.float64)
    if reading == "sensitivity":
        return (mask.to(gradient.device) * gradient).abs() * parts
    return contribution_weights(mask).to(gradient.device) * parts * gradient


@dataclass
class ShapleyEstimate:
    samples: torch.Tensor          # (T, *players): per-sample contributions x, float64
    masks: torch.Tensor            # (T, *players)
    pilot: int = 0                 # samples the stopping rule looked at (not in `samples`; 0: no rule)

    @property
    def count(self) -> int:
        return self.samples.shape[0]

    def mean(self) -> torch.Tensor:
        return self.samples.mean(dim=0)

    def stderr(self) -> torch.Tensor:
        return standard_error(self.samples)


def standard_error(samples: torch.Tensor) -> torch.Tensor:
    """Standard error of the mean along dim 0 (NaN with a single sample)."""
    if samples.shape[0] < 2:
        return torch.full(samples.shape[1:], float("nan"), dtype=samples.dtype)
    return samples.std(dim=0) / samples.shape[0] ** 0.5


def resolved(total: torch.Tensor, squares: torch.Tensor, count: int, tolerance: float) -> bool:
    """Stopping rule on groups of players, from running sums of their per-sample values: the mean
    standard error is at most `tolerance` times the mean absolute estimate (estimates clear of noise)."""
    if count < 2:
        return False
    mean = total / count
    stderr = ((squares / count - mean ** 2).clamp_min(0) / (count - 1)).sqrt()
    return bool(stderr.mean() <= tolerance * mean.abs().mean())


def _over_processes(total, squares, shape: tuple[int, ...], groups) -> list[torch.Tensor]:
    """The stopping rule's running sums added over the processes (copies: each process's own sums go on; one
    without a sample yet holds zeros)."""
    zeros = torch.zeros(shape, dtype=torch.float64)
    zeros = groups(zeros) if groups else zeros.reshape(-1)
    return parallel.sum_([s.clone() if isinstance(s, torch.Tensor) else zeros.clone() for s in (total, squares)])


def estimate(gradient_at: Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]],
             shape: tuple[int, ...], max_samples: int, generator: torch.Generator, parts: int = 1,
             min_samples: int = 8, tolerance: float = 0.0,
             groups: Callable[[torch.Tensor], torch.Tensor] | None = None,
             iterate: Callable[[range], Iterable[int]] = iter, reading: str = "shapley",
             per_pass: int = 1) -> ShapleyEstimate:
    """Sample coalitions until `max_samples`, or, with a stopping rule, as many as a pilot stream needed.

    The value is a sum over `parts` (validation batches, say): v = sum_b v_b, and
    gradient_at(mask, b) returns (v_b(mask), dv_b/dmask), of which the gradient is used.
    Coalition t is evaluated on part t mod parts only, its contribution scaled by `parts`; by
    linearity of the Shapley value in v this is unbiased for v's Shapley value, and one pass over
    all parts yields `parts` coalitions for the cost of one full evaluation. With parts = 1 every
    coalition sees the whole v. The standard error treats the samples as independent, which over
    unequal parts errs on the large side. max_samples is rounded up to whole passes and the
    stopping rule is checked at whole passes only, so every part weighs the same.

    tolerance > 0: a pilot stream runs until the groups' estimates are resolved (see `resolved`;
    groups maps one sample to a vector of group sums, default every player alone) or max_samples;
    then a fresh stream of that many coalitions gives the estimate, at up to twice the cost.
    tolerance 0 takes max_samples once. `iterate` wraps each sample loop (a progress bar, say).

    per_pass > 1 (with parts = 1 only): gradient_at receives C <= per_pass masks at once, (C, *shape), and
    returns their gradients as (C, *shape); the estimate is the same as with one at a time (module docstring).
    """
    if max_samples < 1 or min_samples < 1 or parts < 1 or per_pass < 1:
        raise ValueError("Shapley sampling needs at least one sample, one part and one coalition per pass.")
    if per_pass > 1 and parts > 1:
        raise ValueError("Coalitions side by side share one pass over the whole value (parts = 1).")
    if reading not in READINGS:
        raise ValueError(f"unknown reading {reading!r}")
    max_samples = -(-max_samples // parts) * parts  # whole passes, so every part weighs the same

    processes = parallel.count()

    def stream(count: int, stop: bool) -> tuple[list[torch.Tensor], torch.Tensor, int]:
        """This process's samples and masks of a stream of `count` coalitions, and how many the whole stream took."""
        mine = parallel.shard(count)
        masks = sample_coalitions(len(mine), shape, generator)
        samples, total, squares, done = [], 0.0, 0.0, count
        ahead: dict[int, torch.Tensor] = {}   # gradients of this process's coalitions evaluated in advance
        # Round k evaluates coalitions kP .. kP + P - 1, one per process; every process runs every round, so
        # the stopping rule's collective meets all of them.
        for k in iterate(range(-(-count // processes))):
            if k < len(mine):
                if per_pass == 1:
                    gradient = gradient_at(masks[k], mine[k] % parts)[1]
                else:
                    if k not in ahead:   # the next per_pass coalitions in one pass
                        chunk = range(k, min(k + per_pass, len(mine)))
                        ahead = dict(zip(chunk, gradient_at(masks[chunk.start:chunk.stop], 0)[1]))
                    gradient = ahead.pop(k)
                sample = sample_contribution(masks[k], gradient, parts, reading)
                samples.append(sample)  # kept on the device: no synchronisation per sample
                if stop:
                    grouped = groups(sample) if groups else sample.reshape(-1)
                    total, squares = total + grouped, squares + grouped ** 2
            seen = min((k + 1) * processes, count)
            if stop and seen % parts == 0 and seen >= min_samples:   # whole passes only
                if resolved(*_over_processes(total, squares, shape, groups), seen, tolerance):
                    done = seen
                    break
        return samples, masks[: len(samples)], done

    def gathered(samples: list[torch.Tensor], masks: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        mine = parallel.shard(count)
        everyone = parallel.gather_in_order(list(zip(samples, masks)), mine, everywhere=True)
        return torch.stack([s for s, _ in everyone]).cpu(), torch.stack([m for _, m in everyone])

    if tolerance <= 0:
        samples, masks, _ = stream(max_samples, stop=False)
        return ShapleyEstimate(*gathered(samples, masks, max_samples))
    _, _, pilot = stream(max_samples, stop=True)
    samples, masks, _ = stream(pilot, stop=False)  # fresh coalitions: the rule never saw these
    return ShapleyEstimate(*gathered(samples, masks, pilot), pilot=pilot)


def running_estimates(samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Estimate and standard error after 1, 2, ..., T samples (for convergence curves): (T, ...) each."""
    count = torch.arange(1, samples.shape[0] + 1, dtype=samples.dtype).reshape(-1, *[1] * (samples.ndim - 1))
    mean = samples.cumsum(dim=0) / count
    squares = (samples ** 2).cumsum(dim=0) / count
    variance = (squares - mean ** 2).clamp_min(0) * count / (count - 1).clamp_min(1)
    stderr = (variance / count).sqrt()
    stderr[0] = float("nan")
    return mean, stderr
