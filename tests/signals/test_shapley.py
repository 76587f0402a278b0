"""The Monte Carlo Shapley estimator against exact enumeration on toys with closed-form value functions, and
exact enumeration against the textbook loop and captum's ShapleyValues."""
import itertools
import math

import pytest
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


def test_stopping_rule_decides_on_a_pilot_and_the_estimate_comes_from_fresh_coalitions():
    value = _quadratic(6, seed=6)
    calls = []
    gradient_at = _gradient_at(value)
    result = estimate(lambda mask, b: calls.append(mask) or gradient_at(mask), (6,), max_samples=50_000,
                      generator=torch.Generator().manual_seed(7), min_samples=16, tolerance=0.05)
    assert 16 <= result.count == result.pilot < 50_000 and len(calls) == 2 * result.count
    pilot = torch.stack(calls[: result.pilot])
    assert not torch.equal(pilot, result.masks) and torch.equal(torch.stack(calls[result.pilot:]), result.masks)
    torch.testing.assert_close(result.mean(), exact_shapley(value, 6), atol=6 * result.stderr().max(), rtol=0)


def test_standard_errors_after_early_stopping_cover_the_exact_value():
    # 200 early-stopped runs on a toy whose Shapley values are known exactly (quadratic: first order is
    # exact): the +-1.96 stderr intervals from the fresh stream hold the true value about 95% of the time.
    n = 4
    value = _quadratic(n, seed=9)
    exact = exact_shapley(value, n)
    gradient_at = _gradient_at(value)
    generator = torch.Generator().manual_seed(10)
    covered = []
    for _ in range(200):
        result = estimate(gradient_at, (n,), max_samples=400, generator=generator, min_samples=16, tolerance=0.3)
        covered.append(((result.mean() - exact).abs() <= 1.96 * result.stderr()).double().mean())
    assert 0.9 <= float(torch.stack(covered).mean()) <= 0.99


def test_sensitivity_reading_of_a_linear_value_is_half_each_weight_in_magnitude():
    # v(g) = a . g: dv/dg_i = a_i at every coalition and rank i is on in half of them, so the mean of
    # |m_i dv/dg_i| over Shapley-weighted coalitions is |a_i| / 2 (the Shapley value itself is a_i).
    a = torch.tensor([0.8, -0.3, 0.0, 2.0], dtype=torch.float64)
    gradient_at = _gradient_at(lambda g: a @ g)
    result = estimate(gradient_at, (4,), max_samples=5_000, generator=torch.Generator().manual_seed(11),
                      reading="sensitivity")
    torch.testing.assert_close(result.mean(), a.abs() / 2, atol=0.06, rtol=0)
    shapley = estimate(gradient_at, (4,), max_samples=2_000, generator=torch.Generator().manual_seed(11))
    torch.testing.assert_close(shapley.mean(), a, atol=0.1, rtol=0)


def test_running_estimates_equal_direct_statistics():
    samples = torch.randn(40, 3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    mean, stderr = running_estimates(samples)
    for t in (2, 17, 40):
        torch.testing.assert_close(mean[t - 1], samples[:t].mean(dim=0))
        torch.testing.assert_close(stderr[t - 1], samples[:t].std(dim=0) / t ** 0.5)
    assert stderr[0].isnan().all()


def test_exact_enumeration_on_games_with_known_shapley_values():
    from analysis.signals.shapley.exact import all_coalitions, first_order_from_gradients, shapley_from_values

    # Glove game: players 0 and 1 hold a left glove, player 2 a right one; a pair is worth 1.
    masks = all_coalitions(3)
    gloves = torch.minimum(masks[:, 0] + masks[:, 1], masks[:, 2])
    torch.testing.assert_close(shapley_from_values(gloves, 3), torch.tensor([1 / 6, 1 / 6, 2 / 3], dtype=torch.float64))
    # Any game against the textbook loop over subsets; and efficiency: the values add up to v(all) - v(none).
    for value in (_quadratic(5, seed=4), _cubic(5, seed=5)):
        masks = all_coalitions(5)
        values = torch.stack([value(m) for m in masks])
        exact = shapley_from_values(values, 5)
        torch.testing.assert_close(exact, exact_shapley(value, 5), rtol=1e-12, atol=1e-12)
        assert float(exact.sum()) == pytest.approx(float(values[-1] - values[0]), abs=1e-12)
        gradients = torch.stack([_gradient_at(value)(m)[1] for m in masks])
        torch.testing.assert_close(first_order_from_gradients(gradients, 5), exact_first_order_shapley(value, 5),
                                   rtol=1e-12, atol=1e-12)


def test_exact_enumeration_equals_captum_shapley_values_on_a_cubic_game():
    """captum's ShapleyValues (all 720 orders of 6 players) is an independent implementation of the same sum."""
    from analysis.signals.shapley.exact import all_coalitions, shapley_from_values
    from tests.conftest import captum_shapley

    value = _cubic(6, seed=6)
    ours = shapley_from_values(torch.stack([value(m) for m in all_coalitions(6)]), 6)
    theirs, asked = captum_shapley(value, 6)
    assert asked == 2 ** 6
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-7)   # captum sums 720 orders in float32


@pytest.mark.parametrize("per_pass, tolerance", [(5, 0.0), (5, 0.2), (16, 0.2), (64, 0.2), (7, 0.1)])
def test_coalitions_side_by_side_give_the_estimates_of_one_at_a_time(per_pass, tolerance):
    # The reference is the estimator taking one coalition per call; side by side it receives up to per_pass masks
    # at once. Same generator seed: the same masks, samples, pilot length (the stopping rule looks at each sample
    # as before, also in the middle of a pass) and estimates.
    value = _cubic(5, seed=12)
    one = _gradient_at(value)
    calls = []

    def side_by_side(masks, part):
        assert masks.ndim == 2 and 1 <= len(masks) <= per_pass and part == 0
        calls.append(len(masks))
        return None, torch.stack([one(mask)[1] for mask in masks])

    kwargs = dict(max_samples=300, min_samples=16, tolerance=tolerance)
    alone = estimate(one, (5,), generator=torch.Generator().manual_seed(13), **kwargs)
    together = estimate(side_by_side, (5,), generator=torch.Generator().manual_seed(13), per_pass=per_pass, **kwargs)
    assert together.pilot == alone.pilot and (tolerance == 0 or 16 <= alone.pilot < 300)
    assert torch.equal(together.masks, alone.masks)
    torch.testing.assert_close(together.samples, alone.samples, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(together.stderr(), alone.stderr(), rtol=1e-12, atol=1e-12)
    # Passes of per_pass coalitions, fewer only at the end of a stream; the pilot's last pass may run past its stop.
    def passes(evaluated, stream):
        return [min(per_pass, stream - start) for start in range(0, evaluated, per_pass)]
    expected = passes(300, 300) if tolerance == 0 else passes(alone.pilot, 300) + passes(alone.pilot, alone.pilot)
    assert calls == expected
