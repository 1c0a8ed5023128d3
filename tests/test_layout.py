"""The package's shape, as the README's Layout section promises it: one job per module,
imports that point one way, FAISS behind ``index`` (and ``metrics``), and ``store`` the one
module that joins the index, the catalog and the embedder."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import qvec

PACKAGE = Path(qvec.__file__).parent
README = PACKAGE.parent / "README.md"


def imports() -> dict[str, set[str]]:
    """module -> the qvec modules (and third-party top-level packages) it imports, anywhere in it."""
    out: dict[str, set[str]] = {}
    for path in PACKAGE.glob("*.py"):
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:  # from .x import y / from . import y
                    found |= {node.module} if node.module else {a.name for a in node.names
                                                                if (PACKAGE / f"{a.name}.py").exists()} or {"__init__"}
                else:
                    found.add(node.module.split(".")[0])
            elif isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
        out[path.stem] = found
    return out


def test_the_import_graph_is_acyclic():
    graph = {m: {d for d in deps if (PACKAGE / f"{d}.py").exists() and d != "__init__"}
             for m, deps in imports().items()}
    done: set[str] = set()

    def visit(m, path):
        assert m not in path, f"import cycle: {' -> '.join(path + [m])}"
        if m not in done:
            for d in graph[m]:
                visit(d, path + [m])
            done.add(m)

    for m in graph:
        visit(m, [])


def test_faiss_is_imported_by_index_and_metrics_only():
    assert {m for m, deps in imports().items() if "faiss" in deps} == {"index", "metrics"}


def test_store_alone_joins_index_catalog_and_embedder():
    joined = {m for m, deps in imports().items() if {"index", "catalog", "embedder"} <= deps}
    assert joined == {"store"}
    assert not {"index", "catalog", "journal"} & imports()["cli"]  # the CLI goes through the store


def test_store_is_a_facade_of_a_few_hundred_lines():
    assert len((PACKAGE / "store.py").read_text().splitlines()) < 400


def test_the_readme_layout_lists_every_module():
    layout = README.read_text().split("## Layout", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\s*(\w+)\.py\b", layout, flags=re.M))
    assert listed == {p.stem for p in PACKAGE.glob("*.py")}
