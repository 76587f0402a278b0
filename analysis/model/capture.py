"""What a signal sees of a model: its blocks, their adaptable linear modules, and pooled hidden states.

Hidden states are taken with hooks on the blocks, not with `output_hidden_states`: state 0 is the
input of block 0 (the embedding output) and state i+1 is the output of block i, for every
architecture, and each is pooled on the device as soon as it exists, so the full token tensors
of all layers are never held at once. Where the model applies a final norm after its last block
(Llama's `norm`, GPT-2's `ln_f`, ...), the last state is taken after that norm: that is what
transformers' `hidden_states[-1]` holds, and what the CKA and GeLoRA papers' code measure.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from analysis.errors import UserError

POOLINGS = ("auto", "cls", "last", "mean", "tokens")


@dataclass(frozen=True)
class AdaptableModule:
    layer: int        # block index, 0-based
    name: str         # shortest suffix of the path inside the block that is unique within it
    path: str         # full module name in the model, as peft and named_modules() spell it
    d_in: int
    d_out: int


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The transformer's stack of blocks: the longest ModuleList of identical module types."""
    best = None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            if len({type(m) for m in module}) == 1 and (best is None or len(module) > len(best[1])):
                best = (name, module)
    if best is None:
        raise UserError(f"Could not find the stack of transformer blocks in {type(model).__name__}.")
    return best


# Names transformers gives the norm applied after the last block (decoders; BERT-style encoders have none).
FINAL_NORM_NAMES = ("norm", "ln_f", "final_layernorm", "final_layer_norm", "norm_f", "ln_final")


def find_final_norm(model: nn.Module) -> nn.Module | None:
    """The norm the model applies to the last block's output, a sibling of the block stack, if any."""
    prefix, _ = find_blocks(model)
    parent = model.get_submodule(prefix.rpartition(".")[0]) if "." in prefix else model
    for name in FINAL_NORM_NAMES:
        module = getattr(parent, name, None)
        if isinstance(module, nn.Module) and not isinstance(module, nn.ModuleList):
            return module
    return None


def _linear_shape(module: nn.Module) -> tuple[int, int] | None:
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if type(module).__name__ == "Conv1D":  # GPT-2 stores its linears transposed
        d_in, d_out = module.weight.shape
        return d_in, d_out
    return None


def _unique_suffixes(paths: list[str]) -> dict[str, str]:
    """Shortest dotted suffix naming each path uniquely (query, attention.output.dense, ...)."""
    names = {}
    for path in paths:
        parts = path.split(".")
        for k in range(1, len(parts) + 1):
            suffix = ".".join(parts[-k:])
            clashes = [p for p in paths if p != path and (p == suffix or p.endswith("." + suffix))]
            if not clashes or k == len(parts):
                names[path] = suffix
                break
    return names


def adaptable_modules(model: nn.Module) -> list[AdaptableModule]:
    """Every linear layer inside the blocks (q/k/v/o and MLP projections), with its shape."""
    prefix, blocks = find_blocks(model)
    found = []
    for layer, block in enumerate(blocks):
        inner = [(name, _linear_shape(m)) for name, m in block.named_modules() if _linear_shape(m)]
        short = _unique_suffixes([name for name, _ in inner])
        for name, (d_in, d_out) in inner:
            found.append(AdaptableModule(layer, short[name], f"{prefix}.{layer}.{name}", d_in, d_out))
    if not found:
        raise UserError(f"{type(model).__name__} has no linear modules inside its blocks to adapt.")
    return found


def resolve_pooling(pooling: str, is_decoder: bool) -> str:
    if pooling not in POOLINGS:
        raise UserError(f"Unknown pooling '{pooling}'; choose one of {', '.join(POOLINGS)}.")
    if pooling == "auto":
        return "last" if is_decoder else "cls"
    return pooling


