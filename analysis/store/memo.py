"""Small JSON memos beside the cache (a dataset's identity, a model config's facts): what was learnt from a file,
remembered under a key that names the file's path, size and modification time, so it is read again only when
the file changes."""
from __future__ import annotations

import json
from pathlib import Path

from filelock import FileLock

from analysis.contract.atomic import write_json_atomic


def recall(memo_path: Path, key: str):
    """The value remembered under `key`, or None (no memo yet, or an unreadable one)."""
    try:
        return json.loads(Path(memo_path).read_text()).get(key)
    except (FileNotFoundError, ValueError):
        return None


def remember(memo_path: Path, key: str, value) -> None:
    """Add or replace one value, under the memo's lock, written whole."""
    memo_path = Path(memo_path)
    memo_path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(memo_path) + ".lock"):
        try:
            memo = json.loads(memo_path.read_text())
        except (FileNotFoundError, ValueError):
            memo = {}
        memo[key] = value
        write_json_atomic(memo_path, memo)
