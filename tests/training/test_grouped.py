"""Many adapters on one copy of the model: each run trained in a group equals the same run trained alone by
`retrain` (peft's model, torch's AdamW) — its loss curve, metrics and saved adapter — for an encoder and a
decoder, with different ranks, target modules, seeds, learning rates, starts, dropout, decay and clipping."""
from __future__ import annotations

import copy
import dataclasses
import json
import os
import signal

import numpy as np
import pandas as pd
import pytest
import torch

from analysis.model.layout import layout_of
from analysis.planning.plan_json import build_plan
from analysis.settings import PlanOptions, RunSettings, TrainSettings
from analysis.signals.context import prepare
from analysis.store.cache import Store
from analysis.training import group
from analysis.training.retrain import retrain
from analysis.training.many_runs import Request, train_runs
from tests.test_cli import cli
from tests.training.test_retrain import _wait

STEPS = TrainSettings(steps=12, batch_size=8, eval_batch_size=16, test_size=40, checkpoint_every=5)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory, minilm):
    """A config-built BERT encoder and Llama decoder that read MiniLM's tokenizer, and a text file for the LM."""
    from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM
    root = tmp_path_factory.mktemp("tiny-models")
    torch.manual_seed(0)
    vocab = len(minilm.tokenizer)
    BertForSequenceClassification(BertConfig(vocab_size=vocab, hidden_size=32, intermediate_size=48,
                                             num_hidden_layers=2, num_attention_heads=4)).save_pretrained(
        root / "encoder")
    LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2)).save_pretrained(root / "decoder")
    for name in ("encoder", "decoder"):
        minilm.tokenizer.save_pretrained(root / name)
    words = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran", "far", "away", "quickly", "home"]
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(words, size=rng.integers(3, 14))) for _ in range(300)]
    pd.DataFrame({"text": texts}).to_csv(root / "text.csv", index=False)
    return root


def _requests(prepared) -> list[Request]:
    """Four runs unlike each other: all modules at one rank; ranks 1 to 4 with LoRA dropout and GoRA's start;
    attention only with EVA's start; the MLP only with weight decay and tight clipping, sharing run 2's seed."""
    from analysis.model.sources import load_model
    layout = layout_of(load_model(prepared.source, prepared.task, 2 if prepared.task == "classification" else None
                                  ).model)
    kinds = [m.name for m in layout.modules]
    attention = {"query", "value", "q_proj", "v_proj"}
    mlp = {"intermediate.dense", "output.dense", "gate_proj", "up_proj", "down_proj"}
    everywhere = np.full(len(kinds), 2)
    varied = np.arange(len(kinds)) % 4 + 1
    only_attention = np.array([4 if k in attention else 0 for k in kinds])
    only_mlp = np.array([2 if k in mlp else 0 for k in kinds])
    settings = prepared.description["settings"]

    def plan(ranks, dropout=0.0):
        return build_plan(layout, ranks, "custom", 0, PlanOptions(dropout=dropout), settings=settings)

    return [Request(plan(everywhere), dataclasses.replace(STEPS, seed=0, lr=1e-3), "all"),
            Request(plan(varied, dropout=0.1), dataclasses.replace(STEPS, seed=1, lr=3e-3, init="gora"), "varied"),
            Request(plan(only_attention), dataclasses.replace(STEPS, seed=2, lr=5e-4, init="eva"), "attention"),
            Request(plan(only_mlp), dataclasses.replace(STEPS, seed=1, lr=2e-3, weight_decay=0.01, max_grad_norm=0.05),
                    "mlp")]


def _outputs(entry, prepared, batch) -> torch.Tensor:
    """The saved adapter (and head) loaded with peft onto a fresh base model: its outputs on `batch`."""
    from peft import PeftModel

    from analysis.model.sources import load_model
    base = load_model(prepared.source, prepared.task, 2 if prepared.task == "classification" else None).model
    head = {k.removeprefix("head."): v for k, v in entry.tensors().items()}
    base.load_state_dict(head, strict=False)
    model = PeftModel.from_pretrained(copy.deepcopy(base), entry.path("adapter")).eval()
    with torch.no_grad():
        return model(**batch).logits


