"""The layout rules docs/architecture.md states, checked on the tree itself."""
from collections import Counter
from pathlib import Path

ANALYSIS = Path(__file__).resolve().parents[1] / "analysis"


def test_no_two_engine_modules_share_a_file_name():
    names = Counter(p.name for p in ANALYSIS.rglob("*.py") if p.name != "__init__.py")
    assert [name for name, count in names.items() if count > 1] == []


def test_only_the_entry_points_sit_at_the_top_of_the_engine():
    top = {p.name for p in ANALYSIS.glob("*.py")}
    assert top <= {"__init__.py", "__main__.py", "settings.py", "errors.py"}


def test_every_signal_folder_registers_exactly_its_own_signal():
    from analysis.signals.registry import all_signals
    folders = {p.parent.name for p in (ANALYSIS / "signals").glob("*/__init__.py")} - {"lora"}
    by_module = {s.compute.__module__.split(".")[2] for s in all_signals().values()
                 if s.compute.__module__.startswith("analysis.signals.")}
    assert by_module == folders


def test_the_engine_never_imports_streamlit():
    assert not [p for p in ANALYSIS.rglob("*.py") if "import streamlit" in p.read_text()]
