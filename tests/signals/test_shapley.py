"""The Monte Carlo Shapley estimator against exact enumeration on toys with closed-form value functions."""
import itertools
import math

import torch

from analysis.signals.shapley.sampling import contribution_weights, estimate, running_estimates, sample_coalitions


def _quadratic(n, seed):
    generator = torch.Generator().manual_seed(seed)
    a = torch.randn(n, generator=generator, dtype=torch.float64)
    q = torch.randn(n, n, generator=generator, dtype=torch.float64) / n
    return lambda g: a @ g + g @ q @ g


def _cubic(n, seed):
    generator = torch.Generator().manual_seed(seed)
    a = torch.randn(n, generator=generator, dtype=torch.float64)
    c = torch.randn(n, n, n, generator=generator, dtype=torch.float64) / n
    return lambda g: a @ g + torch.einsum("i,j,k,ijk->", g, g, g, c) + torch.sin(g).sum()


def _gradient_at(value):
    def gradient_at(mask, part=0):
        g = mask.clone().requires_grad_(True)
        v = value(g)
        return float(v.detach()), torch.autograd.grad(v, g)[0]
    return gradient_at


def _subsets_without(i, n):
    others = [j for j in range(n) if j != i]
    for k in range(n):
        for subset in itertools.combinations(others, k):
            yield subset, math.factorial(k) * math.factorial(n - k - 1) / math.factorial(n)


def _indicator(subset, n):
    mask = torch.zeros(n, dtype=torch.float64)
    mask[list(subset)] = 1
    return mask


def exact_shapley(value, n):
    """The textbook definition: weighted marginal value differences over all coalitions."""
    return torch.tensor([sum(w * float(value(_indicator(s + (i,), n)) - value(_indicator(s, n)))
                             for s, w in _subsets_without(i, n)) for i in range(n)], dtype=torch.float64)


def exact_first_order_shapley(value, n):
    """Each marginal difference replaced by the mean of dv/dg_i at its two ends (trapezoid)."""
    gradient_at = _gradient_at(value)
    return torch.tensor([sum(w * 0.5 * float(gradient_at(_indicator(s, n))[1][i]
                                             + gradient_at(_indicator(s + (i,), n))[1][i])
                             for s, w in _subsets_without(i, n)) for i in range(n)], dtype=torch.float64)


def test_coalitions_have_shapley_weights():
    masks = sample_coalitions(60_000, (3, 2), torch.Generator().manual_seed(0))
    assert masks.shape == (60_000, 3, 2) and set(masks.unique().tolist()) == {0.0, 1.0}
    sizes = masks.reshape(60_000, -1).sum(dim=1)
    frequencies = torch.bincount(sizes.long(), minlength=7) / 60_000
    torch.testing.assert_close(frequencies, torch.full((7,), 1 / 7), atol=0.01, rtol=0)
    torch.testing.assert_close(masks.mean(dim=0), torch.full((3, 2), 0.5, dtype=torch.float64), atol=0.01, rtol=0)


def test_weights_make_each_end_unbiased():
    # E_q[x_i] over all 2^n masks, enumerated exactly, equals the first-order Shapley value.
    n = 5
    value = _cubic(n, seed=3)
    gradient_at = _gradient_at(value)
    expected = torch.zeros(n, dtype=torch.float64)
    for bits in itertools.product([0.0, 1.0], repeat=n):
        mask = torch.tensor(bits, dtype=torch.float64)
        k = int(mask.sum())
        q = 1 / ((n + 1) * math.comb(n, k))
        expected += q * contribution_weights(mask) * gradient_at(mask)[1]
    torch.testing.assert_close(expected, exact_first_order_shapley(value, n), rtol=1e-12, atol=1e-12)


def test_estimate_converges_to_exact_shapley_of_a_quadratic():
    n = 8
    value = _quadratic(n, seed=1)
    truth = exact_shapley(value, n)
    # For a quadratic the trapezoid rule is exact, so the first-order value is the Shapley value itself.
    torch.testing.assert_close(exact_first_order_shapley(value, n), truth, rtol=1e-10, atol=1e-12)
    grand = value(torch.ones(n, dtype=torch.float64)) - value(torch.zeros(n, dtype=torch.float64))
    torch.testing.assert_close(truth.sum(), grand, rtol=1e-10, atol=1e-12)  # efficiency
    result = estimate(_gradient_at(value), (n,), max_samples=20_000, generator=torch.Generator().manual_seed(2))
    error, stderr = (result.mean() - truth).abs(), result.stderr()
    assert (error <= 4 * stderr).all(), (error, stderr)
    assert (error <= 2 * stderr).float().mean() >= 0.75  # the standard error covers the truth
    assert stderr.max() < 0.05 * truth.abs().max()


def test_estimate_converges_to_first_order_shapley_of_a_cubic_and_the_error_shrinks():
    n = 6
    value = _cubic(n, seed=4)
    truth = exact_first_order_shapley(value, n)
    errors = []
    for count in (500, 16_000):
        result = estimate(_gradient_at(value), (n,), max_samples=count, generator=torch.Generator().manual_seed(5))
        errors.append((result.mean() - truth).abs().max())
        assert ((result.mean() - truth).abs() <= 4 * result.stderr()).all()
    assert errors[1] < errors[0] / 2


def test_a_coalition_per_part_converges_to_the_shapley_value_of_the_sum():
    n, parts = 7, 4
    values = [_quadratic(n, seed=10 + b) for b in range(parts)]
    truth = exact_shapley(lambda g: sum(v(g) for v in values), n)
    per_part = [_gradient_at(v) for v in values]
    result = estimate(lambda mask, b: per_part[b](mask), (n,), max_samples=24_000, parts=parts,
                      generator=torch.Generator().manual_seed(11))
    assert result.count == 24_000
    error = (result.mean() - truth).abs()
    assert (error <= 4 * result.stderr()).all() and error.max() < 0.05 * truth.abs().max()
    # Stopping happens at whole passes only.
    stopped = estimate(lambda mask, b: per_part[b](mask), (n,), max_samples=24_000, parts=parts,
                       generator=torch.Generator().manual_seed(12), min_samples=5, tolerance=0.2)
    assert stopped.count % parts == 0 and stopped.count < 24_000


def test_stopping_rule_stops_once_estimates_clear_their_noise():
    value = _quadratic(6, seed=6)
    result = estimate(_gradient_at(value), (6,), max_samples=50_000, generator=torch.Generator().manual_seed(7),
                      min_samples=16, tolerance=0.05)
    assert 16 <= result.count < 50_000
    assert result.stderr().mean() <= 0.05 * result.mean().abs().mean()


def test_running_estimates_equal_direct_statistics():
    samples = torch.randn(40, 3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    mean, stderr = running_estimates(samples)
    for t in (2, 17, 40):
        torch.testing.assert_close(mean[t - 1], samples[:t].mean(dim=0))
        torch.testing.assert_close(stderr[t - 1], samples[:t].std(dim=0) / t ** 0.5)
    assert stderr[0].isnan().all()