@pytest.mark.parametrize("kind, evaluated_per_pass", [("encoder", 1), ("decoder", 1), ("decoder", 3)])
def test_runs_trained_together_equal_the_same_runs_trained_alone(kind, evaluated_per_pass, tiny_models, tmp_path,
                                                                 monkeypatch):
    data = "rotten_tomatoes" if kind == "encoder" else str(tiny_models / "text.csv")
    settings = RunSettings(model=str(tiny_models / kind), data=data, val_size=16, device="cpu", dtype="float32",
                           max_length=32)
    alone_store, group_store = Store(tmp_path / "alone"), Store(tmp_path / "group")
    prepared = prepare(settings, alone_store)
    requests = _requests(prepared)
    # runs whose ranks, modules, seeds, rates, starts, dropout, decay and clipping all differ; trained as one group
    # in passes of two runs (the CPU's pass of 16 rows), runs of similar lengths together
    assert len({r.plan["trainable_params"] for r in requests}) == 4
    monkeypatch.setattr("analysis.training.many_runs.CPU_PASS_ROWS", 16)
    passes = []
    monkeypatch.setattr("analysis.training.group.passes", lambda lengths, per_pass, real=group.passes:
                        passes.append(per_pass) or real(lengths, per_pass))
    # evaluation in passes of one run (what two runs' training rows hold) or of three (a last pass of one run)
    evaluate = group.evaluate
    monkeypatch.setattr("analysis.training.group.evaluate", lambda stack, frozen, runs, rows: evaluate(
        stack, frozen, runs, evaluated_per_pass * runs[0].config.eval_batch_size))
    grouped = train_runs(requests, group_store, adapters_at_once=4)
    assert all(e.meta["adapters_at_once"] == 4 for e in grouped)
    assert passes[:2] == [1, 2] and set(passes[2:]) == {2}   # the memory probe, then every step
    alone = [retrain(r.plan, r.config, alone_store) for r in requests]
    texts = prepared.splits.test["text"].iloc[:6].tolist()
    from analysis.model.sources import load_model
    tokenizer = load_model(prepared.source, prepared.task, 2 if kind == "encoder" else None).tokenizer
    batch = {k: v for k, v in tokenizer(texts, padding=True, return_tensors="pt").items()
             if k in ("input_ids", "attention_mask", "token_type_ids")}
    for together, single, request in zip(grouped, alone, requests):
        assert together.key == single.key   # the same cache entry, whichever path trained it
        curve, reference = together.table("curve")["loss"].to_numpy(), single.table("curve")["loss"].to_numpy()
        assert len(curve) == STEPS.steps and curve[-3:].mean() != curve[:3].mean()
        np.testing.assert_allclose(curve, reference, rtol=1e-4)
        for name, value in single.meta["metrics"].items():
            assert together.meta["metrics"][name] == pytest.approx(value, rel=1e-4, abs=1e-6), (request.label, name)
        torch.testing.assert_close(_outputs(together, prepared, batch), _outputs(single, prepared, batch),
                                   rtol=1e-5, atol=1e-5)
        assert together.meta["init"] == request.config.init
    # either path finds the other's entries: nothing is trained again
    monkeypatch.setattr("analysis.training.many_runs.train_group", lambda *a, **k: pytest.fail("trained again"))
    monkeypatch.setattr("analysis.training.retrain._train", lambda *a, **k: pytest.fail("trained again"))
    assert [e.key for e in train_runs(requests, alone_store)] == [e.key for e in alone]
    assert [retrain(r.plan, r.config, group_store).key for r in requests] == [e.key for e in grouped]


