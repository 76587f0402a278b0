"""The results cache on real disk: round trip, atomic writes, corrupt entries, concurrent writers."""
import multiprocessing
import time

import pandas as pd
import pytest
import torch

from analysis.store.cache import Result, Store


def _result(seed=0):
    generator = torch.Generator().manual_seed(seed)
    table = pd.DataFrame({"signal": "s", "layer": [0, 1], "module": "block", "value": [0.5, 1.5]})
    return Result(table, tables={"matrix": pd.DataFrame({"a": [1.0, 2.0]})},
                  tensors={"states": torch.randn(3, 4, generator=generator)})


def test_round_trip(tmp_path):
    store = Store(tmp_path)
    result = _result()
    store.put("k1", result, {"signal": "s"})
    entry = store.get("k1")
    pd.testing.assert_frame_equal(entry.table(), result.table)
    pd.testing.assert_frame_equal(entry.table("matrix"), result.tables["matrix"])
    assert torch.equal(entry.tensors()["states"], result.tensors["states"])
    assert entry.meta["signal"] == "s" and sorted(entry.table_names) == ["main", "matrix"]
    assert not list(tmp_path.rglob("*.pkl")) and not list(tmp_path.rglob("*.pickle"))
    assert [e.key for e in store.entries()] == ["k1"]


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    store = Store(tmp_path)
    calls = []

    def explode(self, path, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        path.write_bytes(b"partial")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", explode)
    with pytest.raises(OSError):
        store.put("k1", _result(), {})
    assert store.get("k1") is None
    assert not (tmp_path / "entries" / "k1").exists()
    assert list((tmp_path / "tmp").iterdir()) == []


@pytest.mark.parametrize("damage", ["truncate", "delete", "meta"])
def test_corrupt_entry_is_recomputed(tmp_path, damage):
    store = Store(tmp_path)
    entry = store.put("k1", _result(), {})
    if damage == "truncate":
        path = entry.directory / "main.parquet"
        path.write_bytes(path.read_bytes()[:10])
    elif damage == "delete":
        (entry.directory / "tensors.safetensors").unlink()
    else:
        (entry.directory / "meta.json").write_text("{not json")
    assert store.get("k1") is None
    assert len(list((tmp_path / "corrupt").iterdir())) == 1
    computed = []
    fresh, did = store.get_or_compute("k1", lambda: computed.append(1) or _result(), {})
    assert did and computed == [1] and fresh.table()["value"].tolist() == [0.5, 1.5]


def test_same_size_corruption_is_caught_by_checksum(tmp_path):
    store = Store(tmp_path)
    entry = store.put("k1", _result(), {})
    path = entry.directory / "main.parquet"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    assert store.get("k1") is None


def _slow_compute(root, counter, barrier):
    store = Store(root)
    barrier.wait()

    def compute():
        with open(counter, "a") as handle:
            handle.write("x")
        time.sleep(1.0)
        return _result()

    entry, _ = store.get_or_compute("shared", compute, {})
    return entry.table()["value"].tolist()


def test_second_process_waits_instead_of_recomputing(tmp_path):
    counter = tmp_path / "counter.txt"
    context = multiprocessing.get_context("spawn")
    barrier = context.Manager().Barrier(3)
    with context.Pool(3) as pool:
        outputs = pool.starmap(_slow_compute, [(tmp_path / "c", counter, barrier)] * 3)
    assert counter.read_text() == "x"
    assert outputs == [[0.5, 1.5]] * 3


def test_discard_and_crashed_writer_cleanup(tmp_path):
    store = Store(tmp_path)
    store.put("k1", _result(), {})
    store.discard("k1")
    assert store.get("k1") is None
    stale = tmp_path / "tmp" / "k2.123.abc"
    stale.mkdir(parents=True)
    store.clean_tmp(older_than_s=-1)
    assert not stale.exists()


def test_extra_files_are_stored_under_the_manifest(tmp_path):
    store = Store(tmp_path)
    result = Result(_result().table, files={"adapter/adapter_config.json": b"{}", "adapter/w.bin": b"\x00" * 10})
    entry = store.put("k1", result, {})
    assert entry.path("adapter/w.bin").read_bytes() == b"\x00" * 10
    assert set(entry.meta["files"]) >= {"adapter/adapter_config.json", "adapter/w.bin", "main.parquet"}
    entry.path("adapter/w.bin").write_bytes(b"\x01" * 10)  # same size, different bytes
    assert store.get("k1") is None  # caught by the checksum, entry quarantined
    with pytest.raises(ValueError, match="outside its entry"):
        store.put("k2", Result(_result().table, files={"../escape.txt": b"x"}), {})
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "entries" / "k2").exists()
