"""Registered signals: the tidy-table contract, and each signal against a direct reference computation."""
import dataclasses

import numpy as np
import pytest
import torch

from analysis.signals.context import AnalysisContext, prepare
from analysis.settings import RunSettings
from analysis.errors import UserError
from analysis.contract.result import TIDY_COLUMNS
from analysis.signals.registry import all_signals, get_signal, make_config
from analysis.store.cache import Store
from analysis.planning.methods import layout_for
from tests.conftest import reference_states
from tests.synthetic_store import MAKERS


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    store = Store(tmp_path_factory.mktemp("signals-cache"))
    return AnalysisContext(prepare(RunSettings(val_size=12, batch_size=5, device="cpu"), store))


# Signals that train first get a short warm-up here; everything else runs on its defaults.
SHORT = {"shapley": {"warmup_steps": "4", "samples": "4", "min_samples": "2"}, "adalora": {"warmup_steps": "4"},
         "sora": {"steps": "4", "rounds": "1", "round_steps": "2", "batch_size": "4"}}


@pytest.mark.parametrize("name", sorted(all_signals()))
def test_every_signal_returns_a_tidy_table(context, name):
    signal = get_signal(name)
    result = signal.compute(context, make_config(signal, SHORT.get(name)))
    table = result.table
    assert list(table.columns[:4]) == list(TIDY_COLUMNS)
    assert (table["signal"] == name).all()
    # A value may be missing only where the signal says why (CKA with a constant state).
    missing = table["value"].isna()
    assert not missing.any() or ("degenerate" in table and table.loc[missing, "degenerate"].all())
    assert table["layer"].between(0, 5).all() and set(table["layer"]) == set(range(6))
    assert all(column in ("stderr", "rank") or column not in ("signal", "layer", "module", "value")
               for column in table.columns[4:])
    if name in MAKERS:   # the page tests' synthetic results must keep the real schema
        modules = list(layout_for(context.prepared.run).modules)
        fake = MAKERS[name](modules, sorted({m.layer for m in modules}), np.random.default_rng(0))
        def schema(result):   # every table's columns in order, with their types
            tables = {"main": result.table, **result.tables}
            return {key: list(frame.dtypes.astype(str).items()) for key, frame in tables.items()}
        assert schema(fake) == schema(result)
        assert set(fake.meta) <= set(result.meta)   # no metadata the real signal does not write


def test_grad_norm_equals_one_full_batch_gradient(context):
    table = get_signal("grad_norm").compute(context, make_config(get_signal("grad_norm"))).table
    model = context.model
    frame = context.frame()
    batch = context.loaded.tokenizer(frame["text"].tolist(), padding=True, truncation=True, max_length=128,
                                     return_tensors="pt")
    weights = [model.get_submodule(m.path).weight for m in context.modules]
    loss = model(**batch, labels=torch.tensor(frame["label"].tolist())).loss
    reference = [g.norm().item() for g in torch.autograd.grad(loss, weights)]
    torch.testing.assert_close(torch.tensor(table["value"].tolist()), torch.tensor(reference), rtol=1e-4, atol=1e-7)
    assert all(p.grad is None for p in model.parameters())  # the signal leaves the model as it found it


def test_state_change_equals_transformers_hidden_states(context):
    table = get_signal("state_change").compute(context, make_config(get_signal("state_change"))).table
    pooled = reference_states(context, "mean")
    reference = [((pooled[i + 1] - pooled[i]).norm(dim=-1) / pooled[i].norm(dim=-1)).mean().item() for i in range(6)]
    torch.testing.assert_close(torch.tensor(table["value"].tolist(), dtype=torch.float64),
                               torch.tensor(reference, dtype=torch.float64), rtol=1e-5, atol=1e-8)


def test_config_overrides_are_typed_and_checked():
    signal = get_signal("state_change")
    assert make_config(signal, {"pooling": "cls"}).pooling == "cls"
    with pytest.raises(UserError, match="has no option 'bogus'"):
        make_config(signal, {"bogus": "1"})
    assert all(f.metadata.get("help") for f in dataclasses.fields(signal.config))


def test_planned_poolings_share_one_capture_pass(tmp_path):
    context = AnalysisContext(prepare(RunSettings(val_size=12, batch_size=5, device="cpu"), Store(tmp_path)))
    context.plan_pooling("mean")
    context.plan_pooling("cls")
    calls = []
    handle = context.model.bert.embeddings.register_forward_hook(lambda *args: calls.append(1))
    try:
        cls_states = context.collected_states("cls")
        mean_states = context.collected_states("mean")
    finally:
        handle.remove()
    assert len(calls) == 3  # 12 examples in batches of 5: one pass served both poolings
    streamed = [torch.cat(layer) for layer in zip(*context.pooled_states("mean"))]
    assert len(mean_states) == 7 and mean_states[0].shape == (12, 384) and cls_states[3].shape == (12, 384)
    for collected, reference in zip(mean_states, streamed):
        torch.testing.assert_close(collected, reference)


def test_only_signals_that_collect_states_plan_a_pooling(tmp_path):
    context = AnalysisContext(prepare(RunSettings(val_size=12, batch_size=5, device="cpu"), Store(tmp_path)))
    configs = [make_config(get_signal("cka"), {"pooling": "cls"}), make_config(get_signal("id"), {"pooling": "last"}),
               make_config(get_signal("cka"), {"pooling": "mean", "accumulate": "true"}),
               make_config(get_signal("state_change"), {"pooling": "tokens"})]
    context.plan_collections(configs)
    # Streaming CKA and state_change keep nothing; each collecting signal plans on its paper's split.
    assert context._planned_poolings == {("train", "cls"), ("validation", "last")}


def test_signal_order_does_not_depend_on_import_order():
    """Pages list signals in registry order; a signal module imported first must not jump the queue."""
    import subprocess
    import sys
    from pathlib import Path
    code = "import analysis.signals.sora; from analysis.signals.registry import all_signals; print(','.join(all_signals()))"
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2],
                         capture_output=True, text=True, timeout=300).stdout.strip().split(",")
    assert out == sorted(out) and "sora" in out and out[0] != "sora"
