"""The import graph of the packages, read from their source (every import, function-level
ones included): no cycle inside a package, the layering `service -> index <- training`
with no torch in `index/` or `service/`, and argparse only in the command-line modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("index", "service", "training")
CLI_MODULES = {"service.cli", "training.cli"}  # and the modules of `index.cli`


def is_cli(module: str) -> bool:
    return module in CLI_MODULES or module == "index.cli" or module.startswith("index.cli.")


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
            if top in forbidden and not (top == "argparse" and is_cli(m)):
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


#: `index/`'s layers, bottom up: a module imports only from its own layer and those below
#: (store and tuning side by side: neither imports the other).
INDEX_LAYERS: list[tuple[str, ...]] = [
    ("errors",),
    ("progress",),
    ("data",),
    ("search",),
    ("features",),
    ("matching",),
    ("store", "tuning"),
    ("scale",),
    ("cli",),
]


#: Leaf modules everything above `progress` may import (title text; images and phash):
#: they import only `errors` and `progress`.
LEAF_MODULES = {"index.features.text", "index.features.images"}


def layer_of(module: str) -> float:
    if module in LEAF_MODULES:
        return 1.5
    part = module.split(".")[1] if "." in module else ""
    for i, names in enumerate(INDEX_LAYERS):
        if part in names:
            return i
    raise AssertionError(f"{module} is in no layer of INDEX_LAYERS")


def test_index_is_subpackages_by_concern() -> None:
    flat = sorted(p.name for p in (ROOT / "index").glob("*.py"))
    assert flat == ["__init__.py", "errors.py", "progress.py"]
    subs = sorted(p.name for p in (ROOT / "index").iterdir() if (p / "__init__.py").is_file())
    assert subs == sorted(n for names in INDEX_LAYERS[2:] for n in names)


def layering_violations(g: dict[str, set[str]]) -> list[str]:
    """Imports of `index.*` modules into a higher layer, or across the two sides of one."""
    bad = []
    for m, deps in sorted(g.items()):
        if not m.startswith("index.") or m == "index":
            continue
        own = layer_of(m)
        for n in sorted(deps):
            if not n.startswith("index.") or n == m:
                continue
            other = layer_of(n)
            side = n.split(".")[1] != m.split(".")[1] and m not in LEAF_MODULES
            if other > own or (other == own and side):
                bad.append(f"{m} imports {n}")
    return bad


def test_index_layers_import_only_downwards() -> None:
    assert layering_violations(graph()) == []


def test_layer_check_catches_an_upward_import() -> None:
    ok = {"index.features.embed": {"index.search.knn", "index.errors"}}
    assert layering_violations(ok) == []
    up = {"index.search.knn": {"index.features.embed"}}
    assert layering_violations(up) == ["index.search.knn imports index.features.embed"]
    side = {"index.store.live": {"index.tuning.grids"}}
    assert layering_violations(side) == ["index.store.live imports index.tuning.grids"]
    leaf = {"index.data.synthetic": {"index.features.images"}}
    assert layering_violations(leaf) == []
    from_leaf = {"index.features.images": {"index.data.listings"}}
    assert layering_violations(from_leaf) == [
        "index.features.images imports index.data.listings"
    ]
    with pytest.raises(AssertionError):
        layer_of("index.nowhere.x")
