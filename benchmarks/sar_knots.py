"""The README's table of SAR normalisation knots: fill, clipping and 8-bit dB steps per product type.

Each candidate map (dB percentiles of the valid pixels -> x positions) is applied to every product type of
the realistic set in ``tests/test_sar_products.py`` (read from its file as an upload is) over several seeds,
and the worst case per product type is printed: the smallest fill (p99(x) - p1(x)), the largest clipped
fraction (x == 0 or 1), and the dB that one 8-bit level of x spans in the tails and in the bulk.

    python -m benchmarks.sar_knots [--seeds 8]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]

CANDIDATES: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "affine 0.5/99.5 -> 0/1": ((0.5, 99.5), (0.0, 1.0)),
    "0.5,1,99,99.5 -> 0,.04,.96,1": ((0.5, 1, 99, 99.5), (0, 0.04, 0.96, 1)),
    "0.25,1,99,99.75 -> 0,.04,.96,1": ((0.25, 1, 99, 99.75), (0, 0.04, 0.96, 1)),
    "0.25,1,99,99.75 -> 0,.02,.98,1": ((0.25, 1, 99, 99.75), (0, 0.02, 0.98, 1)),
    "0.25,1,99,99.75 -> 0,.05,.95,1": ((0.25, 1, 99, 99.75), (0, 0.05, 0.95, 1)),
    "0.1,1,99,99.9 -> 0,.04,.96,1": ((0.1, 1, 99, 99.9), (0, 0.04, 0.96, 1)),
}


def measure(seeds: int) -> dict[tuple[str, str], np.ndarray]:
    """(product, map) -> per-seed rows of (fill, clip fraction, tail dB per level, bulk dB per level)."""
    sys.path.insert(0, str(REPO_ROOT / "tests"))
    from test_sar_products import PRODUCTS, make_product

    from trainers.data.sar import _robust_knots, read_sar_image

    rows: dict[tuple[str, str], list[tuple[float, float, float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in PRODUCTS:
            for seed in range(seeds):
                path, kwargs, _ = make_product(kind, Path(tmp), seed)
                img = read_sar_image(path, **kwargs)
                db = 10 * np.log10(img.intensity[img.valid].astype(np.float64))
                for name, (pcts, xs) in CANDIDATES.items():
                    knots = _robust_knots(db, pcts)
                    x = np.interp(db, knots, xs)
                    p1, p99 = np.percentile(x, [1, 99])
                    steps = np.diff(knots) / np.diff(xs) / 255
                    rows.setdefault((kind, name), []).append(
                        (
                            p99 - p1,
                            float(((x == 0) | (x == 1)).mean()),
                            steps[[0, -1]].max(),
                            steps[len(steps) // 2],
                        )
                    )
    return {k: np.asarray(v) for k, v in rows.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=8)
    args = parser.parse_args(argv)
    print(
        f"{'product':24s}{'map':34s}{'min fill':>9s}{'max clip %':>11s}"
        f"{'tail dB/lvl':>12s}{'bulk dB/lvl':>12s}"
    )
    for (kind, name), a in measure(args.seeds).items():
        print(
            f"{kind:24s}{name:34s}{a[:, 0].min():9.3f}{100 * a[:, 1].max():11.2f}"
            f"{a[:, 2].max():12.3f}{a[:, 3].max():12.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
