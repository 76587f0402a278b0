"""Stable content hashes for cache keys: JSON-able values and files on disk."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from filelock import FileLock


def hash_json(value) -> str:
    """sha256 of a canonical JSON encoding (sorted keys), so dict order never changes a key."""
    blob = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def hash_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def hash_files_memoized(paths: list[Path], memo_path: Path) -> str:
    """Hash the contents of several files, remembering each file's hash by (path, size, mtime).

    Weight files are large; re-hashing a 2.5 GB checkpoint on every cache lookup would make a
    cache hit slow, so a file is re-read only when its size or modification time changed.
    """
    memo_path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(memo_path) + ".lock"):
        try:
            memo = json.loads(memo_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            memo = {}
        parts = []
        changed = False
        for path in sorted(Path(p).resolve() for p in paths):
            stat = path.stat()
            stamp = f"{stat.st_size}:{stat.st_mtime_ns}"
            entry = memo.get(str(path))
            if not entry or entry["stamp"] != stamp:
                entry = {"stamp": stamp, "sha256": hash_file(path)}
                memo[str(path)] = entry
                changed = True
            parts.append(entry["sha256"])
        if changed:
            tmp = memo_path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(memo, indent=1))
            os.replace(tmp, memo_path)
    return hashlib.sha256("".join(parts).encode()).hexdigest()
