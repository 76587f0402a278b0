"""Rank plans as JSON: peft.LoraConfig's keyword arguments plus what the plan is and costs.

In memory a plan is one flat dict (LoraConfig's keyword arguments beside `signal`, `budget`,
`trainable_params`, ...). On disk it is two parts (`plan_file`): "peft", exactly what peft's own
adapter_config.json holds (LoraConfig.to_dict, as save_pretrained writes it), so peft loads it with no
warning about unknown keys (written to a folder as adapter_config.json, LoraConfig.from_pretrained reads
it); and "analysis", ours. `read_plan` reads these files and the flat ones written before.

A plan names every adapted module by its full path, so each key matches exactly one module;
`validate` checks that with peft's own matching rules against the model's module names, because
peft silently ignores a pattern that matches nothing. alpha follows the rank (alpha / r constant),
or with rsLoRA one alpha for all (scaling alpha / sqrt(r)). After `get_peft_model`,
`check_peft_model` compares every module's actual rank and the trainable LoRA parameter count
with the plan.
"""
from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path

import numpy as np

from analysis.errors import UserError
from analysis.model.layout import Layout, lora_parameter_count
from analysis.settings import PlanOptions

LORA_KEYS = ("r", "lora_alpha", "target_modules", "rank_pattern", "alpha_pattern", "use_rslora", "lora_dropout",
             "bias")
# Also LoraConfig's, for applying a plan by hand with peft: the task (so get_peft_model builds the task's PeftModel)
# and the head to train with the adapter. `retrain` trains the head itself, so lora_config leaves these out (and the
# retrain cache keys stay as they were).
TASK_KEYS = ("task_type", "modules_to_save")


def row_name(method: str, variant: str = "") -> str:
    """What a table row, a plan and a page call a method: its name, and the options it used that depart from its
    paper's code ("alpha [WeightWatcher's fit, not AlphaLoRA's]")."""
    return f"{method} [{variant}]" if variant else method


def plan_name(plan: dict) -> str:
    return row_name(plan.get("signal", "plan"), plan.get("variant", ""))


def build_plan(layout: Layout, ranks: np.ndarray, signal: str, budget: int, options: PlanOptions = PlanOptions(),
               warnings: list[str] | None = None, settings: dict | None = None, variant: str = "") -> dict:
    """The plan for per-module `ranks` (0 = module left out), in layout order; `variant` names the signal's
    non-paper options the ranks come from ("" for none)."""
    chosen = {m.path: int(r) for m, r in zip(layout.modules, ranks) if r > 0}
    if not chosen:
        raise UserError("The plan gives no module any rank.")
    r = Counter(chosen.values()).most_common(1)[0][0]  # the commonest rank keeps the patterns short
    alpha_ratio, rslora = options.alpha_ratio, options.rslora
    alpha = alpha_ratio * r
    plan = {
        "signal": signal, "variant": variant, "budget": int(budget),
        "trainable_params": lora_parameter_count(layout.modules, ranks),
        "r": r, "lora_alpha": alpha, "target_modules": list(chosen),
        "rank_pattern": {path: rank for path, rank in chosen.items() if rank != r},
        "alpha_pattern": {} if rslora else {path: alpha_ratio * rank for path, rank in chosen.items() if rank != r},
        "use_rslora": rslora, "lora_dropout": options.dropout, "bias": "none",
        "warnings": list(warnings or []), "settings": settings or {},
    }
    if layout.task_type:
        plan["task_type"] = layout.task_type
        plan["modules_to_save"] = list(layout.head_modules) or None
    if layout.base_model_prefix:
        plan["base_model_prefix"] = layout.base_model_prefix
    validate(plan, layout)
    return plan


def lora_config(plan: dict, with_task: bool = False):
    """The peft.LoraConfig the plan describes; `with_task` adds task_type and modules_to_save (what applying the
    plan by hand to the task model class needs, so the classification head trains too)."""
    from peft import LoraConfig
    keys = LORA_KEYS + (TASK_KEYS if with_task else ())
    return LoraConfig(**{key: plan[key] for key in keys if plan.get(key) is not None})


