"""The command line as a user runs it: real processes, real cache, one-sentence errors."""
import dataclasses
import os
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pandas as pd
import pytest

from analysis.__main__ import main
from analysis.signals import registry
from analysis.signals.registry import get_signal

REPO = Path(__file__).resolve().parent.parent


def cli(cache_dir, *args):
    env = {**os.environ, "ANALYSIS_CACHE_DIR": str(cache_dir)}
    return subprocess.run([sys.executable, "-m", "analysis", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)


def entries(cache_dir):
    directory = Path(cache_dir) / "entries"
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def test_run_then_show_on_the_embedded_default(cache_dir):
    fast = "cka,id,grad_norm,state_change"  # the signals without a warm-up training
    first = cli(cache_dir, "run", "--val-size", "16", "--signals", fast)
    assert first.returncode == 0, first.stderr
    assert "computed" in first.stdout and len(entries(cache_dir)) >= 2
    # The re-run finds everything cached from the run's identity alone: it reads no data and imports none of the
    # libraries that only computing needs.
    probe = ("import sys\nimport analysis.model.sources as sources\n"
             "def refuse(*args, **kwargs):\n    raise SystemExit('the data was read')\n"
             "sources.load_data = sources.data.load_data = refuse\n"
             "from analysis.__main__ import main\ncode = main(['run', '--val-size', '16', '--signals', sys.argv[1]])\n"
             "print('imported:', sorted(m for m in ('transformers', 'peft', 'sklearn', 'skdim') if m in sys.modules))\n"
             "sys.exit(code)")
    second = subprocess.run([sys.executable, "-c", probe, fast], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "ANALYSIS_CACHE_DIR": str(cache_dir)}, timeout=600)
    assert second.returncode == 0, second.stderr
    assert "computed" not in second.stdout and second.stdout.count("cached") == 4 and "imported: []" in second.stdout
    shown = cli(cache_dir, "show", "--signal", "grad_norm", "--val-size", "16")
    table = pd.read_csv(StringIO(shown.stdout))
    assert list(table.columns) == ["signal", "layer", "module", "value"] and len(table) == 36
    as_json = cli(cache_dir, "show", "--val-size", "16", "--format", "json")
    assert set(pd.read_json(StringIO(as_json.stdout))["signal"]) == {"cka", "grad_norm", "id", "state_change"}


def _csv(tmp_path, rows):
    path = tmp_path / "data.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return str(path)


@pytest.mark.parametrize("case", ["model", "column", "empty", "one-class", "cuda", "signal", "set", "budget",
                                  "cache-dir"])
def test_errors_are_one_sentence_with_nonzero_exit(cache_dir, tmp_path, case):
    args = {
        "model": ["run", "--model", "no-such-owner/no-such-model-xyz"],
        "column": ["run", "--data", _csv(tmp_path, {"text": ["a", "b", "c"], "label": [0, 1, 0]}),
                   "--label-column", "sentiment"],
        "empty": ["run", "--data", _csv(tmp_path, {"text": ["", " "], "label": [0, 1]})],
        "one-class": ["run", "--data", _csv(tmp_path, {"text": ["a", "b", "c"], "label": [1, 1, 1]})],
        "cuda": ["run", "--device", "cuda"],
        "signal": ["run", "--signals", "nope"],
        "set": ["run", "--signals", "state_change", "--set", "state_change.nope=1"],
        "budget": ["plan", "--budget", "0"],
        "cache-dir": ["run", "--cache-dir", "/proc/nope"],   # a cache folder that cannot be created
    }[case]
    result = cli(cache_dir, *args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and lines[0].endswith(".")
    assert "Traceback" not in result.stderr
    assert entries(cache_dir) == []


def test_crash_inside_a_signal_leaves_no_entry(cache_dir, monkeypatch, capsys):
    signal = get_signal("state_change")

    def crash(context, config):
        list(context.pooled_states("mean"))
        raise RuntimeError("boom")

    monkeypatch.setitem(registry._REGISTRY, "state_change", dataclasses.replace(signal, compute=crash))
    code = main(["run", "--signals", "state_change", "--val-size", "8"])
    error = capsys.readouterr().err
    assert code == 1 and "Internal error (RuntimeError: boom)" in error
    log = Path(error.split("traceback is in ")[1].rstrip(".\n"))
    assert "Traceback" in log.read_text()
    assert entries(cache_dir) == []


def test_a_closed_pipe_is_not_an_error(cache_dir):
    """`python -m analysis signals | true`: the reader is gone before the first line; no error message."""
    process = subprocess.Popen(f"{sys.executable} -m analysis signals | true", shell=True, cwd=REPO,
                               env={**os.environ, "ANALYSIS_CACHE_DIR": str(cache_dir)},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = process.communicate(timeout=120)
    assert err == "", err


@pytest.mark.slow
def test_eva_alpha_gora_run_and_plan_on_a_tiny_decoder(cache_dir, tmp_path):
    """The allocators' command lines: the three allocators through `run`, then a peft plan at r2 and r8 each."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from analysis.model.sources import resolve_model
    from analysis.planning.plan_json import read_plan
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("minilm", cache_dir).path)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2)).save_pretrained(tmp_path / "lm")
    tokenizer.save_pretrained(tmp_path / "lm")
    data = _csv(tmp_path, {"text": [f"the cat number {i} sat on the mat" for i in range(60)]})
    setting = ["--model", str(tmp_path / "lm"), "--data", data, "--val-size", "8", "--device", "cpu"]
    ran = cli(cache_dir, "run", *setting, "--signals", "eva,alpha,gora")
    assert ran.returncode == 0, ran.stderr
    assert all(f"{name} " in ran.stdout for name in ("eva", "alpha", "gora"))
    for name in ("eva", "alpha", "gora"):
        for budget in ("r2", "r8"):
            out = tmp_path / f"{name}-{budget}.json"
            made = cli(cache_dir, "plan", *setting, "--signal", name, "--budget", budget, "--out", str(out))
            assert made.returncode == 0, made.stderr
            plan = read_plan(out)
            assert plan["signal"] == name and 0 < plan["trainable_params"] <= plan["budget"]