def test_grouped_adamw_equals_torch_adamw_and_clipping_on_each_row():
    """Each row of the (K, P) parameter takes the steps torch's AdamW and clip_grad_norm_ give it as a separate
    parameter, with its own learning rate, weight decay and max norm (0: none), on fresh random gradients."""
    from analysis.training.grouped_adamw import GroupedAdamW
    generator = torch.Generator().manual_seed(0)
    k, p = 4, 37
    start = torch.randn(k, p, generator=generator, dtype=torch.float64)
    decay, limits = [0.0, 0.01, 0.1, 0.0], [0.0, 0.5, 3.0, 1e-3]
    flat = torch.nn.Parameter(start.clone())
    grouped = GroupedAdamW(flat, decay)
    rows = [torch.nn.Parameter(start[i].clone()) for i in range(k)]
    references = [torch.optim.AdamW([rows[i]], lr=1.0, weight_decay=decay[i], foreach=False) for i in range(k)]
    for step in range(6):
        grads = torch.randn(k, p, generator=generator, dtype=torch.float64) * (step + 1)
        lrs = torch.rand(k, generator=generator, dtype=torch.float64) * 1e-2
        flat.grad = grads.clone()
        grouped.clip(limits)
        grouped.step(lrs)
        for i in range(k):
            rows[i].grad = grads[i].clone()
            if limits[i] > 0:
                torch.nn.utils.clip_grad_norm_([rows[i]], limits[i])
            references[i].param_groups[0]["lr"] = float(lrs[i])
            references[i].step()
        torch.testing.assert_close(flat.detach(), torch.stack([r.detach() for r in rows]), rtol=1e-12, atol=1e-12)


def test_lora_dropout_draws_each_adapters_masks_as_its_run_alone_would():
    """The grouped hook's dropout on adapter k's rows (padded to the group's longest example) keeps exactly
    the positions the run's own SeededDropout keeps on its unpadded batch; and it does drop some."""
    from analysis.training.adapter_stack import SeededDropout, dropout_seed, dropped
    x = torch.randn(3, 5, 8)
    alone = SeededDropout(0.5, torch.Generator().manual_seed(dropout_seed(7))).train()(x)
    padded = torch.cat([x, torch.randn(3, 4, 8)], dim=1)
    grouped = dropped(padded, 0.5, torch.Generator().manual_seed(dropout_seed(7)), (3, 5, 8))
    torch.testing.assert_close(grouped[:, :5], alone)
    assert (alone == 0).float().mean().item() == pytest.approx(0.5, abs=0.15)
    assert torch.equal(SeededDropout(0.5, torch.Generator()).eval()(x), x)


@pytest.mark.slow
def test_a_killed_group_resumes_from_its_checkpoint_and_ends_as_if_never_stopped(tiny_models, tmp_path):
    from analysis.jobs import launch as jobs
    args = ["compare", "--model", str(tiny_models / "encoder"), "--signals", "uniform", "--baselines", "none",
            "--seeds", "0,1,2", "--tune-lr", "off", "--steps", "40", "--checkpoint-every", "10",
            "--train-batch-size", "8", "--test-size", "40", "--val-size", "16", "--device", "cpu",
            "--adapters-at-once", "3"]
    killed, fresh = tmp_path / "killed", tmp_path / "fresh"
    job_id = jobs.start_job(args, killed)
    checkpoint = lambda: next(iter(killed.glob("retrain/group-*/checkpoint.pt")), None)   # noqa: E731
    assert _wait(lambda: checkpoint() is not None and torch.load(checkpoint(), weights_only=False)["step"] >= 20,
                 600)
    job_dir = jobs.jobs_dir(killed) / job_id
    os.killpg(json.loads((job_dir / "job.json").read_text())["pid"], signal.SIGKILL)
    assert _wait(lambda: jobs.job_status(job_dir).state == "died", 60)
    killed_at = torch.load(checkpoint(), weights_only=False)["step"]
    assert not list(killed.glob("entries/retrain-*"))
    jobs.resume_job(killed, job_id)
    assert _wait(lambda: jobs.job_status(job_dir).state != "running")
    status = jobs.job_status(job_dir)
    assert status.state == "done", status.log_tail
    assert f"Resuming 3 runs from their checkpoint at step {killed_at} of 40." in status.log_tail
    assert cli(fresh, *args).returncode == 0
    for resumed in sorted(killed.glob("entries/retrain-*")):
        again = Store(fresh).get(resumed.name)
        assert again is not None   # the same keys
        entry = Store(killed).get(resumed.name)
        np.testing.assert_allclose(entry.table("curve")["loss"], again.table("curve")["loss"], rtol=1e-5)
        assert entry.meta["metrics"] == pytest.approx(again.meta["metrics"], rel=1e-5)
    assert len(list(killed.glob("entries/retrain-*"))) == 3 and not checkpoint()


