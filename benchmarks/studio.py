"""What the studio costs: start-up to the first page, a live-curve refresh, and the app's memory with jobs.

- Start-up: `python app.py` in a subprocess (temporary runs folder, a free port) until `GET /` answers 200.
- Curve refresh: a run store with 20 runs x N points of each of the Train tab's 3 default SAR panels' metrics
  (train/loss, val/psnr, val/ssim); the full re-read
  (`RunStore.metric_series` for every run) against the incremental read the Train tab does
  (`studio.curves.CurveCache.update`, only rows newer than its cursor) after one new point per run; the
  incremental read at 1k and at 10k points of history shows whether its cost grows with the history. The
  whole refresh the tab does when points arrive in every panel is the read, the three figures (`figure_spec`,
  the tab's default smoothing) and their serialisation (`plot_data`, the payload the tab sends).
- Memory: the app's RSS (from /proc) before and while 4 training jobs it launched run, with a client
  polling the curves endpoint as a browser would.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks.common import REPO_ROOT, Figure, die_with_parent, median, rss_mib

REFRESH_TARGET_MS = 100.0
# The Train tab's three default SAR panels; every run logs each of them at every step here (the worst case:
# no panel can be skipped as unchanged).
PANEL_METRICS: tuple[str, ...] = ("train/loss", "val/psnr", "val/ssim")
# "Independent of history" within timing noise: 10x the history may cost at most this much more.
HISTORY_RATIO_TARGET = 1.5
JOB_VARIANTS: tuple[str, ...] = ("sar-baseline", "audio-vae-mel", "fragment-dae", "fragment-dae-bytes")
# Smoke models on long epochs, so no job ends (early stopping, last epoch) while the app is measured; the
# audio clips are few because each one costs ~0.1 CPU-s to make before training starts.
JOB_DATA: dict[str, str] = {
    "sar": "sar:synthetic,n=2048,size=64,val=8",
    "audio": "audio:synthetic,n=384,val=8",
    "fragments": "fragments:python,max_files=256",
}


# --------------------------------------------------------------------------------------------- helpers
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _app_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")
    env.pop("SPACE_ID", None)
    env.pop("STUDIO_RUNS_DIR", None)
    return env


class AppProcess:
    """`python app.py` on a free port and a runs folder; stopped with SIGTERM (its clean shutdown path)."""

    def __init__(self, runs_dir: Path, cpu_slots: int = 1, log_path: Path | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.runs_dir = runs_dir
        self.log_path = log_path or runs_dir.parent / f"app-{self.port}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "app.py",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--runs-dir",
                str(runs_dir),
                "--cpu-slots",
                str(cpu_slots),
            ],
            cwd=REPO_ROOT,
            env=_app_env(),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,  # a killed benchmark takes its app (and, at its shutdown, its jobs)
        )

    def wait_ready(self, timeout: float = 120.0) -> float:
        """Seconds from the start of the process to the first HTTP 200 on /."""
        deadline = self.started + timeout
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"app.py exited with code {self.proc.returncode} before serving:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(self.url, timeout=2) as response:
                    if response.status == 200:
                        return time.perf_counter() - self.started
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"app.py did not serve {self.url} within {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 2000) -> str:
        if not self._log.closed:
            self._log.flush()
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()

    def __enter__(self) -> AppProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------------------------- start-up
def measure_startup(repeats: int = 1) -> tuple[list[Figure], dict[str, Any]]:
    """Seconds from `python app.py` to the first 200 on /, median of ``repeats`` cold starts."""
    times = []
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        for i in range(repeats):
            with AppProcess(Path(tmp) / f"runs{i}") as app:
                times.append(app.wait_ready())
    value = median(times)
    figure = Figure(
        "studio/startup",
        "studio start-up: `python app.py` to the first page (HTTP 200 on /)",
        value,
        "s",
        note=f"median of {repeats} cold start(s); includes importing torch and gradio",
    )
    return [figure], {"seconds": times}


# ------------------------------------------------------------------------------------------ curve refresh
def fill_store(
    runs_dir: Path, n_runs: int, points: int, start_step: int = 0, run_ids: list[str] | None = None
):
    """Create ``n_runs`` runs (or extend ``run_ids``) with ``points`` train/loss rows each, interleaved by
    step as concurrent trainers would log them. Returns (store, run ids).

    Rows go in with one executemany on the store's database: logging 200k rows one transaction at a time
    through `log_metrics` would take minutes and measure nothing this benchmark is about.
    """
    import numpy as np

    from trainers.runs.store import RunStore

    store = RunStore(runs_dir)
    if run_ids is None:
        run_ids = [
            store.create_run(
                "fragment-dae", "fragments", {"bench": i}, status="running", run_id=f"bench-{i:02d}"
            )
            for i in range(n_runs)
        ]
    rng = np.random.default_rng(len(run_ids) + start_step)
    now = time.time()
    rows = [
        (run_id, step, step // 100, split, name, float(1.0 / (1 + step) + 0.01 * rng.random()), now)
        for step in range(start_step, start_step + points)
        for run_id in run_ids
        for split, name in (m.split("/") for m in PANEL_METRICS)
    ]
    with contextlib.closing(sqlite3.connect(store.path, timeout=30)) as conn, conn:
        conn.executemany(
            "INSERT INTO metrics (run_id, step, epoch, split, name, value, time)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
    return store, run_ids


def _timed(fn, repeats: int) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return median(times), result


def _refresh_at(store, run_ids: list[str], history: int, repeats: int) -> dict[str, float]:
    """Costs of one refresh of the Train tab's three panels with one new point per run and metric, given
    ``history`` points already shown: the incremental read, the three figures (`figure_spec`, the tab's
    default smoothing, the run labels of the legend) and their serialisation (`plot_data`, what goes out)."""
    from studio.curves import CurveCache, RunLabel, figure_spec, plot_data

    smoothing = _default_smoothing()
    full_s, series = _timed(lambda: [store.metric_series(r, "train/loss") for r in run_ids], repeats)
    if any(len(s) != history for s in series):
        raise RuntimeError(f"expected {history} points per run, read {[len(s) for s in series]}")
    cache = CurveCache()
    while cache.update(store, run_ids):  # catch up with the history (the cache reads at most 50k rows a time)
        pass
    labels = {r: RunLabel(r, f"variant fragment-dae · lr 0.001 · run {r}") for r in run_ids}
    read, figure, serialised = [], [], []
    step = history
    for _ in range(repeats):
        for r in run_ids:  # one new point per run and metric, as the trainers log them
            for key in PANEL_METRICS:
                split, name = key.split("/")
                store.log_metrics(r, step, step // 100, split, {name: 1.0 / (1 + step)})
        step += 1
        t0 = time.perf_counter()
        added = cache.update(store, run_ids)
        t1 = time.perf_counter()
        specs = [figure_spec(cache, m, run_ids, smoothing, labels=labels) for m in PANEL_METRICS]
        t2 = time.perf_counter()
        for spec in specs:
            plot_data(spec)
        t3 = time.perf_counter()
        if added != len(run_ids) * len(PANEL_METRICS):
            raise RuntimeError(f"the incremental read found {added} new points, expected {len(run_ids) * 3}")
        read.append(t1 - t0)
        figure.append(t2 - t1)
        serialised.append(t3 - t2)
    return {
        "history": history,
        "full_reread_s": full_s,
        "incremental_read_s": median(read),
        "figure_s": median(figure),
        "serialise_s": median(serialised),
        "refresh_s": median(a + b + c for a, b, c in zip(read, figure, serialised, strict=True)),
        "smoothing": smoothing,
    }


def _default_smoothing() -> float:
    """The Train tab's default smoothing (it draws the raw curve too when > 0)."""
    try:
        import inspect

        from studio.views import train

        source = " ".join(inspect.getsource(train._curves_section).split())
        marker = "gr.Slider( 0.0, 0.99, value="
        if marker in source:
            return float(source.split(marker, 1)[1].split(",", 1)[0])
    except (ImportError, OSError, ValueError):
        pass
    return 0.6


