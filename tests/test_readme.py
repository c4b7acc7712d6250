"""The README states facts the code must keep true: the parameter table and the two set-up commands."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from models import VARIANTS, create_model

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _table_counts() -> dict[str, int]:
    rows = re.findall(r"^\| `([a-z0-9-]+)` \| [^|]+ \| `\w+` \| ([\d,]+) \|", README, flags=re.M)
    return {name: int(count.replace(",", "")) for name, count in rows}


def test_readme_lists_every_variant_once():
    assert sorted(_table_counts()) == sorted(VARIANTS)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_readme_parameter_counts_match_the_models(variant):
    assert create_model(variant).count_parameters()["total"] == _table_counts()[variant]


def test_ci_runs_the_readme_test_command():
    commands = re.findall(r"```bash\n(pip install -r [^\n]+)\n```", README)
    assert len(commands) == 2, commands
    studio, tests = commands
    assert "python app.py" in studio and "pytest" in tests
    script = (ROOT / ".ci" / "run").read_text()
    assert tests in script
    # ... inside a fresh virtual environment (not --system-site-packages) that it activates first, so the
    # tests see what a user's venv sees (the fragments corpus once lost its shared libraries in one).
    lines = [line.split("#", 1)[0].strip() for line in script.splitlines()]
    venv = next(i for i, line in enumerate(lines) if re.match(r"python3? -m venv ", line))
    activate = next(i for i, line in enumerate(lines) if re.match(r'\. "?\$venv/bin/activate', line))
    run = next(i for i, line in enumerate(lines) if line.startswith(tests))
    assert venv < activate < run and "system-site-packages" not in lines[venv]