def to_device(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """The tensor on the device without making the host wait for the GPU: a copy from pageable memory would
    synchronise the stream, so a CUDA copy goes from pinned memory, asynchronously."""
    if torch.device(device).type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def tokenize_batches(tokenizer, texts: list[str], batch_size: int, max_length: int, device: torch.device,
                     labels: list[int] | None = None, fixed_length: bool = False) -> Iterator[dict[str, torch.Tensor]]:
    """Right-padded batches on the device, in order; `labels` rides along when given. fixed_length: every batch
    padded to max_length (one shape for all, as a CUDA graph needs), else to its longest text."""
    if batch_size <= 0 or max_length <= 0:
        raise UserError("Batch size and maximum length must be positive.")
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(list(texts[start:start + batch_size]), padding="max_length" if fixed_length else True,
                          truncation=True, max_length=max_length, return_tensors="pt")
        batch = {k: to_device(v, device) for k, v in batch.items()
                 if k in ("input_ids", "attention_mask", "token_type_ids")}
        if labels is not None:
            batch["labels"] = to_device(torch.as_tensor(labels[start:start + batch_size]), device)
        yield batch


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str, generator: torch.Generator | None = None,
         tokens_per_example: int = 8) -> torch.Tensor:
    """(B, T, D) token states -> (B, D) per example, or (n, D) sampled real tokens for 'tokens'."""
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "last":
        last = mask.sum(dim=1) - 1
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    if pooling == "mean":
        weights = mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1)
    if pooling == "tokens":
        # Random scores on real tokens, -1 on padding; the top-k per row are a uniform sample.
        scores = torch.rand(mask.shape, generator=generator, device="cpu").to(mask.device)
        scores = scores.masked_fill(mask == 0, -1.0)
        k = min(tokens_per_example, mask.shape[1])
        chosen = scores.topk(k, dim=1).indices
        keep = torch.gather(mask, 1, chosen).bool()
        picked = torch.gather(hidden, 1, chosen.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
        return picked[keep]
    raise UserError(f"Unknown pooling '{pooling}'.")


def _backbone(model: nn.Module) -> nn.Module:
    """The model without its task head: hidden states never need the vocabulary projection."""
    return getattr(model, "base_model", model)


@torch.no_grad()
def pooled_hidden_states(model: nn.Module, batches, poolings: list[str], tokens_per_example: int = 8,
                         seed: int = 0) -> Iterator[dict[str, list[torch.Tensor]]]:
    """For each batch, {pooling: L+1 pooled states} on the inputs' device (embeddings, then each block;
    the last one after the final norm where the model has one, as transformers' hidden_states[-1]).

    Several poolings come out of one forward pass, so signals that pool differently share it.
    """
    _, blocks = find_blocks(model)
    final_norm = find_final_norm(model)
    captured: list[dict[str, torch.Tensor] | None] = [None] * (len(blocks) + 1)
    mask_holder: dict[str, torch.Tensor] = {}
    generator = torch.Generator().manual_seed(seed)

    def store(index: int, hidden: torch.Tensor) -> None:
        # A model split across devices (--device-map) has each block's states on that block's device; every
        # pooled state comes back to the inputs' device (no copies when the model sits on one device).
        mask = mask_holder["mask"]
        captured[index] = {p: pool(hidden, mask.to(hidden.device), p, generator, tokens_per_example).to(mask.device)
                           for p in poolings}

    def before_first(module, args, kwargs):
        store(0, args[0] if args else kwargs["hidden_states"])

    def after(index):
        def hook(module, args, kwargs, output):
            store(index + 1, output[0] if isinstance(output, tuple) else output)
        return hook

    handles = [blocks[0].register_forward_pre_hook(before_first, with_kwargs=True)]
    handles += [block.register_forward_hook(after(i), with_kwargs=True) for i, block in enumerate(blocks)]
    if final_norm is not None:  # runs after the last block's hook and overwrites its state
        handles.append(final_norm.register_forward_hook(after(len(blocks) - 1), with_kwargs=True))
    backbone = _backbone(model)
    try:
        for batch in batches:
            mask_holder["mask"] = batch["attention_mask"]
            backbone(**{k: v for k, v in batch.items() if k != "labels"})
            if any(state is None for state in captured):
                raise RuntimeError("a block hook did not fire; the block stack was not found correctly")
            yield {p: [state[p] for state in captured] for p in poolings}
            captured[:] = [None] * len(captured)
    finally:
        for handle in handles:
            handle.remove()