@pytest.mark.parametrize("make", ["tiny_llama", "tiny_gpt2"])
def test_default_start_draws_what_peft_draws(make):
    """peft_form.default_start against get_peft_model itself: the same A, B, scaling and dropout for every module
    of a plan with a rank pattern, an alpha pattern and rsLoRA, on a Llama and on GPT-2 (Conv1D layers)."""
    import warnings

    from peft import get_peft_model

    from analysis.planning.plan_json import lora_config
    from analysis.training.group import _lora_values
    from analysis.training.peft_form import default_start
    import tests.conftest as shapes
    model = getattr(shapes, make)()
    if make == "tiny_gpt2":   # and a bfloat16 model, whose A peft rounds to bfloat16
        model = model.to(torch.bfloat16)
    layout = layout_of(model)
    ranks = np.arange(len(layout.modules)) % 3 + 1
    ranks[1] = 0
    for options in (PlanOptions(alpha_ratio=3.0, dropout=0.05), PlanOptions(rslora=True)):
        plan = build_plan(layout, ranks, "custom", 0, options)
        assert plan["rank_pattern"] and (plan["alpha_pattern"] or options.rslora)
        torch.manual_seed(11)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            made = _lora_values(get_peft_model(copy.deepcopy(model), lora_config(plan)))
        mine = default_start(model, plan, 11)
        assert list(mine) == list(made) and len(made) == int((ranks > 0).sum())
        for path, (a, b, scale, dropout) in made.items():
            assert torch.equal(mine[path][0], a) and torch.equal(mine[path][1], b)
            assert mine[path][2:] == pytest.approx((scale, dropout))


@pytest.mark.slow
def test_a_launch_spreads_the_runs_over_its_processes_each_trained_whole_and_as_alone(tiny_models, tmp_path):
    """Two gloo processes under torchrun (as one process per GPU): each trains its share of the comparison's runs
    together, the main one writes the comparison, and every run equals the one-process run under the same key."""
    import subprocess
    import sys

    from tests.test_cli import REPO
    # no --signals: torchrun would take it for its own --signals-to-handle; with no signal cached, uniform alone
    args = ["compare", "--model", str(tiny_models / "encoder"), "--baselines", "none",
            "--seeds", "0,1,2,3", "--tune-lr", "off", "--steps", "6", "--train-batch-size", "8", "--test-size", "24",
            "--val-size", "16", "--device", "cpu", "--adapters-at-once", "2"]
    launched, single = tmp_path / "launched", tmp_path / "single"
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "analysis",
                           *args], cwd=REPO, env={**os.environ, "ANALYSIS_CACHE_DIR": str(launched)},
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    alone = cli(single, *args)
    assert alone.returncode == 0
    assert done.stdout.count("| uniform |") == alone.stdout.count("| uniform |") > 0   # one process reports
    assert done.stdout.count("training: 1 plans x 4 seeds") == 1
    keys = sorted(p.name for p in launched.glob("entries/retrain-*"))
    assert keys == sorted(p.name for p in single.glob("entries/retrain-*")) and len(keys) == 4
    ranks = []
    for key in keys:
        spread, alone = Store(launched).get(key), Store(single).get(key)
        ranks.append(spread.meta["launched_rank"])
        assert spread.meta["adapters_at_once"] == 2 and spread.meta["processes"] == 1
        np.testing.assert_allclose(spread.table("curve")["loss"], alone.table("curve")["loss"], rtol=1e-5)
        assert spread.meta["metrics"] == pytest.approx(alone.meta["metrics"], rel=1e-5)
    assert sorted(ranks) == [0, 0, 1, 1]
    assert len(list(launched.glob("entries/comparison-*"))) == 1


def test_a_steps_passes_take_every_run_once_runs_of_similar_lengths_together():
    from analysis.training.group import passes
    assert passes([5, 9, 3], 3) == [slice(0, 3)]   # one pass when they fit
    made = passes([40, 12, 33, 12, 7, 25, 31], 3)
    assert sorted(k for part in made for k in part) == list(range(7)) and [len(p) for p in made] == [3, 3, 1]
    assert made[0] == [4, 1, 3] and made[-1] == [0]   # shortest first, ties in run order
