"""peft's EVA, run as peft runs it, with its per-layer PCA kept for us to read.

`get_eva_state_dict` returns only each layer's kept components. The explained-variance ratios it
ranked, and which layers it found to share an input (q/k/v read the same hidden state, so peft fits
one PCA for all of them), live in its hook objects. `run_eva` calls peft's function unchanged while
peft's two hook classes are replaced by subclasses that only remember their instances, and then reads
those instances: the ratios are exactly the numbers peft pooled, not a recomputation.

One change inside peft's flow: its HashHook finds layers with equal inputs by hashing
`tuple(x.tolist())`, a Python float per activation (minutes for one batch of a 1B model); ours
hashes the tensor's bytes instead. Equal inputs still hash equal and different ones apart, so the
grouping, and everything after it, is unchanged.
"""
from __future__ import annotations

import hashlib
import inspect
import warnings
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from analysis.errors import UserError

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass
class EvaRun:
    state_dict: dict[str, torch.Tensor]          # peft's result: module path -> kept components (rank x d_in)
    ratios: dict[str, torch.Tensor]               # module path -> explained-variance ratios peft ranked
    components: dict[str, torch.Tensor]           # module path -> all fitted components (n x d_in)
    shares_input_with: dict[str, str]             # module path -> module whose PCA it uses (itself if none)
    forwards: int


@contextmanager
def _recording():
    """Swap peft's SVDHook / HashHook for subclasses that record every instance, for one call."""
    from peft.tuners.lora import eva

    made: dict[str, list] = {"svd": [], "hash": []}

    class SVDHook(eva.SVDHook):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made["svd"].append(self)

    class HashHook(eva.HashHook):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made["hash"].append(self)

        @staticmethod
        def hash_fn(tensor):
            data = tensor.detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
            return str(tensor.dtype), tuple(tensor.shape), hashlib.blake2b(data, digest_size=16).hexdigest()

    original = eva.SVDHook, eva.HashHook
    eva.SVDHook, eva.HashHook = SVDHook, HashHook
    try:
        yield made
    finally:
        eva.SVDHook, eva.HashHook = original


def eva_lora_config(paths: list[str], r: int, rho: float, tau: float, rank_pattern: dict[str, int] | None = None):
    from peft import EvaConfig, LoraConfig
    return LoraConfig(r=r, target_modules=list(paths), init_lora_weights="eva", rank_pattern=rank_pattern or {},
                      eva_config=EvaConfig(rho=rho, tau=tau))


def model_inputs(batch: dict) -> dict:
    """What EVA feeds the model: tokens and mask only. A classification batch's `labels` (one per example)
    would break peft's label mask, which expects per-token labels; padding is masked by attention_mask."""
    return {k: v for k, v in batch.items() if k in MODEL_INPUTS}


def run_eva(model, batches: list[dict], config, max_passes: int = 50, gather: bool = False) -> EvaRun:
    """peft's get_eva_state_dict on `batches` (repeated until its PCA converges, as peft does), plus the
    ratios and input groups it used. Gives up after `max_passes` passes over the batches. `gather`: the
    processes of a data-parallel launch hold different shares of each batch, and peft gathers every layer's
    inputs from all of them (its gather_distributed_inputs), so each fits the PCA of the whole batch; without
    it every process passes the same batches (a data-parallel retrain's initialisation)."""
    from peft.tuners.lora.eva import get_eva_state_dict

    limit = max_passes * len(batches)
    forwards = 0
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    # EVA reads layer inputs only: a causal LM's logits over a 128k vocabulary for every token are waste.
    extra = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(base.forward).parameters else {}

    def forward(model, inputs):
        nonlocal forwards
        forwards += 1
        if forwards > limit:
            raise UserError(f"EVA's incremental PCA did not converge within {max_passes} passes over the "
                            f"{len(batches)} batches; lower eva.tau or use more examples (--val-size).")
        return model(**inputs, **extra)

    with _recording() as made, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*gather_distributed_inputs.*")   # peft's note on what we chose
        warnings.filterwarnings("ignore", message=".*all_gather_into_tensor.*")     # torch's, on peft's gather
        state = get_eva_state_dict(model, batches, peft_config=config, forward_fn=forward,
                                   gather_distributed_inputs=gather, show_progress_bar=False)
    svd = {hook.name: hook.svd for hook in made["svd"]}
    first_hash = {hook.name: hook.hashed_inputs[0] for hook in made["hash"]}
    owner_of_hash = {first_hash[name]: name for name in svd}
    shares = {name: owner_of_hash[value] for name, value in first_hash.items()}
    ratios = {name: svd[owner].explained_variance_ratio_.detach().float().cpu() for name, owner in shares.items()}
    components = {name: svd[owner].components_.detach() for name, owner in shares.items()}
    return EvaRun(state, ratios, components, shares, forwards)
