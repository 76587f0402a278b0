"""Every input a researcher can type gets a clear answer: one row per bad input, run through the real
command line in-process, must end with exit code 2, one sentence on stderr, no traceback and no cache entry; the
inputs that are adjusted instead (rows left out, a --val-size or --max-length beyond what there is) say so."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from analysis.__main__ import main

SENTENCE = re.compile(r"^error: \S.*\.$")


def entries(cache_dir: Path) -> list[str]:
    directory = Path(cache_dir) / "entries"
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    capsys.readouterr()   # what building the inputs printed (a model's save progress) is not the command's
    try:
        code = main(argv)
    except SystemExit as exit_:   # argparse's usage errors
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def csv(tmp_path: Path, name: str, frame: dict) -> str:
    path = tmp_path / name
    pd.DataFrame(frame).to_csv(path, index=False)
    return str(path)


def t5_directory(tmp_path: Path) -> str:
    """A tiny T5 (encoder-decoder) model directory: config and weights, as a user's download would have."""
    from transformers import T5Config, T5ForConditionalGeneration
    directory = tmp_path / "t5-tiny"
    config = T5Config(vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2)
    T5ForConditionalGeneration(config).save_pretrained(directory)
    return str(directory)


def plan_file(tmp_path: Path, **values) -> str:
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"signal": "uniform", "r": 4, "lora_alpha": 8.0, "lora_dropout": 0.0,
                                "target_modules": ["bert.encoder.layer.0.attention.self.query"],
                                "trainable_params": 3072, **values}))
    return str(path)


TEXTS = [f"review number {i} of the film" for i in range(40)]
LABELS = [i % 2 for i in range(40)]