def measure_curve_refresh(
    n_runs: int = 20, histories: tuple[int, int] = (1_000, 10_000), repeats: int = 5
) -> tuple[list[Figure], dict[str, Any]]:
    """Full vs incremental read, the incremental read's growth with history, and the whole refresh."""
    small, large = histories
    if not 0 < small < large:
        raise ValueError(f"histories must be two increasing positive counts, got {histories}")
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-curves-") as tmp:
        store, run_ids = fill_store(Path(tmp) / "runs", n_runs, small)
        with store:
            results[small] = _refresh_at(store, run_ids, small, repeats)
            # Extend the same runs to the large history: the rows just logged by _refresh_at count too.
            have = small + repeats
            store.close()
            store, _ = fill_store(Path(tmp) / "runs", n_runs, large - have, start_step=have, run_ids=run_ids)
            with store:
                results[large] = _refresh_at(store, run_ids, large, repeats)
    s, l = results[small], results[large]
    big = f"{n_runs} runs × {large:,} points"
    figures = [
        Figure(
            "studio/curves/full_over_incremental",
            f"curve read, {big}: full re-read / incremental read (1 new point per run)",
            l["full_reread_s"] / l["incremental_read_s"],
            "x",
            note=f"full re-read {1000 * l['full_reread_s']:.0f} ms, "
            f"incremental {1000 * l['incremental_read_s']:.2f} ms",
        ),
        Figure(
            "studio/curves/history_growth",
            f"incremental read at {large:,} / at {small:,} points of history ({n_runs} runs)",
            l["incremental_read_s"] / s["incremental_read_s"],
            "x",
            bound=HISTORY_RATIO_TARGET,
            goal="max",
            note="≈ 1 when the read does not depend on the history already shown",
        ),
        Figure(
            "studio/curves/incremental_read",
            f"curve refresh read (incremental), {big}",
            1000 * l["incremental_read_s"],
            "ms",
            bound=REFRESH_TARGET_MS,
            goal="max",
        ),
        Figure(
            "studio/curves/refresh",
            f"curve refresh, {len(PANEL_METRICS)} panels, new points: read + figures + serialisation, {big}",
            1000 * l["refresh_s"],
            "ms",
            bound=REFRESH_TARGET_MS,
            goal="max",
            note=f"figures {1000 * l['figure_s']:.0f} ms + serialisation "
            f"{1000 * l['serialise_s']:.0f} ms "
            f"(smoothing {l['smoothing']}: raw + smoothed trace per run); at {small:,} points "
            f"{1000 * s['refresh_s']:.0f} ms",
        ),
    ]
    return figures, {"n_runs": n_runs, "repeats": repeats, "results": results}


