"""Cost estimates from earlier runs: a warm-up trained inside a signal's computation is split out of that
signal's time and charged to both signals that need it; other models and other devices do not count."""
import json

import pandas as pd
import pytest

from analysis.store.cache import Result, Store
from analysis.store.timings import signal_costs


def put(store: Store, key: str, **meta):
    created = meta.pop("created")
    entry = store.put(key, Result(pd.DataFrame({"value": [0.0]})), meta)
    path = entry.directory / "meta.json"          # back-date it: `created` is when the computation ended
    written = json.loads(path.read_text())
    written["created"] = created
    path.write_text(json.dumps(written))


def test_a_shared_warm_up_is_charged_to_both_signals_once_each(tmp_path):
    store = Store(tmp_path)
    cpu = {"model": "minilm", "device": "cpu", "settings": {"val_size": 512}}
    # shapley ran 151 s from t=1000 and trained the 87 s warm-up inside; adalora then took 2 s on top of it.
    put(store, "warm", signal="warmup", seconds=87.0, created=1090.0, **cpu)
    put(store, "shap", signal="shapley", seconds=151.0, created=1151.0, warmup_key="warm", **cpu)
    put(store, "ada", signal="adalora", seconds=2.0, created=1153.0, warmup_key="warm", **cpu)
    put(store, "cka", signal="cka", seconds=4.0, created=1157.0, **cpu)
    put(store, "gpu", signal="cka", seconds=0.5, created=1160.0, model="minilm", device="cuda",
        settings={"val_size": 512})
    put(store, "other", signal="cka", seconds=40.0, created=1170.0, model="smollm2", device="cpu",
        settings={"val_size": 512})
    costs = signal_costs(store, "minilm", "cpu")
    assert costs["shapley"].seconds == pytest.approx(151.0 - 87.0) and costs["shapley"].warmup_seconds == 87.0
    assert costs["adalora"].seconds == 2.0 and costs["adalora"].total == pytest.approx(89.0)
    assert costs["cka"].total == 4.0 and costs["cka"].runs == 1 and costs["cka"].examples == 512
    assert set(costs) == {"shapley", "adalora", "cka"}
    assert signal_costs(store, "minilm", "gpu")["cka"].seconds == 0.5
