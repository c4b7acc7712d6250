"""Structure: no function in studio/ or trainers/ over 100 lines and no class over 400, so each reads in one
sitting; trainers/ keeps its concerns in sub-packages (at most 10 modules at its top); no import circle."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 100


def node_lengths(folder: Path, kinds: tuple[type, ...]) -> list[tuple[int, str]]:
    """(lines, "path:line name") of every node of `kinds` below folder, nested ones included."""
    out = []
    for path in sorted(folder.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, kinds):
                lines = node.end_lineno - node.lineno + 1
                out.append((lines, f"{path.relative_to(folder.parent)}:{node.lineno} {node.name}"))
    return out


def function_lengths(folder: Path) -> list[tuple[int, str]]:
    """Every function and method below folder, nested ones included."""
    return node_lengths(folder, (ast.FunctionDef, ast.AsyncFunctionDef))


def test_counter_measures_lines_from_def_to_last_statement(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(5))
    (tmp_path / "m.py").write_text(f"def outer():\n    def inner():\n        pass\n{body}\n    return 0\n")
    lengths = dict((name.split()[-1], n) for n, name in function_lengths(tmp_path))
    assert lengths == {"outer": 9, "inner": 2}


def test_no_function_over_100_lines():
    too_long = [
        f"{name} ({lines} lines)"
        for folder in ("studio", "trainers")
        for lines, name in function_lengths(ROOT / folder)
        if lines > MAX_LINES
    ]
    assert not too_long, f"functions over {MAX_LINES} lines, split them: " + ", ".join(too_long)


MAX_CLASS_LINES = 400
MAX_TOP_MODULES = 10


def class_lengths(folder: Path) -> list[tuple[int, str]]:
    """Every class below folder."""
    return node_lengths(folder, (ast.ClassDef,))


def test_no_class_over_400_lines():
    too_long = [
        f"{name} ({lines} lines)"
        for folder in ("studio", "trainers")
        for lines, name in class_lengths(ROOT / folder)
        if lines > MAX_CLASS_LINES
    ]
    assert not too_long, f"classes over {MAX_CLASS_LINES} lines, split them: " + ", ".join(too_long)


def test_trainers_top_holds_at_most_10_modules_and_the_rest_in_packages():
    top = sorted(p.name for p in (ROOT / "trainers").glob("*.py"))
    assert len(top) <= MAX_TOP_MODULES, top
    for package in ("data", "metrics", "training", "runs", "evaluation", "hub"):
        assert (ROOT / "trainers" / package / "__init__.py").is_file(), package


def module_imports(roots: tuple[str, ...]) -> dict[str, set[str]]:
    """Project module -> the project modules it imports (at module level or inside functions)."""
    files = {}
    for top in roots:
        for path in (ROOT / top).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            files[name] = path
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    target = f"{node.module}.{alias.name}"
                    graph[name].add(target if target in files else node.module)
            elif isinstance(node, ast.Import):
                graph[name].update(alias.name for alias in node.names)
        graph[name] = {t for t in graph[name] if t in files and t != name and not name.startswith(t + ".")}
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), i.e. the import circles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_cycle_finder_finds_a_circle():
    assert import_cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]


def test_no_import_circle():
    assert import_cycles(module_imports(("models", "trainers", "studio"))) == []
