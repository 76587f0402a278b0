"""EVA's start for a retrain's adapter (`--init eva`): A = the first r principal components of the module's inputs
(peft's EVA), B = 0.

The PCA is peft's `get_eva_state_dict`, run with rho = 1 and the plan's ranks as rank_pattern so it fits exactly
the components the plan needs, and the result goes into the model through peft's `initialize_lora_eva_weights`, as
a user of peft would. Modules that read the same input (q/k/v) share one PCA in peft; each takes its first r
components of it, so the plan's ranks never change. One step over all the start's examples, as the eva signal
takes them (see its docstring for why).
"""
from __future__ import annotations

import torch

from analysis.contract.signal import AdapterStart
from analysis.signals.eva.peft_eva import eva_lora_config, model_inputs, run_eva

PREFIX = "base_model.model."   # what peft's module paths add to the model's own


@torch.no_grad()
def eva_init(peft_model, layers: dict, batches, tau: float = 0.99) -> dict:
    from peft.tuners.lora.eva import initialize_lora_eva_weights

    examples = batches(one=True)
    ranks = {name.removeprefix(PREFIX): module.r["default"] for name, module in layers.items()}
    config = eva_lora_config(list(ranks), max(ranks.values()), rho=1.0, tau=tau, rank_pattern=ranks)
    run = run_eva(peft_model, [model_inputs(b) for b in examples], config)
    state = {name: run.components[name][: module.r["default"]] for name, module in layers.items()}
    adapter = peft_model.peft_config["default"]
    adapter.init_lora_weights = "eva"       # what initialize_lora_eva_weights insists on
    try:
        initialize_lora_eva_weights(peft_model, eva_state_dict=state)
    finally:
        adapter.init_lora_weights = True    # the saved adapter loads like any other
    return {"eva_forwards": run.forwards, "init_batches": len(examples)}


START = AdapterStart("peft's EVA: A from a PCA of each module's inputs", eva_init)
