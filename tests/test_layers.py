"""The layers of pipelines, read from the imports of its files (`ast`, nothing is imported): each engine has one
door — fsspec in storage.py, Ray in execution/workers.py, Prefect in flows.py — and the light modules that the CLI
loads to build its parser import no engine at all."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"
DOORS = {"fsspec": {"storage.py"}, "ray": {"execution/workers.py"}, "prefect": {"flows.py"}}
LIGHT = ["errors.py", "stats.py", "evaluation/benchmarks.py", "evaluation/paper.py", "execution/options.py"]
HEAVY = {"torch", "ray", "prefect", "pyarrow", "fsspec", "numpy", "dipcore"}


def _imports(path: Path) -> set[str]:
    """Top-level names of every module `path` imports, at module level or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def _files() -> dict[str, set[str]]:
    return {p.relative_to(PIPELINES).as_posix(): _imports(p) for p in sorted(PIPELINES.rglob("*.py"))}


@pytest.mark.parametrize("engine", sorted(DOORS))
def test_each_engine_has_one_door(engine):
    importers = {name for name, imports in _files().items() if engine in imports}
    assert importers == DOORS[engine]


def test_the_modules_the_cli_reads_for_its_parser_import_no_engine():
    """Not even inside a function (the commands themselves import engines in their bodies: test_cli runs --help)."""
    files = _files()
    for name in LIGHT:
        assert not files[name] & HEAVY, f"{name} imports {sorted(files[name] & HEAVY)}"
