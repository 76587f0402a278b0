"""Retraining a plan as users run it: real processes, the real cache, a killed job resumed, several
processes under accelerate launch, a causal LM, and the comparison."""
from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from analysis.jobs import launch as jobs
from analysis.planning.plan_json import check_peft_model, lora_config, read_plan
from analysis.training.compare import choose_rate
from analysis.training.retrain import CHECKPOINT, batch_indices, did_not_train, retrain
from analysis.settings import CompareSettings, TrainSettings
from analysis.store.cache import Store
from tests.test_cli import REPO, cli, entries

FAST = ["--steps", "40", "--checkpoint-every", "10", "--test-size", "64", "--train-batch-size", "8"]


@pytest.fixture
def uniform_plan(cache_dir, tmp_path) -> Path:
    path = tmp_path / "plan.json"
    made = cli(cache_dir, "plan", "--budget", "r2", "--device", "cpu", "--out", str(path))
    assert made.returncode == 0, made.stderr
    return path


def retrain_entries(cache_dir):
    return [name for name in entries(cache_dir) if name.startswith("retrain-")]


def test_batches_depend_only_on_seed_and_step():
    first = [batch_indices(step, 8, 20, seed=3) for step in range(6)]
    assert all(len(b) == 8 for b in first)
    assert sorted(list(first[0]) + list(first[1]) + list(first[2][:4])) == list(range(20))   # one epoch
    assert all((a == batch_indices(step, 8, 20, seed=3)).all() for step, a in enumerate(first))
    assert not (batch_indices(0, 8, 20, seed=4) == first[0]).all()


@pytest.mark.slow
def test_the_default_retrain_command_reaches_78_percent_and_writes_its_outputs(cache_dir, tmp_path, minilm):
    """`retrain` with every default (uniform r4, seed 0) as a user runs it: at least 78% on the whole test split,
    its curve, metrics and a peft-loadable adapter; run again, it comes from the cache. Seeds 1-4 of the same
    defaults are test_the_default_settings_train_uniform_rank_4_for_every_seed."""
    plan = tmp_path / "plan.json"
    made = cli(cache_dir, "plan", "--budget", "r4", "--device", "cpu", "--out", str(plan))
    assert made.returncode == 0, made.stderr
    out = tmp_path / "run"
    result = cli(cache_dir, "retrain", "--plan", str(plan), "--out", str(out))
    assert result.returncode == 0, result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_examples"] == 1275 and metrics["predicted_classes"] == 2 and 0 < metrics["f1"] <= 1
    assert metrics["accuracy"] >= 0.78, metrics
    curve = pd.read_csv(out / "curve.csv")
    assert curve["step"].tolist() == list(range(1, TrainSettings().steps + 1))
    assert curve["loss"].tail(20).mean() < curve["loss"].head(20).mean()
    from peft import PeftModel
    # peft may shorten the saved target_modules to suffixes that match the same modules; what counts is
    # that the loaded adapter has exactly the plan's ranks and parameter count
    # a copy: from_pretrained adapts the model in place, and the session's shared model must stay plain
    loaded = PeftModel.from_pretrained(copy.deepcopy(minilm.model), out / "adapter", is_trainable=True)
    check_peft_model(read_plan(plan), loaded)
    assert len(retrain_entries(cache_dir)) == 1
    again = cli(cache_dir, "retrain", "--plan", str(plan))
    assert again.returncode == 0 and "retrain:" not in again.stderr   # cached: no training bar
    assert len(retrain_entries(cache_dir)) == 1


