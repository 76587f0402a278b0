"""Every setting round-trips through the command line, a job's argv and the plan JSON, with nothing listed by
hand here: a field added to analysis/settings.py is covered (and must survive each path) automatically."""
from __future__ import annotations

import dataclasses
import json

import pytest

from analysis.__main__ import _compare_settings, _limits, _plan_options, _retrain_config, _settings, build_parser
from analysis.settings import (CompareSettings, Limits, PlanOptions, RunSettings, TrainSettings, from_dict, kind_of,
                               setting, to_argv, to_dict)
from analysis.errors import UserError

GROUPS = (RunSettings, Limits, PlanOptions, TrainSettings, CompareSettings)


def changed(group: type):
    """An instance of `group` in which every field differs from its default (and stays in range)."""
    default = group()
    values = {}
    for f in dataclasses.fields(group):
        value, meta = getattr(default, f.name), f.metadata
        if isinstance(value, tuple) and f.name != "fractions":   # a list: another one, each value in range
            values[f.name] = (tuple(list(meta["choices"])[:1]) if meta.get("choices") else
                              tuple(v * 2 if isinstance(v, float) else v + 3 for v in value))
        elif meta.get("choices"):
            options = list(meta["choices"])
            values[f.name] = options[(options.index(value) + 1) % len(options)]
        elif f.name == "fractions":
            values[f.name] = (0.7, 0.2, 0.1)
        elif f.name == "device":   # a device's spelling is checked: another valid one
            values[f.name] = "cuda:1"
        elif value is None:   # a list, or a number, where none is the default
            values[f.name] = 5 if kind_of(group, f.name) is int else ("query", "value")
        elif isinstance(value, bool):
            values[f.name] = not value
        elif isinstance(value, int):
            values[f.name] = value + 3
        elif isinstance(value, float):
            values[f.name] = (value + meta["maximum"]) / 2 if meta.get("maximum") is not None else value * 2 + 0.5
        else:
            values[f.name] = f"{value}-other"
    made = group(**values)
    assert all(getattr(made, f.name) != getattr(default, f.name) for f in dataclasses.fields(group))
    return made


# How each verb of the command line builds each group from its flags.
VERBS = {RunSettings: ("run", _settings), Limits: ("plan", _limits), PlanOptions: ("plan", _plan_options),
         TrainSettings: ("retrain", _retrain_config), CompareSettings: ("compare", _compare_settings)}


@pytest.mark.parametrize("group", GROUPS, ids=lambda g: g.__name__)
def test_every_field_round_trips_through_the_command_line(group):
    value = changed(group)
    verb, build = VERBS[group]
    required = ["--plan", "plan.json"] if verb == "retrain" else []
    args = build_parser().parse_args([verb, *required, *to_argv(value)])
    assert build(args) == value
    assert build(build_parser().parse_args([verb, *required])) == group()   # no flag: the defaults


@pytest.mark.parametrize("group", GROUPS, ids=lambda g: g.__name__)
def test_every_field_round_trips_through_json(group):
    value = changed(group)
    assert from_dict(group, json.loads(json.dumps(to_dict(value)))) == value
    assert from_dict(group, {**to_dict(value), "a_key_from_a_newer_version": 1}) == value


def test_the_settings_a_plan_records_are_the_settings_retrain_uses(tmp_path):
    from analysis.model.layout import model_layout
    from analysis.model.sources import resolve_model
    from analysis.planning.plan_json import build_plan, read_plan, write_plan

    settings = changed(RunSettings)
    layout = model_layout(resolve_model("minilm", tmp_path).path, "classification", 2)
    plan = build_plan(layout, [2] * len(layout.modules), "uniform", 10**7, settings=to_dict(settings))
    write_plan(plan, tmp_path / "plan.json")
    assert from_dict(RunSettings, read_plan(tmp_path / "plan.json")["settings"]) == settings


def test_compare_takes_the_split_seed_and_trains_with_its_own_seeds():
    args = build_parser().parse_args(["compare", "--seed", "5", "--seeds", "1,2", "--steps", "7"])
    assert _settings(args).seed == 5 and _retrain_config(args) == TrainSettings(steps=7)


@pytest.mark.parametrize("group", GROUPS, ids=lambda g: g.__name__)
def test_every_field_has_help_and_a_value_out_of_range_is_one_sentence(group):
    for f in dataclasses.fields(group):
        assert f.metadata.get("help"), f.name
        bound = f.metadata.get("minimum")
        if isinstance(bound, int) and not isinstance(bound, bool):
            with pytest.raises(UserError, match=r"^--[a-z-]+ must be at least .*\.$"):
                group(**{f.name: bound - 1})


def test_settings_reject_wrong_types_in_one_sentence():
    with pytest.raises(UserError, match="^--val-size expects an integer, not 'many'.$"):
        RunSettings(val_size="many")
    with pytest.raises(UserError, match="^--lr expects a finite number"):
        TrainSettings(lr="nan")
    with pytest.raises(UserError, match="^--task must be one of"):
        RunSettings(task="regression")
    with pytest.raises(UserError, match="^--min-rank .* must not exceed --max-rank"):
        Limits(min_rank=9, max_rank=4)


def test_a_new_field_is_picked_up_everywhere():
    """A group with one more field gets its flag, argv and JSON forms with no other change."""
    @dataclasses.dataclass(frozen=True)
    class Extended(TrainSettings):
        label_smoothing: float = setting(0.0, "label smoothing of the training loss", minimum=0.0, maximum=1.0)

    import argparse

    from analysis.settings import add_flags, from_args
    parser = argparse.ArgumentParser()
    add_flags(parser, Extended)
    value = Extended(label_smoothing=0.1, steps=9)
    assert from_args(Extended, parser.parse_args(to_argv(value))) == value
    assert from_dict(Extended, to_dict(value)) == value


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:12"])
def test_a_device_is_one_of_its_spellings(device):
    assert RunSettings(device=device).device == device


@pytest.mark.parametrize("device", ["cuda:x", "cuda:-1", "cuda:0:1", "cuda ", "cudax", "CPU", "tpu", "cuda:01", ""])
def test_another_device_spelling_is_refused_when_settings_are_built(device):
    with pytest.raises(UserError, match=r"^Unknown device .* use auto, cpu, cuda or cuda:N\.$"):
        RunSettings(device=device)
