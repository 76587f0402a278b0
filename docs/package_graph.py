"""The order in which the packages build on each other, and the drawing of which imports which (docs/packages.svg,
via graphviz's `dot`), read from the source.

    python docs/package_graph.py            # prints the edges; writes docs/packages.dot and packages.svg

An edge A -> B means some module of A imports from B, anywhere in it (inside a function too). ORDER lists the
packages from the bottom up; a module imports only from its own package and from those below it, and packages on
one line do not import each other, except on the top line. tests/test_layout.py checks this on every module under
analysis/ and views/ and app.py. settings and errors, which every package uses, are left out of the drawing to keep
it legible.
"""
from __future__ import annotations

import ast
import shutil
import subprocess
from importlib.util import resolve_name
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ORDER = [
    ("errors",),
    ("settings",),
    ("contract",),                  # the signal record, the tidy result, the exhibit, the run, progress, job files
    ("store",),
    ("model",),
    ("allocation", "charts"),       # the shared plan rules; figures of tidy tables
    ("signals",),
    ("planning",),
    ("training",),
    ("reporting",),
    ("jobs", "__main__", "views", "app"),   # the job launcher, the command line, the dashboard
]
RANK = {package: rank for rank, line in enumerate(ORDER) for package in line}
EVERYWHERE = ("settings", "errors")


def package_of(module: str) -> str | None:
    """The package of the order a module belongs to (None: not ours)."""
    parts = module.split(".")
    if parts[0] in ("views", "app"):
        return parts[0]
    return parts[1] if parts[0] == "analysis" and len(parts) > 1 else None


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def imports(path: Path) -> list[tuple[int, str]]:
    """Every name `path` imports, anywhere in it, as (line, absolute dotted name)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            name = module_name(path)
            package = name if path.name == "__init__.py" else name.rpartition(".")[0]
            base = resolve_name("." * node.level + (node.module or ""), package) if node.level else node.module
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
    return found


def sources() -> list[Path]:
    return [*(ROOT / "analysis").rglob("*.py"), *(ROOT / "views").rglob("*.py"), ROOT / "app.py"]


def edges() -> set[tuple[str, str]]:
    found = set()
    for path in sources():
        source = package_of(module_name(path))
        for _, name in imports(path):
            target = package_of(name)
            if source and target and target != source and target not in EVERYWHERE:
                found.add((source, target))
    return found


def main() -> None:
    graph = sorted(edges(), key=lambda e: (-RANK[e[0]], -RANK[e[1]], e))
    lines = ["digraph packages {", '  rankdir=TB; node [shape=box, fontname="Helvetica", fontsize=11];']
    for line in reversed(ORDER):   # the top of the order at the top of the picture, one row per line
        shown = [f'"{package}"' for package in line if package not in EVERYWHERE]
        if shown:
            lines.append(f"  {{ rank=same; {'; '.join(shown)}; }}")
    for source, target in graph:
        print(f"{source} -> {target}")
        lines.append(f'  "{source}" -> "{target}";')
    lines.append("}")
    dot = ROOT / "docs" / "packages.dot"
    dot.write_text("\n".join(lines) + "\n")
    if shutil.which("dot"):
        subprocess.run(["dot", "-Tsvg", str(dot), "-o", str(dot.with_suffix(".svg"))], check=True)


if __name__ == "__main__":
    main()
