"""'A new signal is one folder': a toy signal written to a temporary package registers itself, and the
command line (signals, run, plan) and the pages (All signals, Budget, Export) take it up with no other edit."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from analysis.planning.plan_json import read_plan
from analysis.signals import registry

REPO = Path(__file__).resolve().parents[2]
TOY = '''
"""Toy signal: the Frobenius norm of each adaptable weight matrix (weights only)."""
from dataclasses import dataclass

import pandas as pd

from analysis.signals.registry import Signal, register
from analysis.store.cache import Result


@dataclass
class ToyConfig:
    pass


def compute(context, config):
    norms = [float(context.model.get_submodule(m.path).weight.float().norm()) for m in context.modules]
    return Result(pd.DataFrame({"signal": "toy", "layer": [m.layer for m in context.modules],
                                "module": [m.name for m in context.modules], "value": norms}))


register(Signal(name="toy", title="Toy weight norm", description="Frobenius norm of each adaptable matrix.",
                config=ToyConfig, compute=compute))
'''


@pytest.fixture
def toy_package(tmp_path, monkeypatch):
    """tmp/toy_signals/toy/__init__.py, importable and named in ANALYSIS_SIGNAL_PACKAGES; unregistered after."""
    folder = tmp_path / "plugins" / "toy_signals" / "toy"
    folder.mkdir(parents=True)
    (folder.parent / "__init__.py").write_text("")
    (folder / "__init__.py").write_text(textwrap.dedent(TOY))
    monkeypatch.setenv(registry.EXTRA_PACKAGES, "toy_signals")
    monkeypatch.syspath_prepend(str(tmp_path / "plugins"))
    yield tmp_path / "plugins"
    registry._REGISTRY.pop("toy", None)
    for name in [n for n in sys.modules if n.startswith("toy_signals")]:
        del sys.modules[name]


def cli(*argv, plugins: Path, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, registry.EXTRA_PACKAGES: "toy_signals", "ANALYSIS_CACHE_DIR": str(cache),
           "PYTHONPATH": os.pathsep.join([str(plugins), str(REPO)])}
    return subprocess.run([sys.executable, "-m", "analysis", *argv], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.slow
def test_a_toy_signal_folder_reaches_the_command_line_and_every_page(toy_package, tmp_path):
    from streamlit.testing.v1 import AppTest

    cache = tmp_path / "cache"
    listed = cli("signals", plugins=toy_package, cache=cache)
    assert listed.returncode == 0 and "toy: Toy weight norm." in listed.stdout
    run = cli("run", "--signals", "toy,cka", "--val-size", "16", "--device", "cpu", plugins=toy_package, cache=cache)
    assert run.returncode == 0, run.stderr
    plan = cli("plan", "--signal", "toy", "--budget", "r2", "--val-size", "16", "--device", "cpu", "--out",
               str(tmp_path / "plan.json"), plugins=toy_package, cache=cache)
    assert plan.returncode == 0, plan.stderr
    written = read_plan(tmp_path / "plan.json")
    assert written["signal"] == "toy" and written["trainable_params"] <= written["budget"]
    # The plan follows the toy's values (proportional family), not one rank everywhere.
    ranks = {p: written["rank_pattern"].get(p, written["r"]) for p in written["target_modules"]}
    assert len(set(ranks.values())) > 1

    os.environ["ANALYSIS_CACHE_DIR"] = str(cache)
    try:
        for page, expected in (("overview.py", "toy"), ("budget.py", "toy"), ("export.py", "Toy weight norm")):
            app = AppTest.from_file(str(REPO / "pages" / page), default_timeout=120).run()
            assert not app.exception, [e.message for e in app.exception]
            shown = json.dumps([str(e.proto) for e in app.main], default=str) + " ".join(
                str(m.value) for m in app.markdown) + " ".join(str(s.options) for s in app.multiselect)
            assert expected in shown, page
    finally:
        del os.environ["ANALYSIS_CACHE_DIR"]
