"""Data-parallel analyses (analysis/signals/parallel.py) on the CPU with gloo and two real processes: the
wrapper's collectives against what one process holds, and `torchrun ... -m analysis run` against the
one-process run of the same signals."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from analysis.signals import parallel
from analysis.store.cache import Store
from tests.test_cli import REPO, cli

# One of two processes joined through parallel.start (as a launcher would set them up): gathers uneven, out-of-order
# shares, and adds up CKA accumulators of its own rows under the main process's shift.
WORKER = textwrap.dedent("""
    import json, sys
    import torch
    from analysis.signals import parallel
    from analysis.signals.cka.linear_cka import CKAAccumulator

    parallel.start(torch.device("cpu"))
    rank = parallel.rank()

    def item(p):   # a different number of rows at every position, like sampled tokens
        return [torch.full((p + 1, 3), float(p)), torch.tensor([p])]

    held = {0: [3, 0], 1: [4, 1, 2]}[rank]   # uneven and out of order within a process
    to_main = parallel.gather_in_order([item(p) for p in held], held)
    everywhere = parallel.gather_in_order([torch.tensor(p) for p in parallel.shard(5)], parallel.shard(5),
                                          everywhere=True)
    batches = {0: [2, 0], 1: [1]}[rank]   # per batch two slots (layers) of different widths and row counts
    joined = parallel.gather_batches([[torch.full((p + 1, 3), float(p)), torch.full((2 * p + 1, 2), -float(p))]
                                      for p in batches], batches)

    generator = torch.Generator().manual_seed(0)
    layers = [torch.randn(40, 6, generator=generator, dtype=torch.float64) + 50 for _ in range(3)]
    mine = [slice(0, 25), slice(25, 40)][rank]   # uneven shares of the rows
    shift = parallel.broadcast_([x[mine].mean(dim=0) for x in layers])
    results = {}
    for unbiased in (False, True):
        accumulator = CKAAccumulator(unbiased, shift=shift)
        accumulator.update([x[mine][:10] for x in layers])
        accumulator.update([x[mine][10:] for x in layers])
        parallel.sum_(accumulator.running_sums())
        accumulator.count = parallel.total(accumulator.count)
        results[str(unbiased)] = accumulator.consecutive().tolist()
    json.dump({"to_main": None if to_main is None else [[t.tolist() for t in i] for i in to_main],
               "everywhere": [int(t) for t in everywhere],
               "joined": None if joined is None else [t.tolist() for t in joined],
               "shift0": shift[0].tolist(), "cka": results, "count": accumulator.count}, open(sys.argv[1], "w"))
    # leave the group as a launched command does: a process that exits with gloo's threads still connected may abort
    # ("terminate called without an active exception", seen once in a fresh clone's make test)
    parallel.barrier()
    parallel.stop()
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_one_process_leaves_everything_as_it_is():
    items = [torch.ones(2), torch.zeros(3)]
    assert parallel.count() == 1 and parallel.is_main() and list(parallel.shard(3)) == [0, 1, 2]
    assert all(a is b for a, b in zip(parallel.gather_in_order(items, [0, 1]), items))
    assert [t.tolist() for t in parallel.gather_batches([[items[0]], [items[1]]], [0, 1])] == [[1, 1, 0, 0, 0]]
    assert parallel.sum_(items) is items and parallel.total(7) == 7 and parallel.process_seed(5) == 5
    assert parallel.local_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.slow
