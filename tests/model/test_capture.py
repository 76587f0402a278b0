"""Block discovery, adaptable modules and pooled hidden states, checked against transformers' own outputs."""
import pytest
import torch

from analysis.model import capture
from analysis.model.capture import adaptable_modules, pool, pooled_hidden_states
from tests.conftest import random_batch, tiny_gpt2, tiny_llama

BERT_MODULES = ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"]
LLAMA_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def test_minilm_modules(minilm):
    found = adaptable_modules(minilm.model)
    assert len(found) == 6 * 6
    assert [m.name for m in found if m.layer == 0] == BERT_MODULES
    shapes = {m.name: (m.d_in, m.d_out) for m in found if m.layer == 5}
    assert shapes["query"] == (384, 384) and shapes["intermediate.dense"] == (384, 1536)
    assert shapes["output.dense"] == (1536, 384)
    assert found[-1].path == "bert.encoder.layer.5.output.dense"
    for module in found:  # every path resolves to the linear it describes
        linear = minilm.model.get_submodule(module.path)
        assert (linear.in_features, linear.out_features) == (module.d_in, module.d_out)


def test_llama_and_gpt2_modules():
    llama = adaptable_modules(tiny_llama(layers=3))
    assert [m.name for m in llama if m.layer == 2] == LLAMA_MODULES
    by_name = {m.name: (m.d_in, m.d_out) for m in llama if m.layer == 0}
    assert by_name["k_proj"] == (32, 16) and by_name["gate_proj"] == (32, 72) and by_name["down_proj"] == (72, 32)
    gpt2 = adaptable_modules(tiny_gpt2())
    assert [m.name for m in gpt2 if m.layer == 1] == ["c_attn", "attn.c_proj", "c_fc", "mlp.c_proj"]
    assert {m.name: (m.d_in, m.d_out) for m in gpt2 if m.layer == 0}["c_attn"] == (32, 96)


def _reference_pool(hidden, mask, pooling):
    """Per-example loops: the obviously right version."""
    rows = []
    for b in range(hidden.shape[0]):
        real = hidden[b, mask[b].bool()]
        rows.append({"cls": hidden[b, 0], "last": real[-1], "mean": real.mean(0)}[pooling])
    return torch.stack(rows)


@pytest.mark.parametrize("pooling", ["cls", "last", "mean"])
def test_pooling_matches_loops(pooling):
    generator = torch.Generator().manual_seed(1)
    hidden = torch.randn(4, 7, 5, generator=generator, dtype=torch.float64)
    mask = torch.tensor([[1] * 7, [1] * 3 + [0] * 4, [1] * 5 + [0] * 2, [1] + [0] * 6])
    torch.testing.assert_close(pool(hidden, mask, pooling), _reference_pool(hidden, mask, pooling))


def test_token_sampling_takes_only_real_tokens():
    hidden = torch.arange(2 * 6, dtype=torch.float32).reshape(2, 6, 1).expand(2, 6, 3)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0]])
    picked = pool(hidden, mask, "tokens", torch.Generator().manual_seed(0), tokens_per_example=4)
    assert picked.shape == (4 + 2, 3)
    values = set(picked[:, 0].tolist())
    assert values <= {0, 1, 2, 3, 4, 5, 6, 7} and {6.0, 7.0} <= values  # padding positions 8..11 never appear


@pytest.mark.parametrize("pooling", ["cls", "last", "mean"])
def test_captured_states_equal_transformers_hidden_states_bert(minilm, pooling):
    batch = minilm.tokenizer(["a truly great film", "bad", "it is what it is, no more"], padding=True,
                             return_tensors="pt")
    (states,) = [d[pooling] for d in pooled_hidden_states(minilm.model, [dict(batch)], [pooling])]
    with torch.no_grad():
        reference = minilm.model.bert(**batch, output_hidden_states=True).hidden_states
    assert len(states) == len(reference) == 7
    for mine, theirs in zip(states, reference):
        torch.testing.assert_close(mine, _reference_pool(theirs, batch["attention_mask"], pooling))


def test_captured_states_llama_and_shapes():
    model = tiny_llama(layers=3)
    batch = random_batch()
    (both,) = list(pooled_hidden_states(model, [batch], ["last", "mean"]))
    states = both["last"]
    assert [tuple(s.shape) for s in states] == [(3, 32)] * 4
    with torch.no_grad():
        reference = model.model(**batch, output_hidden_states=True).hidden_states
    # Every entry, the last (after the final norm, as transformers gives it) included.
    for i in range(4):
        torch.testing.assert_close(states[i], _reference_pool(reference[i], batch["attention_mask"], "last"))
    for i in range(4):  # a second pooling from the same pass is as exact as the first
        torch.testing.assert_close(both["mean"][i], _reference_pool(reference[i], batch["attention_mask"], "mean"))
    (tokens,) = [d["tokens"] for d in pooled_hidden_states(model, [batch], ["tokens"], tokens_per_example=4)]
    assert tokens[0].shape == (4 + 4 + 4, 32)  # 9, 7 and 5 real tokens, at most 4 each


def test_no_hooks_left_behind(minilm):
    _, blocks = capture.find_blocks(minilm.model)
    before = [(dict(b._forward_hooks), dict(b._forward_pre_hooks)) for b in blocks]
    batch = dict(minilm.tokenizer(["x"], return_tensors="pt"))
    list(pooled_hidden_states(minilm.model, [batch], ["cls"]))
    assert [(dict(b._forward_hooks), dict(b._forward_pre_hooks)) for b in blocks] == before
