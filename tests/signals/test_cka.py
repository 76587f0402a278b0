"""Linear CKA against float64 numpy references written from the formulas, and the "cka" signal."""
import math

import numpy as np
import pytest
import torch

from analysis.signals.cka import linear_cka as cka_module
from analysis.errors import UserError
from analysis.signals.cka.linear_cka import CKAAccumulator, cka_matrix, linear_cka
from analysis.contract.result import TIDY_COLUMNS
from analysis.signals.registry import get_signal, make_config
from tests.conftest import reference_states

SHAPES = [(20, 50, 30), (40, 64, 8), (200, 10, 15), (150, 12, 12)]  # (N, D1, D2): N < D and N > D


def _hsic_biased(k, l):
    n = k.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    return np.trace(h @ k @ h @ h @ l @ h)


def _hsic_unbiased(k, l):
    """Song et al. 2012, eq. (5), straight from the formula on uncentred Gram matrices."""
    n = k.shape[0]
    kt, lt = k - np.diag(np.diag(k)), l - np.diag(np.diag(l))
    ones = np.ones(n)
    return (np.trace(kt @ lt) + (ones @ kt @ ones) * (ones @ lt @ ones) / ((n - 1) * (n - 2))
            - 2 / (n - 2) * ones @ kt @ lt @ ones) / (n * (n - 3))


def reference_cka(x, y, unbiased=False):
    hsic = _hsic_unbiased if unbiased else _hsic_biased
    k, l = x @ x.T, y @ y.T
    return hsic(k, l) / math.sqrt(hsic(k, k) * hsic(l, l))


def _pair(seed, n, d1, d2):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d1)) * rng.uniform(0.5, 3, size=d1) + rng.normal(size=d1) * 4
    y = np.tanh(x @ rng.normal(size=(d1, d2)) / math.sqrt(d1)) + 0.5 * rng.normal(size=(n, d2)) + 2
    return x, y


