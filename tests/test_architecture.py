"""The layout's rules, checked from the source (issue 15).

The import graph of sandbox/, sim/ and runtime/ is read with `ast`: every
`import` and `from ... import`, also those inside functions, relative ones
resolved, each edge pointing at the deepest module of the three packages it
names. Imports under `if TYPE_CHECKING:` are left out: they never run, so
they are no dependency (they only name types for annotations).

- no import cycle within sandbox/, within sim/, within runtime/;
- no edge between sim/ and runtime/, either way;
- sandbox/ imports sim/ and runtime/ only inside functions (lazily), so
  importing either interpreter never loads the other through sandbox;
- no module over 400 lines; runtime/ has at most 15 top-level modules;
- `import sandbox` loads neither torch nor simpy nor networkx;
- no code edits `sys.path` (experiments run as `python -m experiments.NAME`).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("sandbox", "sim", "runtime")
INTERPRETERS = ("sim", "runtime")
MAX_LINES = 400
MAX_RUNTIME_MODULES = 15
HEAVY = ("torch", "simpy", "networkx")


@dataclass(frozen=True)
class Import:
    """`source` imports `target` (both dotted module names) at `line`."""

    source: str
    target: str
    line: int
    module_level: bool  # runs when `source` is imported (not inside a function)

    def __str__(self) -> str:
        where = "" if self.module_level else " (in a function)"
        return f"{self.source} -> {self.target} (line {self.line}{where})"


def package_of(module: str) -> str:
    return module.split(".")[0]


def module_files(root: Path, packages: Iterable[str]) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file under the packages."""
    out = {}
    for pkg in packages:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    """`if TYPE_CHECKING:` or `if typing.TYPE_CHECKING:`."""
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


class _Collector(ast.NodeVisitor):
    """The import statements of one module, with whether each runs at import time."""

    def __init__(self) -> None:
        self.found: list[tuple[ast.Import | ast.ImportFrom, bool]] = []
        self._depth = 0  # enclosing function definitions

    def _in_function(self, node: ast.AST) -> None:
        self._depth += 1
        self.generic_visit(node)
        self._depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _in_function

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            for stmt in node.orelse:
                self.visit(stmt)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self.found.append((node, self._depth == 0))

    visit_ImportFrom = visit_Import


def _deepest_known(name: str, modules: dict[str, Path]) -> str | None:
    """`name` or its nearest enclosing package that is one of `modules`."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _targets(module: str, node: ast.Import | ast.ImportFrom,
             modules: dict[str, Path]) -> list[str]:
    """The modules one import statement in `module` names."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:  # relative: from the package holding `module`
            package = module.split(".")
            if modules[module].name != "__init__.py":
                package = package[:-1]
            package = package[:len(package) - (node.level - 1)]
            base = ".".join(package + ([base] if base else []))
        # `from pkg import mod` names the submodule when there is one
        names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                 for alias in node.names]
    return [t for n in names if (t := _deepest_known(n, modules))]


def import_graph(root: Path, packages: Iterable[str]) -> list[Import]:
    """Every import between modules of `packages` under `root` (self-imports left out)."""
    modules = module_files(root, packages)
    edges = []
    for module, path in modules.items():
        collector = _Collector()
        collector.visit(ast.parse(path.read_text(), str(path)))
        for node, module_level in collector.found:
            edges += [Import(module, target, node.lineno, module_level)
                      for target in _targets(module, node, modules) if target != module]
    return edges


@cache
def project_graph() -> tuple[Import, ...]:
    return tuple(import_graph(ROOT, PACKAGES))


def cycles(edges: Iterable[Import]) -> list[list[Import]]:
    """One cycle through each strongly connected group of modules (modules that
    all reach each other), as its edges."""
    edges = list(edges)
    g = nx.DiGraph()
    for e in edges:
        g.add_edge(e.source, e.target, imp=e)
    out = []
    for group in nx.strongly_connected_components(g):
        if len(group) > 1:
            cycle = nx.find_cycle(g.subgraph(group))
            out.append([g.edges[a, b]["imp"] for a, b in cycle])
    return out


def _describe(found: list[list[Import]]) -> str:
    return "\n".join("  " + "; ".join(map(str, c)) for c in found)


def _groups(edges: Iterable[Import]) -> list[list[str]]:
    g = nx.DiGraph([(e.source, e.target) for e in edges])
    return [sorted(c) for c in nx.strongly_connected_components(g) if len(c) > 1]