def _wait(predicate, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


@pytest.mark.slow
def test_a_killed_retrain_resumes_from_its_checkpoint_and_ends_as_if_never_stopped(cache_dir, uniform_plan,
                                                                                   tmp_path):
    job_id = jobs.start_job(["retrain", "--plan", str(uniform_plan), *FAST], cache_dir)
    assert _wait(lambda: list(cache_dir.glob(f"retrain/*/{CHECKPOINT}")))
    checkpoints = list(cache_dir.glob(f"retrain/*/{CHECKPOINT}"))
    assert _wait(lambda: torch.load(checkpoints[0], weights_only=False)["step"] >= 20)
    info = json.loads((jobs.jobs_dir(cache_dir) / job_id / "job.json").read_text())
    os.killpg(info["pid"], signal.SIGKILL)   # no clean-up chance at all
    job_dir = jobs.jobs_dir(cache_dir) / job_id
    assert _wait(lambda: jobs.job_status(job_dir).state == "died", 30)
    assert retrain_entries(cache_dir) == []
    killed_at = torch.load(checkpoints[0], weights_only=False)["step"]
    assert 20 <= killed_at < 40

    jobs.resume_job(cache_dir, job_id)
    assert _wait(lambda: jobs.job_status(job_dir).state != "running")
    status = jobs.job_status(job_dir)
    assert status.state == "done", status.log_tail
    assert f"Resuming from the checkpoint at step {killed_at} of 40." in status.log_tail
    assert not checkpoints[0].exists()   # the finished run cleans up after itself
    resumed = Store(cache_dir).get(status.result["keys"]["retrain"])
    live = pd.read_json(job_dir / "curve.jsonl", lines=True)
    assert live["step"].max() == 40

    fresh = retrain(read_plan(uniform_plan), TrainSettings(steps=40, checkpoint_every=10, test_size=64, batch_size=8),
                    Store(tmp_path / "other-cache"))
    assert resumed.table("curve")["loss"].tolist() == pytest.approx(fresh.table("curve")["loss"].tolist(), abs=1e-5)
    assert resumed.meta["metrics"] == pytest.approx(fresh.meta["metrics"], abs=1e-5)


@pytest.mark.slow
def test_cancel_stops_the_process_and_leaves_no_entry_until_resumed(cache_dir, uniform_plan):
    job_id = jobs.start_job(["retrain", "--plan", str(uniform_plan), *FAST], cache_dir, label="retrain")
    job_dir = jobs.jobs_dir(cache_dir) / job_id
    assert _wait(lambda: (jobs.job_status(job_dir).progress or {}).get("desc") == "retrain")
    info = json.loads((job_dir / "job.json").read_text())
    jobs.cancel_job(cache_dir, job_id)
    assert jobs.job_status(job_dir).state == "cancelled"
    assert _wait(lambda: not jobs._alive(info), 30)   # the whole process group got SIGTERM
    assert retrain_entries(cache_dir) == []
    jobs.resume_job(cache_dir, job_id)
    assert _wait(lambda: jobs.job_status(job_dir).state not in ("running", "cancelled"))
    assert jobs.job_status(job_dir).state == "done" and len(retrain_entries(cache_dir)) == 1


@pytest.mark.slow
def test_two_data_parallel_processes(cache_dir, uniform_plan, tmp_path):
    """The launcher accelerate uses for several GPUs is torchrun; on this CPU-only machine it runs two
    gloo processes through the same Accelerator code path."""
    env = {**os.environ, "ANALYSIS_CACHE_DIR": str(cache_dir)}
    out = tmp_path / "ddp"
    launched = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                               "-m", "analysis", "retrain", "--plan", str(uniform_plan), "--steps", "6",
                               "--test-size", "50", "--out", str(out)],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert launched.returncode == 0, launched.stderr[-3000:]
    entry = Store(cache_dir).get(retrain_entries(cache_dir)[0])
    assert entry.meta["processes"] == 2
    assert entry.meta["metrics"]["test_examples"] == 50   # both halves of the test split were gathered
    assert len(entry.table("curve")) == 6
    assert json.loads((out / "metrics.json").read_text())["entry"] == entry.key


def test_causal_lm_retrain_reports_loss_and_perplexity(cache_dir, tmp_path, minilm):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    vocab = len(minilm.tokenizer)   # a config-built decoder that reads MiniLM's tokenizer
    LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2)).save_pretrained(tmp_path / "lm")
    minilm.tokenizer.save_pretrained(tmp_path / "lm")
    data = tmp_path / "text.csv"
    pd.DataFrame({"text": [f"the cat number {i} sat on the mat" for i in range(200)]}).to_csv(data, index=False)
    plan = tmp_path / "plan.json"
    made = cli(cache_dir, "plan", "--model", str(tmp_path / "lm"), "--data", str(data), "--budget", "r4",
               "--device", "cpu", "--out", str(plan))
    assert made.returncode == 0, made.stderr
    assert read_plan(plan)["settings"]["model"] == str(tmp_path / "lm")
    out = tmp_path / "run"
    result = cli(cache_dir, "retrain", "--plan", str(plan), "--steps", "30", "--lr", "1e-2", "--out", str(out))
    assert result.returncode == 0, result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["perplexity"] == pytest.approx(float(torch.tensor(metrics["test_loss"]).exp()), rel=1e-5)
    assert metrics["test_loss"] < torch.log(torch.tensor(float(vocab))).item()   # better than uniform guessing
    curve = pd.read_csv(out / "curve.csv")
    assert curve["loss"].tail(5).mean() < curve["loss"].head(5).mean()


def test_plan_json_loads_into_peft_as_is(cache_dir, uniform_plan):
    import warnings

    from peft import LoraConfig, PeftConfig
    plan = read_plan(uniform_plan)
    assert isinstance(lora_config(plan), LoraConfig)
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # no "saved using a higher version of the library" for our keys
        config = PeftConfig.from_peft_type(**json.loads(uniform_plan.read_text())["peft"])   # peft's own loader
    assert isinstance(config, LoraConfig) and config.r == plan["r"] and config.lora_alpha == plan["lora_alpha"]


