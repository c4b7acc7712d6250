"""The golden leaderboard: the full `compare --json --baselines` output of the shipped sar-baseline reference
on two small shipped SAR crops (assets/golden/) is pinned, as CompressAI pins its eval. A change of any figure
(metric, rate, interval, paired difference, BD, codec setting) fails here until the golden file is rewritten
on purpose (assets/golden/make_golden.py)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

GOLDEN = Path(__file__).resolve().parents[1] / "assets" / "golden"


def _load_maker():
    spec = importlib.util.spec_from_file_location("make_golden", GOLDEN / "make_golden.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _same(got, want, path: str = "") -> None:
    """Equal structure, equal strings and integers, floats to 1e-6 relative (shown figures have 4 digits)."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), (
            f"{path}: keys {sorted(got)} != {sorted(want)}"
        )
        for k in want:
            _same(got[k], want[k], f"{path}.{k}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), f"{path}: length {len(got)} != {len(want)}"
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            _same(g, w, f"{path}[{i}]")
    elif isinstance(want, float) and not isinstance(got, bool):
        assert isinstance(got, int | float) and math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-9), (
            f"{path}: {got!r} != {want!r}"
        )
    else:
        assert got == want, f"{path}: {got!r} != {want!r}"


def test_golden_leaderboard_is_reproduced_to_the_digit():
    want = json.loads((GOLDEN / "compare.json").read_text())
    got = _load_maker().golden()
    _same(got, want)
    # What the golden set pins: measured rates, whole images, intervals over the two images, paired figures.
    model = want["rows"][0]
    assert model["rate"] == "measured" and len(model["rd"]) >= 4
    assert want["ci_unit"] == "image" and want["n_units"] == 2 and "whole images" in want["eval_size"]
    assert any(p["b"] == "trivial baseline" for p in want["pairs"])
