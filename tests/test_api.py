"""The public API of `index` (`from index import ...`): every name of `__all__` is the object
its module defines, loaded lazily (importing `index` loads none of the heavy libraries)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import index

ROOT = Path(__file__).resolve().parents[1]


def defined_at_top(module: str) -> set[str]:
    """Names a module's source defines at top level (read from the file, not imported)."""
    path = ROOT / Path(*module.split(".")).with_suffix(".py")
    names: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


def test_every_public_name_is_defined_where_the_api_says() -> None:
    assert len(index.__all__) > 50
    for name, module in index.API.items():
        assert name in defined_at_top(module), f"{module} does not define {name}"


@pytest.mark.parametrize(
    ("name", "module"),
    [
        ("read_catalogue", "index.data.listings"),
        ("self_match", "index.matching.selfmatch"),
        ("load_model", "index.store.model"),
        ("FaissFlatStore", "index.search.stores"),
        ("FusionConfig", "index.matching.fusion"),
    ],
)
def test_a_public_name_is_its_modules_object(name: str, module: str) -> None:
    import importlib

    assert getattr(index, name) is getattr(importlib.import_module(module), name)


def test_star_import_and_unknown_names() -> None:
    ns: dict[str, object] = {}
    exec("from index import *", ns)
    assert {"self_match", "LiveCatalogue", "__version__"} <= set(ns)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = index.nope  # type: ignore[attr-defined]


def test_importing_index_loads_no_heavy_library() -> None:
    code = (
        "import sys, index; "
        "print(sorted(m for m in ('faiss', 'sklearn', 'onnxruntime', 'scipy') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "[]"


def test_building_the_cli_parser_loads_no_numeric_library() -> None:
    """`pricematch --help` builds every command's parser: no numpy, faiss, sklearn, scipy,
    onnxruntime or torch (the handlers' modules load when their command runs)."""
    code = (
        "import sys; from index.cli.parser import build_parser; p = build_parser(); "
        "p.parse_args(['match', 'x.csv', '-o', 'y.csv']); "
        "print(sorted(m for m in ('numpy', 'faiss', 'sklearn', 'scipy', 'onnxruntime', 'torch', "
        "'index.cli.commands') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "[]"
