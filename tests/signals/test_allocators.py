"""The allocators practitioners already have, each against its own reference:
EVA against peft's get_eva_state_dict, alpha against the weightwatcher package, GoRA against a slow
float64 loop on a tiny decoder."""
import numpy as np
import pandas as pd
import pytest
import torch

from analysis.errors import UserError
from analysis.model.layout import layout_of
from analysis.allocation.allocate import allocate, scores_from_tables
from analysis.allocation.budgets import parse_budget
from analysis.settings import RunSettings
from analysis.signals.context import AnalysisContext, prepare
from analysis.signals.gora.gora_plan import GoRALimits
from analysis.signals.registry import get_signal, make_config
from analysis.store.cache import Store
from tests.conftest import tiny_llama


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    """MiniLM on 12 snippets of a split in one batch (EVA's PCA converges on a repeated batch in a few passes)."""
    store = Store(tmp_path_factory.mktemp("allocators-encoder"))
    return AnalysisContext(prepare(RunSettings(val_size=12, batch_size=12, device="cpu"), store))


@pytest.fixture(scope="module")
def decoder(tmp_path_factory, encoder):
    """A config-built two-layer Llama that reads MiniLM's tokenizer, on 8 short texts."""
    from transformers import LlamaConfig, LlamaForCausalLM
    root = tmp_path_factory.mktemp("allocators-decoder")
    tokenizer = encoder.loaded.tokenizer
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=72,
                                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
                     ).save_pretrained(root / "lm")
    tokenizer.save_pretrained(root / "lm")
    pd.DataFrame({"text": [f"the cat number {i} sat on the mat near door {i % 7}" for i in range(80)]}).to_csv(
        root / "text.csv", index=False)
    settings = RunSettings(model=str(root / "lm"), data=str(root / "text.csv"), val_size=8, batch_size=4,
                           device="cpu")
    return AnalysisContext(prepare(settings, Store(root / "cache")))


def _table(context, name, **options):
    signal = get_signal(name)
    return signal.compute(context, make_config(signal, {k: str(v) for k, v in options.items()}))


def _tokenized(context, split="train"):
    """The measured examples of `split` (EVA's and GoRA's default: train) in batches straight from the tokenizer
    (not through the signal's context.batches)."""
    frame, size = context.measured(split), context.settings.batch_size
    texts = frame["text"].tolist()
    return [dict(context.loaded.tokenizer(texts[i:i + size], padding=True, truncation=True,
                                          max_length=context.settings.max_length, return_tensors="pt"))
            for i in range(0, len(texts), size)]


# --- EVA ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("r", [4, 13])
def test_eva_ranks_equal_peft_get_eva_state_dict(encoder, r):
    """At r 13 the cut falls inside a tie: query, key and value of a layer share one PCA, hence equal ratios, and
    peft's (unstable) argsort gives the last tied component to one of them; the plan gives it to the same one."""
    from peft import EvaConfig, LoraConfig
    from peft.tuners.lora.eva import get_eva_state_dict
    result = _table(encoder, "eva", r=r, rho=2.0)
    modules = encoder.modules
    config = LoraConfig(r=r, target_modules=[m.path for m in modules], eva_config=EvaConfig(rho=2.0))
    reference = get_eva_state_dict(encoder.model, _tokenized(encoder), peft_config=config, show_progress_bar=False)
    peft_ranks = {m.path: reference[m.path].shape[0] for m in modules}
    ours = result.tables["peft_ranks"]
    assert ours["value"].tolist() == [peft_ranks[m.path] for m in modules]
    assert sum(peft_ranks.values()) == r * len(modules) and len(set(peft_ranks.values())) > 1  # redistributed
    table = result.table
    assert table.groupby(["layer", "module"], sort=False).size().eq(2 * r).all()   # round(r * rho) components
    shared = [[peft_ranks[m.path] for m in modules if m.layer == l and m.name in ("query", "key", "value")]
              for l in range(6)]
    assert any(len(set(group)) > 1 for group in shared) == (r == 13)    # a tie at the cut, split by peft
    # The plan at the parameter cost of peft's own allocation keeps exactly peft's ranks.
    layout = layout_of(encoder.model)
    budget = sum(peft_ranks[m.path] * (m.d_in + m.d_out) for m in modules)
    allocation = allocate(scores_from_tables("eva", get_signal("eva").plan, {"main": table}, layout), layout, budget)
    assert allocation.ranks.tolist() == [peft_ranks[m.path] for m in modules]
    assert allocation.cost == budget


# --- alpha -------------------------------------------------------------------------------------------------

