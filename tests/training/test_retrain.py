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

import pandas as pd
import pytest
import torch

from analysis.jobs import launch as jobs
from analysis.planning.plan_json import check_peft_model, lora_config, read_plan
from analysis.training.retrain import CHECKPOINT, batch_indices, retrain
from analysis.settings import TrainSettings
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


def test_retrain_beats_chance_on_the_embedded_data_and_writes_its_outputs(cache_dir, uniform_plan, tmp_path, minilm):
    out = tmp_path / "run"
    result = cli(cache_dir, "retrain", "--plan", str(uniform_plan), "--steps", "60", "--test-size", "200",
                 "--out", str(out))
    assert result.returncode == 0, result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    # chance is 50%; 61% is three standard errors above it on 200 examples
    assert metrics["accuracy"] > 0.61 and metrics["test_examples"] == 200 and 0 < metrics["f1"] <= 1
    curve = pd.read_csv(out / "curve.csv")
    assert curve["step"].tolist() == list(range(1, 61))
    assert curve["loss"].tail(10).mean() < curve["loss"].head(10).mean()
    from peft import PeftModel
    # peft may shorten the saved target_modules to suffixes that match the same modules; what counts is
    # that the loaded adapter has exactly the plan's ranks and parameter count
    # a copy: from_pretrained adapts the model in place, and the session's shared model must stay plain
    loaded = PeftModel.from_pretrained(copy.deepcopy(minilm.model), out / "adapter", is_trainable=True)
    check_peft_model(read_plan(uniform_plan), loaded)
    assert len(retrain_entries(cache_dir)) == 1
    again = cli(cache_dir, "retrain", "--plan", str(uniform_plan), "--steps", "60", "--test-size", "200")
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
    from peft import LoraConfig, PeftConfig
    plan = json.loads(uniform_plan.read_text())
    assert isinstance(lora_config(plan), LoraConfig)
    config = PeftConfig.from_peft_type(peft_type="LORA", **plan)   # peft's own loader, extras ignored
    assert isinstance(config, LoraConfig) and config.r == plan["r"] and config.lora_alpha == plan["lora_alpha"]


def test_comparison_puts_uniform_first_and_summarises_seeds(cache_dir, tmp_path):
    ran = cli(cache_dir, "run", "--signals", "grad_norm", "--val-size", "16", "--device", "cpu")
    assert ran.returncode == 0, ran.stderr
    args = ["compare", "--val-size", "16", "--device", "cpu", "--signals", "grad_norm", "--seeds", "0,1",
            "--steps", "6", "--test-size", "32", "--train-batch-size", "8", "--out", str(tmp_path / "cmp")]
    result = cli(cache_dir, *args)
    assert result.returncode == 0, result.stderr
    summary = pd.read_csv(tmp_path / "cmp" / "summary.csv")
    runs = pd.read_csv(tmp_path / "cmp" / "runs.csv")
    assert summary["method"].tolist() == ["uniform", "grad_norm"] and (summary["seeds"] == 2).all()
    assert len(runs) == 4 and runs.groupby("method")["trainable_params"].nunique().eq(1).all()
    budget = summary["trainable_params"].max()
    assert (summary["trainable_params"] <= budget).all()
    for method, group in runs.groupby("method"):
        row = summary.set_index("method").loc[method]
        assert row["accuracy_mean"] == pytest.approx(group["accuracy"].mean())
        assert row["accuracy_std"] == pytest.approx(group["accuracy"].std())
    assert "| uniform |" in result.stdout and "±" in result.stdout
    trained = retrain_entries(cache_dir)
    again = cli(cache_dir, *args)
    assert again.returncode == 0 and retrain_entries(cache_dir) == trained   # every run came from the cache
