"""The layers of pipelines, read from the imports of its files (`ast`, nothing is imported): each engine has one
door — fsspec in storage/, Ray in execution/workers/, Prefect in flows.py — and the light modules that the CLI
loads to build its parser import no engine at all. And the graph: no import cycle between dipcore's modules, none
between pipelines' modules or subpackages (function-level and TYPE_CHECKING imports counted), and dipcore imports
nothing of pipelines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"
DOORS = {"fsspec": {"storage/"}, "ray": {"execution/workers/"}, "prefect": {"flows.py"}}
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
    """A door is a file, or a package (its name ends with "/"): every importer lies in it."""
    importers = {name for name, imports in _files().items() if engine in imports}
    doors = DOORS[engine]
    inside = {n for n in importers if n in doors or any(d.endswith("/") and n.startswith(d) for d in doors)}
    assert importers and inside == importers, sorted(importers - inside)


def test_the_modules_the_cli_reads_for_its_parser_import_no_engine():
    """Not even inside a function (the commands themselves import engines in their bodies: test_cli runs --help)."""
    files = _files()
    for name in LIGHT:
        assert not files[name] & HEAVY, f"{name} imports {sorted(files[name] & HEAVY)}"


# ---------------------------------------------------------------------------------------------------------------------
# The graph: which module imports which, at module level, inside a function or under TYPE_CHECKING alike.

ROOT = PIPELINES.parent


def _module(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graph(package: str, root: Path = ROOT) -> dict[str, set[str]]:
    """Each module of ``package`` → the modules of ``package`` it imports (``from . import x`` names module x)."""
    paths = {_module(p, root): p for p in sorted((root / package).rglob("*.py"))}
    graph = {}
    for name, path in paths.items():
        here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the package `level - 1` steps above this module's
                    base = ".".join([*here[: len(here) - node.level + 1], base]).strip(".")
                targets |= {f"{base}.{a.name}" if f"{base}.{a.name}" in paths else base for a in node.names}
        graph[name] = {known for t in targets if (known := _known(t, paths)) and known != name}
    return graph


def _known(target: str, modules: dict[str, Path]) -> str:
    """The module of ``modules`` that ``target`` is or lies in ('' when none: another package)."""
    while target and target not in modules:
        target = target.rpartition(".")[0]
    return target


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan's algorithm): each is a cycle or several."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def _by_subpackage(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The graph between a package's top-level modules and subpackages (pipelines.execution.x: pipelines.execution)."""
    top = lambda name: ".".join(name.split(".")[:2])  # noqa: E731
    collapsed: dict[str, set[str]] = {}
    for name, targets in graph.items():
        collapsed.setdefault(top(name), set()).update(top(t) for t in targets if top(t) != top(name))
    return collapsed


def test_the_graph_sees_every_kind_of_import(tmp_path):
    """The reader itself: a function-level and a TYPE_CHECKING import count as much as a module-level one."""
    files = {
        "__init__.py": "from .a import f\n",
        "a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .sub.b import B\ndef f():\n    pass\n",
        "sub/__init__.py": "",
        "sub/b.py": "import os\ndef g():\n    from .. import c\n",
        "c.py": "from pkg.sub import b\n",
    }
    for name, text in files.items():
        (tmp_path / "pkg" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "pkg" / name).write_text(text)
    graph = _graph("pkg", tmp_path)
    assert graph == {
        "pkg": {"pkg.a"},
        "pkg.a": {"pkg.sub.b"},
        "pkg.sub": set(),
        "pkg.sub.b": {"pkg.c"},
        "pkg.c": {"pkg.sub.b"},
    }
    assert _cycles(graph) == [["pkg.c", "pkg.sub.b"]]
    assert _cycles(_by_subpackage(graph)) == [["pkg.c", "pkg.sub"]]


def test_dipcore_has_no_import_cycle():
    graph = _graph("dipcore")
    assert len(graph) > 20 and _cycles(graph) == []


def test_dipcore_imports_nothing_of_pipelines():
    importers = {p.name for p in (ROOT / "dipcore").rglob("*.py") if "pipelines" in _imports(p)}
    assert importers == set()


def test_pipelines_has_no_import_cycle():
    graph = _graph("pipelines")
    assert len(graph) > 20 and (_cycles(graph), _cycles(_by_subpackage(graph))) == ([], [])


LONGEST = 60
# Functions allowed over `LONGEST` lines, each with why: argparse argument tables read best whole.
LONG_ALLOWED = {("pipelines/cli.py", "build_parser"): "argparse argument table"}
# Files whose every function is let off while they are split; drop an entry when its split lands.
BEING_SPLIT: dict[str, str] = {}


def _lengths(path: Path) -> dict[str, int]:
    """Lines of each function's body in `path` (qualified name → lines), from the first statement after its
    docstring to the end of its last; a nested function counts in its own entry and within the one holding it."""
    lengths: dict[str, int] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            name = prefix
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                body = child.body[1:] if ast.get_docstring(child) is not None else child.body
                lengths[name] = body[-1].end_lineno - body[0].lineno + 1 if body else 0
            visit(child, f"{name}." if name != prefix else prefix)

    visit(ast.parse(path.read_text()), "")
    return lengths


def test_the_length_reader_skips_the_docstring_and_sees_nested_functions(tmp_path):
    (tmp_path / "m.py").write_text(
        'def f():\n    """Doc\n    string."""\n    x = 1\n\n    def g():\n        return (\n            x\n        )\n'
        "    return g\n\n\nclass C:\n    async def h(self):\n        pass\n"
    )
    assert _lengths(tmp_path / "m.py") == {"f": 7, "f.g": 3, "C.h": 1}


def test_no_function_over_sixty_lines_outside_the_allowed():
    """dipcore and pipelines read one screen at a time: no function body over `LONGEST` lines but those allowed
    (`LONG_ALLOWED`, `BEING_SPLIT`, each with its reason), and every allowed one is still long (an entry cannot
    outlive its function)."""
    long = {}
    for package in ("dipcore", "pipelines"):
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            long |= {(rel, name): n for name, n in _lengths(path).items() if n > LONGEST}
    assert {
        (f, name): n for (f, name), n in long.items() if (f, name) not in LONG_ALLOWED and f not in BEING_SPLIT
    } == {}
    stale = {(f, name) for f, name in LONG_ALLOWED if f not in BEING_SPLIT} - set(long)
    assert stale == set(), "allowed, but no longer over the limit: drop the entry"
