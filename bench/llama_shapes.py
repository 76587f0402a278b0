"""Llama-3.x-shaped models with random weights, built from a config (nothing downloaded), for the
benchmarks: the 1B shape (Llama-3.2-1B) and the 8B shape (Llama-3.1-8B)."""
from __future__ import annotations

import torch

SHAPES = {
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, tie_word_embeddings=True),
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8, tie_word_embeddings=False),
}


def random_llama(shape: str = "1b", layers: int | None = None, device: str | None = None):
    """A bfloat16 LlamaForCausalLM of that shape (optionally fewer layers), seeded, in eval mode."""
    from transformers import LlamaConfig, LlamaForCausalLM

    sizes = {**SHAPES[shape], **({"num_hidden_layers": layers} if layers else {})}
    config = LlamaConfig(vocab_size=128256, max_position_embeddings=4096, rope_theta=500000.0, **sizes)
    torch.manual_seed(0)
    with torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu")):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    return model.eval()
