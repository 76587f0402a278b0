"""Every setting a user chooses, with its default, range and help, in one place.

Five groups, each a frozen dataclass deriving from `Group`: RunSettings (model, data, split, sizes, device),
Limits (what any plan may do per module), PlanOptions (alpha and dropout of a plan), TrainSettings (a retrain)
and CompareSettings (a comparison's seeds, budgets, learning rates, baselines). A signal's options derive from
`SignalOptions`, and the limits of a signal's own plan rule from `Group`, both defined in the signal's folder.
Everything else derives from these definitions: the command line's flags (`add_flags`), the dashboard's job
commands (`to_argv`) and widgets (views/shared/widgets.setting_input), the plan JSON and cache entries
(`to_dict` / `from_dict`). A value is checked when its group is made, so the command line, the pages and jobs all
refuse the same bad input with the same sentence, before any model is loaded.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import re
import types
import typing
from dataclasses import dataclass, field
from typing import ClassVar

from analysis.errors import UserError, quoted


# No integer option is meaningful beyond int32, and none of the analysed ranks beyond this (memory).
INT_LIMIT = 2**31 - 1
MAX_RANK = 1024


def setting(default, help: str, *, flag: str | None = None, minimum=None, maximum=None, choices=None,
            above: float | None = None, label: str | None = None, empty: str | None = None, offered=None):
    """A field with its help text and the range its values must lie in (checked on construction; for a list, each
    of its values); `label` names it on a page where its help is too long for that; `empty` is the word (none,
    off) by which a list field may be given empty; `offered`, the values a page lists for a field whose accepted
    values are an open set (devices: cuda:N too)."""
    return field(default=default, metadata={"help": help, "flag": flag, "minimum": minimum, "maximum": maximum,
                                            "choices": choices, "above": above, "label": label, "empty": empty,
                                            "offered": offered})


class OpenChoices:
    """Choices that layers above this one extend: the given ones, then those its `source` returns once a layer has
    set one (the adapter starts signals bring: signals/registry.py sets ADAPTER_STARTS' source when imported), so a
    field whose values come from the signals is still checked when its group is made."""

    def __init__(self, *given: str):
        self.given = given
        self.source = None

    def __iter__(self):
        yield from self.given
        if self.source is not None:
            yield from self.source()

    def __bool__(self) -> bool:
        return True


# The starts of a retrain's adapter: peft's own, then those the signals bring (EVA's, GoRA's), by the signal's name.
ADAPTER_STARTS = OpenChoices("default")


def field_of(group: type, name: str) -> dataclasses.Field:
    return next(f for f in dataclasses.fields(group) if f.name == name)


def kind_of(group: type, name: str) -> type:
    """A field's value type: int, float, str, bool or tuple (None-able fields give their other type)."""
    return _kind(field_of(group, name), group)


def _fractions(text) -> tuple[float, float, float]:
    if isinstance(text, (list, tuple)):
        parts = tuple(float(p) for p in text)
    else:
        try:
            parts = tuple(float(p) for p in str(text).split(","))
        except ValueError:
            parts = ()
    if len(parts) != 3 or not all(math.isfinite(p) and p > 0 for p in parts) or abs(sum(parts) - 1) > 1e-6:
        raise UserError(f"--fractions expects three positive fractions that add up to 1, such as 0.8,0.1,0.1, "
                        f"not {quoted(text)}.")
    return parts


DEVICE = re.compile(r"auto|cpu|cuda(:(0|[1-9]\d{0,3}))?")


def check_device(text, label: str = "--device") -> str:
    """A device as typed (auto, cpu, cuda, cuda:N), refused where it is parsed so that torch never sees another
    spelling."""
    if not (isinstance(text, str) and DEVICE.fullmatch(text)):
        raise UserError(f"Unknown device {quoted(text)} for {label}; use auto, cpu, cuda or cuda:N.")
    return text


def _parts(text) -> tuple | None:
    """A list as typed (comma-separated text) or as a list or tuple, as a tuple of its raw values."""
    if text is None or isinstance(text, tuple):
        return text
    if isinstance(text, list):
        return tuple(text)
    return tuple(part.strip() for part in str(text).split(",") if part.strip())


EMPTY_WORDS = ("none", "off")   # what a list field that may be empty (`empty`) accepts for none at all


def flag_of(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


@functools.lru_cache(maxsize=None)
def _hints(owner: type) -> dict:
    return typing.get_type_hints(owner)   # evaluating string annotations costs ~1 ms; once per class


def _hint(f: dataclasses.Field, owner: type):
    kind = _hints(owner)[f.name]
    if isinstance(kind, types.UnionType):   # int | None and the like: the non-None part
        kind = next(k for k in typing.get_args(kind) if k is not type(None))
    return kind


def _kind(f: dataclasses.Field, owner: type):
    kind = _hint(f, owner)
    return typing.get_origin(kind) or kind


def _convert(f: dataclasses.Field, owner: type, value, label: str | None = None):
    """A raw value (command-line text, JSON) as the field's type, or one sentence saying why not."""
    kind = _kind(f, owner)
    label = label or flag_of(f)
    if f.name == "fractions":
        return _fractions(value)
    if f.name == "device" and value is not None:
        return check_device(value, label)
    if kind is tuple:
        parts = _parts(value)
        if parts is not None and f.metadata.get("empty") and len(parts) == 1 and str(parts[0]).lower() in EMPTY_WORDS:
            return ()
        element = typing.get_args(_hint(f, owner))[0]
        return None if parts is None else tuple(_scalar(element, part, label) for part in parts)
    return _scalar(kind, value, label)


def _scalar(kind: type, value, label: str):
    if value is None:
        return None
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).lower()
        if text not in ("true", "false", "1", "0", "yes", "no"):
            raise UserError(f"{label} expects true or false, not {quoted(value)}.")
        return text in ("true", "1", "yes")
    if kind is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise UserError(f"{label} expects an integer, not {quoted(value)}.")
        try:
            return int(value) if not isinstance(value, str) else int(value.strip())
        except (TypeError, ValueError):
            raise UserError(f"{label} expects an integer, not {quoted(value)}.") from None
    if kind is float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise UserError(f"{label} expects a number, not {quoted(value)}.") from None
        if not math.isfinite(number):
            raise UserError(f"{label} expects a finite number, not {quoted(value)}.")
        return number
    return str(value)


def _check(instance, label_of=flag_of) -> None:
    """Convert every field to its type and check its range; used by each group's __post_init__ and, with
    `label_of` naming options as signal.option, by every signal's options (SignalOptions)."""
    owner = type(instance)
    for f in dataclasses.fields(owner):
        label = label_of(f)
        value = _convert(f, owner, getattr(instance, f.name), label)
        object.__setattr__(instance, f.name, value)
        for item in value if isinstance(value, tuple) else [value]:   # a list's values each lie in the range
            _in_range(item, f.metadata, label)


def _in_range(value, meta, label: str) -> None:
    if value is None:
        return
    if meta.get("choices") and value not in meta["choices"]:
        choices = ", ".join(map(str, tuple(meta["choices"])))
        raise UserError(f"{label} must be one of {choices}, not {quoted(value)}.")
    if meta.get("minimum") is not None and value < meta["minimum"]:
        raise UserError(f"{label} must be at least {meta['minimum']}, not {value}.")
    if meta.get("maximum") is not None and value > meta["maximum"]:
        raise UserError(f"{label} must be at most {meta['maximum']}, not {value}.")
    if meta.get("above") is not None and value <= meta["above"]:
        raise UserError(f"{label} must be greater than {meta['above']}, not {value}.")
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > INT_LIMIT:
        raise UserError(f"{label} must lie within ±{INT_LIMIT:,}, not {value:,}.")   # beyond int32 arguments


class Group:
    """Base of every option group: its fields are converted to their types and checked against their ranges when it
    is made, then `check` applies the rules that span fields, so a bad value is refused wherever the group is made
    (the command line, a page, a job, a plan file) with the same sentence."""

    def __post_init__(self):
        _check(self)
        self.check()

    def check(self) -> None:
        """Rules across fields (a minimum below a maximum); none unless a group says so."""


class SignalOptions:
    """Base of every signal's options (its config dataclass): converted and checked when made, each option named
    `signal.option` the way `--set` spells it, then `check` for rules across options. The registry names the signal
    (`signal`) when it registers."""
    signal: ClassVar[str] = "signal"

    def __post_init__(self):
        _check(self, lambda f: f"{self.signal}.{f.name}")
        self.check()

    def check(self) -> None:
        """Rules across options (SoRA's xi below xi_max); none unless a signal says so."""


def keyed_options(config_type: type, options: dict) -> dict:
    """The options that can change a signal's numbers: all but those whose field says `"keyed": False` (how fast it
    runs, such as how many Shapley coalitions share a pass). Its cache key and the choice of a run's entry computed
    with default options look at these only, so such an option neither splits nor hides cached results."""
    speed_only = {f.name for f in dataclasses.fields(config_type) if f.metadata.get("keyed") is False}
    return {name: value for name, value in options.items() if name not in speed_only}


@dataclass(frozen=True)
class RunSettings(Group):
    """What an analysis runs on; every signal's cache key includes the parts that change numbers."""
    model: str = setting("minilm", "minilm (embedded encoder), smollm2 (embedded decoder), a local model directory "
                                   "or a hub name")
    data: str = setting("rotten_tomatoes", "rotten_tomatoes (embedded), a local .csv/.tsv/.jsonl/.json/.parquet "
                                           "file or a hub dataset name")
    text_column: str = setting("text", "text column of a local or hub dataset")
    label_column: str = setting("label", "label column (classification)")
    allow_many_classes: bool = setting(False, "accept a label column of numbers with a fraction or of mostly "
                                              "unique values (refused by default: usually an id or a regression "
                                              "target, not classes)")
    hub_split: str = setting("train", "which split of a hub dataset to load")
    task: str = setting("auto", "auto: classification for encoders, causal-lm for decoders",
                        choices=("auto", "classification", "causal-lm"))
    seed: int = setting(0, "split and head-initialisation seed", minimum=0, maximum=2**31 - 1)
    fractions: tuple[float, float, float] = setting((0.8, 0.1, 0.1), "train, validation and test fractions, "
                                                                     "comma-separated", above=0, maximum=1)
    val_size: int = setting(512, "validation examples used for importance", minimum=1)
    max_length: int = setting(128, "tokens per example (truncation)", minimum=2)
    batch_size: int = setting(32, "examples per forward pass of an analysis", minimum=1)
    device: str = setting("auto", "auto (CUDA when present), cpu, cuda, cuda:N", offered=("auto", "cpu", "cuda"))
    dtype: str = setting("auto", "auto (bfloat16 on GPU, float32 on CPU), float32, bfloat16 or float16",
                         choices=("auto", "float32", "bfloat16", "float16"))
    device_map: str = setting("none", "none (the whole model on --device) or auto (accelerate splits the model's "
                                      "layers across every visible GPU, then CPU memory: for a model larger than "
                                      "one GPU; one process only)", choices=("none", "auto"))


# Learning rates a comparison tries per method and budget (chosen on validation with the first seed).
DEFAULT_GRID = (1e-4, 3e-4, 1e-3, 3e-3)


@dataclass(frozen=True)
class Limits(Group):
    """What any plan may give a module (a signal's own plan rule may add limits of its own: its plan family's)."""
    min_rank: int = setting(0, "every allowed module gets at least this rank (0: modules may be left out)",
                            minimum=0)
    max_rank: int = setting(64, "no module gets more", minimum=1)
    module_types: tuple[str, ...] | None = setting(None, "comma-separated module types that may receive rank "
                                                         "(e.g. query,value or q_proj,v_proj; default: all)",
                                                   flag="--modules")

    def check(self) -> None:
        if self.min_rank > self.max_rank:
            raise UserError(f"--min-rank ({self.min_rank}) must not exceed --max-rank ({self.max_rank}).")


@dataclass(frozen=True)
class PlanOptions(Group):
    """How a plan sets alpha and dropout (not where the rank goes)."""
    alpha_ratio: float = setting(2.0, "lora_alpha = ratio x rank in every module", above=0)
    rslora: bool = setting(False, "rank-stabilised LoRA: one alpha, scaling alpha/sqrt(r)")
    dropout: float = setting(0.0, "lora_dropout", minimum=0.0, maximum=0.99)


@dataclass(frozen=True)
class TrainSettings(Group):
    """A retrain of one plan."""
    steps: int = setting(200, "optimizer steps on the train split", minimum=1)
    lr: float = setting(1e-3, "AdamW peak learning rate (linear warm-up and decay)", above=0)
    batch_size: int = setting(16, "training examples per step and process", flag="--train-batch-size", minimum=1)
    eval_batch_size: int = setting(64, "examples per evaluation batch", minimum=1)
    warmup_fraction: float = setting(0.1, "fraction of steps with a rising learning rate", minimum=0.0,
                                     maximum=1.0)
    weight_decay: float = setting(0.0, "AdamW weight decay", minimum=0.0)
    test_size: int = setting(0, "test examples to evaluate on (0: the whole test split)", minimum=0)
    eval_split: str = setting("test", "the split the metrics come from: test, or validation (what learning-rate "
                                      "tuning selects on; never test)", choices=("test", "validation"))
    max_grad_norm: float = setting(0.0, "clip each run's gradient to this norm before every step (0: no clipping)",
                                   minimum=0.0)
    checkpoint_every: int = setting(50, "steps between resumable checkpoints", minimum=1)
    seed: int = setting(0, "training seed: the adapter's and the head's start and the data order (--seed is the "
                           "run's split seed)", flag="--train-seed", minimum=0, maximum=2**31 - 1)
    init: str = setting("default", "the adapter's start at the plan's ranks: default (peft's, B = 0) or the start a "
                                   "signal brings, by its name ('python -m analysis signals' lists them)",
                        choices=ADAPTER_STARTS)


# The module families a comparison's baselines adapt (uniform LoRA on only these; planning/baselines.py).
MODULE_FAMILIES = {"attention": "the attention projections", "mlp": "the MLP", "all": "every linear"}


@dataclass(frozen=True)
class CompareSettings(Group):
    """A comparison beyond its runs' own training: the seeds, the budgets, the learning-rate grid, the module
    baselines, and how many adapters train at once (speed only, never results: no key holds it)."""
    seeds: tuple[int, ...] = setting((0, 1, 2), "comma-separated training seeds, the same for every method (each "
                                                "run's --train-seed)", minimum=0, maximum=2**31 - 1)
    budgets: tuple[str, ...] | None = setting(None, "comma-separated budgets for a budget curve, such as r1,r2,r4,r8 "
                                                    "(default: --budget)")
    tune_lr: tuple[float, ...] = setting(DEFAULT_GRID, "learning rates tried per method and budget with the first "
                                                       "seed, chosen on validation; off: every run trains at --lr",
                                         above=0, empty="off", label="Tune learning rate over")
    baselines: tuple[str, ...] = setting(tuple(MODULE_FAMILIES), "uniform LoRA on each of these module families at "
                                         "the same budget, as rows beside uniform on the allowed modules: attention "
                                         "(the attention projections only), mlp (the MLP only), all (every linear); "
                                         "none for no such row", choices=tuple(MODULE_FAMILIES), empty="none",
                                         label="Module baselines")
    adapters_at_once: int | None = setting(None, "retrains trained together on one copy of the model (default: as "
                                                 "many as fit in the device's memory, measured; 1: one at a time)",
                                           minimum=1, maximum=4096, label="Adapters trained at once")

    def check(self) -> None:
        if not self.seeds:
            raise UserError("--seeds names no seed; give at least one, such as 0,1,2.")
        if len(set(self.seeds)) != len(self.seeds):
            raise UserError(f"--seeds repeats a seed: {','.join(map(str, self.seeds))}.")
        if self.budgets is not None and not self.budgets:
            raise UserError("--budgets names no budget; give comma-separated budgets such as r1,r2,r4,r8.")
        # the same list however it is written: the rates sorted (the comparison's key holds them), no repeats
        object.__setattr__(self, "tune_lr", tuple(sorted(set(self.tune_lr))))
        object.__setattr__(self, "baselines", tuple(dict.fromkeys(self.baselines)))
        if self.budgets is not None:
            object.__setattr__(self, "budgets", tuple(dict.fromkeys(self.budgets)))


# --- derived forms: flags, argv, dicts -------------------------------------------------------------------

def add_flags(parser, group: type, prefix: str = "", exclude: tuple[str, ...] = ()) -> None:
    """One flag per field of `group` (its dest is prefix + field name); values are checked on construction."""
    defaults = group()
    for f in dataclasses.fields(group):
        if f.name in exclude:
            continue
        default = getattr(defaults, f.name)
        text = f.metadata["help"]
        if _kind(f, group) is bool:
            parser.add_argument(flag_of(f), dest=prefix + f.name, action="store_true", help=text)
            continue
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        parser.add_argument(flag_of(f), dest=prefix + f.name, default=None, metavar=f.name.upper(),
                            help=f"{text} (default: {shown})" if shown is not None else text)


def from_args(group: type, args: argparse.Namespace, prefix: str = "", **fixed):
    """Build `group` from parsed flags (flags not given keep the defaults)."""
    given = {f.name: getattr(args, prefix + f.name) for f in dataclasses.fields(group)
             if getattr(args, prefix + f.name, None) is not None}
    return group(**{**given, **fixed})


def to_dict(value) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(value).items()}


def from_dict(group: type, values: dict | None, **fixed):
    """Rebuild `group` from to_dict's output (a plan's or an entry's settings); unknown keys are ignored, so an
    older file still reads."""
    known = {f.name for f in dataclasses.fields(group)}
    return group(**{**{k: v for k, v in (values or {}).items() if k in known}, **fixed})


def to_argv(value, exclude: tuple[str, ...] = ()) -> list[str]:
    """Flags that rebuild `value` through add_flags / from_args (what a dashboard job is started with)."""
    argv = []
    for f in dataclasses.fields(value):
        item = getattr(value, f.name)
        if f.name in exclude or item is None:
            continue
        if isinstance(item, bool):
            argv += [flag_of(f)] if item else []
        elif isinstance(item, tuple):
            text = ",".join(repr(v) if isinstance(v, float) else str(v) for v in item)
            argv += [flag_of(f), text or f.metadata.get("empty") or ""]
        else:
            argv += [flag_of(f), repr(item) if isinstance(item, float) else str(item)]
    return argv
