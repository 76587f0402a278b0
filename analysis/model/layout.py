"""A model's adaptable modules and module names, read from its config alone (no weights).

Allocation needs each module's shape (a rank costs d_in + d_out parameters) and every module name
(to check that a plan's keys match exactly one module, since peft ignores a typo silently). The
model is built on PyTorch's meta device, which allocates nothing, so this takes well under a
second even for an 8B model and is what lets the budget preview stay instant.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from analysis.model.capture import AdaptableModule, adaptable_modules, find_blocks


@dataclass(frozen=True)
class Layout:
    modules: tuple[AdaptableModule, ...]
    names: tuple[str, ...]          # every module name, as peft matches target and pattern keys against
    task_type: str | None = None    # peft's TaskType of the model class: SEQ_CLS, CAUSAL_LM (None: a bare model)
    head_modules: tuple[str, ...] = ()   # the task head (trained with the adapter): peft's modules_to_save
    base_model_prefix: str = ""     # the backbone's attribute ('bert', 'model'): module paths start with it
    block_prefix: str = ""          # the stack of blocks ('bert.encoder.layer', 'model.layers', 'transformer.h')

    @property
    def num_layers(self) -> int:
        return max(m.layer for m in self.modules) + 1

    @property
    def module_types(self) -> list[str]:
        """Short module names in first-seen order (query, key, value, ... or q_proj, ...)."""
        return list(dict.fromkeys(m.name for m in self.modules))

    @property
    def costs(self) -> list[int]:
        """Parameters one rank costs in each module: d_in + d_out."""
        return [m.d_in + m.d_out for m in self.modules]

    def family(self, module: AdaptableModule) -> str:
        """'attention' for a linear inside the block's attention (BERT's query, key, value and
        attention.output.dense; Llama's q/k/v/o_proj under self_attn; GPT-2's c_attn and attn.c_proj), 'mlp'
        for every other linear of the block (BERT's intermediate.dense and output.dense, Llama's
        gate/up/down_proj, GPT-2's c_fc and mlp.c_proj): transformers names the attention submodule of every
        architecture with 'attn' or 'attention' in it, and the feed-forward part never."""
        parts = module.path.lower().split(".")
        if self.block_prefix:   # only the path within the block: the stack's own name says nothing
            parts = parts[self.block_prefix.count(".") + 2:]
        return "attention" if any("attn" in part or "attention" in part for part in parts) else "mlp"


def lora_parameter_count(modules, ranks) -> int:
    """Exact trainable LoRA parameters: r * (d_in + d_out) per module."""
    return int(sum(int(r) * (m.d_in + m.d_out) for m, r in zip(modules, ranks)))


def layout_of(model: torch.nn.Module) -> Layout:
    kind = type(model).__name__
    task_type = ("SEQ_CLS" if kind.endswith("ForSequenceClassification") else
                 "CAUSAL_LM" if kind.endswith("ForCausalLM") else None)
    prefix = getattr(model, "base_model_prefix", "") or ""
    # Only a classification head is trained beside the adapter (a causal LM keeps its output layer frozen).
    head = tuple(name for name, child in model.named_children()
                 if name != prefix and any(True for _ in child.parameters())) if task_type == "SEQ_CLS" else ()
    return Layout(tuple(adaptable_modules(model)), tuple(name for name, _ in model.named_modules()), task_type, head,
                  prefix if hasattr(model, prefix) else "", find_blocks(model)[0])


def model_layout(path, task: str, num_labels: int | None = None) -> Layout:
    """The layout of the model whose config is in `path`, as loaded for `task`."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from analysis.model.sources.models import read_config
    config = read_config(path)
    if task == "classification":
        config.num_labels = num_labels or 2
        factory = AutoModelForSequenceClassification
    else:
        factory = AutoModelForCausalLM
    with torch.device("meta"):
        model = factory.from_config(config)
    return layout_of(model)
