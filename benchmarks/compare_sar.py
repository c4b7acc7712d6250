"""Wall time of the `compare` leaderboard on 10 SAR images of 256 x 256 with the 4 SAR reference checkpoints
and the classic codecs (issue 22: at most 60 s on the 2-core development machine).

The images are built-in speckled scenes (different seeds from the references' training data) written as
sigma-nought .npy files, so compare reads them as a user's folder and scores whole images: each model runs
its encoder once and its decoder at every point of its bits sweep on the real bitstream, and each codec is
matched per image to each model's bytes, plus its rate sweep. Prints the figures and the time per phase
(from the progress callback), writes benchmarks/results/compare_sar.json.

    python -m benchmarks.compare_sar [--images 10] [--size 256] [--repeats 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import REPO_ROOT, Figure, format_table, median, write_result

REFERENCES = ("sar-baseline", "sar-resnet", "sar-residual", "sar-attention")
TARGET_S = 60.0


def make_images(folder: Path, n: int, size: int) -> None:
    from trainers.data.sar import simulate_scene

    for k in range(n):
        scene = simulate_scene(size, np.random.default_rng(900_000 + k))
        np.save(folder / f"scene_{k:02d}.npy", scene.intensity.astype(np.float32))


def run_once(folder: Path) -> tuple[float, dict[str, float]]:
    """(wall seconds, seconds per phase) of one full leaderboard."""
    from trainers.evaluation.compare import run_compare

    phases: dict[str, float] = {}
    last = [time.perf_counter(), "start"]

    def progress(_fraction: float, desc: str) -> None:
        now = time.perf_counter()
        phase = desc.split(":")[0].split(" on ")[0]
        phases[last[1]] = phases.get(last[1], 0.0) + now - last[0]
        last[:] = [now, phase]

    sources = [str(REPO_ROOT / "assets" / "reference" / name) for name in REFERENCES]
    start, cpu = time.perf_counter(), time.process_time()
    run_compare(sources, f"sar:folder={folder}", baselines=True, progress=progress)
    wall = time.perf_counter() - start
    phases[last[1]] = phases.get(last[1], 0.0) + time.perf_counter() - last[0]
    phases["cpu_s"] = time.process_time() - cpu  # every thread of this process: the load-free cost
    return wall, {k: round(v, 2) for k, v in phases.items()}


def measure_compare_sar(
    images: int = 10, size: int = 256, repeats: int = 2
) -> tuple[list[Figure], list[dict[str, object]]]:
    """(figures, per-run detail): the leaderboard's wall time on `images` scenes of `size`², `repeats` times
    (the median is the figure, the spread is in the note), with the load average before and after."""
    import os

    walls, detail = [], []
    with tempfile.TemporaryDirectory() as tmp:
        make_images(Path(tmp), images, size)
        for _ in range(repeats):
            load = [round(v, 2) for v in os.getloadavg()]
            wall, phases = run_once(Path(tmp))
            walls.append(wall)
            detail.append({"wall_s": round(wall, 2), "phases_s": phases, "load_before": load})
    end_load = [round(v, 2) for v in os.getloadavg()]
    figures = [
        Figure(
            "compare_sar_wall",
            f"compare, {images} SAR images {size}², 4 references, codecs (median of {len(walls)})",
            median(walls),
            "s",
            bound=TARGET_S,
            goal="max",
            note=f"runs {', '.join(f'{w:.1f}' for w in walls)} s; load average (1/5/15 min) before each "
            f"{[d['load_before'] for d in detail]}, after {end_load}",
        ),
        Figure(
            "compare_sar_cpu",
            f"compare, {images} SAR images {size}²: CPU seconds of the process (median of {len(walls)})",
            median([d["phases_s"]["cpu_s"] for d in detail]),
            "s",
            note="user + system time of all its threads: what the run costs without the other processes' "
            "share of the cores (on 2 free cores the wall time is at least half of it)",
        ),
    ]
    return figures, detail


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    started = time.monotonic()
    figures, detail = measure_compare_sar(args.images, args.size, args.repeats)
    print(format_table(figures))
    for d in detail:
        print(d)
    out = REPO_ROOT / "benchmarks" / "results" / "compare_sar.json"
    write_result(out, vars(args), started, figures, detail)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
