"""Costs of studies in the studio: a refresh of grouped curves (12 runs x 10k points: 4 groups of 3 seeds,
mean line with a band, the figure serialised as Gradio sends it) against its 100 ms target.

    python -m benchmarks.studies [--runs 12] [--points 10000] [--repeats 10]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import plotly.io as pio

from benchmarks.common import REPO_ROOT, Figure, median, quantile, write_result
from studio.curves import PALETTE
from studio.groups import BANDS, band_traces, group_curve

RESULT = REPO_ROOT / "benchmarks" / "results" / "studies.json"


def grouped_refresh(runs: int, points: int, groups: int = 4) -> float:
    """Seconds for one refresh: group the runs' curves, build the traces and serialise the figure."""
    rng = np.random.default_rng(0)
    steps = np.arange(points) * 5
    series = {f"run{i}": (steps, np.exp(-steps / 2e4) + rng.normal(0, 0.02, points)) for i in range(runs)}
    start = time.perf_counter()
    traces = []
    for g in range(groups):
        members = {k: v for j, (k, v) in enumerate(series.items()) if j % groups == g}
        curve = group_curve(f"group {g}", members, band=BANDS[g % 2])
        traces += band_traces(curve, PALETTE[g], BANDS[g % 2])
    pio.to_json({"data": traces, "layout": {}}, validate=False)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=12)
    parser.add_argument("--points", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)
    started = time.monotonic()
    grouped_refresh(args.runs, args.points)  # imports and first-call set-up are not a refresh
    times = [grouped_refresh(args.runs, args.points) for _ in range(args.repeats)]
    ms = [t * 1000 for t in times]
    figure = Figure(
        "grouped_refresh_ms",
        f"grouped curves refresh, {args.runs} runs x {args.points} points (median of {args.repeats})",
        round(median(ms), 1),
        "ms",
        bound=100.0,
        goal="max",
        note=f"p90 {quantile(ms, 0.9):.1f} ms, min {min(ms):.1f} ms",
    )
    print(f"{figure.label}: {figure.value} ms ({figure.note}); target <= 100 ms")
    write_result(RESULT, vars(args), started, [figure], {"ms": ms})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
