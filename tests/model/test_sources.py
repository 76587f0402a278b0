"""Model and dataset sources: embedded defaults, local files and directories, clear failures."""
import json

import pandas as pd
import pytest
import torch

from analysis.errors import UserError
from analysis.model.sources import load_data, load_model, resolve_model, split_data
from tests.conftest import tiny_llama


def test_embedded_encoder_loads_as_classifier(minilm):
    assert minilm.task == "classification" and not minilm.is_decoder
    assert type(minilm.model).__name__ == "BertForSequenceClassification"
    assert minilm.model.config.num_hidden_layers == 6 and minilm.model.config.hidden_size == 384
    batch = minilm.tokenizer(["a fine film", "dull"], padding=True, return_tensors="pt")
    assert minilm.model(**batch).logits.shape == (2, 2)


def test_fingerprint_is_stable_and_memoized(session_cache):
    first = resolve_model("minilm", session_cache)
    second = resolve_model("minilm", session_cache)
    assert first.fingerprint == second.fingerprint and len(first.fingerprint) == 64
    memo = json.loads((session_cache / "fingerprints.json").read_text())
    assert any(path.endswith("model.safetensors") for path in memo)


def test_classification_head_is_seeded(session_cache):
    source = resolve_model("minilm", session_cache)
    a = load_model(source, "classification", 2, seed=3).model.classifier.weight
    b = load_model(source, "classification", 2, seed=3).model.classifier.weight
    c = load_model(source, "classification", 2, seed=4).model.classifier.weight
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_local_directory_decoder(tmp_path, session_cache, minilm):
    directory = tmp_path / "tiny-llama"
    tiny_llama().save_pretrained(directory)
    minilm.tokenizer.save_pretrained(directory)  # any tokenizer works for a config-built model
    source = resolve_model(str(directory), session_cache)
    loaded = load_model(source, "auto")
    assert loaded.is_decoder and loaded.task == "causal-lm"
    assert type(loaded.model).__name__ == "LlamaForCausalLM"
    classifier = load_model(source, "classification", num_labels=3)
    assert type(classifier.model).__name__ == "LlamaForSequenceClassification"
    assert classifier.model.config.pad_token_id == classifier.tokenizer.pad_token_id


def test_encoder_refuses_causal_lm(session_cache):
    with pytest.raises(UserError, match="needs a decoder"):
        load_model(resolve_model("minilm", session_cache), "causal-lm")


def test_missing_hub_model_is_one_clear_sentence(session_cache):
    with pytest.raises(UserError) as error:
        resolve_model("no-such-owner/no-such-model-xyz", session_cache)
    message = str(error.value)
    assert message.startswith("Could not load model 'no-such-owner/no-such-model-xyz'")
    assert "\n" not in message


def test_directory_without_config_is_rejected(tmp_path, session_cache):
    with pytest.raises(UserError, match="no config.json"):
        resolve_model(str(tmp_path), session_cache)


def test_model_files_are_found_without_fingerprinting(tmp_path, monkeypatch):
    """What a page planning from a cached run needs: the model's folder, no hash and no dequantizing."""
    import analysis.model.sources.models as models

    def refuse(*args, **kwargs):
        raise AssertionError("fingerprinted or dequantized")
    monkeypatch.setattr(models, "hash_files_memoized", refuse)
    monkeypatch.setattr(models, "_dequantized_decoder", refuse)
    path, name = models.model_files("minilm", tmp_path)
    assert (path / "config.json").is_file() and name == "all-MiniLM-L6-v2 (embedded)"
    local = tmp_path / "my-model"
    local.mkdir()
    (local / "config.json").write_text("{}")
    assert models.model_files(str(local), tmp_path) == (local.resolve(), "my-model")
    copy = tmp_path / "models" / f"smollm2-0123456789ab-v{models.DEQUANTIZED_FORMAT}"
    copy.mkdir(parents=True)
    (copy / "config.json").write_text("{}")   # the dequantized copy a run left under the cache
    assert models.model_files("smollm2", tmp_path) == (copy, "SmolLM2-135M-Instruct (embedded)")


@pytest.mark.slow
def test_config_facts_are_transformers_own_and_remembered_until_the_config_changes(tmp_path, monkeypatch):
    from transformers import AutoConfig, BertConfig, GPT2Config

    from analysis.model.sources import models
    from analysis.model.sources.models import config_facts

    memo = tmp_path / "memo.json"
    GPT2Config(n_positions=96).save_pretrained(tmp_path / "gpt2")   # its max_position_embeddings is n_positions
    BertConfig(max_position_embeddings=80).save_pretrained(tmp_path / "bert")
    for name, decoder, positions in (("gpt2", True, 96), ("bert", False, 80)):
        facts = config_facts(tmp_path / name, memo)
        config = AutoConfig.from_pretrained(tmp_path / name)
        assert facts.model_type == config.model_type == name and set(facts.positions) == {positions}
        assert facts.is_decoder is decoder
    read = []
    monkeypatch.setattr(models, "read_config", lambda path: read.append(path) or AutoConfig.from_pretrained(path))
    assert config_facts(tmp_path / "bert", memo).positions == (80,) and read == []   # from the memo
    BertConfig(max_position_embeddings=128).save_pretrained(tmp_path / "bert")      # a changed file is read again
    assert config_facts(tmp_path / "bert", memo).positions == (128,) and read == [tmp_path / "bert"]


