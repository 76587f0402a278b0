"""Draw which packages of analysis/ import which (docs/packages.svg, via graphviz's `dot`), from the source.

    python docs/package_graph.py            # prints the edges; writes docs/packages.dot and packages.svg

An edge A -> B means some module in package A imports from package B. Dashed edges are the deferred ones:
an import inside a function, or a signal's own figures module (signals hand their figures to reporting
through a hook). settings and errors, which every package uses, are left out to keep the picture legible.
"""
from __future__ import annotations

import ast
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["pages", "__main__", "reporting", "training", "planning", "signals", "model", "jobs", "store"]
EVERYWHERE = ("settings", "errors")


def package_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] == "pages":
        return "pages"
    if parts[0] != "analysis" or len(parts) < 2:
        return None
    return parts[1] if parts[1] in PACKAGES else None


def _deferred(tree: ast.Module) -> set[int]:
    """Line numbers of imports inside functions."""
    inside = set()
    for function in ast.walk(tree):
        if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            inside |= {n.lineno for n in ast.walk(function) if isinstance(n, (ast.Import, ast.ImportFrom))}
    return inside


def edges() -> dict[tuple[str, str], bool]:
    """(importer, imported) -> whether every such import is deferred."""
    graph: dict[tuple[str, str], bool] = defaultdict(lambda: True)
    for path in [*(ROOT / "analysis").rglob("*.py"), *(ROOT / "pages").rglob("*.py")]:
        source = package_of(".".join(path.relative_to(ROOT).with_suffix("").parts))
        if source is None:
            continue
        tree = ast.parse(path.read_text())
        deferred = _deferred(tree)
        hook = path.name.endswith("_figures.py")
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            for target in targets:
                package = package_of(target)
                if package and package != source and target.split(".")[1:2] != ["pages"]:
                    # the command line defers every import for start-up speed: those are plain dependencies
                    graph[(source, package)] &= (hook or node.lineno in deferred) and source != "__main__"
    return graph


def main() -> None:
    graph = edges()
    lines = ["digraph packages {", '  rankdir=TB; node [shape=box, fontname="Helvetica", fontsize=11];']
    for (source, target), deferred in sorted(graph.items(), key=lambda e: (PACKAGES.index(e[0][0]),
                                                                             PACKAGES.index(e[0][1]))):
        print(f"{source} -> {target}{'  (deferred)' if deferred else ''}")
        style = ' [style=dashed, color="gray40"]' if deferred else ""
        lines.append(f'  "{source}" -> "{target}"{style};')
    lines.append("}")
    dot = ROOT / "docs" / "packages.dot"
    dot.write_text("\n".join(lines) + "\n")
    if shutil.which("dot"):
        subprocess.run(["dot", "-Tsvg", str(dot), "-o", str(dot.with_suffix(".svg"))], check=True)


if __name__ == "__main__":
    main()