# name: (argv builder, a fragment the sentence must contain)
CASES = {
    "t5 encoder-decoder": (lambda t: ["run", "--model", t5_directory(t), "--signals", "cka"],
                           "encoder-decoder model, which is not supported; the analyses support encoders"),
    "label column is the text column": (
        lambda t: ["run", "--data", csv(t, "d.csv", {"text": TEXTS, "label": LABELS}), "--label-column", "text",
                   "--signals", "cka"], "label column and the text column are both 'text'"),
    "max-length 1": (lambda t: ["run", "--max-length", "1"], "--max-length must be at least 2"),
    "batch-size 0": (lambda t: ["run", "--batch-size", "0"], "--batch-size must be at least 1"),
    "seed -1": (lambda t: ["run", "--seed", "-1"], "--seed must be at least 0"),
    "seed huge": (lambda t: ["run", "--seed", "99999999999999999999999"], "--seed must be at most"),
    "val-size 0": (lambda t: ["run", "--val-size", "0"], "--val-size must be at least 1"),
    "val-size not a number": (lambda t: ["run", "--val-size", "many"], "--val-size expects an integer"),
    "fractions": (lambda t: ["run", "--fractions", "0.9,0.2,0.1"], "--fractions expects three positive"),
    "dtype": (lambda t: ["run", "--dtype", "float8"], "--dtype must be one of"),
    "device": (lambda t: ["run", "--device", "tpu", "--signals", "cka"], "Unknown device 'tpu'"),
    "retrain lr -1": (lambda t: ["retrain", "--plan", str(t / "missing.json"), "--lr", "-1"],
                      "--lr must be greater than 0"),
    "retrain lr nan": (lambda t: ["retrain", "--plan", str(t / "missing.json"), "--lr", "nan"],
                       "--lr expects a finite number"),
    "retrain a hand-edited plan": (lambda t: ["retrain", "--plan", plan_file(t, lora_alpha=-1.0)],
                                   "has a lora_alpha that is not a positive number"),
    "retrain a plan with dropout 1.5": (lambda t: ["retrain", "--plan", plan_file(t, lora_dropout=1.5)],
                                        "has lora_dropout 1.5; it must be between 0 and 0.99"),
    "shapley.r_max=0": (lambda t: ["run", "--signals", "shapley", "--set", "shapley.r_max=0"],
                        "shapley.r_max must be at least 1, not 0"),
    "shapley.samples=0": (lambda t: ["run", "--signals", "shapley", "--set", "shapley.samples=0"],
                          "shapley.samples must be at least 1"),
    "sora.steps=0": (lambda t: ["run", "--signals", "sora", "--set", "sora.steps=0"], "sora.steps must be at least 1"),
    "shapley.warmup_lr=nan": (lambda t: ["run", "--signals", "shapley", "--set", "shapley.warmup_lr=nan"],
                              "shapley.warmup_lr expects a finite number"),
    "an integer, not a int": (lambda t: ["run", "--signals", "shapley", "--set", "shapley.r_max=four"],
                              "shapley.r_max expects an integer, not 'four'"),
    "sora.xi above xi_max": (lambda t: ["run", "--signals", "sora", "--set", "sora.xi=0.5"],
                             "sora.xi (0.5) must be below sora.xi_max"),
    "cka token pooling": (lambda t: ["run", "--signals", "cka", "--set", "cka.pooling=tokens"],
                          "cka.pooling must be one of auto, cls, last, mean, not 'tokens'"),
    "id estimator unknown": (lambda t: ["run", "--signals", "id", "--set", "id.estimator=Nope"],
                             "Unknown intrinsic-dimension estimator 'Nope'"),
    "show with a bad option": (lambda t: ["show", "--signal", "shapley", "--set", "shapley.r_max=0"],
                               "shapley.r_max must be at least 1"),
    "plan dropout 1.5": (lambda t: ["plan", "--dropout", "1.5", "--out", str(t / "p.json")],
                         "--dropout must be at most 0.99"),
    "plan alpha-ratio -1": (lambda t: ["plan", "--alpha-ratio", "-1", "--out", str(t / "p.json")],
                            "--alpha-ratio must be greater than 0"),
    "plan huge budget": (lambda t: ["plan", "--budget", "99999999999999999999999", "--out", str(t / "p.json")],
                         "is beyond any LoRA (full rank on every module of this model is"),
    "plan min-rank above max-rank": (lambda t: ["plan", "--min-rank", "9", "--max-rank", "4"],
                                     "--min-rank (9) must not exceed --max-rank (4)"),
    "plan gora-min-rank above gora-max-rank": (lambda t: ["plan", "--gora-min-rank", "40"],
                                               "--gora-min-rank (40) must not exceed --gora-max-rank (32)"),
    "float labels": (lambda t: ["run", "--data", csv(t, "d.csv", {"text": TEXTS, "label": [i / 7 for i in range(40)]}),
                                "--signals", "cka"], "holds numbers with a fraction"),
    "id-like labels": (lambda t: ["run", "--data", csv(t, "d.csv", {"text": TEXTS, "label": [f"id{i}" for i in
                                                                                             range(40)]}),
                                  "--signals", "cka"], "40 different values in 40 rows"),
    "only NaN labels": (lambda t: ["run", "--data", csv(t, "d.csv", {"text": TEXTS, "label": [None] * 40}),
                                   "--signals", "cka"], "no rows with non-empty text"),
    "data is a folder": (lambda t: ["run", "--data", str(t), "--signals", "cka"], "is a folder"),
    "missing local model directory": (lambda t: ["run", "--model", str(t / "no" / "model"), "--signals", "cka"],
                                      "does not exist"),
    "compare seeds": (lambda t: ["compare", "--seeds", "0,x"], "--seeds expects an integer, not 'x'"),
    "compare negative seed": (lambda t: ["compare", "--seeds", "0,-1"], "--seeds must be at least 0, not -1"),
}



# --- the input-gaps audit: paths, devices, budgets, blends, --set, empty lists, plan files (one row each) ---------

def a_file(tmp_path: Path, name: str = "a-file") -> str:
    path = tmp_path / name
    path.write_text("not a folder")
    return str(path)


def json_file(tmp_path: Path, value) -> str:
    path = tmp_path / "hand.json"
    path.write_text(json.dumps(value))
    return str(path)