@pytest.mark.slow
def test_embedded_decoder_is_dequantized_once(session_cache):
    source = resolve_model("smollm2", session_cache)
    assert (source.path / "config.json").exists() and list(source.path.glob("*.safetensors"))
    again = resolve_model("smollm2", session_cache)
    assert again.path == source.path and again.fingerprint == source.fingerprint
    loaded = load_model(source, "auto")
    assert loaded.task == "causal-lm" and loaded.model.config.num_hidden_layers == 30
    batch = loaded.tokenizer(["The movie was"], return_tensors="pt")
    logits = loaded.model(**batch).logits
    assert torch.isfinite(logits).all() and logits.shape[-1] == loaded.model.config.vocab_size


def test_embedded_dataset():
    data = load_data("rotten_tomatoes")
    assert len(data.frame) == 12752
    assert data.label_names == ["negative", "positive"]
    assert set(data.frame["label"]) == {0, 1} and data.frame["text"].is_unique


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_local_files_with_chosen_columns(tmp_path, suffix):
    frame = pd.DataFrame({"review": ["good", "bad", "fine", "awful", "great"], "stars": [5, 1, 4, 1, 5],
                          "other": range(5)})
    path = tmp_path / f"reviews{suffix}"
    {".csv": lambda: frame.to_csv(path, index=False), ".jsonl": lambda: frame.to_json(path, orient="records",
     lines=True), ".parquet": lambda: frame.to_parquet(path)}[suffix]()
    data = load_data(str(path), text_column="review", label_column="stars")
    assert list(data.frame.columns) == ["text", "label"]
    assert data.label_names == ["1", "4", "5"]
    assert data.frame["label"].tolist() == [2, 0, 1, 0, 2]


def test_text_only_dataset_for_language_modelling(tmp_path):
    path = tmp_path / "lines.jsonl"
    pd.DataFrame({"text": ["one line", "another line", "a third"]}).to_json(path, orient="records", lines=True)
    data = load_data(str(path), label_column=None)
    assert data.label_names is None and list(data.frame.columns) == ["text"]


@pytest.mark.parametrize("rows,columns,message", [
    ({"text": ["a", "b"], "label": [0, 1]}, ("body", "label"), "Column 'body' is not in the dataset"),
    ({"text": ["a", "b"], "label": [0, 1]}, ("text", "target"), "Column 'target' is not in the dataset"),
    ({"text": ["a", "b", "c"], "label": [1, 1, 1]}, ("text", "label"), "has only one class"),
    ({"text": ["", "  "], "label": [0, 1]}, ("text", "label"), "has no rows with non-empty text"),
])
def test_bad_datasets_are_clear_errors(tmp_path, rows, columns, message):
    path = tmp_path / "data.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    with pytest.raises(UserError, match=message):
        load_data(str(path), *columns)


def test_missing_file_and_missing_hub_dataset(monkeypatch):
    with pytest.raises(UserError, match="does not exist"):
        load_data("/nonexistent/data.csv")
    # the same requests to the hub and the same error, without the 23 s the hub client waits between its retries
    from huggingface_hub.utils import _http
    monkeypatch.setattr(_http.time, "sleep", lambda seconds: None)
    with pytest.raises(UserError, match="Could not load dataset 'no-such-owner/no-such-dataset'"):
        load_data("no-such-owner/no-such-dataset")


def test_splits_are_disjoint_complete_and_stable():
    data = load_data("rotten_tomatoes")
    splits = split_data(data, seed=0)
    texts = [set(splits[name]["text"]) for name in ("train", "validation", "test")]
    assert sum(len(t) for t in texts) == len(data.frame)
    assert not (texts[0] & texts[1]) and not (texts[0] & texts[2]) and not (texts[1] & texts[2])
    assert [len(splits[n]) for n in ("train", "validation", "test")] == [10202, 1275, 1275]
    again = split_data(load_data("rotten_tomatoes"), seed=0)
    assert again.validation.equals(splits.validation) and again.test.equals(splits.test)
    other = split_data(data, seed=1)
    assert not other.validation.equals(splits.validation)


def test_split_rejects_bad_fractions():
    data = load_data("rotten_tomatoes")
    with pytest.raises(UserError, match="add up to 1"):
        split_data(data, fractions=(0.5, 0.2, 0.2))