@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_linear_cka_equals_the_gram_reference(shape, unbiased):
    for seed in range(3):
        x, y = _pair(seed, *shape)
        value = linear_cka(torch.from_numpy(x), torch.from_numpy(y), unbiased=unbiased)
        assert value == pytest.approx(reference_cka(x, y, unbiased), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("unbiased", [False, True])
def test_linear_cka_invariances(unbiased):
    x, y = (torch.from_numpy(a) for a in _pair(7, 60, 20, 30))
    base = linear_cka(x, y, unbiased)
    rotation, _ = torch.linalg.qr(torch.randn(20, 20, dtype=torch.float64, generator=torch.Generator().manual_seed(1)))
    assert linear_cka(x @ rotation, y, unbiased) == pytest.approx(base, rel=1e-9)
    assert linear_cka(3.7 * x, 0.01 * y, unbiased) == pytest.approx(base, rel=1e-9)
    assert linear_cka(x + 100.0, y, unbiased) == pytest.approx(base, rel=1e-7)
    assert linear_cka(x, x, unbiased) == pytest.approx(1.0, abs=1e-6)
    assert linear_cka(x.float(), y.float(), unbiased) == pytest.approx(base, rel=1e-5)


@pytest.mark.parametrize("unbiased", [False, True])
def test_constant_states_give_nan(unbiased):
    x = torch.randn(30, 8, dtype=torch.float64)
    constant = torch.randn(1, 16).expand(30, 16)
    assert math.isnan(linear_cka(x, constant, unbiased)) and math.isnan(linear_cka(constant, x, unbiased))
    assert cka_module.is_degenerate(constant) and not cka_module.is_degenerate(x)


def _layers(n=48, widths=(12, 20, 20, 7, 30), constant_at=None, seed=0):
    rng = np.random.default_rng(seed)
    states = [rng.normal(size=(n, widths[0]))]
    for width in widths[1:]:
        mixed = np.tanh(states[-1] @ rng.normal(size=(states[-1].shape[1], width)))
        states.append(mixed + 0.3 * rng.normal(size=(n, width)))
    if constant_at is not None:
        states[constant_at] = np.tile(rng.normal(size=widths[constant_at]), (n, 1))
    return [torch.from_numpy(s) for s in states]


@pytest.mark.parametrize("unbiased", [False, True])
def test_cka_matrix_is_every_pair(unbiased, monkeypatch):
    states = _layers(constant_at=0)
    matrix = cka_matrix(states, unbiased)
    assert matrix.shape == (5, 5)
    assert matrix[0].isnan().all() and matrix[:, 0].isnan().all()
    inner = matrix[1:, 1:]
    torch.testing.assert_close(inner, inner.T)
    torch.testing.assert_close(inner.diagonal(), torch.ones(4, dtype=torch.float64))
    for i in range(1, 5):
        for j in range(1, 5):
            reference = reference_cka(states[i].numpy(), states[j].numpy(), unbiased)
            assert float(matrix[i, j]) == pytest.approx(reference, rel=1e-9)
    monkeypatch.setattr(cka_module, "CHUNK_ELEMENTS", 5 * 48 * 7)  # 7 Gram rows per chunk
    torch.testing.assert_close(cka_matrix(states, unbiased), matrix, equal_nan=True)


@pytest.mark.parametrize("unbiased", [False, True])
def test_accumulator_over_minibatches_equals_one_shot(unbiased):
    states = [s * 5 + 50 for s in _layers(n=61, seed=3)]  # a large common offset, as hidden states have
    accumulator = CKAAccumulator(unbiased)
    for start in range(0, 61, 13):
        accumulator.update([s[start:start + 13] for s in states])
    one_shot = [linear_cka(states[l], states[l + 1], unbiased) for l in range(4)]
    torch.testing.assert_close(accumulator.consecutive(), torch.tensor(one_shot, dtype=torch.float64),
                               rtol=1e-9, atol=1e-12)
    matrix = cka_matrix(states, unbiased)
    torch.testing.assert_close(accumulator.consecutive(), matrix.diagonal(1), rtol=1e-9, atol=1e-12)


def test_accumulator_flags_constant_layers():
    states = _layers(n=40, constant_at=2, seed=4)
    accumulator = CKAAccumulator()
    for start in range(0, 40, 16):
        accumulator.update([s[start:start + 16] for s in states])
    assert accumulator.degenerate() == [False, False, True, False, False]
    values = accumulator.consecutive()
    assert values[1:3].isnan().all() and not values[[0, 3]].isnan().any()


def test_cka_signal_equals_cka_of_transformers_hidden_states(encoder_context):
    signal = get_signal("cka")
    result = signal.compute(encoder_context, make_config(signal, {"pooling": "mean"}))
    table = result.table
    assert list(table.columns[:4]) == list(TIDY_COLUMNS) and list(table["layer"]) == list(range(6))
    assert (table["module"] == "block").all() and not table["degenerate"].any()
    reference = reference_states(encoder_context, "mean", "train")
    expected = [1 - reference_cka(reference[i].numpy(), reference[i + 1].numpy()) for i in range(6)]
    np.testing.assert_allclose(table["value"], expected, rtol=1e-4, atol=1e-6)
    matrix = result.tables["matrix"]
    assert list(matrix.columns) == ["layer", "layer2", "value"] and len(matrix) == 49
    pivot = matrix.pivot(index="layer", columns="layer2", values="value").to_numpy()
    np.testing.assert_allclose(np.diag(pivot), 1.0, atol=1e-9)
    np.testing.assert_allclose(1 - np.diag(pivot, 1), table["value"], atol=1e-12)


def test_cka_signal_flags_the_constant_cls_embedding(encoder_context):
    signal = get_signal("cka")
    auto = signal.compute(encoder_context, make_config(signal)).table  # auto: the paper's CLS for an encoder
    assert auto["degenerate"].tolist() == [True] + [False] * 5
    assert auto["value"].isna().tolist() == auto["degenerate"].tolist()
    table = signal.compute(encoder_context, make_config(signal, {"pooling": "cls", "unbiased": "true"})).table
    assert bool(table.loc[0, "degenerate"]) and math.isnan(table.loc[0, "value"])
    assert not table["degenerate"][1:].any() and table["value"][1:].notna().all()
    # Centred first: the CLS rows share an offset ~400x their spread, and the uncentred unbiased
    # formula loses ~3 digits to cancellation there (the estimator itself is translation invariant).
    reference = [(s - s.mean(0)).numpy() for s in reference_states(encoder_context, "cls", "train")]
    expected = [1 - reference_cka(reference[i], reference[i + 1], unbiased=True) for i in range(1, 6)]
    np.testing.assert_allclose(table["value"][1:], expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("unbiased", ["false", "true"])
def test_cka_signal_accumulated_over_batches_equals_the_matrix(encoder_context, unbiased):
    signal = get_signal("cka")
    whole = signal.compute(encoder_context, make_config(signal, {"pooling": "mean", "unbiased": unbiased}))
    streamed = signal.compute(encoder_context, make_config(signal, {"pooling": "mean", "unbiased": unbiased,
                                                            "accumulate": "true"}))
    assert "matrix" in whole.tables and "matrix" not in streamed.tables and streamed.meta["examples"] == 64
    np.testing.assert_allclose(streamed.table["value"], whole.table["value"], rtol=1e-6, atol=1e-9)


def test_cka_signal_refuses_token_pooling(encoder_context):
    signal = get_signal("cka")
    with pytest.raises(UserError, match="^cka.pooling must be one of auto, cls, last, mean, not 'tokens'.$"):
        make_config(signal, {"pooling": "tokens"})   # refused when the options are made, before any compute
