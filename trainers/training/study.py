"""Run a study's queued runs from the command line, K at once, each its own ``python -m trainers train``
process (as the studio's local backend runs them), so a crash in one never stops the others.

Ctrl-C (SIGINT) or SIGTERM cancels the rest cleanly: every running trainer gets SIGTERM (it finishes its
step, saves ``last`` and ends ``cancelled``), and the runs that never started are marked ``cancelled``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from trainers.runs.store import RunStore

# How long a cancelled trainer gets to save ``last`` before it is killed.
STOP_GRACE_S = 60.0


def default_jobs() -> int:
    """Trainers at once, as the studio's slots: one per GPU, else one per 4 CPU cores (1 to 4)."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.device_count()
    return max(1, min(4, (os.cpu_count() or 1) // 4))


def _environment(jobs: int) -> dict[str, str]:
    """The trainers share the cores: each gets cores // jobs threads (an explicit setting wins)."""
    env = dict(os.environ)
    threads = str(max(1, (os.cpu_count() or 1) // max(1, jobs)))
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(name, threads)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _start(run_id: str, variant: str, runs_dir: Path, env: dict[str, str]) -> subprocess.Popen:
    log = open(runs_dir / run_id / "job.log", "ab")  # noqa: SIM115 - handed to the child, closed after start
    try:
        cmd = [sys.executable, "-m", "trainers", "train", variant, "--run-id", run_id]
        cmd += ["--runs-dir", str(runs_dir), "--no-progress"]
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    finally:
        log.close()


def run_study(
    store: RunStore,
    run_ids: Sequence[str],
    jobs: int,
    on_event: Callable[[str], None] = lambda line: None,
) -> dict[str, str]:
    """Train the queued ``run_ids`` at most ``jobs`` at once; returns each run's final status.

    Cancelled (SIGINT/SIGTERM) part-way, the trainers that run are stopped and the rest marked cancelled;
    then KeyboardInterrupt is raised again so the caller exits as interrupted.
    """
    if jobs < 1:
        raise ValueError(f"--jobs must be at least 1, got {jobs}")
    runs_dir = Path(store.runs_dir)
    env = _environment(min(jobs, len(run_ids)) or 1)
    pending = list(run_ids)
    running: dict[str, subprocess.Popen] = {}
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        while pending or running:
            while pending and len(running) < jobs:
                run_id = pending.pop(0)
                run = store.get_run(run_id)
                (runs_dir / run_id).mkdir(parents=True, exist_ok=True)
                running[run_id] = _start(run_id, run.variant, runs_dir, env)
                on_event(f"started {run_id}")
            for run_id, proc in list(running.items()):
                if proc.poll() is not None:
                    del running[run_id]
                    on_event(f"{store.get_run(run_id).status:9s} {run_id}")
            time.sleep(0.2)
    except KeyboardInterrupt:
        _cancel(store, running, pending, on_event)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    return {run_id: store.get_run(run_id).status for run_id in run_ids}


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _cancel(
    store: RunStore, running: dict[str, subprocess.Popen], pending: list[str], on_event: Callable[[str], None]
) -> None:
    for proc in running.values():
        _signal_group(proc, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for run_id, proc in running.items():
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            proc.wait()
            store.set_status(run_id, "cancelled", reason="study cancelled; the trainer did not stop in time")
        on_event(f"cancelled {run_id}")
    for run_id in pending:
        store.set_status(run_id, "cancelled", reason="study cancelled before this run started")
        on_event(f"cancelled {run_id} (not started)")


def _signal_group(proc: subprocess.Popen, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