def for_base_model(plan: dict) -> dict:
    """The plan for the bare backbone (`AutoModel`), whose module paths lack the task model's prefix ('bert.',
    'model.'): every key of target_modules, rank_pattern and alpha_pattern without it, and no task keys."""
    prefix = plan.get("base_model_prefix", "")
    def strip(path: str) -> str:
        return path[len(prefix) + 1:] if prefix and path.startswith(prefix + ".") else path
    bare = {k: v for k, v in plan.items() if k not in TASK_KEYS + ("base_model_prefix",)}
    bare["target_modules"] = [strip(p) for p in plan["target_modules"]]
    for pattern in ("rank_pattern", "alpha_pattern"):
        bare[pattern] = {strip(k): v for k, v in plan.get(pattern, {}).items()}
    return bare


def _pattern_matches(key: str, names) -> list[str]:
    """Names that peft's pattern rule matches with `key`. A name can only match if it ends with the key's
    last dotted part when that part is literal text, so only those names are tried (200x fewer on 8B)."""
    from peft.utils.other import get_pattern_key
    tail = key.rsplit(".", 1)[-1]
    candidates = [name for name in names if name.endswith(tail)] if re.escape(tail) == tail else names
    return [name for name in candidates if get_pattern_key([key], name) == key]


def validate(plan: dict, layout: Layout) -> None:
    """Every key names exactly one module, alpha follows the rank, and the stated count is the real one."""
    missing = [key for key in ("r", "lora_alpha", "target_modules", "trainable_params") if key not in plan]
    if missing:
        raise UserError(f"The plan lacks {', '.join(missing)}; it is not a rank plan from this tool.")
    names = set(layout.names)
    for key in plan["target_modules"]:
        if key not in names:
            raise UserError(f"The plan's target module '{key}' is not a module of this model.")
    for pattern in ("rank_pattern", "alpha_pattern"):
        for key in plan.get(pattern, {}):
            found = _pattern_matches(key, layout.names)
            if len(found) != 1:
                raise UserError(f"The {pattern} key '{key}' matches {len(found)} modules of this model; it must "
                                "match exactly one.")
    by_path = {m.path: m for m in layout.modules}
    ranks = plan_ranks(plan)
    unknown = [path for path in ranks if path not in by_path]
    if unknown:
        raise UserError(f"The plan adapts '{unknown[0]}', which is not a linear module in a block of this model.")
    if not plan.get("use_rslora"):
        ratio = plan["lora_alpha"] / plan["r"]
        for path, rank in ranks.items():
            alpha = plan.get("alpha_pattern", {}).get(path, plan["lora_alpha"])
            if not np.isclose(alpha / rank, ratio):
                raise UserError(f"Module '{path}' has alpha {alpha} at rank {rank}, so alpha / r differs from the "
                                f"plan's {ratio:g}; alpha must follow the rank unless rsLoRA is on.")
    count = lora_parameter_count([by_path[path] for path in ranks], ranks.values())
    if count != plan["trainable_params"]:
        raise UserError(f"The plan says {plan['trainable_params']:,} trainable parameters but its ranks give "
                        f"{count:,}.")


def plan_ranks(plan: dict) -> dict[str, int]:
    """Rank of every adapted module, by full path."""
    pattern = plan.get("rank_pattern", {})
    return {path: int(pattern.get(path, plan["r"])) for path in plan["target_modules"]}


def check_peft_model(plan: dict, peft_model) -> None:
    """After get_peft_model: each module's real rank and the trainable LoRA parameter count match the plan."""
    from peft.tuners.lora import LoraLayer
    prefix = "base_model.model."
    actual = {name[len(prefix):] if name.startswith(prefix) else name: module.r["default"]
              for name, module in peft_model.named_modules() if isinstance(module, LoraLayer)}
    expected = plan_ranks(plan)
    if actual != expected:
        wrong = sorted(set(actual.items()) ^ set(expected.items()))[:3]
        raise UserError(f"peft built different ranks than the plan asks for (first differences: {wrong}).")
    count = sum(p.numel() for name, p in peft_model.named_parameters() if "lora_" in name and p.requires_grad)
    if count != plan["trainable_params"]:
        raise UserError(f"peft created {count:,} trainable LoRA parameters; the plan says "
                        f"{plan['trainable_params']:,}.")


PEFT_PART, OUR_PART = "peft", "analysis"


def peft_part(plan: dict) -> dict:
    """The plan as peft's adapter_config.json holds a LoRA config: every LoraConfig field (LoraConfig.to_dict, as
    save_pretrained writes it, task_type and modules_to_save included) with the plan's own values for its keys
    (alpha_pattern always, {} where alpha needs no pattern) and the module lists in the plan's order (LoraConfig
    keeps target_modules as a set)."""
    fields = lora_config(plan, with_task=True).to_dict()
    fields.update({key: plan.get(key, fields.get(key)) for key in LORA_KEYS + TASK_KEYS})
    return json.loads(json.dumps(fields, default=sorted))   # enums as their values, any set as a sorted list


