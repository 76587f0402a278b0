"""Property-based (hypothesis): random option values and small random CSVs reach the parsers and the data loader,
and each either works or is refused with one UserError sentence; nothing else may escape (no internal error).
Bounded: a few dozen examples per property, no deadline, seconds overall."""
from __future__ import annotations

import dataclasses
import math

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from analysis.__main__ import build_parser
from analysis.errors import UserError
from analysis.settings import Limits, PlanOptions, RunSettings, TrainSettings, flag_of
from analysis.signals.registry import all_signals, signal_limits

BOUNDED = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                          HealthCheck.too_slow])

# What a researcher might type into a numeric or text option.
VALUES = st.one_of(
    st.integers(min_value=-10**30, max_value=10**30).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["", " ", "0", "-0", "1e999", "nan", "inf", "-inf", "1_000", "0x10", "4.0", "true", "maybe",
                     "１２", "٣", "r4", "1e-320", "9" * 40]),
    st.text(max_size=12),
)


def is_one_sentence(error: UserError) -> bool:
    text = str(error)
    return bool(text) and "\n" not in text and text.endswith(".") and "Traceback" not in text


_PARSER: dict = {}


def _check_group(group, flag_values: dict[str, str], verb: str, prefix: str = ""):
    argv = [verb]
    for flag, value in flag_values.items():
        argv += [f"{flag}={value}"]
    if verb == "retrain":
        argv += ["--plan", "plan.json"]
    if "cli" not in _PARSER:
        _PARSER["cli"] = build_parser()   # built once: parsing does not change it
    parser = _PARSER["cli"]
    try:
        args = parser.parse_args(argv)
    except SystemExit:   # argparse refused the shape of the command line: its one sentence, exit 2
        return
    from analysis.settings import from_args
    try:
        built = from_args(group, args, prefix=prefix)
    except UserError as error:
        assert is_one_sentence(error), str(error)
        return
    for f in dataclasses.fields(built):   # what is accepted is of its type, finite and in range (a list: each value)
        given = getattr(built, f.name)
        for value in given if isinstance(given, tuple) else [given]:
            if isinstance(value, float):
                assert math.isfinite(value)
            if f.metadata.get("minimum") is not None and value is not None:
                assert value >= f.metadata["minimum"]
            if f.metadata.get("maximum") is not None and value is not None:
                assert value <= f.metadata["maximum"]
            if f.metadata.get("above") is not None and value is not None:
                assert value > f.metadata["above"]


def _fields(group, exclude=()):
    return [f for f in dataclasses.fields(group) if f.name not in exclude and f.type not in ("bool",)]


@BOUNDED
@given(data=st.data())
def test_random_run_and_plan_options_work_or_are_one_sentence(data):
    for group, verb, prefix in ((RunSettings, "run", ""), (Limits, "plan", ""), (PlanOptions, "plan", ""),
                                *((limits, "plan", "") for limits in signal_limits()),
                                (TrainSettings, "retrain", "train_")):
        chosen = data.draw(st.lists(st.sampled_from(_fields(group)), min_size=1, max_size=3, unique_by=lambda f: f.name))
        _check_group(group, {flag_of(f): data.draw(VALUES) for f in chosen}, verb, prefix)


@BOUNDED
@given(signal=st.sampled_from(sorted(all_signals())), data=st.data())
def test_random_signal_options_work_or_are_one_sentence(signal, data):
    from analysis.signals.registry import get_signal, make_config
    config_type = get_signal(signal).config
    names = [f.name for f in dataclasses.fields(config_type)] + ["nope"]
    overrides = {data.draw(st.sampled_from(names)): data.draw(VALUES) for _ in range(data.draw(st.integers(1, 3)))}
    try:
        config = make_config(get_signal(signal), overrides)
    except UserError as error:
        assert is_one_sentence(error), str(error)
        return
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        assert isinstance(value, type(getattr(config_type(), f.name)))
        if isinstance(value, float):
            assert math.isfinite(value)
        if f.metadata.get("minimum") is not None:
            assert value >= f.metadata["minimum"]
        if f.metadata.get("maximum") is not None:
            assert value <= f.metadata["maximum"]
        if f.metadata.get("choices"):
            assert value in f.metadata["choices"]


