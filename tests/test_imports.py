"""The imports between bdk's modules: no cycle, no algorithm module that reaches the experiments or the
plotting code, and no import inside a function except of an optional package (with a comment saying so).

The graph is read from the source with ``ast`` (nothing is imported): every ``import`` and
``from ... import`` of a bdk module, at module level or inside a function, relative or absolute. An
import under ``if TYPE_CHECKING:`` never runs and is left out.
"""

from __future__ import annotations

import ast
import textwrap
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Modules that implement the book's algorithms: they may use each other, never the experiments or
# the plotting code (which are built on top of them).
ALGORITHMS = ("bdk.langevin", "bdk.sde", "bdk.samplers", "bdk.blr", "bdk.optim", "bdk.distill", "bdk.metrics",
              "bdk.data")
FORBIDDEN_FOR_ALGORITHMS = ("bdk.experiments", "bdk.plotting")

# Packages that bdk does not require (pyproject's optional dependencies, and what only a notebook or
# a test environment has): the only ones a function may import, so that bdk imports without them.
# tqdm.auto is imported late on purpose: at import time it warns on stderr where ipywidgets is missing.
OPTIONAL = {"arviz", "posteriors", "ivon", "torchvision", "IPython", "ipywidgets", "matplotlib_inline", "tqdm",
            "tqdm.auto"}

# Function-level imports in files whose owners are still moving them to the top. This list only
# shrinks: a file leaves it when its imports are fixed (test_known_failures_are_still_failures
# says when).
KNOWN_FUNCTION_IMPORTS: set[str] = set()


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the imported module (a bdk module, or the top-level name of another package)
    line: int
    in_function: bool
    commented: bool  # a comment on the import's line or the line above it


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


