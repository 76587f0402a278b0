"""'A new signal is one folder': a toy signal with its own plan family (and a limit of its own), its own adapter
start and its own page, written outside the repository, is taken up with no other file touched, dropped in either
as one folder of a package named in ANALYSIS_SIGNAL_PACKAGES or as an installed plugin package (an entry point in
the `analysis.signals` group). Each way it appears in `signals`, is computed by `run`, planned by its own rule in
`plan`, trained from its own start in `compare`, written by `export`, and listed and drawn in the dashboard's
navigation."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.planning.plan_json import read_plan
from analysis.signals import registry

REPO = Path(__file__).resolve().parents[2]
TOY = '''
"""Toy signal: the Frobenius norm of each adaptable weight matrix (weights only)."""
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from analysis.allocation.rules import cost
from analysis.allocation.scores import Scores, per_module_values
from analysis.contract.result import Result
from analysis.contract.signal import AdapterStart, Page, PlanFamily, Signal
from analysis.settings import Group, SignalOptions, setting
from analysis.signals.registry import register


@dataclass
class ToyConfig(SignalOptions):
    pass


def compute(context, config):
    norms = [float(context.model.get_submodule(m.path).weight.float().norm()) for m in context.modules]
    return Result(pd.DataFrame({"signal": "toy", "layer": [m.layer for m in context.modules],
                                "module": [m.name for m in context.modules], "value": norms}))


@dataclass(frozen=True)
class ToyLimits(Group):
    toy_rank: int = setting(2, "the rank of every module a toy plan adapts", minimum=1)


def read(name, tables, layout):
    return Scores(name, TOY_PLAN, per_module_values(layout, tables["main"]))


def allocate(scores, room, own):
    """The toy's rule: the modules above the median norm at --toy-rank, most important first, while they fit."""
    _, _, low, high, costs, budget = room
    ranks = low.copy()
    median = np.median(scores.per_module)
    for i in np.argsort(-scores.per_module, kind="stable"):
        trial = ranks.copy()
        trial[i] = min(own.toy_rank, high[i])
        if scores.per_module[i] > median and cost(trial, costs) <= budget:
            ranks = trial
    return ranks, []


TOY_PLAN = PlanFamily(read, allocate, ToyLimits)


def start(peft_model, layers, batches):
    """The toy's start: every B a constant 0.01 (A as peft draws it)."""
    examples = batches(one=True)
    with torch.no_grad():
        for module in layers.values():
            module.lora_B["default"].weight.fill_(0.01)
    return {"toy_layers": len(layers), "toy_examples": len(examples[0]["input_ids"])}


def draw(ui, kit, run):
    entry = kit.pick(run, "toy", "Toy options")
    ui.metric("Largest norm", f"{entry.table()['value'].max():.3f}")
    kit.show(kit.exhibits(entry)[0])


register(Signal(name="toy", title="Toy weight norm", description="Frobenius norm of each adaptable matrix.",
                config=ToyConfig, compute=compute, plan=TOY_PLAN,
                start=AdapterStart("B filled with 0.01", start),
                page=Page(title="Toy norms", icon=":material/star:", caption="The toy's page.", results="toy",
                          draw=draw)))
