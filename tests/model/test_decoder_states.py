"""Decoders and the embedded encoder against transformers' own `output_hidden_states=True`: the pooled
states the signals use (the last one after the final norm), and the CKA and intrinsic-dimension tables
against an independent computation from those states (numpy float64 CKA, scikit-dimension TwoNN)."""
import math

import numpy as np
import pytest
import torch
from skdim.id import TwoNN

from analysis.model.capture import find_final_norm, pooled_hidden_states
from analysis.settings import RunSettings
from analysis.signals.context import AnalysisContext, prepare
from analysis.signals.registry import get_signal, make_config
from analysis.store.cache import Store
from tests.conftest import random_batch, reference_states, tiny_gpt2, tiny_llama, tiny_qwen2

DECODERS = {"llama": tiny_llama, "gpt2": tiny_gpt2, "qwen2": tiny_qwen2}


def _loop_pool(hidden, mask, pooling):
    rows = []
    for b in range(hidden.shape[0]):
        real = hidden[b, mask[b].bool()]
        rows.append({"cls": hidden[b, 0], "last": real[-1], "mean": real.mean(0)}[pooling])
    return torch.stack(rows)


def numpy_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA in float64 from its definition on column-centred matrices (NaN for a constant state)."""
    x, y = x - x.mean(0), y - y.mean(0)
    denominator = np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)
    return float(np.linalg.norm(x.T @ y) ** 2 / denominator) if denominator > 1e-9 else math.nan


@pytest.mark.parametrize("name", sorted(DECODERS))
@pytest.mark.parametrize("pooling", ["last", "cls", "mean"])
def test_decoder_states_equal_output_hidden_states_final_norm_included(name, pooling):
    model = DECODERS[name](layers=3)
    assert find_final_norm(model) is not None
    batch = random_batch()
    (states,) = [d[pooling] for d in pooled_hidden_states(model, [batch], [pooling])]
    with torch.no_grad():
        reference = model(**batch, output_hidden_states=True).hidden_states
    assert len(states) == len(reference) == 4
    for mine, theirs in zip(states, reference):  # every state, the final-normed last one included
        torch.testing.assert_close(mine, _loop_pool(theirs, batch["attention_mask"], pooling))


def test_encoder_has_no_final_norm_and_its_states_equal_output_hidden_states(minilm):
    assert find_final_norm(minilm.model) is None
    batch = dict(minilm.tokenizer(["a truly great film", "bad", "it is what it is"], padding=True,
                                  return_tensors="pt"))
    by_pooling = next(pooled_hidden_states(minilm.model, [batch], ["cls", "mean", "last"]))
    with torch.no_grad():
        reference = minilm.model(**batch, output_hidden_states=True).hidden_states
    for pooling, states in by_pooling.items():
        for mine, theirs in zip(states, reference):
            torch.testing.assert_close(mine, _loop_pool(theirs, batch["attention_mask"], pooling))


@pytest.fixture(scope="module", params=sorted(DECODERS))
def decoder_context(request, tmp_path_factory, minilm):
    """A config-built decoder saved with the embedded tokenizer, analysed on 48 snippets on the CPU."""
    directory = tmp_path_factory.mktemp(request.param)
    DECODERS[request.param](layers=3, vocab=len(minilm.tokenizer)).save_pretrained(directory)
    minilm.tokenizer.save_pretrained(directory)
    settings = RunSettings(model=str(directory), val_size=48, batch_size=16, max_length=24, device="cpu")
    return AnalysisContext(prepare(settings, Store(tmp_path_factory.mktemp("store"))))


def _check_cka(context, pooling, pooled):
    signal = get_signal("cka")
    result = signal.compute(context, make_config(signal, {"pooling": pooling}))
    assert result.meta["split"] == "train"  # the paper's split by default
    states = [s.numpy() for s in reference_states(context, pooled, "train")]
    expected = np.array([1 - numpy_cka(states[i], states[i + 1]) for i in range(len(states) - 1)])
    # Only block 0 may be degenerate: a CLS, or a Llama's last token (always [SEP] here), at the embeddings.
    assert np.isfinite(expected[1:]).all()
    np.testing.assert_allclose(result.table["value"], expected, rtol=1e-4, atol=1e-6)
    assert result.table["degenerate"].tolist() == np.isnan(expected).tolist()


def _check_id(context):
    signal = get_signal("id")
    result = signal.compute(context, make_config(signal))  # mean pooling, validation, fast torch TwoNN
    dims = [TwoNN(discard_fraction=0.1).fit(s.numpy()).dimension_ for s in reference_states(context, "mean")]
    np.testing.assert_allclose(result.tables["dimensions"]["id"], dims, rtol=1e-4)
    bounds = [math.ceil(max(dims[i + 1] - dims[i], 0)) + 1 for i in range(len(dims) - 1)]
    assert result.table["value"].tolist() == bounds


@pytest.mark.parametrize("pooling, pooled", [("auto", "last"), ("mean", "mean")])
def test_decoder_cka_table_equals_numpy_cka_of_transformers_states(decoder_context, pooling, pooled):
    _check_cka(decoder_context, pooling, pooled)


@pytest.mark.parametrize("pooling, pooled", [("auto", "cls"), ("mean", "mean")])
def test_encoder_cka_table_equals_numpy_cka_of_transformers_states(encoder_context, pooling, pooled):
    _check_cka(encoder_context, pooling, pooled)


def test_decoder_id_table_equals_scikit_dimension_on_transformers_states(decoder_context):
    _check_id(decoder_context)


def test_encoder_id_table_equals_scikit_dimension_on_transformers_states(encoder_context):
    _check_id(encoder_context)