CHOSEN = [0, 9, 16, 23]   # a query, a value, an intermediate and an attention output matrix


@pytest.fixture(scope="module")
def weightwatcher_fits(encoder):
    """weightwatcher's own analysis (its SVD, its fit) of a copy of four MiniLM matrices."""
    ww = pytest.importorskip("weightwatcher")
    linears = []
    for i in CHOSEN:
        weight = encoder.model.get_submodule(encoder.modules[i].path).weight
        linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        linear.weight.data.copy_(weight.data)
        linears.append(linear)
    from threadpoolctl import threadpool_limits
    with threadpool_limits(1):   # numpy's BLAS: the same oversubscription as torch's on a busy 2-core machine
        return ww.WeightWatcher(model=torch.nn.Sequential(*linears)).analyze()


@pytest.mark.parametrize("svd_dtype, tolerance", [("float64", 1e-9), ("float32", 2e-3)])
def test_alpha_equals_weightwatcher_on_the_same_matrices(encoder, weightwatcher_fits, svd_dtype, tolerance):
    table = _table(encoder, "alpha", svd_dtype=svd_dtype, fit="ww").table
    reference = weightwatcher_fits
    assert len(reference) == len(CHOSEN)
    for column, theirs in (("value", "alpha"), ("xmin", "xmin"), ("D", "D")):
        np.testing.assert_allclose(table[column].to_numpy()[CHOSEN], reference[theirs].to_numpy(), rtol=tolerance)


def test_alpha_small_spectra_follow_weightwatcher_small_n_fit():
    """Below 20 eigenvalues WeightWatcher switches estimator; random heavy-tailed matrices on both paths."""
    pytest.importorskip("weightwatcher")
    from weightwatcher.WW_powerlaw import WWFit
    from analysis.signals.alpha.esd_fit import fit_power_law, spectra
    generator = torch.Generator().manual_seed(1)
    for shape in [(40, 12), (30, 19), (200, 64), (96, 96)]:
        w = torch.randn(shape, generator=generator, dtype=torch.float64) ** 3
        evals = spectra([w], torch.float64)[0]
        ours = fit_power_law(evals)
        x = np.linalg.svd(w.numpy(), compute_uv=False) ** 2
        ref = WWFit(x[x > 1e-5])
        assert ours.alpha == pytest.approx(ref.alpha, rel=1e-9) and ours.xmin == pytest.approx(ref.xmin, rel=1e-9)


def test_alpha_gram_spectrum_gives_the_same_fit_in_float64(encoder):
    from analysis.signals.alpha.esd_fit import fit_power_law, spectra
    weights = [encoder.model.get_submodule(encoder.modules[i].path).weight for i in CHOSEN]
    for by_svd, by_gram in zip(spectra(weights, torch.float64), spectra(weights, torch.float64, method="gram")):
        torch.testing.assert_close(by_gram[-20:], by_svd[-20:], rtol=1e-9, atol=0)   # the tail, to rounding
        assert fit_power_law(by_gram).alpha == pytest.approx(fit_power_law(by_svd).alpha, rel=1e-6)


def _fix_finger_loop(w, bins=100):
    """AlphaLoRA's expert_number.fix_finger (pl_fitting=True, filter_zeros=False), re-typed as its loop."""
    eigs = torch.sort(torch.square(torch.linalg.svdvals(w).flatten()))[0]
    n_all = len(eigs)
    log_eigs = torch.log(eigs)
    alphas, ds = torch.zeros(n_all - 1, dtype=eigs.dtype), torch.ones(n_all - 1, dtype=eigs.dtype)
    hist = torch.log10(eigs)
    counts = torch.histc(hist, bins, min=hist.min(), max=hist.max())
    xmin2 = 10 ** torch.linspace(hist.min(), hist.max(), bins + 1, dtype=eigs.dtype)[torch.argmax(counts)]
    xmin_min, xmin_max = torch.log10(0.95 * xmin2), 1.5 * xmin2
    for i, xmin in enumerate(eigs[:-1]):
        if xmin < xmin_min:
            continue
        if xmin > xmin_max:
            break
        n = float(n_all - i)
        alpha = 1 + n / (torch.sum(log_eigs[i:]) - n * log_eigs[i])
        alphas[i] = alpha
        if alpha > 1:
            ds[i] = torch.max(torch.abs(1 - (eigs[i:] / xmin) ** (-alpha + 1) - torch.arange(n) / n))
    return float(alphas[torch.argmin(ds)])


