"""The layout rules docs/architecture.md states, checked on the tree itself: one file name per module, the order
in which the packages build on each other (read from every module's imports), and a signal's folder standing on
its own."""
import importlib.util
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ANALYSIS = REPO / "analysis"


def test_no_two_engine_modules_share_a_file_name():
    names = Counter(p.name for p in ANALYSIS.rglob("*.py") if p.name != "__init__.py")
    assert [name for name, count in names.items() if count > 1] == []


def test_only_the_entry_points_sit_at_the_top_of_the_engine():
    top = {p.name for p in ANALYSIS.glob("*.py")}
    assert top <= {"__init__.py", "__main__.py", "settings.py", "errors.py"}


def test_every_signal_folder_registers_exactly_its_own_signal_by_its_name():
    from analysis.signals.registry import all_signals
    folders = {p.parent.name for p in (ANALYSIS / "signals").glob("*/__init__.py")} - {"lora"}
    ours = {name: s for name, s in all_signals().items() if s.compute.__module__.startswith("analysis.signals.")}
    assert {s.compute.__module__.split(".")[2] for s in ours.values()} == folders
    assert set(ours) == folders   # the folder is named as the signal it registers


def test_the_engine_never_imports_streamlit():
    """Any form of import, anywhere in a module (`import streamlit`, `from streamlit import ...`, inside a function)."""
    reader = _order()
    assert not [(p, line) for p in ANALYSIS.rglob("*.py") for line, name in reader.imports(p)
                if name.split(".")[0] == "streamlit"]



def _order():
    """docs/package_graph.py: the order the packages build on each other, and the import reader that draws it."""
    spec = importlib.util.spec_from_file_location("package_graph", REPO / "docs" / "package_graph.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GRAPH = _order()


def test_every_package_has_its_place_in_the_order():
    packages = {p.name for p in ANALYSIS.iterdir() if (p / "__init__.py").exists()}
    modules = {p.stem for p in ANALYSIS.glob("*.py") if p.name != "__init__.py"}
    assert packages | modules <= set(GRAPH.RANK), (packages | modules) - set(GRAPH.RANK)


def test_no_module_imports_from_a_package_above_its_own():
    rank, top = GRAPH.RANK, len(GRAPH.ORDER) - 1
    upward, sideways = [], []
    for path in GRAPH.sources():
        source = GRAPH.package_of(GRAPH.module_name(path))
        if source is None:
            continue
        for line, module in GRAPH.imports(path):
            target = GRAPH.package_of(module)
            if target is None or target == source:
                continue
            where = f"{path.relative_to(REPO)}:{line} imports {module}"
            if rank[target] > rank[source]:
                upward.append(f"{where} ({target} is above {source})")
            elif rank[target] == rank[source] and rank[source] < top:   # only the top line's packages may share
                sideways.append(f"{where} ({target} and {source} are on one line)")
    assert upward == [], "\n".join(upward)
    assert sideways == [], "\n".join(sideways)


def test_a_signal_folder_imports_no_other_signal_folder():
    """A signal owns what it is: its folder may use the signals package's shared parts (registry, context, runner,
    parallel, lora/) but not another signal's folder."""
    folders = {p.parent.name for p in (ANALYSIS / "signals").glob("*/__init__.py")} - {"lora"}
    crossing = []
    for folder in folders:
        for path in (ANALYSIS / "signals" / folder).rglob("*.py"):
            for line, module in GRAPH.imports(path):
                parts = module.split(".")
                if parts[:2] == ["analysis", "signals"] and len(parts) > 2 and parts[2] in folders - {folder}:
                    crossing.append(f"{path.relative_to(REPO)}:{line} imports {module}")
    assert crossing == [], "\n".join(crossing)
