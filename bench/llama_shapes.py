"""Llama-3.x-shaped models with random weights, built from a config (nothing downloaded), for the
benchmarks: the 1B shape (Llama-3.2-1B), the 8B shape (Llama-3.1-8B) and the 70B shape (Llama-3.1-70B,
which only fits split across GPUs: `split_llama`)."""
from __future__ import annotations

import torch

SHAPES = {
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, tie_word_embeddings=True),
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8, tie_word_embeddings=False),
    "70b": dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                num_key_value_heads=8, tie_word_embeddings=False),
    "tiny": dict(hidden_size=64, intermediate_size=160, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, tie_word_embeddings=False),
}
VOCAB = {"tiny": 512}


def llama_config(shape: str, layers: int | None = None):
    from transformers import LlamaConfig

    sizes = {**SHAPES[shape], **({"num_hidden_layers": layers} if layers else {})}
    return LlamaConfig(vocab_size=VOCAB.get(shape, 128256), max_position_embeddings=4096, rope_theta=500000.0,
                       **sizes)


def random_llama(shape: str = "1b", layers: int | None = None, device: str | None = None):
    """A bfloat16 LlamaForCausalLM of that shape (optionally fewer layers), seeded, in eval mode."""
    from transformers import LlamaForCausalLM

    config = llama_config(shape, layers)
    torch.manual_seed(0)
    with torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu")):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    return model.eval()


def split_llama(shape: str, max_memory: dict, layers: int | None = None, dtype: torch.dtype = torch.bfloat16):
    """A model of that shape placed across devices by accelerate (whole decoder layers per device, as
    `--device-map auto` places a real checkpoint), each weight drawn directly on its device: a 70B model never
    exists whole on one device or in host memory. Norms are 1, everything else N(0, 0.02), seeded per weight."""
    from accelerate import dispatch_model, infer_auto_device_map, init_empty_weights
    from accelerate.utils import set_module_tensor_to_device
    from transformers import LlamaForCausalLM

    with init_empty_weights():   # parameters on the meta device; buffers (rotary frequencies) real
        model = LlamaForCausalLM(llama_config(shape, layers)).to(dtype)
    placement = infer_auto_device_map(model, max_memory=max_memory, no_split_module_classes=["LlamaDecoderLayer"],
                                      dtype=dtype)
    for index, (name, param) in enumerate(list(model.named_parameters())):
        owner = max((key for key in placement if key == "" or name == key or name.startswith(key + ".")), key=len)
        device = placement[owner]
        device = f"cuda:{device}" if isinstance(device, int) else device
        value = torch.empty(param.shape, dtype=dtype, device=device)
        if name.endswith("norm.weight"):
            value.fill_(1.0)
        else:
            value.normal_(0.0, 0.02, generator=torch.Generator(device).manual_seed(index))
        set_module_tensor_to_device(model, name, device, value=value)
    return dispatch_model(model, placement).eval(), placement


def make_batches(vocab: int, examples: int, length: int, batch_size: int, device) -> list[dict]:
    """Seeded random token ids, all real tokens, labels = inputs (next-token loss)."""
    generator = torch.Generator().manual_seed(0)
    batches = []
    for start in range(0, examples, batch_size):
        ids = torch.randint(0, vocab, (min(batch_size, examples - start), length), generator=generator).to(device)
        batches.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids})
    return batches