# ------------------------------------------------------------------------------------------ app memory
def _children(pid: int) -> list[int]:
    """Direct child pids from /proc (no psutil); each thread lists the children it started."""
    kids: list[int] = []
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            kids.extend(int(p) for p in children.read_text().split())
    return kids


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        kids = _children(todo.pop())
        out.extend(kids)
        todo.extend(kids)
    return out


def measure_app_memory(
    n_jobs: int = 4,
    sample_s: float = 10.0,
    variants: tuple[str, ...] = JOB_VARIANTS,
    start_timeout: float = 300.0,
) -> tuple[list[Figure], dict[str, Any]]:
    """The app's RSS idle and while ``n_jobs`` jobs it launched run (smoke preset, CPU), with a client
    polling /curves every 2 s as an open browser tab polls; the trainers' RSS is reported beside it."""
    from gradio_client import Client

    from models import VARIANTS
    from trainers.runs.store import RunStore

    if n_jobs < 1:
        raise ValueError(f"n_jobs must be at least 1, got {n_jobs}")
    chosen = [variants[i % len(variants)] for i in range(n_jobs)]
    with tempfile.TemporaryDirectory(prefix="bench-app-memory-") as tmp:
        runs_dir = Path(tmp) / "runs"
        with AppProcess(runs_dir, cpu_slots=n_jobs) as app:
            startup = app.wait_ready()
            client = Client(app.url, verbose=False)
            time.sleep(1.0)
            idle = rss_mib(app.proc.pid)
            run_ids: list[str] = []
            try:
                for variant in dict.fromkeys(chosen):
                    count = chosen.count(variant)
                    for _ in range(count):
                        data = JOB_DATA[VARIANTS[variant].domain]
                        client.predict(
                            variants=[variant],
                            preset="smoke",
                            epochs="100",
                            data=data,
                            device="cpu",
                            api_name="/launch",
                        )
                store = RunStore(runs_dir)
                with store:
                    deadline = time.perf_counter() + start_timeout
                    while True:
                        runs = store.list_runs()
                        run_ids = [r.id for r in runs]
                        running = [r for r in runs if r.status == "running" and (r.step or 0) > 0]
                        if len(running) >= n_jobs:
                            break
                        failed = [r for r in runs if r.is_terminal]
                        if failed:
                            raise RuntimeError(
                                f"job {failed[0].id} ended {failed[0].status}: {failed[0].reason}"
                            )
                        if time.perf_counter() > deadline:
                            raise RuntimeError(
                                f"only {len(running)} of {n_jobs} jobs were training "
                                f"after {start_timeout:.0f} s"
                            )
                        time.sleep(0.5)
                    app_rss, trainer_rss = [], []
                    end = time.perf_counter() + sample_s
                    next_poll = 0.0
                    sampled_from = time.perf_counter()
                    while time.perf_counter() < end:
                        if time.perf_counter() >= next_poll:
                            client.predict("train/loss", run_ids, 0.6, False, api_name="/curves")
                            next_poll = time.perf_counter() + 2.0
                            running_now = sum(1 for r in store.list_runs() if r.status == "running")
                            if running_now < n_jobs:  # a job ended: the figure is for n_jobs running
                                break
                        value = rss_mib(app.proc.pid)
                        if value is not None:
                            app_rss.append(value)
                        trainer_rss.append(sum(rss_mib(p) or 0.0 for p in _descendants(app.proc.pid)))
                        time.sleep(0.25)
                    sampled_s = time.perf_counter() - sampled_from
                    still_running = sum(1 for r in store.list_runs() if r.status == "running")
            finally:
                for run_id in run_ids:
                    with contextlib.suppress(Exception):
                        client.predict(run_id, api_name="/cancel")
                ended = _wait_jobs_end(runs_dir, run_ids)
                with contextlib.suppress(Exception):
                    client.close()
    figures = [
        Figure("studio/memory/idle", "studio app RSS, idle (no jobs)", idle, "MiB"),
        Figure(
            "studio/memory/jobs",
            f"studio app RSS with {n_jobs} jobs running (peak while polling curves)",
            max(app_rss),
            "MiB",
            note=f"sampled {sampled_s:.0f} s with all {n_jobs} training; the trainer processes themselves: "
            f"{max(trainer_rss):.0f} MiB together",
        ),
    ]
    return figures, {
        "startup_s": startup,
        "jobs": chosen,
        "idle_rss_mib": idle,
        "app_rss_mib": app_rss,
        "trainers_rss_mib": trainer_rss,
        "sampled_s": sampled_s,
        "still_running_at_end": still_running,
        "jobs_ended": ended,
    }


def _wait_jobs_end(runs_dir: Path, run_ids: list[str], timeout: float = 60.0) -> bool:
    """Wait for cancelled jobs to stop; SIGTERM stragglers by the pid the store holds for them.

    Returns whether every job had ended by itself within ``timeout``."""
    from trainers.runs.store import RunStore

    if not run_ids or not (runs_dir / "runs.sqlite").exists():
        return True
    with RunStore(runs_dir) as store:
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            records = [store.get_run(r) for r in run_ids]
            if all(r is None or r.is_terminal for r in records):
                return True
            time.sleep(0.5)
        for record in records:
            if record is not None and not record.is_terminal and record.pid:
                with contextlib.suppress(OSError):
                    os.kill(record.pid, signal.SIGTERM)
    return False


def main(argv: list[str] | None = None) -> int:
    from benchmarks.common import format_table

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", choices=["startup", "curves", "memory"], nargs="+")
    args = parser.parse_args(argv)
    figures: list[Figure] = []
    only = set(args.only or ["startup", "curves", "memory"])
    if "startup" in only:
        figures += measure_startup()[0]
    if "curves" in only:
        figures += measure_curve_refresh()[0]
    if "memory" in only:
        figures += measure_app_memory()[0]
    print(format_table(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