'''
SETTING = ["--val-size", "16", "--batch-size", "8", "--max-length", "32", "--device", "cpu"]


def _folder(root: Path) -> dict[str, str]:
    """root/toy_signals/toy/__init__.py: one folder of a package named in ANALYSIS_SIGNAL_PACKAGES."""
    (root / "toy_signals" / "toy").mkdir(parents=True)
    (root / "toy_signals" / "__init__.py").write_text("")
    (root / "toy_signals" / "toy" / "__init__.py").write_text(textwrap.dedent(TOY))
    return {registry.EXTRA_PACKAGES: "toy_signals"}


def _plugin(root: Path) -> dict[str, str]:
    """root/toy_plugin.py and its package's metadata naming it under the analysis.signals entry points, as pip
    leaves an installed package."""
    (root / "toy_plugin.py").write_text(textwrap.dedent(TOY))
    info = root / "toy_plugin-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[{registry.ENTRY_POINTS}]\ntoy = toy_plugin\n")
    return {}


@pytest.fixture(params=["folder", "plugin"])
def toy(request, tmp_path, monkeypatch):
    """The toy signal dropped in one way or the other; (its search path, its environment). Unregistered after."""
    root = tmp_path / "plugins"
    root.mkdir()
    env = {"folder": _folder, "plugin": _plugin}[request.param](root)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.syspath_prepend(str(root))
    yield root, env
    registry._REGISTRY.pop("toy", None)
    registry._plugins.cache_clear()
    for name in [n for n in sys.modules if n.startswith(("toy_signals", "toy_plugin"))]:
        del sys.modules[name]


def _cli(*argv, toy, cache: Path) -> subprocess.CompletedProcess:
    root, extra = toy
    env = {**os.environ, **extra, "ANALYSIS_CACHE_DIR": str(cache),
           "PYTHONPATH": os.pathsep.join([str(root), str(REPO)])}
    done = subprocess.run([sys.executable, "-m", "analysis", *argv], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, (argv, done.stderr)
    return done


def _navigation():
    import streamlit as st

    from views.shared.signal_page import signal_pages
    for page in signal_pages():
        st.write(f"{page.url_path}: {page.title}")


@pytest.mark.slow
def test_a_toy_signal_reaches_the_command_line_and_the_dashboard(toy, tmp_path):
    from streamlit.testing.v1 import AppTest

    from analysis.model.layout import model_layout
    from analysis.model.sources import resolve_model
    from tests.pages.signal_page import signal_page

    cache = tmp_path / "cache"
    listed = _cli("signals", toy=toy, cache=cache).stdout
    assert "toy: Toy weight norm." in listed and "--toy-rank 2" in listed and "--init toy" in listed
    _cli("run", *SETTING, "--signals", "toy,cka", toy=toy, cache=cache)
    [entry] = [e for e in _entries(cache) if e["signal"] == "toy"]
    norms = pd.read_parquet(cache / "entries" / entry["key"] / "main.parquet")["value"].to_numpy()

    # plan: the toy's own rule with its own limit, --toy-rank 3 on the modules above the median norm
    _cli("plan", *SETTING, "--signal", "toy", "--budget", "r4", "--toy-rank", "3", "--out", str(tmp_path / "p.json"),
         toy=toy, cache=cache)
    plan = read_plan(tmp_path / "p.json")
    layout = model_layout(resolve_model("minilm", cache).path, "classification", 2)
    ranks = np.array([plan["rank_pattern"].get(m.path, plan["r"]) if m.path in plan["target_modules"] else 0
                      for m in layout.modules])
    assert plan["signal"] == "toy" and set(ranks) == {0, 3}
    np.testing.assert_array_equal(ranks > 0, norms > np.median(norms))   # r4 fits every module above the median

    # compare: uniform and the toy's plan, both started by the toy's start
    _cli("compare", *SETTING, "--signals", "toy", "--budgets", "r2", "--seeds", "0", "--steps", "2",
         "--train-batch-size", "4", "--test-size", "8", "--tune-lr", "off", "--baselines", "none", "--init", "toy",
         toy=toy, cache=cache)
    [comparison] = [e for e in _entries(cache) if e.get("kind") == "comparison"]
    runs = pd.read_parquet(cache / "entries" / comparison["key"] / "runs.parquet")
    assert runs["method"].tolist() == ["uniform", "toy"] and (runs["init"] == "toy").all()
    started = [e for e in _entries(cache) if e.get("kind") == "retrain"]
    assert len(started) == 2 and all(e["init"] == "toy" and e["toy_examples"] == 16 for e in started)
    assert sorted(e["toy_layers"] for e in started) == [18, 36]   # the toy's plan adapts half the modules

    # export: its figure's data, as written
    _cli("export", *SETTING, "--signal", "toy", "--out", str(tmp_path / "toy.csv"), toy=toy, cache=cache)
    np.testing.assert_allclose(pd.read_csv(tmp_path / "toy.csv")["value"].sort_values(), np.sort(norms), rtol=1e-6)

    # the dashboard: its page in the navigation, drawn by its own code; the shared pages offer it
    os.environ["ANALYSIS_CACHE_DIR"] = str(cache)
    try:
        navigation = AppTest.from_function(_navigation, default_timeout=120).run()
        assert "toy: Toy norms" in [m.value for m in navigation.markdown]
        page = signal_page("toy").run()
        assert not page.exception, [e.message for e in page.exception]
        assert page.title[0].value == "Toy norms" and page.metric[0].value == f"{norms.max():.3f}"
        for name, expected in (("overview.py", "toy"), ("budget.py", "toy"), ("export.py", "Toy weight norm")):
            app = AppTest.from_file(str(REPO / "views" / name), default_timeout=120).run()
            assert not app.exception, [e.message for e in app.exception]
            shown = json.dumps([str(e.proto) for e in app.main], default=str) + " ".join(
                str(m.value) for m in app.markdown) + " ".join(str(s.options) for s in app.multiselect)
            assert expected in shown, name
        app = AppTest.from_file(str(REPO / "app.py"), default_timeout=120).run()   # the whole navigation builds
        assert not app.exception, [e.message for e in app.exception]
    finally:
        del os.environ["ANALYSIS_CACHE_DIR"]


def _entries(cache: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in (cache / "entries").glob("*/meta.json")]