CASES.update({
    "plan --out is a folder": (lambda t: ["plan", "--out", str(t)], "is a folder; give a file name"),
    "plan --out under a file": (lambda t: ["plan", "--out", a_file(t) + "/p.json"], "is a file, not a folder"),
    "export --out is a folder": (lambda t: ["export", "--signal", "cka", "--out", str(t), "--format", "pdf"],
                                 "is a folder; give a file name"),
    "compare --out is a file": (lambda t: ["compare", "--out", a_file(t)], "is a file, not a folder"),
    "retrain --out is a file": (lambda t: ["retrain", "--plan", plan_file(t), "--out", a_file(t)],
                                "is a file, not a folder"),
    "show --cache-dir is a file": (lambda t: ["show", "--signal", "cka", "--cache-dir", a_file(t)],
                                   "is a file, not a folder"),
    "run --cache-dir is a file": (lambda t: ["run", "--signals", "cka", "--cache-dir", a_file(t)],
                                  "is a file, not a folder"),
    "device cuda:x": (lambda t: ["run", "--device", "cuda:x", "--signals", "cka"], "Unknown device 'cuda:x'"),
    "device cuda:-1": (lambda t: ["run", "--device", "cuda:-1", "--signals", "cka"], "Unknown device 'cuda:-1'"),
    "device cuda:0:1": (lambda t: ["run", "--device", "cuda:0:1", "--signals", "cka"], "Unknown device 'cuda:0:1'"),
    "device with a space": (lambda t: ["run", "--device", "cuda ", "--signals", "cka"], "Unknown device 'cuda '"),
    "device cudax": (lambda t: ["plan", "--device", "cudax"], "Unknown device 'cudax'"),
    "retrain device": (lambda t: ["retrain", "--plan", plan_file(t), "--device", "cuda:-1"],
                       "Unknown device 'cuda:-1'"),
    "device-map": (lambda t: ["run", "--device-map", "nope", "--signals", "cka"], "--device-map must be one of"),
    "retrain init": (lambda t: ["retrain", "--plan", plan_file(t), "--init", "nope"], "--init must be one of"),
    "plan huge average rank": (lambda t: ["plan", "--budget", "r99999999999", "--out", str(t / "p.json")],
                               "parameters); give at most that (a larger budget"),
    "zero-weight blend": (lambda t: ["plan", "--signal", "0*cka", "--out", str(t / "p.json")],
                          "gives cka weight 0"),
    "blend with a zero weight": (lambda t: ["compare", "--signals", "cka+0.0*id"], "gives id weight 0"),
    "plan --set for an unused signal": (lambda t: ["plan", "--signal", "uniform", "--set", "cka.split=abc"],
                                        "--set names signal(s) that 'uniform' does not use: cka"),
    "show --set for another signal": (lambda t: ["show", "--signal", "cka", "--set", "id.estimator=twonn"],
                                      "--set names signal(s) not being shown: id"),
    "export --set for another signal": (lambda t: ["export", "--signal", "cka", "--set", "id.estimator=twonn",
                                                   "--out", str(t / "f.pdf")], "does not use: id"),
    "export all with --set": (lambda t: ["export", "--signal", "all", "--set", "cka.split=abc",
                                         "--out", str(t / "f.pdf")], "that exporting 'all' does not use: cka"),
    "compare --set for an unused signal": (lambda t: ["compare", "--signals", "cka", "--set", "id.estimator=twonn"],
                                           "that no compared method uses: id"),
    "run --signals empty": (lambda t: ["run", "--signals", ""], "No signals were named"),
    "compare --signals empty": (lambda t: ["compare", "--signals", ""], "--signals names no method"),
    "compare --signals comma": (lambda t: ["compare", "--signals", ","], "--signals names no method"),
    "compare --budgets empty": (lambda t: ["compare", "--budgets", ""], "--budgets names no budget"),
    "compare --baselines unknown": (lambda t: ["compare", "--signals", "uniform", "--baselines", "attention,ffn"],
                                    "--baselines must be one of attention, mlp, all, not 'ffn'"),
    "plan file bias": (lambda t: ["retrain", "--plan", plan_file(t, bias="all2")],
                       "has bias 'all2'; it must be one of none, all, lora_only"),
    "plan file {}": (lambda t: ["retrain", "--plan", json_file(t, {})], "lacks r, lora_alpha"),
    "plan file target_modules": (lambda t: ["retrain", "--plan", plan_file(t, target_modules="query")],
                                 "target_modules that are not a non-empty list"),
    "plan file is a folder": (lambda t: ["retrain", "--plan", str(t)], "is a folder, not a plan file"),
})


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_input_is_one_sentence_with_exit_code_2(case, cache_dir, tmp_path, capsys):
    build, fragment = CASES[case]
    code, out, err = run_cli(build(tmp_path), capsys)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and SENTENCE.match(lines[0]), err
    assert fragment in lines[0], lines[0]
    assert "Traceback" not in err and "Internal error" not in err
    assert entries(cache_dir) == []