def test_two_processes_gather_uneven_shares_in_order_and_add_up_accumulators(tmp_path):
    from analysis.signals.cka.linear_cka import CKAAccumulator, linear_cka
    port = _free_port()
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path / f"{rank}.json")], cwd=REPO,
                                env={**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
                                     "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)},
                                stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    for worker in workers:
        assert worker.wait(timeout=300) == 0, worker.stderr.read()[-3000:]
    main, other = (json.loads((tmp_path / f"{rank}.json").read_text()) for rank in (0, 1))
    expected = [[torch.full((p + 1, 3), float(p)).tolist(), [p]] for p in range(5)]
    assert main["to_main"] == expected and other["to_main"] is None
    assert main["everywhere"] == other["everywhere"] == [0, 1, 2, 3, 4]
    assert other["joined"] is None and main["joined"] == [
        torch.cat([torch.full((p + 1, 3), float(p)) for p in range(3)]).tolist(),
        torch.cat([torch.full((2 * p + 1, 2), -float(p)) for p in range(3)]).tolist()]

    # The same rows in one accumulator, and directly from all rows at once.
    generator = torch.Generator().manual_seed(0)
    layers = [torch.randn(40, 6, generator=generator, dtype=torch.float64) + 50 for _ in range(3)]
    assert main["shift0"] == other["shift0"] == layers[0][:25].mean(dim=0).tolist()   # the main process's shift
    for unbiased in (False, True):
        whole = CKAAccumulator(unbiased)
        whole.update(layers)
        direct = [linear_cka(x, y, unbiased) for x, y in zip(layers[:-1], layers[1:])]
        for result in (main, other):
            assert result["count"] == 40
            assert result["cka"][str(unbiased)] == pytest.approx(whole.consecutive().tolist(), rel=1e-9)
            assert result["cka"][str(unbiased)] == pytest.approx(direct, rel=1e-9)


# The signals compared, and options that keep the Shapley run short (its warm-up on the same global batch).
SIGNALS = "cka,id,shapley,state_change,grad_norm,gora,eva"
SHAPLEY = ["--set", "shapley.warmup_steps=4", "--set", "shapley.r_max=2", "--set", "shapley.samples=8",
           "--set", "shapley.tolerance=0", "--set", "shapley.batch_size=40"]


@pytest.fixture(scope="module")
def one_and_two(tmp_path_factory, minilm):
    """The same `run` by one process and by two under torchrun (warm-up batches of 16, and of 8 per process), on a
    tiny dropout-free BERT classifier and 40 validation examples in 5 batches (3 and 2 per process, one short)."""
    from tests.conftest import save_dropout_free_bert
    root = tmp_path_factory.mktemp("data-parallel")
    save_dropout_free_bert(root / "bert", minilm.tokenizer)
    words = ["good", "bad", "fine", "awful", "great", "dull", "warm", "cold"]
    texts = [f"the film number {i} was {words[i % 8]} and {words[i * 3 % 8]} " + "very " * (i % 5) for i in range(400)]
    pd.DataFrame({"text": texts, "label": [i % 2 for i in range(400)]}).to_csv(root / "reviews.csv", index=False)
    setting = ["--model", str(root / "bert"), "--data", str(root / "reviews.csv"), "--val-size", "40",
               "--batch-size", "8", "--device", "cpu", "--signals", SIGNALS, *SHAPLEY]
    one, two = root / "one", root / "two"
    single = cli(one, "run", *setting, "--set", "shapley.warmup_batch_size=16")
    assert single.returncode == 0, single.stderr[-3000:]
    # `--` ends torchrun's own options: its --signals-to-handle would otherwise claim --signals
    launched = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                               "-m", "analysis", "--", "run", *setting, "--set", "shapley.warmup_batch_size=8"],
                              cwd=REPO, env={**os.environ, "ANALYSIS_CACHE_DIR": str(two)}, capture_output=True,
                              text=True, timeout=600)
    assert launched.returncode == 0, launched.stderr[-3000:]
    return Store(one), Store(two), single, launched


def _by_signal(store: Store) -> dict:
    return {entry.meta.get("signal", entry.kind): entry for entry in store.entries()}   # the warm-up by its kind


@pytest.mark.slow
def test_two_processes_give_the_one_process_capture_results_under_the_same_keys(one_and_two):
    one, two, _, _ = one_and_two
    single, double = _by_signal(one), _by_signal(two)
    for name in ("cka", "id", "state_change", "grad_norm", "gora", "eva"):
        a, b = single[name], double[name]
        assert a.key == b.key and a.meta["processes"] == 1 and b.meta["processes"] == 2
        assert a.table_names == b.table_names
        for table in a.table_names:
            x, y = a.table(table), b.table(table)
            assert x.columns.tolist() == y.columns.tolist() and len(x) == len(y), (name, table)
            for column in x.columns:
                if pd.api.types.is_float_dtype(x[column]):   # NaN where CKA is degenerate, in both
                    np.testing.assert_allclose(y[column], x[column], rtol=1e-5, atol=1e-7, err_msg=f"{name} {table}")
                else:
                    assert x[column].tolist() == y[column].tolist(), (name, table, column)
    assert double["cka"].table()["degenerate"].tolist() == [True, False]   # the encoder's CLS at the embeddings


@pytest.mark.slow
def test_two_processes_estimate_shapley_within_its_standard_error(one_and_two):
    one, two, _, _ = one_and_two
    a, b = _by_signal(one)["shapley"], _by_signal(two)["shapley"]
    assert a.key != b.key and b.meta["processes"] == 2   # the streams (and the warm-up's batch) depend on it
    # The same warm-up (16 examples a step, one slice of 8 per process), hence the same losses with all ranks on or off.
    warm_a, warm_b = _by_signal(one)["warmup"], _by_signal(two)["warmup"]
    np.testing.assert_allclose(warm_b.table("losses")["loss"], warm_a.table("losses")["loss"], rtol=1e-5)
    for key in ("loss_all_ranks", "loss_no_ranks"):
        assert b.meta[key] == pytest.approx(a.meta[key], rel=1e-5)
    assert a.meta["samples"] == b.meta["samples"] == 8 and b.tensors()["masks"].shape == a.tensors()["masks"].shape
    for table in ("main", "modules", "layers"):
        x, y = a.table(table), b.table(table)
        assert ((x["value"] - y["value"]).abs() <= 4 * np.sqrt(x["stderr"] ** 2 + y["stderr"] ** 2)).all(), table
        assert (y["stderr"] > 0).all()


def _layout(root: Path) -> list[str]:
    """Every file under a cache, with entry keys written as their signal's name (keys differ where processes count)."""
    names = {entry.key: entry.meta.get("signal", entry.kind) for entry in Store(root).entries()}
    paths = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
    for key, name in names.items():
        paths = [p.replace(key, name) for p in paths]
    return sorted(paths)


@pytest.mark.slow
def test_only_the_main_process_writes_and_reports(one_and_two):
    one, two, single, launched = one_and_two
    assert _layout(two.root) == _layout(one.root)   # one entry per signal and warm-up, no stray files
    assert len(two.entries()) == len(SIGNALS.split(",")) + 1
    reported = [line.split()[0] for line in launched.stdout.splitlines() if "rows  key" in line]
    assert reported == [line.split()[0] for line in single.stdout.splitlines() if "rows  key" in line]
