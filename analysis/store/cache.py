"""The results cache: one directory per key holding parquet tables, safetensors tensors and meta.json.

Guarantees:
- an entry appears whole or not at all: it is written to a temporary directory and renamed into
  place, with meta.json (listing every file with its size and sha256) written last;
- two processes computing the same key do the work once: the second waits on a per-key file lock
  and then finds the first one's entry;
- an entry that fails its manifest check (truncated file, missing file, bad JSON) is moved aside
  and reported as a miss, so it is recomputed rather than crashed on;
- every key comes from `Store.key(kind, parts)` (keys.py), and every entry's meta says its kind;
- the cache folder is checked once, when the store is opened: a folder that cannot be created is one sentence.
No pickle anywhere: tables are parquet, tensors safetensors, metadata JSON.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Callable

import pandas as pd
import torch
from filelock import FileLock, Timeout
from safetensors.torch import load_file, save_file

from analysis.contract.result import Result
from analysis.errors import UserError
from analysis.store.hashing import hash_file
from analysis.store.keys import kind_of, make_key

META = "meta.json"
TENSORS = "tensors.safetensors"
REPO_CACHE = Path(__file__).resolve().parents[2] / "cache"


def default_cache_dir() -> Path:
    return Path(os.environ.get("ANALYSIS_CACHE_DIR", REPO_CACHE)).expanduser().resolve()


class Entry:
    """A finished cache entry; tables and tensors are read lazily."""

    def __init__(self, directory: Path, meta: dict):
        self.directory = directory
        self.meta = meta
        self.key = directory.name

    @property
    def kind(self) -> str:
        """signal, warmup, retrain or comparison (entries written before the kind was recorded: by their key)."""
        return kind_of(self.key, self.meta)

    @property
    def table_names(self) -> list[str]:
        return [name[: -len(".parquet")] for name in self.meta["files"] if name.endswith(".parquet")]

    def table(self, name: str = "main") -> pd.DataFrame:
        return pd.read_parquet(self.directory / f"{name}.parquet")

    def tensors(self) -> dict[str, torch.Tensor]:
        path = self.directory / TENSORS
        return load_file(path) if path.exists() else {}

    def path(self, name: str) -> Path:
        """Where a stored file (see Result.files) lies, e.g. entry.path("adapter") for a saved adapter."""
        return self.directory / name


class CorruptEntry(Exception):
    pass


class Store:
    def __init__(self, root: Path | None = None):
        self.root = Path(root).expanduser() if root else default_cache_dir()
        self._open()
        self.entries_dir = self.root / "entries"
        self.locks_dir = self.root / "locks"
        self.tmp_dir = self.root / "tmp"
        self.corrupt_dir = self.root / "corrupt"

    def _open(self) -> None:
        """Make the cache folder if it is not there, or say in one sentence why it cannot be the cache."""
        existing = self.root.absolute()
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            raise UserError(f"The cache folder '{self.root}' cannot be made: '{existing}' is a file, not a folder.")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UserError(f"The cache folder '{self.root}' cannot be created ({error.strerror or error}); "
                            "choose another with --cache-dir or ANALYSIS_CACHE_DIR.") from None

    @staticmethod
    def key(kind: str, parts) -> str:
        """The key of a run ("run"), a signal's entry, a warm-up, a retrain, a comparison, or a group of retrains'
        checkpoint folder ("group"), from the parts that change it (keys.py)."""
        return make_key(kind, parts)

    def _check(self, directory: Path) -> dict:
        """Read meta.json and verify every listed file; small files by hash, large ones by size."""
        try:
            meta = json.loads((directory / META).read_text())
            files = meta["files"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CorruptEntry(f"unreadable {META}: {exc}") from None
        for name, info in files.items():
            path = directory / name
            if not path.is_file() or path.stat().st_size != info["size"]:
                raise CorruptEntry(f"{name} is missing or has the wrong size")
            if info["size"] <= 64 << 20 and hash_file(path) != info["sha256"]:
                raise CorruptEntry(f"{name} does not match its checksum")
        return meta

    def get(self, key: str) -> Entry | None:
        directory = self.entries_dir / key
        if not directory.exists():
            return None
        try:
            return Entry(directory, self._check(directory))
        except CorruptEntry as exc:
            self._quarantine(directory, str(exc))
            return None

    def _quarantine(self, directory: Path, reason: str) -> None:
        self.corrupt_dir.mkdir(parents=True, exist_ok=True)
        target = self.corrupt_dir / f"{directory.name}.{int(time.time())}.{uuid.uuid4().hex[:6]}"
        try:
            os.replace(directory, target)
            (target / "CORRUPT.txt").write_text(reason + "\n")
        except OSError:
            shutil.rmtree(directory, ignore_errors=True)

    def discard(self, key: str) -> None:
        """Drop an entry (for --force): renamed away first, so readers never see half of it."""
        directory = self.entries_dir / key
        if directory.exists():
            self.tmp_dir.mkdir(parents=True, exist_ok=True)
            doomed = self.tmp_dir / f"discard.{key}.{uuid.uuid4().hex[:8]}"
            os.replace(directory, doomed)
            shutil.rmtree(doomed, ignore_errors=True)

    def put(self, key: str, result: Result, meta: dict) -> Entry:
        """Write atomically: everything into tmp/, meta.json last, then one rename."""
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self.entries_dir.mkdir(parents=True, exist_ok=True)
        work = self.tmp_dir / f"{key}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        work.mkdir()
        try:
            tables = {"main": result.table, **result.tables}
            for name, frame in tables.items():
                frame.to_parquet(work / f"{name}.parquet", index=False)
            if result.tensors:
                save_file({k: v.detach().contiguous().cpu() for k, v in result.tensors.items()}, work / TENSORS)
            for name, data in result.files.items():
                target = work / name
                if not target.resolve().is_relative_to(work.resolve()):
                    raise ValueError(f"Result file '{name}' would land outside its entry.")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
            files = {p.relative_to(work).as_posix(): {"size": p.stat().st_size, "sha256": hash_file(p)}
                     for p in sorted(work.rglob("*")) if p.is_file()}
            full_meta = {**meta, **result.meta, "key": key, "kind": kind_of(key, meta), "created": time.time(),
                         "files": files}
            (work / META).write_text(json.dumps(full_meta, indent=1, default=str))
            final = self.entries_dir / key
            if final.exists():  # an unlocked writer beat us to it; theirs is as good as ours
                shutil.rmtree(work)
                existing = self.get(key)
                if existing:
                    return existing
            os.replace(work, final)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        return Entry(final, full_meta)

    def _lock_of(self, key: str) -> FileLock:
        self.locks_dir.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.locks_dir / f"{key}.lock"))

    @contextlib.contextmanager
    def lock(self, key: str, on_wait: Callable[[], None] | None = None):
        """Hold the key's lock (one process computes a key at a time; a second waits, calling `on_wait` first)."""
        lock = self._lock_of(key)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            if on_wait:
                on_wait()
            lock.acquire()
        try:
            yield
        finally:
            lock.release()

    def try_lock(self, key: str) -> FileLock | None:
        """The key's lock, held, if no other process holds it (the caller releases it); else None."""
        lock = self._lock_of(key)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            return None
        return lock

    def get_or_compute(self, key: str, compute: Callable[[], Result], meta: dict,
                       on_wait: Callable[[], None] | None = None) -> tuple[Entry, bool]:
        """Return (entry, computed_now). Another process on the same key makes this one wait."""
        entry = self.get(key)
        if entry:
            return entry, False
        with self.lock(key, on_wait):
            entry = self.get(key)
            if entry:
                return entry, False
            started = time.time()
            result = compute()
            return self.put(key, result, {**meta, "seconds": round(time.time() - started, 3)}), True

    def entries(self) -> list[Entry]:
        """All readable entries, newest first (corrupt ones are skipped, not moved, while listing)."""
        found = []
        if self.entries_dir.exists():
            for directory in self.entries_dir.iterdir():
                try:
                    meta = json.loads((directory / META).read_text())
                    found.append(Entry(directory, meta))
                except (OSError, ValueError):
                    continue
        return sorted(found, key=lambda e: e.meta.get("created", 0), reverse=True)

    def signal_entries(self, run_key: str) -> dict[str, list[Entry]]:
        """Each signal's entries filed under a run's key, newest first."""
        found: dict[str, list[Entry]] = {}
        for entry in self.entries():
            if entry.kind == "signal" and entry.meta.get("context_key") == run_key:
                found.setdefault(entry.meta.get("signal"), []).append(entry)
        return found

    def clean_tmp(self, older_than_s: float = 3600) -> None:
        """Remove temporary directories left by crashed writers."""
        if not self.tmp_dir.exists():
            return
        for path in self.tmp_dir.iterdir():
            if time.time() - path.stat().st_mtime > older_than_s:
                shutil.rmtree(path, ignore_errors=True)
