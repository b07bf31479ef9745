"""runtime/'s import graph, read from the source (every import, also inside
functions): no cycle within runtime/, no import of sim/, and the sandbox
modules runtime/ imports at module level reach sim/ only inside functions.
Also the layout rules: at most 15 top-level modules, none over 400 lines."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _modules(pkg: str) -> dict[str, Path]:
    out = {}
    for f in (ROOT / pkg).rglob("*.py"):
        parts = f.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


MODULES = {**_modules("runtime"), **_modules("sandbox"), **_modules("sim")}


def _resolve(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports(module: str, top_level_only: bool = False) -> set[str]:
    """Project modules `module` imports (`from a import b`: a.b if b is a module, else a)."""
    tree = ast.parse(MODULES[module].read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        out |= {t for n in names if (t := _resolve(n)) and t != module}
    return out


def test_no_cycle_within_runtime() -> None:
    graph = {m: {t for t in imports(m) if t.startswith("runtime")}
             for m in MODULES if m.startswith("runtime")}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph[m]):
            assert state.get(t) != 1, "import cycle: " + " -> ".join([*path, m, t])
            if t not in state:
                visit(t, [*path, m])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])


def test_runtime_never_imports_sim() -> None:
    bad = {m: sorted(t for t in imports(m) if t.split(".")[0] == "sim")
           for m in MODULES if m.startswith("runtime")}
    assert not {m: t for m, t in bad.items() if t}


def _with_packages(module: str) -> list[str]:
    """`module` and the packages above it (importing it runs their __init__)."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def test_sandbox_reached_by_runtime_imports_sim_only_lazily() -> None:
    seen, todo = set(), [m for m in MODULES if m.startswith("runtime")]
    while todo:
        m = todo.pop()
        for t in {p for i in imports(m, top_level_only=True) for p in _with_packages(i)}:
            assert not t.startswith("sim"), f"{m} imports {t} at module level"
            if t not in seen and t.startswith("sandbox") and t in MODULES:
                seen.add(t)
                todo.append(t)


def test_runtime_layout_rules() -> None:
    top = sorted(p.name for p in (ROOT / "runtime").glob("*.py"))
    export_side = {"distill.py", "evaluate_onnx.py", "export.py", "export_source.py",
                   "generate.py", "onnx_export.py", "prune.py", "quantize.py"}
    # the export side moves to runtime/export/ in its own change (issue 15)
    assert len(set(top) - export_side) <= 15, top
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / "runtime").rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long
