"""The package's own imports: no cycles, no import up the stack, subcommands independent, files short.

Walks the source with `ast` (function-level imports included), so an import hidden inside a function to dodge
a cycle at start-up still counts.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "laserlm"

# Each stage may import the stages of a lower rank, never its own rank's other packages or a higher one.
RANK = {"errors": 0, "_version": 0, "core": 1, "models": 2, "evaluation": 2, "sweep": 3, "analysis": 4,
        "api": 4.5, "cli": 5, "__init__": 6, "__main__": 7}


def module_name(path: Path, src: Path = SRC) -> str:
    rel = path.relative_to(src.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(node: ast.ImportFrom, here: str, is_package: bool, modules) -> set[str]:
    if node.level == 0:
        base = node.module or ""
    else:
        parts = here.split(".")
        parts = parts if is_package else parts[:-1]
        parts = parts[: len(parts) - (node.level - 1)]
        base = ".".join(parts + ([node.module] if node.module else []))
    # `from pkg import x` imports the module pkg.x where one exists, else the name x of pkg itself.
    found = {f"{base}.{a.name}" for a in node.names} & modules
    return found if len(found) == len(node.names) else found | ({base} & modules)


def import_graph(src: Path = SRC) -> dict[str, set[str]]:
    files = {module_name(p, src): p for p in src.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names} & files.keys()
            elif isinstance(node, ast.ImportFrom):
                targets |= _resolve(node, name, path.name == "__init__.py", files.keys())
        graph[name] = targets - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle as a list of modules (first == last), or None; ignores a package importing its own children."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if m.startswith(n + "."):  # a package's __init__ re-exporting its children is not a cycle
                continue
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if state.get(m) is None and (c := visit(m)):
                return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if state.get(n) is None and (c := visit(n)):
            return c
    return None


def stage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for a, targets in graph.items():
        for b in targets:
            sa, sb = stage(a), stage(b)
            if sa != sb and RANK[sb] >= RANK[sa]:
                bad.append(f"{a} -> {b}")
    return sorted(bad)


def test_every_stage_has_a_rank():
    assert {stage(m) for m in import_graph()} <= set(RANK)


def test_no_import_cycle():
    assert find_cycle(import_graph()) is None


def test_imports_point_down_the_stack():
    assert upward_imports(import_graph()) == []


def test_subcommands_import_no_sibling():
    graph = import_graph()
    shared = {"laserlm.cli", "laserlm.cli.options", "laserlm.cli.jobs", "laserlm.cli.main"}
    for mod, targets in graph.items():
        if stage(mod) == "cli" and mod not in shared:
            siblings = {t for t in targets if stage(t) == "cli" and t not in shared}
            assert not siblings, f"{mod} imports {siblings}"


def test_no_source_file_over_400_lines():
    long = {str(p.relative_to(SRC)): n for p in SRC.rglob("*.py") if (n := len(p.read_text().splitlines())) > 400}
    assert long == {}


# The checker itself must be able to fail: a package written to disk with a cycle and an upward import.
@pytest.fixture
def bad_tree(tmp_path):
    pkg = tmp_path / "laserlm"
    for sub in ("core", "sweep"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "core" / "a.py").write_text("def f():\n    from ..sweep.b import g\n")  # hidden in a function
    (pkg / "sweep" / "b.py").write_text("from ..core import a\nimport laserlm.sweep.c\n")
    (pkg / "sweep" / "c.py").write_text("from . import b, d\n")
    (pkg / "sweep" / "d.py").write_text("")
    return pkg


def test_checker_finds_a_cycle_and_an_upward_import(bad_tree):
    graph = import_graph(bad_tree)
    assert graph["laserlm.core.a"] == {"laserlm.sweep.b"}
    assert graph["laserlm.sweep.b"] == {"laserlm.core.a", "laserlm.sweep.c"}
    assert graph["laserlm.sweep.c"] == {"laserlm.sweep.b", "laserlm.sweep.d"}
    cycle = find_cycle(graph)
    assert cycle and cycle[0] == cycle[-1] and len(cycle) == 3
    assert upward_imports(graph) == ["laserlm.core.a -> laserlm.sweep.b"]
