"""bench/bench_sharded.py runs end to end at a tiny size on the CPU (the two-GPU run of the 70B shape uses the
same code): the capture gives every layer's state and the one coalition a finite gradient for every gate."""
import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"


def test_bench_sharded_runs_at_tiny_size(tmp_path):
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("bench_sharded", BENCH / "bench_sharded.py")
        bench = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(bench)
        report = bench.main(["--shape", "tiny", "--examples", "6", "--length", "16", "--batch-size", "3",
                             "--out", str(tmp_path / "r.json")])
    finally:
        sys.path.remove(str(BENCH))
    assert report["capture_result"]["states"] == 4 + 1          # embeddings and each of the 4 layers
    coalition = report["coalition_result"]
    assert coalition["modules"] == 4 * 7 and coalition["gates"] == 4 * 7 * 8 and coalition["gradient_finite"]
    assert (tmp_path / "r.json").exists()
