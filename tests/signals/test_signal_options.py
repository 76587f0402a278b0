"""Every signal's options are checked where `--set` is parsed: a bad value is one sentence and exit code 2 before
the data or the model is read (an earlier version crashed inside peft's EVA, or refused a split only after the
warm-up had trained and been cached). `prepare`, which reads the data and the weights, is made to fail here, so a
value that got past the parser would show up as that failure instead of the expected sentence."""
from __future__ import annotations

import pytest

from tests.test_inputs import SENTENCE, entries, run_cli

CASES = {
    "eva.r=0": "eva.r must be at least 1",
    "eva.r=-1": "eva.r must be at least 1",
    "eva.r=5000": "eva.r must be at most 1024",
    "eva.rho=0.5": "eva.rho must be at least 1.0",
    "eva.tau=1.5": "eva.tau must be at most 1.0",
    "eva.tau=0": "eva.tau must be greater than 0",
    "eva.examples_per_step=-1": "eva.examples_per_step must be at least 0",
    "eva.max_passes=0": "eva.max_passes must be at least 1",
    "eva.split=test": "eva.split must be one of validation, train",
    "alpha.svd_dtype=float16": "alpha.svd_dtype must be one of float32, float64",
    "alpha.spectrum=eig": "alpha.spectrum must be one of svdvals, gram",
    "alpha.fit=mle": "alpha.fit must be one of ww, alphalora",
    "alpha.chunk=0": "alpha.chunk must be at least 1",
    "gora.importance=norm": "gora.importance must be one of union_mean",
    "gora.split=test": "gora.split must be one of validation, train",
    "cka.split=test": "cka.split must be one of validation, train",
    "id.split=abc": "id.split must be one of validation, train",
    "shapley.split=abc": "shapley.split must be one of validation, train",
    "shapley.reading=both": "shapley.reading must be one of sensitivity, shapley",
    "shapley.r_max=2000": "shapley.r_max must be at most 1024",
    "sora.r_max=2000": "sora.r_max must be at most 1024",
    "shapley.samples=99999999999999999999": "shapley.samples must lie within",
}


@pytest.mark.parametrize("option", list(CASES))
def test_a_bad_signal_option_is_refused_before_anything_is_read(option, cache_dir, capsys, monkeypatch):
    def prepare(*args, **kwargs):
        raise AssertionError("the data and the model were read before the option was checked")
    monkeypatch.setattr("analysis.signals.runner.prepare", prepare)
    signal = option.split(".", 1)[0]
    code, _, err = run_cli(["run", "--signals", signal, "--set", option, "--device", "cpu"], capsys)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and SENTENCE.match(lines[0]), err
    assert CASES[option] in lines[0], lines[0]
    assert entries(cache_dir) == []