@pytest.mark.slow
def test_comparison_puts_uniform_first_and_summarises_seeds(cache_dir, tmp_path):
    ran = cli(cache_dir, "run", "--signals", "grad_norm", "--val-size", "16", "--device", "cpu")
    assert ran.returncode == 0, ran.stderr
    args = ["compare", "--val-size", "16", "--device", "cpu", "--signals", "grad_norm", "--seeds", "0,1",
            "--steps", "6", "--test-size", "32", "--train-batch-size", "8", "--tune-lr", "off", "--lr", "3e-3",
            "--baselines", "none", "--out", str(tmp_path / "cmp")]
    result = cli(cache_dir, *args)
    assert result.returncode == 0, result.stderr
    summary = pd.read_csv(tmp_path / "cmp" / "summary.csv")
    runs = pd.read_csv(tmp_path / "cmp" / "runs.csv")
    assert summary["method"].tolist() == ["uniform", "grad_norm"] and (summary["seeds"] == 2).all()
    assert len(runs) == 4 and runs.groupby("method")["trainable_params"].nunique().eq(1).all()
    assert (runs["lr"] == 3e-3).all() and not (tmp_path / "cmp" / "tuning.csv").exists()
    budget = summary["trainable_params"].max()
    assert (summary["trainable_params"] <= budget).all()
    for method, group in runs.groupby("method"):
        row = summary.set_index("method").loc[method]
        kept = group[group["did_not_train"].isna()]
        assert row["did_not_train"] == len(group) - len(kept)   # flagged runs are counted, not averaged
        if len(kept):
            assert row["accuracy_mean"] == pytest.approx(kept["accuracy"].mean())
        if len(kept) > 1:
            assert row["accuracy_std"] == pytest.approx(kept["accuracy"].std())
        for _, run in group.iterrows():   # the flag follows the rule from the run's own numbers
            entry = Store(cache_dir).get(run["entry"])
            assert (run["did_not_train"] if isinstance(run["did_not_train"], str) else None) == \
                did_not_train(entry.meta["metrics"], entry.table("curve")["loss"].tolist(), "classification")
    assert "| uniform |" in result.stdout and "vs uniform" in result.stdout
    trained = retrain_entries(cache_dir)
    again = cli(cache_dir, *args)
    assert again.returncode == 0 and retrain_entries(cache_dir) == trained   # every run came from the cache


def test_every_method_gets_the_same_head_and_data_order_for_a_seed(cache_dir):
    """The pairing behind the paired statistics: whatever the plan, seed s gives the same head initialisation
    and the same batches; another seed gives others."""
    from analysis.planning.methods import make_plan
    from analysis.settings import RunSettings
    from analysis.signals.context import prepare
    from analysis.signals.lora.warmup import head_parameters
    from analysis.training.retrain import _peft_model

    prepared = prepare(RunSettings(val_size=16, device="cpu"), Store(cache_dir))
    small, large = (make_plan(prepared.run, "uniform", budget) for budget in ("r1", "r8"))

    def head(plan, seed):
        _, model, _ = _peft_model(plan, prepared, seed)   # (loaded model, peft model, what the init recorded)
        return {k: v.detach().clone() for k, v in head_parameters(model.base_model.model, "classification").items()}

    first, second, other = head(small, 3), head(large, 3), head(small, 4)
    assert first.keys() == second.keys() and first
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)
    assert (batch_indices(7, 16, 1000, 3) == batch_indices(7, 16, 1000, 3)).all()