def plan_file(plan: dict) -> dict:
    """What a plan file holds: the peft part, and ours beside it."""
    return {PEFT_PART: peft_part(plan),
            OUR_PART: {key: value for key, value in plan.items() if key not in LORA_KEYS + TASK_KEYS}}


def flat_plan(data: dict, path) -> dict:
    """The in-memory plan of a plan file's contents: its two parts joined, or a flat file (as written before the
    parts) as it is."""
    if PEFT_PART not in data:
        return data
    peft, ours = data[PEFT_PART], data.get(OUR_PART, {})
    if not isinstance(peft, dict) or not isinstance(ours, dict):
        raise UserError(f"The plan file '{path}' has a '{PEFT_PART}' or '{OUR_PART}' part that is not a JSON object.")
    if peft.get("peft_type", "LORA") != "LORA":
        raise UserError(f"The plan file '{path}' holds a {peft.get('peft_type')} config; a rank plan is a LoRA "
                        "config (peft_type LORA).")
    return {**ours, **{key: peft[key] for key in LORA_KEYS + TASK_KEYS if key in peft}}


def write_plan(plan: dict, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(plan_file(plan), indent=1))
    tmp.replace(path)


def read_plan(path: Path) -> dict:
    if Path(path).is_dir():
        raise UserError(f"'{path}' is a folder, not a plan file.")
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"The plan file '{path}' does not exist.") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"The plan file '{path}' is not valid JSON ({exc}).") from None
    if not isinstance(data, dict):
        raise UserError(f"The plan file '{path}' does not hold a JSON object.")
    plan = flat_plan(data, path)
    check_values(plan, path)
    return plan


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


# peft's LoraConfig.bias values (others raise NotImplementedError only when the model is built)
BIASES = ("none", "all", "lora_only")


def check_values(plan: dict, path) -> None:
    """What a hand-edited plan must keep, checked before any model is loaded: the keys a rank plan has, of the
    right types, and the ranges `plan` itself refuses on its command line (ranks positive integers, alpha
    positive, dropout in [0, 0.99], bias one of peft's)."""
    missing = [key for key in ("r", "lora_alpha", "target_modules", "trainable_params") if key not in plan]
    if missing:
        raise UserError(f"The plan file '{path}' lacks {', '.join(missing)}; it is not a rank plan from this tool.")
    modules = plan["target_modules"]
    if not (isinstance(modules, list) and modules and all(isinstance(m, str) and m for m in modules)):
        raise UserError(f"The plan file '{path}' has target_modules that are not a non-empty list of module names.")
    for key in ("rank_pattern", "alpha_pattern"):
        if plan.get(key) is not None and not isinstance(plan[key], dict):
            raise UserError(f"The plan file '{path}' has a {key} that is not an object of module: value.")
    count = plan["trainable_params"]
    if not _positive_int(count):
        raise UserError(f"The plan file '{path}' has trainable_params {count!r}; it must be a positive integer.")
    if plan.get("bias") not in (None, *BIASES):
        raise UserError(f"The plan file '{path}' has bias {plan.get('bias')!r}; it must be one of "
                        f"{', '.join(BIASES)}.")
    if not isinstance(plan.get("use_rslora") or False, bool):
        raise UserError(f"The plan file '{path}' has use_rslora {plan.get('use_rslora')!r}; it must be true or "
                        "false.")
    if not isinstance(plan.get("settings") or {}, dict):
        raise UserError(f"The plan file '{path}' has settings that are not a JSON object.")
    ranks = [plan.get("r"), *(plan.get("rank_pattern") or {}).values()]
    if any(r is not None and not _positive_int(r) for r in ranks):
        raise UserError(f"The plan file '{path}' has a rank that is not a positive integer; ranks must be 1 or more.")
    alphas = [plan.get("lora_alpha"), *(plan.get("alpha_pattern") or {}).values()]
    if any(a is not None and not (_number(a) and a > 0) for a in alphas):
        raise UserError(f"The plan file '{path}' has a lora_alpha that is not a positive number.")
    dropout = plan.get("lora_dropout")
    if dropout is not None and not (_number(dropout) and 0 <= dropout <= 0.99):
        raise UserError(f"The plan file '{path}' has lora_dropout {dropout!r}; it must be between 0 and 0.99.")