def _exponential_scaling(values, target, exponent=2.5):
    """AlphaLoRA's expert_number.exponential_scaling, re-typed: round the shares, then fix the sum one unit at a time
    by (powered value - count), the powered values not normalised, as its code has it."""
    scaled = np.power(np.asarray(values, dtype=float), exponent)
    counts = np.round(scaled / scaled.sum() * target).astype(int)
    while counts.sum() != target:
        if counts.sum() < target:
            counts[np.argmin(scaled - counts)] += 1
        else:
            counts[np.argmax(scaled - counts)] -= 1
    return counts


def test_alpha_alphalora_fit_equals_alphalora_fix_finger_loop(encoder):
    from analysis.signals.alpha.esd_fit import fit_alphalora, spectra
    for i in CHOSEN:
        w = encoder.model.get_submodule(encoder.modules[i].path).weight.detach().double()
        assert fit_alphalora(spectra([w], torch.float64)[0]).alpha == pytest.approx(_fix_finger_loop(w), rel=1e-9)


def test_alpha_by_default_is_alphaloras_fit_of_every_matrix_and_weightwatchers_is_named(encoder):
    """AlphaLoRA's calculate_expert runs fix_finger on each linear's weight in float32; the default entry equals that
    loop on all 36 MiniLM matrices. WeightWatcher's fit stays an option whose rows say it is not AlphaLoRA's."""
    from analysis.contract.signal import variant_of
    signal = get_signal("alpha")
    table = _table(encoder, "alpha").table
    official = [_fix_finger_loop(encoder.model.get_submodule(m.path).weight.detach().float()) for m in encoder.modules]
    np.testing.assert_allclose(table["value"].to_numpy(), official, rtol=1e-5)
    assert variant_of(signal, {"fit": "alphalora"}) == ""
    assert variant_of(signal, {"fit": "ww"}) == variant_of(signal, {}) == "WeightWatcher's fit, not AlphaLoRA's"


def test_alphalora_allocation_worked_by_hand():
    """exponential_scaling(values, target) by hand. [2, 3, 4] ** 2.5 = 5.657, 15.588, 32.000 (sum 53.245); x 10 / sum =
    1.06, 2.93, 6.01, rounded 1, 3, 6 (sum 10, nothing to fix). [1, 1, 1, 1] at 2 units: 0.5 each rounds (half to
    even) to 0; the fix adds a unit where scaled - count is smallest, the first layer, twice: 2, 0, 0, 0."""
    from analysis.signals.alpha.alpha_plan import exponential_scaling
    assert exponential_scaling(np.array([2.0, 3.0, 4.0]), 10).tolist() == [1, 3, 6]
    assert exponential_scaling(np.array([1.0, 1.0, 1.0, 1.0]), 2).tolist() == [2, 0, 0, 0]
    # The plan: every module of layer l gets the layer's count; the budget is 10 units (one rank on every module of
    # a layer costs the same in every layer), and the module values average 2, 3 and 4 per layer.
    layout = layout_of(tiny_llama(layers=3))
    values = [(m.layer + 2) * (0.5 if i % 2 else 1.5) for i, m in enumerate(layout.modules)]
    per_layer = {l: np.mean([v for v, m in zip(values, layout.modules) if m.layer == l]) for l in range(3)}
    values = [v - per_layer[m.layer] + m.layer + 2 for v, m in zip(values, layout.modules)]   # means exactly 2, 3, 4
    table = pd.DataFrame({"signal": "alpha", "layer": [m.layer for m in layout.modules],
                          "module": [m.name for m in layout.modules], "value": values})
    unit = sum(m.d_in + m.d_out for m in layout.modules if m.layer == 0)
    ranks = allocate(scores_from_tables("alpha", get_signal("alpha").plan, {"main": table}, layout), layout, 10 * unit).ranks
    assert [sorted(set(ranks[[m.layer == l for m in layout.modules]])) for l in range(3)] == [[1], [3], [6]]


