"""Models split across devices by accelerate's big-model placement (--device-map): the capture pass reads the
same pooled states as transformers' own hidden states of the unsplit model.

On the CPU the split is between CPU memory and disk (accelerate's offload hooks load a block's weights when it
runs), which exercises the same hooks that move activations between GPUs."""
import torch
from accelerate import dispatch_model

from analysis.model.capture import pooled_hidden_states
from tests.conftest import random_batch, tiny_llama


def _last_token_states(model, batch) -> list[torch.Tensor]:
    with torch.no_grad():
        hidden = model(**batch, output_hidden_states=True).hidden_states
    last = batch["attention_mask"].sum(1) - 1
    return [h[torch.arange(len(last)), last] for h in hidden]


def test_capture_of_a_model_split_between_memory_and_disk_equals_the_whole_models_hidden_states(tmp_path):
    whole = tiny_llama(layers=4)
    batch = random_batch(batch=4, length=11)
    expected = _last_token_states(whole, batch)

    split = tiny_llama(layers=4)   # the same seeded weights
    placement = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu",
                 "model.layers.1": "disk", "model.layers.2": "disk", "model.layers.3": "cpu", "model.norm": "cpu",
                 "lm_head": "cpu"}
    split = dispatch_model(split, device_map=placement, offload_dir=str(tmp_path / "offload"))
    # the offloaded blocks hold no weights in memory until they run
    assert split.model.layers[1].self_attn.q_proj.weight.device.type == "meta"
    (states,) = [by["last"] for by in pooled_hidden_states(split, [batch], ["last"])]
    assert len(states) == len(expected) == 5
    for ours, reference in zip(states, expected):
        torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


def test_device_map_on_a_cpu_run_is_refused_in_one_sentence(tmp_path):
    import subprocess
    import sys
    run = subprocess.run([sys.executable, "-m", "analysis", "run", "--signals", "cka", "--device", "cpu",
                          "--device-map", "auto", "--cache-dir", str(tmp_path / "cache")], capture_output=True, text=True)
    assert run.returncode == 2, run.stderr
    assert "--device-map auto splits a model across GPUs" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "cache" / "entries").exists() or not any((tmp_path / "cache" / "entries").iterdir())


def test_device_map_with_several_processes_on_one_host_is_refused(tmp_path):
    import os
    import subprocess
    import sys
    env = {**os.environ, "LOCAL_WORLD_SIZE": "2", "CUDA_VISIBLE_DEVICES": ""}
    run = subprocess.run([sys.executable, "-m", "analysis", "run", "--signals", "cka", "--device", "cpu",
                          "--device-map", "auto", "--cache-dir", str(tmp_path / "cache")], capture_output=True,
                         text=True, env=env)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "launch one process per host" in run.stderr