def test_an_unreachable_hub_model_is_not_cut_mid_word(cache_dir, capsys, monkeypatch):
    """Offline, huggingface_hub's long explanation is shortened at a word boundary, not at a fixed length."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = run_cli(["run", "--model", "no-such-owner/no-such-model-xyz", "--signals", "cka"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    reason = err.strip().split(" did not provide it (", 1)[1][:-2]
    assert len(reason) <= 163 and (reason.endswith("...") or len(reason) < 160), reason
    if reason.endswith("..."):   # cut at a space: what precedes the ellipsis is a whole word of the message
        assert not reason.endswith(" ...") and re.search(r"\w\.\.\.$|\W\.\.\.$", reason), reason


def test_shorten_cuts_at_a_word_boundary():
    from analysis.errors import shorten
    text = "Cannot reach the hub. To enable repo look-ups and downloads online, set HF_HUB_OFFLINE=0 as an " \
           "environment variable, and check your connection to the network before trying again."
    short = shorten(text, 60)
    assert short.endswith("...") and len(short) <= 63
    assert text.startswith(short.removesuffix("...")) and text[len(short) - 3] == " "
    assert shorten("short enough.") == "short enough"


# --- the dashboard says the same sentence ---------------------------------------------------------------------

PAGE = str(Path(__file__).resolve().parent.parent / "views" / "setup.py")


def cli_sentence(argv: list[str], capsys) -> str:
    code, _, err = run_cli(argv, capsys)
    assert code == 2, err
    return err.strip().removeprefix("error: ")


def submit_setup(model: str = "", data: str = "", text_column: str = "text", label_column: str = "label"):
    from streamlit.testing.v1 import AppTest
    app = AppTest.from_file(PAGE, default_timeout=60).run()
    if model:   # the path fields appear once "other" is chosen
        [s for s in app.selectbox if s.label == "Model"][0].set_value("other").run()
        [t for t in app.text_input if t.label == "Hub name or local directory"][0].set_value(model)
    if data:
        [s for s in app.selectbox if s.label == "Dataset"][0].set_value("other").run()
        [t for t in app.text_input if t.label.startswith("Local .csv")][0].set_value(data)
        [t for t in app.text_input if t.label == "Text column"][0].set_value(text_column)
        [t for t in app.text_input if t.label == "Label column"][0].set_value(label_column)
    [s for s in app.multiselect if s.label == "Signals"][0].set_value(["cka"])
    app.button[0].click().run()
    assert not app.exception
    return app


DASHBOARD_CASES = {
    "t5 encoder-decoder": lambda t: ({"model": t5_directory(t)}, ["--model", t5_directory(t)]),
    "label column is the text column": lambda t: (
        {"data": csv(t, "d.csv", {"text": TEXTS, "label": LABELS}), "label_column": "text"},
        ["--data", str(t / "d.csv"), "--label-column", "text"]),
    "id-like labels": lambda t: ({"data": csv(t, "d.csv", {"text": TEXTS, "label": [f"id{i}" for i in range(40)]})},
                                 ["--data", str(t / "d.csv")]),
    "missing local model directory": lambda t: ({"model": str(t / "no" / "model")}, ["--model", str(t / "no" / "model")]),
}


@pytest.mark.parametrize("case", list(DASHBOARD_CASES))
def test_the_setup_page_says_the_same_sentence(case, cache_dir, tmp_path, capsys):
    from analysis.jobs import launch as jobs
    page_inputs, flags = DASHBOARD_CASES[case](tmp_path)
    app = submit_setup(**page_inputs)
    sentence = cli_sentence(["run", *flags, "--signals", "cka"], capsys)
    assert [e.value for e in app.error] == [sentence]
    assert jobs.list_jobs(cache_dir) == [] and entries(cache_dir) == []


def test_the_setup_page_shows_what_a_run_leaves_out(cache_dir, tmp_path, monkeypatch):
    from analysis.jobs import launch
    started = []
    monkeypatch.setattr(launch, "start_job", lambda argv, root, label="": started.append(argv) or "job")
    rows = {"text": TEXTS + [""] * 5, "label": LABELS + [0] * 5}
    rows["label"][3] = None
    app = submit_setup(data=csv(tmp_path, "d.csv", rows))
    assert any("6 of 45 rows" in w.value and "1 with no label" in w.value for w in app.warning)
    assert any("--val-size 512 is more than the 4 validation examples" in w.value for w in app.warning)
    assert len(started) == 1   # warnings, not errors: the job starts


def test_the_run_chooser_shows_what_differs(cache_dir):
    """Two runs that differ only in --max-length and --dtype read the same in their labels; the chooser adds it."""
    from streamlit.testing.v1 import AppTest

    from analysis.settings import RunSettings
    from tests.synthetic_store import fill
    fill(cache_dir, RunSettings(val_size=16, device="cpu", max_length=64, dtype="float32"), signals=("cka",))
    fill(cache_dir, RunSettings(val_size=16, device="cpu"), signals=("cka",))
    app = AppTest.from_file(PAGE, default_timeout=60).run()
    assert not app.exception
    options = [s for s in app.selectbox if s.label == "Run"][0].options
    assert len(options) == 2
    assert any(o.endswith("dtype float32, max-length 64") for o in options), options
    assert any(o.endswith("dtype auto, max-length 128") for o in options), options


def test_embedded_data_says_which_flags_it_ignores(capsys):
    """--text-column, --label-column and --hub-split name columns and splits of CSV, parquet or hub data; the
    embedded dataset has its own, so it says so (one line) instead of ignoring them silently."""
    from analysis.__main__ import _settings, build_parser
    _settings(build_parser().parse_args(["run", "--text-column", "review", "--hub-split", "test"]))
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: --text-column, --hub-split apply only to CSV"), lines
    _settings(build_parser().parse_args(["run", "--text-column", "text"]))   # the default, as jobs pass it
    _settings(build_parser().parse_args(["run", "--data", "x.csv", "--text-column", "review"]))
    assert capsys.readouterr().err == ""


def test_every_not_computed_message_is_a_sentence():
    from analysis.signals.runner import not_computed
    assert not_computed("cka").endswith("--signals cka.")
    assert not_computed("cka", {"split": "test"}).endswith("--set cka.split=test.")


def test_an_internal_error_is_logged_under_the_cache_dir_given(cache_dir, tmp_path, capsys, monkeypatch):
    import analysis.__main__ as cli

    def crash(args):
        raise RuntimeError("boom")
    monkeypatch.setattr(cli, "cmd_list", crash)
    code, _, err = run_cli(["list", "--cache-dir", str(tmp_path / "elsewhere")], capsys)
    assert code == 1 and "Internal error (RuntimeError: boom)" in err
    log = Path(err.split("traceback is in ")[1].rstrip(".\n"))
    assert log.parent == tmp_path / "elsewhere" / "logs" and "Traceback" in log.read_text()
    assert not (cache_dir / "logs").exists()