def test_alpha_plan_on_minilm_follows_alphaloras_fit_and_names_weightwatchers(encoder):
    """Through the cache as `plan` reads it: the default plan's per-layer ranks are AlphaLoRA's exponential scaling
    of the fix_finger alphas' layer means; the plan from WeightWatcher's fit carries its name."""
    from analysis.planning.methods import make_plan
    from analysis.planning.plan_json import plan_name, plan_ranks
    from analysis.signals.runner import run_signals
    settings, store = encoder.settings, encoder.prepared.store
    ww = {"alpha": {"fit": "ww"}}
    run_signals(settings, [get_signal("alpha")], store=store)
    run_signals(settings, [get_signal("alpha")], ww, store=store)
    default = make_plan(encoder.prepared.run, "alpha", "r8")
    weightwatcher = make_plan(encoder.prepared.run, "alpha", "r8", overrides=ww)
    assert plan_name(default) == "alpha" and default["variant"] == ""
    assert plan_name(weightwatcher) == "alpha [WeightWatcher's fit, not AlphaLoRA's]"
    alphas = [_fix_finger_loop(encoder.model.get_submodule(m.path).weight.detach().float()) for m in encoder.modules]
    means = [np.mean([a for a, m in zip(alphas, encoder.modules) if m.layer == l]) for l in range(6)]
    ranks = plan_ranks(default)
    layer_ranks = [sorted({ranks[m.path] for m in encoder.modules if m.layer == l}) for l in range(6)]
    assert layer_ranks == [[r] for r in _exponential_scaling(means, 8 * 6)]   # r8: 8 ranks a layer on average
    assert plan_ranks(weightwatcher) != ranks


def test_alpha_exhibits_draw_the_heatmap_and_esd_fits(encoder, tmp_path):
    from analysis.store.cache import Store
    signal = get_signal("alpha")
    store = Store(tmp_path)
    entry = store.put("alpha-test", signal.compute(encoder, make_config(signal)), {"signal": "alpha"})
    found = {e.name: e for e in signal.exhibits(entry)}
    assert set(found) == {"alpha_modules", "alpha_esd_largest", "alpha_esd_smallest"}
    heatmap = found["alpha_modules"].figure()
    assert np.asarray(heatmap.data[0].z).shape == (6, 6)
    esd = found["alpha_esd_largest"].figure()
    table = entry.table()
    assert f"{table['value'].max():.2f}" in esd.data[1].name
    # every eigenvalue of the matrix, and AlphaLoRA's fit (the default) drops none of them (no threshold)
    assert len(found["alpha_esd_largest"].data()) == table.loc[table["value"].idxmax(), "n_evals"] == 384
    assert "AlphaLoRA's fit" in found["alpha_esd_largest"].title


def test_alphalora_plan_gives_each_layer_one_rank_by_exponential_scaling(decoder):
    table = _table(decoder, "alpha").table
    layout = layout_of(decoder.model)
    scores = scores_from_tables("alpha", get_signal("alpha").plan, {"main": table}, layout)
    budget = parse_budget("r8", layout)
    ranks = allocate(scores, layout, budget).ranks
    layers = np.array([m.layer for m in layout.modules])
    per_layer = [set(ranks[layers == l]) for l in (0, 1)]
    assert all(len(r) == 1 for r in per_layer)            # one rank for every matrix of a layer
    expected = _exponential_scaling(table.groupby("layer")["value"].mean().to_numpy(), 16)
    assert [r.pop() for r in per_layer] == expected.tolist()


# --- GoRA --------------------------------------------------------------------------------------------------

def test_gora_importance_equals_a_slow_float64_reference(decoder):
    result = _table(decoder, "gora")
    model = decoder.model
    batches = [{**b, "labels": b["input_ids"].masked_fill(b["attention_mask"] == 0, -100)}
               for b in _tokenized(decoder)]
    reference = []
    double = type(model)(model.config).double().eval()
    double.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    for module in decoder.modules:   # one matrix at a time, one batch at a time
        weight = double.get_submodule(module.path).weight
        total = torch.zeros_like(weight)
        for batch in batches:
            total += torch.autograd.grad(double(**batch).loss, weight)[0]
        grad = (total / len(batches)).numpy()
        w = weight.detach().numpy()
        reference.append(sum(abs(w[i, j] * grad[i, j]) for i in range(w.shape[0]) for j in range(w.shape[1]))
                         / w.size)
    np.testing.assert_allclose(result.table["value"].to_numpy(), reference, rtol=2e-4)
    assert result.meta["steps"] == 2 and all(p.grad is None for p in model.parameters())


