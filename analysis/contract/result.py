"""What a computation hands to the store: a tidy main table plus optional extras.

The main table is tidy: columns signal, layer, module, value, plus stderr where the estimate is random and rank
where values are per rank. `layer` is the block index (0-based), `module` the short name (q_proj, query, ...)
or `block` for a layer-level signal.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

TIDY_COLUMNS = ("signal", "layer", "module", "value")


@dataclass
class Result:
    table: pd.DataFrame
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)  # other artefacts by relative path (a saved adapter)


def files_under(directory: Path, prefix: str) -> dict[str, bytes]:
    """The files of a directory as Result.files entries under `prefix/` (a saved adapter, say)."""
    return {f"{prefix}/{p.name}": p.read_bytes() for p in Path(directory).iterdir() if p.is_file()}
