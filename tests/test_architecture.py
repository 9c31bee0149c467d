"""The import graph of the packages, read from their source (every import, function-level
ones included): no cycle inside a package, the layering `service -> index <- training`
with no torch in `index/` or `service/`, and argparse only in the command-line modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("index", "service", "training")
CLI_MODULES = {"index.cli", "index.commands", "service.cli", "training.cli"}


def module_files() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for p in (ROOT / pkg).rglob("*.py"):
            name = ".".join(p.relative_to(ROOT).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = p
    return out


def imports_of(path: Path) -> set[str]:
    """Every module name an `import` or `from ... import` in the file names (absolute)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


def graph() -> dict[str, set[str]]:
    files = module_files()
    return {
        m: {n for n in imports_of(p) if n in files and n != m and n != m.split(".")[0]}
        for m, p in files.items()
    }


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_in_any_package() -> None:
    g = graph()
    assert len(g) > 40
    assert cycles(g) == []


@pytest.mark.parametrize(
    ("pkg", "forbidden"),
    [
        ("index", ("torch", "service", "training", "argparse")),
        ("service", ("torch", "training", "argparse")),
        ("training", ("service", "argparse")),
    ],
)
def test_layers(pkg: str, forbidden: tuple[str, ...]) -> None:
    bad = []
    for m, p in module_files().items():
        if m.split(".")[0] != pkg:
            continue
        for n in imports_of(p):
            top = n.split(".")[0]
            if top in forbidden and not (top == "argparse" and m in CLI_MODULES):
                bad.append(f"{m} imports {n}")
    assert bad == []


def test_no_private_name_is_imported_across_modules() -> None:
    files = module_files()
    bad = []
    for m, p in files.items():
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module in files:
                bad += [
                    f"{m} imports {node.module}.{a.name}"
                    for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__")
                ]
    assert bad == []