def test_gora_shares_plan_follows_gora_rule_then_fills(decoder):
    table = _table(decoder, "gora").table
    layout = layout_of(decoder.model)
    scores = scores_from_tables("gora", get_signal("gora").plan, {"main": table}, layout)
    without_limits = (GoRALimits(gora_min_rank=0, gora_max_rank=64),)
    for text in ("r2", "r8"):
        budget = parse_budget(text, layout)
        allocation = allocate(scores, layout, budget, signal_limits=without_limits)
        share = table["value"].to_numpy() / table["value"].sum()
        features = np.array(layout.costs)
        gora = np.round(budget * share).astype(int) // features     # GoRA's moderate rule, no limits
        assert (allocation.ranks >= gora).all() and allocation.cost <= budget
        assert budget - allocation.cost < features.min()            # the fill spent what flooring left
        assert "published scripts use 4 and 32" in allocation.warnings[-1]
        # GoRA's limits by default: no module left out. At r2 its minimum 4 everywhere would cost twice the
        # budget, so the minimum is the largest that fits (2: uniform rank 2), and the plan says so.
        default = allocate(scores, layout, budget)
        assert (default.ranks >= (2 if text == "r2" else 4)).all() and (default.ranks <= 32).all()
        assert ("GoRA's minimum rank 4 on every allowed module costs 4,288 parameters, more than the budget; this "
                "plan's minimum rank is 2." in default.warnings) == (text == "r2")


def test_gora_rank_limits_worked_by_hand():
    """GoRA's get_allocated_rank with its scripts' limits, by hand, on one Llama block (d_in + d_out: q, o 64; k, v
    48; gate, up, down 104; 536 a rank on all seven), importance shares p = .5, .02, .08, .1, .1, .05, .15, budget r9
    = 4,824. trainable = round(4824 p) = 2412, 96, 386, 482, 482, 241, 724; // features = 37, 2, 8, 7, 4, 2, 6;
    clamped to [4, 32]: 32, 4, 8, 7, 4, 4, 6 (4,528 parameters). Ours then spends the 296 left one rank at a time
    by the fraction flooring cut (4824 p / features - rank): down .958 (+104), gate .638 (+104), o .538 (+64); the
    24 left fit nothing."""
    layout = layout_of(tiny_llama(layers=1))
    assert [m.d_in + m.d_out for m in layout.modules] == [64, 48, 48, 64, 104, 104, 104]
    table = pd.DataFrame({"signal": "gora", "layer": 0, "module": [m.name for m in layout.modules],
                          "value": [0.5, 0.02, 0.08, 0.1, 0.1, 0.05, 0.15]})
    scores = scores_from_tables("gora", get_signal("gora").plan, {"main": table}, layout)
    allocation = allocate(scores, layout, parse_budget("r9", layout))
    gora = [32, 4, 8, 7, 4, 4, 6]
    assert allocation.ranks.tolist() == [32, 4, 8, 8, 5, 4, 7] and allocation.cost == 4800
    assert (allocation.ranks >= gora).all() and allocation.warnings == []


# --- EVA and GoRA: the split -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["eva", "gora"])
def test_eva_and_gora_measure_the_train_split_by_default_and_validation_on_request(decoder, monkeypatch, name):
    """peft feeds EVA the training dataloader and GoRA averages gradients of training batches: the default entry
    is computed on exactly the measured train examples, `split=validation` on the validation ones."""
    from analysis.model import capture
    fed, tokenize = [], capture.tokenize_batches

    def recording(tokenizer, texts, *args, **kwargs):
        fed.extend(texts)
        return tokenize(tokenizer, texts, *args, **kwargs)

    monkeypatch.setattr(capture, "tokenize_batches", recording)
    train, validation = (decoder.measured(split)["text"].tolist() for split in ("train", "validation"))
    assert not set(train) & set(validation)
    default = _table(decoder, name)
    assert sorted(fed) == sorted(train) and default.meta["split"] == "train"
    fed.clear()
    other = _table(decoder, name, split="validation")
    assert sorted(fed) == sorted(validation) and other.meta["split"] == "validation"
    assert not np.allclose(default.table["value"], other.table["value"])
    with pytest.raises(UserError, match=f"{name}.split must be one of validation, train, not 'test'"):
        _table(decoder, name, split="test")


# --- all three: plans peft accepts ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["eva", "alpha", "gora"])
def test_plans_at_r2_and_r8_load_into_peft_with_their_ranks(decoder, name):
    from peft import get_peft_model

    from analysis.planning.plan_json import build_plan, check_peft_model, lora_config, validate
    signal = get_signal(name)
    result = signal.compute(decoder, make_config(signal))
    layout = layout_of(decoder.model)
    scores = scores_from_tables(name, signal.plan, {"main": result.table}, layout)
    for text in ("r2", "r8"):
        budget = parse_budget(text, layout)
        allocation = allocate(scores, layout, budget)
        plan = build_plan(layout, allocation.ranks, name, budget, warnings=allocation.warnings)
        validate(plan, layout)
        assert 0 < plan["trainable_params"] <= budget
        model = type(decoder.model)(decoder.model.config)
        check_peft_model(plan, get_peft_model(model, lora_config(plan)))
