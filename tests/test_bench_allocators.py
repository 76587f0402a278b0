"""bench/bench_allocators.py runs end to end at a tiny size on the CPU (the GPU run uses the same code)."""
import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"


def test_bench_allocators_runs_at_tiny_size(tmp_path):
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("bench_allocators", BENCH / "bench_allocators.py")
        bench = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(bench)
        report = bench.main(["--device", "cpu", "--shape", "tiny", "--alpha-shape", "tiny", "--examples", "4",
                             "--length", "16", "--batch-size", "2", "--repeats", "1", "--out", str(tmp_path / "r.json")])
    finally:
        sys.path.remove(str(BENCH))
    tiny = report["tiny"]
    assert tiny["eva"]["forwards"] == 3 and tiny["eva"]["vs_forward"] > 0
    assert tiny["gora"]["vs_forward_backward"] > 0
    assert tiny["alpha"]["matrices"] == 14 and tiny["alpha"]["vs_forward"] > 0
    assert (tmp_path / "r.json").exists()
