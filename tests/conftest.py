"""Shared fixtures: an isolated cache per test, the embedded encoder, tiny config-built models."""
from __future__ import annotations

import base64
import json
import os
import shutil
import sys
from pathlib import Path

# One BLAS thread per process, this one and every process a test starts (set before torch is imported): the
# suite's models are small, and on two shared cores a second thread mostly waits for the first (a tiny Llama's
# backward pass took 25 times as long with two as with one on a busy machine); `make test` runs two test
# processes instead, one per core.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
os.environ.setdefault("HF_HUB_OFFLINE", "0")  # hub names must fail by reaching for the network, as for users
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_collection_modifyitems(config, items):
    """The longest files first (seconds per file from `pytest --durations=60` in a full run, summed into
    tests/durations.json; then files with more slow tests), each file's tests kept together in their order (so a
    module's fixtures are made once): `make test`'s two processes then share the long tests out early instead of one
    process finishing them alone at the end."""
    measured = json.loads((Path(__file__).parent / "durations.json").read_text())
    files: dict[str, list] = {}
    for item in items:
        files.setdefault(item.nodeid.split("::")[0], []).append(item)
    slow = {name: sum(bool(t.get_closest_marker("slow")) for t in tests) for name, tests in files.items()}
    order = sorted(files, key=lambda name: (-measured.get(name, 0), -slow[name]))
    items[:] = [t for name in order for t in files[name]]


@pytest.fixture(autouse=True)
def restore_main_module():
    """Streamlit's AppTest leaves the page installed as sys.modules["__main__"]; spawned worker
    processes would then re-run that page on start-up. Put the real one back after every test."""
    main = sys.modules["__main__"]
    yield
    sys.modules["__main__"] = main


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
def dequantized_smollm2(tmp_path_factory) -> Path:
    """A cache holding only the embedded SmolLM2 dequantized from its GGUF (about 20 s), made once per session: under
    pytest-xdist in the session's folder that every worker shares (the model source's own lock makes a second worker
    wait for the first and then find it)."""
    from analysis.model.sources import resolve_model
    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "smollm2-dequantized"
    resolve_model("smollm2", root)
    return root


def with_smollm2(cache: Path, dequantized: Path) -> Path:
    """`cache` given the session's dequantized SmolLM2 as hard links, as if an earlier run had made it there."""
    shutil.copytree(dequantized / "models", Path(cache) / "models", copy_function=os.link, dirs_exist_ok=True)
    return cache


@pytest.fixture(scope="session")
def minilm(session_cache):
    from analysis.model.sources import load_model, resolve_model
    return load_model(resolve_model("minilm", session_cache), "classification", num_labels=2, seed=0)


@pytest.fixture(scope="session")
def small_comparison(tmp_path_factory, minilm):
    """A real comparison on the CPU, as small as one can be with every kind of row: a tiny Llama (2 blocks of width
    32, MiniLM's tokenizer) as a causal LM on 200 short sentences; uniform LoRA on q_proj and v_proj (peft's default
    for Llama), the three module baselines and grad_norm's plan; budgets r8 and r16; seeds 0 and 1; 12 steps at one
    rate; 16 test examples. Made by the command line (`run`, then `compare --out`): (cache folder, --out folder)."""
    from analysis.__main__ import main

    root = tmp_path_factory.mktemp("small-comparison")
    torch.manual_seed(0)
    from transformers import LlamaConfig, LlamaForCausalLM
    LlamaForCausalLM(LlamaConfig(vocab_size=len(minilm.tokenizer), hidden_size=32, intermediate_size=64,
                                 num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2)).save_pretrained(root / "model")
    minilm.tokenizer.save_pretrained(root / "model")
    import pandas as pd
    pd.DataFrame({"text": [f"the cat number {i} sat on the mat" for i in range(200)]}).to_csv(root / "text.csv",
                                                                                             index=False)
    common = ["--model", str(root / "model"), "--data", str(root / "text.csv"), "--val-size", "16", "--device",
              "cpu", "--cache-dir", str(root / "cache")]
    assert main(["run", *common, "--signals", "grad_norm"]) == 0
    assert main(["compare", *common, "--signals", "grad_norm", "--modules", "q_proj,v_proj", "--budgets",
                 "r8,r16", "--seeds", "0,1", "--steps", "12", "--test-size", "16", "--train-batch-size", "8",
                 "--tune-lr", "off", "--lr", "1e-2", "--out", str(root / "out")]) == 0
    return root / "cache", root / "out"


@pytest.fixture(scope="session")
def encoder_context(tmp_path_factory):
    """The embedded MiniLM on 64 validation snippets, on the CPU, for checking signals against references."""
    from analysis.signals.context import AnalysisContext, prepare
    from analysis.settings import RunSettings
    from analysis.store.cache import Store

    store = Store(tmp_path_factory.mktemp("encoder-context-cache"))
    return AnalysisContext(prepare(RunSettings(val_size=64, batch_size=16, device="cpu"), store))