@BOUNDED
@given(text=st.one_of(VALUES, st.from_regex(r"r?\d{1,30}(\.\d{1,5})?[kKmM]?", fullmatch=True)))
def test_random_budgets_work_or_are_one_sentence(text):
    from analysis.model.capture import AdaptableModule
    from analysis.model.layout import Layout
    from analysis.allocation.budgets import MAX_BUDGET, parse_budget
    modules = tuple(AdaptableModule(layer, name, f"model.layers.{layer}.{name}", 32, 48)
                    for layer in range(2) for name in ("q_proj", "v_proj"))
    layout = Layout(modules, tuple(m.path for m in modules))
    try:
        budget = parse_budget(text, layout)
    except UserError as error:
        assert is_one_sentence(error), str(error)
        return
    assert isinstance(budget, int) and 0 < budget <= MAX_BUDGET



CELLS = st.one_of(
    st.none(), st.just(""), st.just("   "), st.text(max_size=20),
    st.integers(min_value=-10**25, max_value=10**25), st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["naïve café", "日本語のレビュー", "🙂🙃", "\u200b", "a,b", 'quote " inside', "line\nbreak",
                     "0", "1", "1.0", "True", "NaN"]),
)


@BOUNDED
@given(rows=st.lists(st.tuples(CELLS, CELLS), min_size=0, max_size=14),
       duplicate=st.booleans(), one_class=st.booleans(), allow_many=st.booleans(),
       seed=st.integers(0, 2**31 - 1),
       fractions=st.sampled_from([(0.8, 0.1, 0.1), (0.98, 0.01, 0.01), (0.34, 0.33, 0.33)]))
def test_random_csvs_load_and_split_or_are_one_sentence(tmp_path_factory, rows, duplicate, one_class, allow_many,
                                                        seed, fractions):
    from analysis.model.sources.data import load_data, split_data
    if duplicate and rows:
        rows = rows + rows[:3]
    if one_class:
        rows = [(text, 1) for text, _ in rows]
    path = tmp_path_factory.mktemp("csv") / "data.csv"
    pd.DataFrame(rows, columns=["text", "label"]).to_csv(path, index=False)
    try:
        data = load_data(str(path), allow_many_classes=allow_many)
        splits = split_data(data, seed, fractions)
    except UserError as error:
        assert is_one_sentence(error), str(error)
        return
    # every row the CSV reader sees is used or counted as left out (it skips lines that are blank to it, like '\r')
    assert len(data.frame) + sum(data.dropped.values()) == len(pd.read_csv(path))
    assert data.frame["text"].str.strip().ne("").all()
    assert sorted(data.frame["label"].unique()) == list(range(len(data.label_names))) and len(data.label_names) >= 2
    assert sum(len(splits[name]) for name in ("train", "validation", "test")) == len(data.frame)
    assert min(len(splits[name]) for name in ("train", "validation", "test")) >= 1


@BOUNDED
@given(text=st.text(max_size=300), limit=st.integers(min_value=10, max_value=200))
def test_shorten_never_cuts_a_word(text, limit):
    from analysis.errors import shorten
    short = shorten(text, limit)
    line = (text.strip().splitlines() or [""])[0].strip()
    assert "\n" not in short
    if short.endswith("...") and len(line) > limit:
        kept = short[:-3]
        assert line.startswith(kept)
        assert len(kept) <= limit + 1
        following = line[len(kept):]
        assert " " not in line[:limit + 1] or not following or following[0] in " ,;:.(" or not kept


@pytest.mark.parametrize("value", ["1e999", "nan", "99999999999999999999999"])
def test_huge_and_non_finite_values_are_refused_not_crashed(value):
    with pytest.raises(UserError):
        RunSettings(seed=value)
    with pytest.raises(UserError):
        TrainSettings(lr=value) if value != "99999999999999999999999" else TrainSettings(seed=value)
