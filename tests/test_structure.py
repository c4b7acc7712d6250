"""Structure: no function in studio/ or trainers/ is over 100 lines, so each reads in one sitting."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 100


def function_lengths(folder: Path) -> list[tuple[int, str]]:
    """(lines, "path:line name") of every function and method below folder, nested ones included."""
    out = []
    for path in sorted(folder.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                out.append((lines, f"{path.relative_to(folder.parent)}:{node.lineno} {node.name}"))
    return out


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