@pytest.mark.slow
def test_tuning_chooses_on_validation_and_a_new_method_trains_only_its_own_runs(cache_dir):
    from analysis.settings import RunSettings
    from analysis.signals.registry import get_signal
    from analysis.signals.runner import run_signals
    from analysis.training.compare import compare

    settings = RunSettings(val_size=16, batch_size=8, device="cpu")
    store = Store(cache_dir)
    run_signals(settings, [get_signal("grad_norm")], None, store)
    config = TrainSettings(steps=8, test_size=32, batch_size=8)
    tuned = CompareSettings(budgets=("r2",), seeds=(0, 1), tune_lr=(3e-4, 3e-3), baselines=())
    first = compare(settings, [], tuned, config, store=store)
    tuning, runs = first.table("tuning"), first.table("runs")
    assert sorted(tuning["lr"]) == [3e-4, 3e-3] and (tuning["seed"] == 0).all()
    for key in tuning["entry"]:
        assert store.get(key).meta["eval_split"] == "validation"   # never test
    best = choose_rate(tuning.assign(did_not_train=tuning["did_not_train"].where(tuning["did_not_train"].notna(),
                                                                                   None)), "classification")
    assert first.meta["chosen_lrs"] == {"r2/uniform": best} and (runs["lr"] == best).all()
    assert tuning.loc[tuning["chosen"], "lr"].tolist() == [best]
    for key in runs["entry"]:
        assert store.get(key).meta["eval_split"] == "test"
    before = set(retrain_entries(cache_dir))
    second = compare(settings, ["grad_norm"], tuned, config, store=store)
    new = set(retrain_entries(cache_dir)) - before
    assert len(new) == 4   # grad_norm's two tuning runs and two seeds; uniform's all came from the cache
    assert {store.get(k).meta["plan"]["signal"] for k in new} == {"grad_norm"}
    assert second.key != first.key and set(second.meta["chosen_lrs"]) == {"r2/uniform", "r2/grad_norm"}


def test_causal_lm_comparison_reports_loss_and_perplexity_per_budget(cache_dir, tmp_path, minilm):
    from transformers import LlamaConfig, LlamaForCausalLM

    from analysis.settings import RunSettings
    from analysis.signals.registry import get_signal
    from analysis.signals.runner import run_signals
    from analysis.reporting.comparison_tables import curve_points, formatted, markdown
    from analysis.training.compare import compare

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(minilm.tokenizer), hidden_size=32, intermediate_size=64,
                                 num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2)).save_pretrained(tmp_path / "lm")
    minilm.tokenizer.save_pretrained(tmp_path / "lm")
    data = tmp_path / "text.csv"
    pd.DataFrame({"text": [f"the cat number {i} sat on the mat" for i in range(200)]}).to_csv(data, index=False)
    settings = RunSettings(model=str(tmp_path / "lm"), data=str(data), val_size=16, device="cpu")
    store = Store(cache_dir)
    run_signals(settings, [get_signal("grad_norm")], None, store)
    entry = compare(settings, ["grad_norm"], CompareSettings(budgets=("r2", "r4"), seeds=(0, 1), tune_lr=(),
                                                             baselines=()),
                    TrainSettings(steps=12, lr=1e-2, batch_size=8), store=store)
    runs, summary = entry.table("runs"), entry.table()
    assert entry.meta["task"] == "causal-lm" and len(runs) == 8 and "accuracy" not in runs
    assert runs["did_not_train"].isna().all()
    assert runs["perplexity"].to_numpy() == pytest.approx(np.exp(runs["test_loss"].to_numpy()), rel=1e-5)
    assert summary["budget"].tolist() == ["r2", "r2", "r4", "r4"]
    curve = curve_points(summary, "causal-lm")
    assert (curve["metric"] == "perplexity").all()
    for budget in ("r2", "r4"):
        here = runs[runs["budget"] == budget].pivot(index="seed", columns="method", values="test_loss")
        row = summary[(summary["budget"] == budget) & (summary["method"] == "grad_norm")].iloc[0]
        assert row["diff_vs_uniform"] == pytest.approx((here["grad_norm"] - here["uniform"]).mean())
        point = curve[(curve["budget"] == budget) & (curve["method"] == "uniform")].iloc[0]
        assert point["mean"] == pytest.approx(runs[(runs["budget"] == budget) &
                                                   (runs["method"] == "uniform")]["perplexity"].mean())
    table = markdown(formatted(summary, "causal-lm"))
    assert "perplexity" in table and "Δ test loss vs uniform" in table and "accuracy" not in table


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(1, 5))   # one test per seed: `make test`'s two processes share them out
def test_the_default_settings_train_uniform_rank_4_for_every_seed(cache_dir, seed):
    """With the retrain defaults, uniform LoRA at r4 on the embedded MiniLM and Rotten Tomatoes
    reaches 78% test accuracy on the whole test split for each of seeds 1-4 (seed 0 is the command's own test,
    test_the_default_retrain_command_reaches_78_percent_and_writes_its_outputs), and no run collapses."""
    from analysis.planning.methods import make_plan
    from analysis.settings import RunSettings
    from analysis.signals.context import identify

    plan = make_plan(identify(RunSettings(device="cpu"), Store(cache_dir)), "uniform", "r4")
    entry = retrain(plan, TrainSettings(seed=seed), Store(cache_dir))
    metrics = entry.meta["metrics"]
    assert entry.meta["did_not_train"] is None, (seed, entry.meta["did_not_train"])
    assert metrics["test_examples"] == 1275 and metrics["predicted_classes"] == 2
    assert metrics["accuracy"] >= 0.78, (seed, metrics)