class _Collector(ast.NodeVisitor):
    def __init__(self, module: str, is_package: bool, modules: set[str], package: str, lines: list[str]):
        self.module, self.is_package, self.modules, self.package, self.lines = module, is_package, modules, package, lines
        self.depth = 0
        self.found: list[Import] = []

    def _add(self, target: str, node: ast.stmt) -> None:
        above = self.lines[node.lineno - 2] if node.lineno >= 2 else ""
        commented = "#" in self.lines[node.lineno - 1] or above.strip().startswith("#")
        self.found.append(Import(self.module, target, node.lineno, self.depth > 0, commented))

    def _function(self, node) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def _resolve(self, name: str) -> str:
        """A bdk module's name as it is, another package by its top-level name."""
        if name == self.package or name.startswith(self.package + "."):
            while name not in self.modules and "." in name:  # `import bdk.x.attr` is not valid, but be safe
                name = name.rsplit(".", 1)[0]
            return name
        return name.split(".")[0]

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(self._resolve(alias.name), node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.module.split(".") if self.is_package else self.module.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            name = ".".join(base + ([node.module] if node.module else []))
        else:
            name = node.module or ""
        if name == "__future__":
            return
        if name == self.package or name.startswith(self.package + "."):
            for alias in node.names:  # `from . import samplers` imports the module bdk.samplers
                sub = f"{name}.{alias.name}"
                self._add(sub if sub in self.modules else self._resolve(name), node)
        else:
            self._add(self._resolve(name), node)


def read_imports(root: Path, package: str) -> list[Import]:
    """Every import statement in the package ``root / package``, with its target resolved."""
    files = sorted((root / package).rglob("*.py"))
    modules = {_module_name(f, root) for f in files}
    found: list[Import] = []
    for f in files:
        text = f.read_text()
        collector = _Collector(_module_name(f, root), f.name == "__init__.py", modules, package, text.splitlines())
        collector.visit(ast.parse(text, filename=str(f)))
        found += collector.found
    return found


def import_graph(imports: list[Import], package: str) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for imp in imports:
        graph.setdefault(imp.source, set())
        if imp.target == package or imp.target.startswith(package + "."):
            if imp.target != imp.source:
                graph[imp.source].add(imp.target)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Cycles ``[a, b, ..., a]``: in every strongly connected component of more than one module, the
    shortest cycle through each of its modules (each cycle listed once)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def connect(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                components.append(comp)

    for v in sorted(graph):
        if v not in index:
            connect(v)
    cycles, seen = [], set()
    for comp in components:  # the shortest cycle through each module of the component, each cycle once
        for start in sorted(comp):
            path = _path(graph, start, {start}, comp, within=comp)
            if frozenset(path) not in seen:
                seen.add(frozenset(path))
                cycles.append(path)
    return cycles


def _path(graph, start: str, goals: set[str], comp: set[str], within: set[str] | None = None) -> list[str]:
    """The shortest path from ``start`` back to a module of ``goals`` (breadth first)."""
    frontier = [[start]]
    seen = set()
    while frontier:
        nxt = []
        for path in frontier:
            for w in sorted(graph.get(path[-1], ())):
                if within is not None and w not in within:
                    continue
                if w in goals:
                    return path + [w]
                if w not in seen:
                    seen.add(w)
                    nxt.append(path + [w])
        frontier = nxt
    return []


def forbidden_paths(graph: dict[str, set[str]], sources, forbidden) -> list[list[str]]:
    """For each source module that reaches a forbidden module (directly or through others), the path."""
    out = []
    for src in sources:
        reach = {m for m in graph if any(m == f or m.startswith(f + ".") for f in forbidden)}
        if src in graph and reach:
            path = _path(graph, src, reach, set())
            if path:
                out.append(path)
    return out


def function_imports(imports: list[Import], optional=OPTIONAL) -> list[Import]:
    """Imports inside functions that are not of an optional package with a comment saying why (one
    entry per statement and target)."""
    bad = [i for i in imports if i.in_function and not (i.target in optional and i.commented)]
    return list(dict.fromkeys(bad))


def _where(imp: Import) -> str:
    return f"{imp.source}:{imp.line} imports {imp.target}"


# ------------------------------------------------------------------------------------------------
# bdk
# ------------------------------------------------------------------------------------------------


def test_bdk_has_no_import_cycle():
    cycles = find_cycles(import_graph(read_imports(ROOT, "bdk"), "bdk"))
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_algorithm_modules_do_not_import_experiments_or_plotting():
    graph = import_graph(read_imports(ROOT, "bdk"), "bdk")
    paths = forbidden_paths(graph, ALGORITHMS, FORBIDDEN_FOR_ALGORITHMS)
    assert not paths, "algorithm modules reaching experiments/plotting: " + "; ".join(" -> ".join(p) for p in paths)


def test_imports_inside_functions_are_of_optional_packages_only():
    bad = [i for i in function_imports(read_imports(ROOT, "bdk")) if i.source not in KNOWN_FUNCTION_IMPORTS]
    assert not bad, "imports inside functions (move them to the top; an optional package needs a comment):\n" + "\n".join(
        map(_where, bad))


def test_known_failures_are_still_failures():
    # a module on the list whose imports are fixed must leave it, so that it stays fixed
    failing = {i.source for i in function_imports(read_imports(ROOT, "bdk"))}
    fixed = sorted(KNOWN_FUNCTION_IMPORTS - failing)
    assert not fixed, f"remove from KNOWN_FUNCTION_IMPORTS: {fixed}"


def test_the_graph_sees_bdk_imports():
    # the checker reads the real package: a few edges that exist
    graph = import_graph(read_imports(ROOT, "bdk"), "bdk")
    assert "bdk._runtime" in graph["bdk"]
    assert "bdk.samplers" in graph["bdk.experiments.sgld"]
    assert "bdk.timing" in graph["bdk.experiments.bench"]


# ------------------------------------------------------------------------------------------------
# the checker on a package with the faults
# ------------------------------------------------------------------------------------------------


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


def test_the_checker_catches_a_cycle_a_forbidden_import_and_a_function_import(tmp_path):
    _write(tmp_path, {
        "pkg/__init__.py": "from . import core\n",
        "pkg/core.py": "import math\n",
        "pkg/a.py": "from __future__ import annotations\nfrom .b import g\n",
        # the cycle hides inside a function, the way a lazy import hides one
        "pkg/b.py": "def g():\n    from . import a\n    return a\n",
        # reaches the experiments through another module
        "pkg/algo.py": "from .helper import h\n",
        "pkg/helper.py": "from pkg.experiments import run\n",
        "pkg/experiments/__init__.py": "",
        "pkg/experiments/run.py": (
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from ..algo import h\n"
            "def f():\n    import json\n    import posteriors  # optional: the reference package\n"
            "    import arviz\n"
        ),
    })
    imports = read_imports(tmp_path, "pkg")
    graph = import_graph(imports, "pkg")
    assert graph["pkg.a"] == {"pkg.b"} and graph["pkg.b"] == {"pkg.a"}
    assert graph["pkg"] == {"pkg.core"}
    assert "pkg.algo" not in graph["pkg.experiments.run"]  # TYPE_CHECKING imports never run
    assert find_cycles(graph) == [["pkg.a", "pkg.b", "pkg.a"]]
    assert forbidden_paths(graph, ["pkg.algo", "pkg.core"], ["pkg.experiments"]) == [
        ["pkg.algo", "pkg.helper", "pkg.experiments.run"]]
    bad = function_imports(imports, optional={"posteriors", "arviz"})
    # json is required, arviz is optional but has no comment saying so; posteriors is fine
    assert [(i.source, i.target, i.line) for i in bad] == [("pkg.b", "pkg.a", 2), ("pkg.experiments.run", "json", 5),
                                                           ("pkg.experiments.run", "arviz", 7)]


def test_the_checker_passes_a_clean_package(tmp_path):
    _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "import pkg.b\n",
        "pkg/b.py": "from . import c\n",
        "pkg/c.py": "def f():\n    import posteriors  # optional\n",
    })
    imports = read_imports(tmp_path, "pkg")
    graph = import_graph(imports, "pkg")
    assert find_cycles(graph) == []
    assert graph["pkg.a"] == {"pkg.b"} and graph["pkg.b"] == {"pkg.c"}
    assert function_imports(imports, optional={"posteriors"}) == []
