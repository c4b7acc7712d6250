"""Writes the golden leaderboard that tests/test_golden.py checks: `compare --json --baselines` of the shipped
sar-baseline reference on the two small SAR crops beside this script (cut from assets/sar's 512 px scene:
80x80 and 72x96, so both are padded to a multiple of 16). Rerun it only when a change of figures is intended,
and say why in the commit.

    python assets/golden/make_golden.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SOURCES = [str(ROOT / "assets" / "reference" / "sar-baseline")]
DATA = "sar:folder=" + str(HERE / "sar")


def golden() -> dict:
    """The leaderboard without what varies between runs (inference times) or machines (paths)."""
    sys.path.insert(0, str(ROOT))
    from trainers.evaluation.compare import run_compare

    result = run_compare(SOURCES, DATA, baselines=True, seed=0)
    result["data"] = "sar:folder=assets/golden/sar"
    for row in result["rows"]:
        row.pop("inference_ms", None)
    return json.loads(json.dumps(result))


if __name__ == "__main__":
    (HERE / "compare.json").write_text(json.dumps(golden(), indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {HERE / 'compare.json'}")