# ------------------------------------------------------------------ the checker itself
def test_graph_sees_imports_in_functions_and_relative_ones_but_not_type_only(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from pkg.a import f\n")
    (pkg / "a.py").write_text("def f():\n    from . import b\n    return b\n")
    (pkg / "b.py").write_text("from typing import TYPE_CHECKING\nfrom .a import f\n"
                              "if TYPE_CHECKING:\n    from pkg.sub import c\n")
    (pkg / "sub" / "__init__.py").write_text("from .. import b\n")
    (pkg / "sub" / "c.py").write_text("import pkg.sub\nfrom ..a import f as g\n")
    edges = {(e.source, e.target, e.module_level) for e in import_graph(tmp_path, ["pkg"])}
    assert edges == {("pkg", "pkg.a", True), ("pkg.a", "pkg.b", False),
                     ("pkg.b", "pkg.a", True), ("pkg.sub", "pkg.b", True),
                     ("pkg.sub.c", "pkg.sub", True), ("pkg.sub.c", "pkg.a", True)}
    (found,) = cycles(import_graph(tmp_path, ["pkg"]))
    assert {e.source for e in found} == {"pkg.a", "pkg.b"}  # broken only inside f: still one


def test_the_project_graph_is_read():
    edges = project_graph()
    for pkg in PACKAGES:  # each package imports its own modules and sandbox's specs
        assert any(package_of(e.source) == pkg for e in edges), pkg
        assert any(e.source.startswith(pkg) and e.target == "sandbox.specs" for e in edges)


# ------------------------------------------------------------------ the rules
@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycle_within_a_package(package):
    inside = [e for e in project_graph()
              if package_of(e.source) == package_of(e.target) == package]
    found = cycles(inside)
    assert not found, (f"import cycles in {package}/ among {_groups(inside)}, e.g.:\n"
                       f"{_describe(found)}")


def test_sim_and_runtime_never_import_each_other():
    crossing = [str(e) for e in project_graph()
                if {package_of(e.source), package_of(e.target)} == set(INTERPRETERS)]
    assert not crossing, "sim <-> runtime imports:\n  " + "\n  ".join(crossing)


def test_sandbox_imports_the_interpreters_only_lazily():
    eager = [str(e) for e in project_graph() if package_of(e.source) == "sandbox"
             and package_of(e.target) in INTERPRETERS and e.module_level]
    assert not eager, ("sandbox/ imports an interpreter at module level (import it inside "
                       "the function that needs it):\n  " + "\n  ".join(eager))


@pytest.mark.parametrize("interpreter", INTERPRETERS)
def test_importing_an_interpreter_never_loads_the_other(interpreter):
    """Follow module-level imports from every module of one interpreter (through
    sandbox too): none reaches the other interpreter."""
    other = next(p for p in INTERPRETERS if p != interpreter)
    g = nx.DiGraph()
    for e in project_graph():
        if e.module_level:
            g.add_edge(e.source, e.target)
    bad = []
    for module in [m for m in g if package_of(m) == interpreter]:
        reached = nx.single_source_shortest_path(g, module)
        bad += [" -> ".join(path) for target, path in reached.items()
                if package_of(target) == other]
    assert not bad, f"importing {interpreter} loads {other}:\n  " + "\n  ".join(bad[:10])


def test_no_module_over_400_lines():
    long = {str(path.relative_to(ROOT)): n
            for path in module_files(ROOT, (*PACKAGES, "experiments")).values()
            if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_runtime_has_at_most_15_top_level_modules():
    top = sorted(p.name for p in (ROOT / "runtime").glob("*.py") if p.name != "__init__.py")
    assert len(top) <= MAX_RUNTIME_MODULES, (
        f"runtime/ has {len(top)} top-level modules (at most {MAX_RUNTIME_MODULES}): {top}")


def _edits_sys_path(node: ast.AST) -> bool:
    """`sys.path.insert(...)` (append, extend, remove, ...) or `sys.path = ...`."""
    def is_sys_path(e: ast.AST) -> bool:
        return (isinstance(e, ast.Attribute) and e.attr == "path"
                and isinstance(e.value, ast.Name) and e.value.id == "sys")

    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        return is_sys_path(node.func.value)
    if isinstance(node, (ast.Assign, ast.AugAssign)):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        return any(is_sys_path(t) for t in targets)
    return False


def test_edits_sys_path_is_seen(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "m.py").write_text("import sys\nsys.path.insert(0, '.')\n")
    path = tmp_path / "pkg" / "m.py"
    assert any(_edits_sys_path(n) for n in ast.walk(ast.parse(path.read_text())))


def test_no_code_edits_sys_path():
    found = [f"{path.relative_to(ROOT)}:{node.lineno}"
             for path in module_files(ROOT, (*PACKAGES, "experiments", "tests")).values()
             for node in ast.walk(ast.parse(path.read_text())) if _edits_sys_path(node)]
    assert not found, f"sys.path edited at {found}"


def test_import_sandbox_loads_no_heavy_dependency():
    code = f"import sys, sandbox; print([m for m in {HEAVY!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
