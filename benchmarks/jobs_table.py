"""What a poll of the Train tab's jobs table costs at 1,000 runs: the job manager's rows read from the run
store (``studio.jobs.rows.job_rows``) and the page's view of them (``jobs_view``: filter, sort, one group row
per study with its progress, the chosen columns, the hidden runs' marks), against its 100 ms target.

The store holds 250 studies × 4 runs (2 variants × 2 seeds), each run with 40 train/loss and 4 val
rows; two studies run, two wait in the queue, the rest have ended. The first build after the studio starts
reads every ended run's best value once (``rows._ENDED``); the figure is a poll after that, as every poll of
an open page is. Spread: min and max over the repeats. The poll's CPU time is given beside its wall time: on a
shared machine the wall time includes waiting for a core.

    python -m benchmarks.jobs_table [--studies 250] [--repeats 10]
"""

from __future__ import annotations

import argparse
import contextlib
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import REPO_ROOT, Figure, median, write_result

RESULT = REPO_ROOT / "benchmarks" / "results" / "jobs_table.json"
TARGET_MS = 100.0
VARIANTS = ("sar-baseline", "sar-residual")
SEEDS = (0, 1)


def fill_studies(runs_dir: Path, studies: int):
    """A run store with ``studies`` studies of len(VARIANTS) × len(SEEDS) runs and their metric rows; the
    rows go in with one executemany (logging them one transaction at a time measures nothing here)."""
    from trainers.runs.store import RunStore
    from trainers.settings import make_config

    store = RunStore(runs_dir)
    now = time.time()
    run_ids = []
    for s in range(studies):
        study = f"study-20261207-{s // 60:02d}{s % 60:02d}00-{s:04x}"
        status = "running" if s < 2 else "queued" if s < 4 else "completed"
        for variant in VARIANTS:
            for seed in SEEDS:
                config = make_config(variant, "smoke", seed=seed, study=study).to_dict()  # all 21 keys
                run_id = store.create_run(variant, "sar", config, status=status)
                store.set_labels(run_id, tags=[study])
                run_ids.append(run_id)
    rows = [
        row
        for run_id in run_ids
        for step in range(40)
        for row in [(run_id, step * 10, step // 10, "train", "loss", 1.0 / (step + 1), now)]
        + ([(run_id, step * 10, step // 10, "val", "psnr", 20.0 + step / 10, now)] if step % 10 == 9 else [])
    ]
    with contextlib.closing(sqlite3.connect(store.path, timeout=30)) as conn, conn:
        conn.executemany(
            "INSERT INTO metrics (run_id, step, epoch, split, name, value, time)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
    return store


def poll_once(store, hidden: frozenset[str] = frozenset()) -> tuple[float, float, int, float]:
    """(seconds reading the rows, seconds building the view, table rows, CPU seconds of both) of one poll's
    jobs table."""
    from studio.jobs.rows import job_rows
    from studio.views.train.jobs_view import DEFAULT_COLUMNS, jobs_view

    cpu = time.process_time()
    t0 = time.perf_counter()
    rows = job_rows(store, "bench-host", False, lambda place: None)
    t1 = time.perf_counter()
    view = jobs_view(rows, "", "newest", DEFAULT_COLUMNS, set(), hidden)
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, len(view.keys), time.process_time() - cpu


def measure_jobs_table(studies: int = 250, repeats: int = 10) -> tuple[list[Figure], dict[str, Any]]:
    """The poll's jobs table at ``studies`` × 4 runs: the first build (cold memo) and ``repeats`` polls."""
    if studies < 1 or repeats < 3:
        raise ValueError(f"need at least 1 study and 3 repeats, got {studies} and {repeats}")
    with tempfile.TemporaryDirectory(prefix="bench-jobs-") as tmp:
        store = fill_studies(Path(tmp) / "runs", studies)
        with store:
            cold = poll_once(store)
            hidden = frozenset(r.id for r in store.list_runs()[:8])  # a few hidden runs, as a page has
            polls = [poll_once(store, hidden) for _ in range(repeats)]
    n_runs = studies * len(VARIANTS) * len(SEEDS)
    total = [1000 * (p[0] + p[1]) for p in polls]
    rows_ms = [1000 * p[0] for p in polls]
    view_ms = [1000 * p[1] for p in polls]
    cpu_ms = [1000 * p[3] for p in polls]
    figures = [
        Figure(
            "studio/jobs_table/poll",
            f"jobs table poll at {n_runs:,} runs ({studies} studies × 4): rows + grouping + columns",
            median(total),
            "ms",
            bound=TARGET_MS,
            goal="max",
            note=f"median of {repeats}, min {min(total):.1f}, max {max(total):.1f} ms; rows "
            f"{median(rows_ms):.1f} ms + view {median(view_ms):.1f} ms; {polls[0][2]:,} table rows",
        ),
        Figure(
            "studio/jobs_table/poll_cpu",
            f"jobs table poll at {n_runs:,} runs, CPU time (what it costs one core, whatever else runs)",
            median(cpu_ms),
            "ms",
            bound=TARGET_MS,
            goal="max",
            note=f"median of {repeats}, min {min(cpu_ms):.1f}, max {max(cpu_ms):.1f} ms",
        ),
        Figure(
            "studio/jobs_table/first",
            f"jobs table, first build at {n_runs:,} runs (each ended run's best value read once)",
            1000 * (cold[0] + cold[1]),
            "ms",
        ),
    ]
    raw = {
        "runs": n_runs,
        "total_ms": total,
        "rows_ms": rows_ms,
        "view_ms": view_ms,
        "cpu_ms": cpu_ms,
        "cold_s": cold[:2],
    }
    return figures, raw


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=250)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)
    started = time.monotonic()
    figures, raw = measure_jobs_table(args.studies, args.repeats)
    for figure in figures:
        print(f"{figure.label}: {figure.value:.1f} ms" + (f" ({figure.note})" if figure.note else ""))
    print(f"target: poll ≤ {TARGET_MS:.0f} ms")
    write_result(RESULT, vars(args), started, figures, raw)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
