"""Shared fixtures: an isolated cache per test, the embedded encoder, tiny config-built models."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "0")  # hub names must fail by reaching for the network, as for users
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def cache_dir(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    root.mkdir()
    monkeypatch.setenv("ANALYSIS_CACHE_DIR", str(root))
    return root


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("session-cache")


@pytest.fixture(scope="session")
def minilm(session_cache):
    from analysis.sources import load_model, resolve_model
    return load_model(resolve_model("minilm", session_cache), "classification", num_labels=2, seed=0)


def tiny_llama(layers: int = 2, hidden: int = 32):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=hidden, intermediate_size=2 * hidden + 8,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=64)
    return LlamaForCausalLM(config).eval()


def tiny_gpt2(layers: int = 2, hidden: int = 32):
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=128, n_embd=hidden, n_layer=layers, n_head=4,
                                      n_positions=64)).eval()


def random_batch(vocab: int = 128, batch: int = 3, length: int = 9, seed: int = 0):
    """Token ids with ragged right padding: example b has length - 2*b real tokens."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (batch, length), generator=generator)
    mask = torch.ones(batch, length, dtype=torch.long)
    for b in range(batch):
        mask[b, length - 2 * b:] = 0
    return {"input_ids": ids, "attention_mask": mask}
