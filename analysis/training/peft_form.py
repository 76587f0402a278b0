"""An adapter's values in peft's form, without building a peft model for each of many runs: the start peft's
default initialisation gives a run, and the files peft saves for it.

Wrapping a model in peft and unwrapping it costs about a second on a 30-layer decoder, which a comparison of
hundreds of runs would pay twice per run. peft's default start is a function of the seed alone: for every
adapted module in the model's module order, peft builds lora_A = nn.Linear(d_in, r) and lora_B =
nn.Linear(r, d_out) (each draws Kaiming-uniform weights as it is built), then draws A again with
kaiming_uniform_(a=sqrt(5)) and zeroes B, and moves them to the base layer's dtype (float32 again for
training: a bfloat16 model's A is the float32 draw rounded to bfloat16). `default_start` makes those draws in that order. Because this
re-derives peft's internals, the group trainer checks it against peft itself on its first run and uses peft
for every run if they differ (a later peft may draw otherwise).

`adapter_files` writes what `PeftModel.from_pretrained` reads: adapter_config.json (peft's own LoraConfig
serialisation) and adapter_model.safetensors with peft's key names.
"""
from __future__ import annotations

import math
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from analysis.planning.plan_json import lora_config, plan_ranks
from analysis.contract.result import files_under

PREFIX = "base_model.model."


def scaling(plan: dict, path: str) -> float:
    """peft's scaling of a module: alpha / r, or alpha / sqrt(r) with rsLoRA (alpha and r from the patterns)."""
    r = plan_ranks(plan)[path]
    alpha = plan.get("alpha_pattern", {}).get(path, plan["lora_alpha"])
    return alpha / math.sqrt(r) if plan.get("use_rslora") else alpha / r


def default_start(model: torch.nn.Module, plan: dict, seed: int) -> dict[str, tuple]:
    """{path: (A, B, scaling, dropout)} as get_peft_model(model, lora_config(plan)) starts it after
    torch.manual_seed(seed)."""
    from analysis.training.adapter_stack import in_out
    ranks = plan_ranks(plan)
    torch.manual_seed(seed)
    start = {}
    for path, module in model.named_modules():
        if path not in ranks:
            continue
        r, (d_in, d_out) = ranks[path], in_out(module)
        torch.nn.init.kaiming_uniform_(torch.empty(r, d_in), a=math.sqrt(5))    # lora_A as nn.Linear builds it
        torch.nn.init.kaiming_uniform_(torch.empty(d_out, r), a=math.sqrt(5))   # lora_B as nn.Linear builds it
        a = torch.empty(r, d_in)
        torch.nn.init.kaiming_uniform_(a, a=math.sqrt(5))                       # peft's reset of A
        a = a.to(module.weight.dtype).float()   # peft moves A to the base layer's dtype, then back to float32
        start[path] = (a, torch.zeros(d_out, r), scaling(plan, path), float(plan.get("lora_dropout") or 0.0))
    return start


def adapter_files(plan: dict, lora: dict[str, tuple[torch.Tensor, torch.Tensor]], base_name: str | None
                  ) -> dict[str, bytes]:
    """The adapter's files (under adapter/) as PeftModel.from_pretrained loads them."""
    config = lora_config(plan)
    config.base_model_name_or_path = base_name
    config.inference_mode = True
    state = {}
    for path, (a, b) in lora.items():
        state[f"{PREFIX}{path}.lora_A.weight"] = a.contiguous()
        state[f"{PREFIX}{path}.lora_B.weight"] = b.contiguous()
    with tempfile.TemporaryDirectory() as scratch:
        config.save_pretrained(scratch)
        save_file(state, str(Path(scratch) / "adapter_model.safetensors"), metadata={"format": "pt"})
        return files_under(Path(scratch), "adapter")