def tiny_bert(layers: int = 3, vocab: int = 64):
    from transformers import BertConfig, BertForSequenceClassification
    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(vocab_size=vocab, hidden_size=32, intermediate_size=48,
                                                    num_hidden_layers=layers, num_attention_heads=4)).eval()


def tiny_llama(layers: int = 2, hidden: int = 32, vocab: int = 128):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden + 8,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=64)
    return LlamaForCausalLM(config).eval()


def tiny_gpt2(layers: int = 2, hidden: int = 32, vocab: int = 128):
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_embd=hidden, n_layer=layers, n_head=4,
                                      n_positions=64)).eval()


def save_dropout_free_bert(directory: Path, tokenizer) -> Path:
    """A tiny two-block BERT classifier without dropout (runs compare exactly), saved with `tokenizer`."""
    from transformers import BertConfig, BertForSequenceClassification
    torch.manual_seed(0)
    BertForSequenceClassification(BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        num_labels=2)).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def randomize_adapter(gated, generator: torch.Generator, scale: float = 0.3) -> dict[str, torch.Tensor]:
    """Random A and B (normal, times `scale`) for a gated adapter, so that it changes the outputs."""
    state = {name: torch.randn(t.shape, generator=generator) * scale for name, t in gated.adapter_state().items()}
    gated.load_adapter_state(state)
    return state


def captum_shapley(value, n: int) -> tuple[torch.Tensor, int]:
    """captum's ShapleyValues of the game `value` (a 0/1 float64 mask of n players -> its worth): input every
    player on, baseline every player off, one feature per player (feature_mask). For n features captum walks
    all n! orders exactly, asking for each of the 2^n coalitions many times; each coalition's worth is computed
    once and remembered. Returns the values (captum sums them in float32) and the number of distinct
    coalitions captum asked for."""
    from captum.attr import ShapleyValues

    worth: dict[tuple[int, ...], float] = {}

    def forward(masks: torch.Tensor) -> torch.Tensor:
        for mask in masks:
            key = tuple(int(x) for x in mask.tolist())
            if key not in worth:
                worth[key] = float(value(mask.to(torch.float64)))
        return torch.tensor([worth[tuple(int(x) for x in mask.tolist())] for mask in masks], dtype=torch.float64)

    attributions = ShapleyValues(forward).attribute(
        torch.ones(1, n, dtype=torch.float64), baselines=torch.zeros(1, n, dtype=torch.float64),
        feature_mask=torch.arange(n).unsqueeze(0), perturbations_per_eval=n)
    return attributions.reshape(n).double(), len(worth)


def tiny_qwen2(layers: int = 2, hidden: int = 32, vocab: int = 128):
    from transformers import Qwen2Config, Qwen2ForCausalLM
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden + 8,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=64)
    return Qwen2ForCausalLM(config).eval()


def random_batch(vocab: int = 128, batch: int = 3, length: int = 9, seed: int = 0):
    """Token ids with ragged right padding: example b has length - 2*b real tokens."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (batch, length), generator=generator)
    mask = torch.ones(batch, length, dtype=torch.long)
    for b in range(batch):
        mask[b, length - 2 * b:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def reference_states(context, pooling: str, split: str = "validation") -> list[torch.Tensor]:
    """The measured examples' pooled states straight from transformers' output_hidden_states (float64),
    pooled by per-example loops: cls, last (last real token) or mean."""
    frame = context.frame(split).iloc[: context.settings.val_size]
    batch = context.loaded.tokenizer(frame["text"].tolist(), padding=True, truncation=True,
                                     max_length=context.settings.max_length, return_tensors="pt")
    batch = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        hidden = context.model(**batch, output_hidden_states=True).hidden_states
    rows = [[] for _ in hidden]
    for b, mask in enumerate(batch["attention_mask"].bool()):
        for j, h in enumerate(hidden):
            real = h[b, mask].double()
            rows[j].append({"cls": h[b, 0].double(), "last": real[-1], "mean": real.mean(0)}[pooling])
    return [torch.stack(r) for r in rows]


def _decoded(value):
    """Plotly 6 writes numeric arrays as {"dtype", "bdata"(, "shape")}; back to plain lists."""
    if isinstance(value, dict) and "bdata" in value and "dtype" in value:
        array = np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"])
        if "shape" in value:
            array = array.reshape([int(n) for n in str(value["shape"]).split(",")])
        return array.tolist()
    if isinstance(value, dict):
        return {k: _decoded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decoded(v) for v in value]
    return value


def chart_specs(app) -> list[dict]:
    """The plotly figures an AppTest run rendered, as plain dicts with lists."""
    return [_decoded(json.loads(chart.proto.spec)) for chart in app.get("plotly_chart")]
