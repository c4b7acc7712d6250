"""Writes the golden leaderboard that tests/test_golden.py checks: `compare --json --baselines` of the shipped
sar-baseline reference on the two small SAR crops beside this script (cut from assets/sar's 512 px scene:
80x80 and 72x96, so both are padded to a multiple of 16). Rerun it only when a change of figures is intended,
and say why in the commit.

    python assets/golden/make_golden.py
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SOURCES = [str(ROOT / "assets" / "reference" / "sar-baseline")]
DATA = "sar:folder=" + str(HERE / "sar")


def golden() -> dict:
    """The leaderboard without what varies between runs (inference times) or machines (paths).

    The models run in fp32 here: a CPU with native bf16 would otherwise run the SAR nets in bf16
    (trainers.training.fastpath), and the figures would then depend on the machine's CPU; and on one thread,
    which compare would otherwise choose from the machine's load (compare.eval_threads)."""
    sys.path.insert(0, str(ROOT))
    from trainers.evaluation.compare import THREADS_ENV, run_compare
    from trainers.training.fastpath import NATIVE_BF16_ENV

    pinned = {NATIVE_BF16_ENV: "0", THREADS_ENV: "1"}
    before = {k: os.environ.get(k) for k in pinned}
    os.environ.update(pinned)
    try:
        result = run_compare(SOURCES, DATA, baselines=True, seed=0)
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    result["data"] = "sar:folder=assets/golden/sar"
    for row in result["rows"]:
        row.pop("inference_ms", None)
    return json.loads(json.dumps(result))


if __name__ == "__main__":
    (HERE / "compare.json").write_text(json.dumps(golden(), indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {HERE / 'compare.json'}")
