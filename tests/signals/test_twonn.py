"""Torch TwoNN against scikit-dimension on the same points, on known manifolds, and the "id" signal."""
import math
import warnings

import numpy as np
import pytest
import torch
from skdim.id import TwoNN

from analysis.errors import UserError
from analysis.contract.result import TIDY_COLUMNS
from analysis.signals.registry import get_signal, make_config
from analysis.signals.id.twonn import nearest_two, twonn
from tests.conftest import reference_states

# (N, D): low widths go through scikit-dimension's exact neighbour search, D > 25 through its
# matmul distance matrix; both must agree with ours.
DATASETS = [(300, 3), (500, 20), (800, 50), (600, 300)]


def _gaussian(seed, n, d):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)) * rng.uniform(0.5, 2, size=d) + 3


@pytest.mark.parametrize("discard_fraction", [0.1, 0.25])
@pytest.mark.parametrize("shape", DATASETS)
def test_equals_scikit_dimension(shape, discard_fraction):
    points = _gaussian(sum(shape), *shape)
    reference = TwoNN(discard_fraction=discard_fraction).fit(points).dimension_
    assert twonn(torch.from_numpy(points), discard_fraction) == pytest.approx(reference, rel=1e-4)
    # float32 points: only their rounding (1e-7 relative) moves the ratios; 1e-4 is ample.
    assert twonn(torch.from_numpy(points).float(), discard_fraction) == pytest.approx(reference, rel=1e-4)


def test_duplicated_rows_are_dropped_like_scikit_dimension():
    rng = np.random.default_rng(5)
    points = rng.normal(size=(400, 8))
    points = np.vstack([points, points[:30], points[:5]])  # 30 duplicated rows, 5 of them three times
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = TwoNN().fit(points).dimension_           # exact neighbour search for 8 features
    with pytest.warns(UserWarning, match="Dropping 65 points"):
        value = twonn(torch.from_numpy(points))
    assert value == pytest.approx(reference, rel=1e-4)


def test_duplicates_in_wide_data_match_scikit_dimension_fed_exact_distances():
    """For D > 25 scikit-dimension's rounded distances leave some duplicates a tiny non-zero r1, so
    fit(X) keeps them; its fit on exact (r1, r2) (dist=True) is the reference for what we compute."""
    rng = np.random.default_rng(6)
    points = rng.normal(size=(500, 50))
    points = np.vstack([points, points[:40]])
    differences = points[:, None, :] - points[None, :, :]
    distances = np.sqrt((differences ** 2).sum(-1))
    np.fill_diagonal(distances, np.inf)
    nearest = np.sort(distances, axis=1)[:, :2]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = TwoNN(dist=True).fit(nearest).dimension_
        value = twonn(torch.from_numpy(points))
    assert value == pytest.approx(reference, rel=1e-4)


def test_nearest_two_equals_brute_force_and_chunking_changes_nothing():
    points = torch.from_numpy(_gaussian(1, 257, 40))
    distances = torch.cdist(points, points)
    distances.fill_diagonal_(math.inf)
    expected = distances.sort(dim=1).values[:, :2]
    for chunk_size in (None, 1, 16, 100):
        r1, r2 = nearest_two(points, chunk_size)
        torch.testing.assert_close(torch.stack([r1, r2], 1), expected, rtol=1e-10, atol=1e-10)
    assert twonn(points, chunk_size=7) == twonn(points)


def test_recovers_a_linear_subspace():
    rng = np.random.default_rng(0)
    points = rng.normal(size=(2500, 5)) @ rng.normal(size=(5, 100))
    assert twonn(torch.from_numpy(points)) == pytest.approx(5, rel=0.1)


def test_recovers_a_curved_manifold():
    rng = np.random.default_rng(0)
    latent = rng.normal(size=(2500, 10))
    angles = latent @ rng.normal(size=(10, 30)) * 0.3
    points = np.hstack([np.sin(angles), np.cos(angles)]) @ rng.normal(size=(60, 500))
    spectrum = np.linalg.svd(points - points.mean(0), compute_uv=False)
    assert spectrum[10] > 0.05 * spectrum[0]  # not a 10-dim linear subspace: it is curved
    assert twonn(torch.from_numpy(points)) == pytest.approx(10, rel=0.1)


def test_rejects_too_few_distinct_points():
    with pytest.raises(ValueError, match="distinct points"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        twonn(torch.ones(20, 4))


def test_id_signal_bounds_from_transformers_hidden_states(encoder_context):
    signal = get_signal("id")
    result = signal.compute(encoder_context, make_config(signal))
    table, dimensions = result.table, result.tables["dimensions"]
    assert list(table.columns[:4]) == list(TIDY_COLUMNS) and list(table["layer"]) == list(range(6))
    assert (table["module"] == "block").all() and list(dimensions["state"]) == list(range(7))
    expected = [TwoNN().fit(states.numpy()).dimension_ for states in reference_states(encoder_context, "mean")]
    np.testing.assert_allclose(dimensions["id"], expected, rtol=1e-3)
    np.testing.assert_allclose(table["id_in"], dimensions["id"][:-1])
    np.testing.assert_allclose(table["id_out"], dimensions["id"][1:])
    bounds = [math.ceil(max(out - inp, 0)) + 1 for inp, out in zip(table["id_in"], table["id_out"])]
    assert table["value"].tolist() == bounds and all(isinstance(v, int) and v >= 1 for v in table["value"].tolist())


def test_id_signal_runs_scikit_dimension_estimators(encoder_context):
    signal = get_signal("id")
    fast = signal.compute(encoder_context, make_config(signal)).tables["dimensions"]
    reference = signal.compute(encoder_context, make_config(signal, {"estimator": "TwoNN"})).tables["dimensions"]
    np.testing.assert_allclose(fast["id"], reference["id"], rtol=1e-4)
    lpca = signal.compute(encoder_context, make_config(signal, {"estimator": "lPCA"})).table
    assert (lpca["value"] >= 1).all()
    with pytest.raises(UserError, match="Unknown intrinsic-dimension estimator 'bogus'.*DANCo"):
        signal.compute(encoder_context, make_config(signal, {"estimator": "bogus"}))


def test_id_signal_explains_the_constant_cls_embedding(encoder_context):
    signal = get_signal("id")
    with pytest.raises(UserError, match="hidden state 0.*pooling mean"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        signal.compute(encoder_context, make_config(signal, {"pooling": "cls"}))

