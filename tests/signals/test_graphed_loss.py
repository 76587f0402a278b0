"""The warm-up's and SoRA's training loss as CUDA graphs (graphed_loss.py), checked where a CPU can check it: the
batches a graph needs (every one padded to --max-length) train what the batches padded to their longest text
train; a capture that fails (as it does on the CPU) says why and trains eagerly; and through a stand-in that
handles inputs as a replay does, training is exactly the eager one. The graphs themselves are compared with eager
steps on the GPU by bench/bench_analysis_speed.py --check."""
import pandas as pd
import pytest
import torch

from analysis.signals.lora import graphed_loss


@pytest.fixture(scope="module")
def dropout_free_context(tmp_path_factory, minilm):
    """A tiny dropout-free BERT classifier with the embedded tokenizer (dropout would draw other numbers for
    other shapes), on 60 made-up reviews of uneven length, on the CPU."""
    from analysis.settings import RunSettings
    from analysis.signals.context import AnalysisContext, prepare
    from analysis.store.cache import Store
    from tests.conftest import save_dropout_free_bert

    root = tmp_path_factory.mktemp("dropout-free")
    save_dropout_free_bert(root / "bert", minilm.tokenizer)
    words = ["good", "bad", "fine", "awful", "great", "dull"]
    texts = [f"the film {i} was {words[i % 6]} " + "and long " * (i % 7) for i in range(60)]
    pd.DataFrame({"text": texts, "label": [i % 2 for i in range(60)]}).to_csv(root / "reviews.csv", index=False)
    settings = RunSettings(model=str(root / "bert"), data=str(root / "reviews.csv"), val_size=6, max_length=24,
                           device="cpu")
    return AnalysisContext(prepare(settings, Store(tmp_path_factory.mktemp("store"))))


def _as_if_on_a_gpu(context, monkeypatch) -> list[str]:
    """Graphs wanted, as on a GPU: fixed-length batches, and a capture that fails on the CPU."""
    said = []
    monkeypatch.setattr(graphed_loss, "wanted", lambda model: True)
    monkeypatch.setattr(context, "warn", said.append)
    return said


def test_warm_up_on_fixed_length_batches_trains_what_it_trains_on_padded_to_the_longest(dropout_free_context,
                                                                                          monkeypatch):
    from analysis.signals.lora.warmup import WarmupConfig, _train

    config = WarmupConfig(r_max=2, warmup_steps=8, warmup_batch_size=4, warmup_lr=1e-2)
    plain = _train(dropout_free_context, config)
    said = _as_if_on_a_gpu(dropout_free_context, monkeypatch)
    fixed = _train(dropout_free_context, config)
    assert len(said) == 1 and said[0].startswith("CUDA graphs could not be captured") and "training eagerly" in said[0]
    assert plain.meta["cuda_graphs"] is fixed.meta["cuda_graphs"] is False
    losses = [torch.tensor(r.tables["losses"]["loss"].to_numpy()) for r in (plain, fixed)]
    assert plain.tensors["lora.B.0"].abs().max() > 1e-3   # it trains
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=0)
    for name, tensor in plain.tensors.items():   # Adam steps of 1e-2 magnify rounding where a gradient is tiny
        scale = float(tensor.abs().max())
        torch.testing.assert_close(fixed.tensors[name], tensor, rtol=1e-4, atol=1e-4 * scale, msg=name)


def test_sora_on_fixed_length_batches_trains_what_it_trains_on_padded_to_the_longest(dropout_free_context,
                                                                                       monkeypatch):
    from analysis.signals.sora.gate_training import SoraConfig, train

    config = SoraConfig(r_max=3, steps=10, batch_size=4, rounds=1, round_steps=4, lr=1e-2, xi=1e-3, xi_max=2e-2)
    plain = train(dropout_free_context, config)
    said = _as_if_on_a_gpu(dropout_free_context, monkeypatch)
    fixed = train(dropout_free_context, config)
    assert len(said) == 1 and "training eagerly" in said[0]
    for (step, stage, xi, gates), (step2, stage2, xi2, gates2) in zip(plain["snapshots"], fixed["snapshots"]):
        assert (step, stage, xi) == (step2, stage2, xi2)
        torch.testing.assert_close(gates2, gates, rtol=1e-4, atol=1e-4 * float(gates.abs().max()))
    assert [row[:4] for row in plain["history"]] == [row[:4] for row in fixed["history"]]
    torch.testing.assert_close(torch.tensor([row[4] for row in fixed["history"]]),
                               torch.tensor([row[4] for row in plain["history"]]), rtol=1e-5, atol=0)
    assert [row[5] for row in plain["history"]] == [row[5] for row in fixed["history"]]   # non-zero gates


def test_replays_copy_each_batch_into_the_graphs_inputs_and_leave_other_shapes_to_eager_passes(
        dropout_free_context, monkeypatch):
    """A stand-in for make_graphed_callables on the CPU does what a replay does with its inputs: copies each batch
    into the sample tensors it was made with (a shape that differs cannot be copied). The warm-up and SoRA through it
    train exactly what they train eagerly on the same batches: every batch is handed over whole, the first one
    still intact when the data comes round again (48 training rows, batches of 5: a short last batch, and two
    passes over the split)."""
    from analysis.signals.lora.warmup import WarmupConfig, _train
    from analysis.signals.sora.gate_training import SoraConfig, train

    warmup = WarmupConfig(r_max=2, warmup_steps=14, warmup_batch_size=5, warmup_lr=1e-2)
    sora = SoraConfig(r_max=3, steps=14, batch_size=5, rounds=1, round_steps=4, lr=1e-2, xi=1e-3, xi_max=2e-2)
    _as_if_on_a_gpu(dropout_free_context, monkeypatch)
    eager = _train(dropout_free_context, warmup), train(dropout_free_context, sora)
    made = []

    def stand_in(module, sample_args, allow_unused_input=False):
        assert module.training and all(p.requires_grad for p in module.extra)
        made.append([p for p in module.parameters() if p.requires_grad])

        def replay(*tensors):
            for static, tensor in zip(sample_args, tensors):
                static.copy_(tensor)   # fails for another shape (or would broadcast a single row: none here)
            return module.forward(*sample_args)
        return replay

    monkeypatch.setattr(torch.cuda, "make_graphed_callables", stand_in)
    replayed = _train(dropout_free_context, warmup), train(dropout_free_context, sora)
    assert replayed[0].meta["cuda_graphs"] is True and len(made) == 2
    assert any(p.shape == (len(dropout_free_context.modules), 3) for p in made[1])   # SoRA's gates are graphed
    assert replayed[0].tables["losses"].equals(eager[0].tables["losses"])
    assert all(torch.equal(replayed[0].tensors[k], t) for k, t in eager[0].tensors.items())
    assert replayed[1]["history"] == eager[1]["history"] and torch.equal(replayed[1]["learned"], eager[1]["learned"])
