"""Check, on demand: on the embedded SmolLM2 (256 snippets per split), the cka and id tables against a
computation from transformers' hidden_states (numpy float64 CKA, scikit-dimension TwoNN), and the last
block's values with the raw block output instead of the final-normed state. CPU is enough (~20 min on
1 thread); numbers go to docs/methods.md.

    python bench/smollm2_states.py [CACHE_DIR]
"""
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from skdim.id import TwoNN

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere
from analysis.settings import RunSettings
from analysis.signals.context import AnalysisContext, prepare
from analysis.signals.registry import get_signal, make_config
from analysis.store.cache import Store
from analysis.model.capture import find_blocks

def cka(x, y):
    x, y = x - x.mean(0), y - y.mean(0)
    return float(np.linalg.norm(x.T @ y) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))

t = time.time()
store = Store(Path(sys.argv[1] if len(sys.argv) > 1 else "cache"))
ctx = AnalysisContext(prepare(RunSettings(model="smollm2", val_size=256, batch_size=16, device="cpu"), store))
out = {}
for split in ("validation", "train"):
    r = get_signal("cka").compute(ctx, make_config(get_signal("cka"), {"split": split}))
    out[split] = r.table
    print(split, "last-block 1-CKA", float(r.table["value"].iloc[-1]), time.time() - t, flush=True)
idr = get_signal("id").compute(ctx, make_config(get_signal("id")))
print("ID last bound", int(idr.table["value"].iloc[-1]), "dims tail", idr.tables["dimensions"]["id"].tail(3).tolist(), flush=True)

# Independent: transformers' hidden_states, per-example pooling in float64, plus the raw last block output.
model, tok = ctx.model, ctx.loaded.tokenizer
_, blocks = find_blocks(model)
for split in ("validation", "train"):
    frame = ctx.frame(split).iloc[:256]
    states_last, states_mean = [], []
    for start in range(0, len(frame), 16):
        batch = tok(frame["text"].tolist()[start:start + 16], padding=True, truncation=True, max_length=128, return_tensors="pt")
        captured = {}
        h = blocks[-1].register_forward_hook(lambda m, a, o: captured.__setitem__("raw", o[0] if isinstance(o, tuple) else o))
        with torch.no_grad():
            hs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True).hidden_states
        h.remove()
        m = batch["attention_mask"].bool()
        for b in range(m.shape[0]):
            states_last.append([s[b, m[b]][-1].double().numpy() for s in hs] + [captured["raw"][b, m[b]][-1].double().numpy()])
            states_mean.append([s[b, m[b]].double().mean(0).numpy() for s in hs] + [captured["raw"][b, m[b]].double().mean(0).numpy()])
    L = np.array(states_last).transpose(1, 0, 2); M = np.array(states_mean).transpose(1, 0, 2)
    n = L.shape[0] - 2  # blocks; index n+1 is the raw last block output
    ref = [1 - cka(L[i], L[i + 1]) for i in range(n)]
    print(split, "CKA max |table - transformers|", float(np.nanmax(np.abs(out[split]["value"].to_numpy() - ref))),
          "last after norm", ref[-1], "before (raw block output)", 1 - cka(L[n - 1], L[n + 1]), flush=True)
    if split == "validation":
        dims = [TwoNN(discard_fraction=0.1).fit(M[j]).dimension_ for j in range(n + 1)]
        raw_dim = TwoNN(discard_fraction=0.1).fit(M[n + 1]).dimension_
        bounds = [math.ceil(max(dims[i + 1] - dims[i], 0)) + 1 for i in range(n)]
        print("ID max |table - skdim| rel", float(np.max(np.abs(idr.tables["dimensions"]["id"].to_numpy() - dims) / np.abs(dims))),
              "bounds equal", bounds == idr.table["value"].tolist(), "last bound after", bounds[-1],
              "before", math.ceil(max(raw_dim - dims[n - 1], 0)) + 1, flush=True)
print("seconds", time.time() - t)
