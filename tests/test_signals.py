"""Cancel by signal in every phase of a run, with worker processes, as the studio's Cancel and `timeout`
send it: SIGTERM (or SIGINT) to the trainer's whole process group. And the phase timings a run records.

Each case holds the trainer in one phase with the `trainers.training.hooks` pause point (no sleeps that race
the
phase), signals the group, and checks the store's status and reason, the `last` checkpoint, that no worker
outlived the trainer, and that the output has no traceback.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.helpers import smoke_train, start_trainer
from trainers.runs import checkpoints
from trainers.runs.store import RunStore
from trainers.settings import make_config
from trainers.training.hooks import PAUSE_ENV, PAUSE_FILE_ENV
from trainers.training.loop import PHASES_NAME, PhaseTimes, read_phases, train

ROOT = Path(__file__).resolve().parents[1]
# 72 training images: enough for the prefill pool (64+ missing items) on a 2-core machine, still ~0.3 s.
SAR_DATA = "sar:synthetic,n=72,size=64,val=8"
FRAGMENT_DATA = "fragments:python,max_files=24"


def _group_alive(pgid: int) -> list[int]:
    """Live (non-zombie) processes of the group."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
                alive.append(int(stat.parent.name))
    return alive


def _run_and_signal(tmp_path: Path, variant: str, data: str, phase: str, sig: int, *extra: str):
    runs = tmp_path / "runs"
    marker = tmp_path / "paused"
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
        PAUSE_ENV: phase,
        PAUSE_FILE_ENV: str(marker),
    }
    proc = start_trainer(smoke_train(variant, runs, "--data", data, "--device", "cpu", *extra), ROOT, env)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), f"the trainer never reached the '{phase}' pause: {proc.communicate()[0]}"
        os.killpg(proc.pid, sig)  # the whole group, workers included, as the studio's Cancel does
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    deadline = time.monotonic() + 10  # workers the trainer shut down may take a moment to be reaped
    while _group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    leftover = _group_alive(proc.pid)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with RunStore(runs) as store:
        (run,) = store.list_runs()
    return proc.returncode, out, run, runs / run.id, leftover


TERM, INT = signal.SIGTERM, signal.SIGINT
# (phase, signal, variant, data, extra CLI args, a step was made, reason fragment). SIGINT (Ctrl-C in a
# terminal reaches the whole foreground group) in one phase, SIGTERM in the others.
CASES = [
    ("prefill", TERM, "sar-baseline", SAR_DATA, ["--num-workers", "2"], False, "the data build"),
    ("first-batch", TERM, "sar-baseline", SAR_DATA, ["--num-workers", "2"], False, "the wait for a batch"),
    ("step", TERM, "fragment-dae", FRAGMENT_DATA, ["--num-workers", "1"], True, "a training step"),
    ("validation", TERM, "fragment-dae", FRAGMENT_DATA, ["--num-workers", "1"], True, "validation"),
    ("checkpoint", INT, "fragment-dae", FRAGMENT_DATA, ["--num-workers", "1"], True, "a checkpoint save"),
]


@pytest.fixture(scope="module")
def signalled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Future]:
    """Every case's trainer, held and signalled three at a time (each is its own process group, mostly waiting
    at its pause point): the outcome of `_run_and_signal` by phase."""
    pool = ThreadPoolExecutor(3)
    futures = {
        phase: pool.submit(
            _run_and_signal,
            tmp_path_factory.mktemp(phase),
            variant,
            data,
            phase,
            sig,
            "--epochs",
            "50",
            *extra,
        )
        for phase, sig, variant, data, extra, _, _ in CASES
    }
    pool.shutdown(wait=True)
    return futures


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("phase", "sig", "variant", "data", "extra", "stepped", "where"), CASES, ids=[c[0] for c in CASES]
)
def test_a_signal_to_the_group_cancels_in_every_phase(
    signalled, phase, sig, variant, data, extra, stepped, where
):
    code, out, run, folder, leftover = signalled[phase].result()
    assert "Traceback" not in out and "killed by signal" not in out, out
    assert code == 0, out
    assert run.status == "cancelled", (run.status, run.reason, out)
    assert f"signal during {where}" in run.reason, run.reason
    assert leftover == [], f"worker processes outlived the trainer: {leftover}"
    last = checkpoints.checkpoint_path(folder, "last")
    if stepped:
        assert run.reason.startswith(f"cancelled at step {run.step}") and run.step >= 1
        assert last is not None, "a run that made a step keeps its weights as `last`"
        assert checkpoints.read_trainer_state(last)["step"] == run.step
    else:
        assert run.reason.startswith("cancelled before the first step") and not run.step
        assert last is None
    if phase in ("validation", "checkpoint"):
        assert run.epoch == 1  # the epoch's training was done when the signal came
    assert "phases: total" in out and read_phases(folder) is not None


def test_phase_timings_are_recorded_with_the_run(tmp_path):
    with RunStore(tmp_path / "runs") as store:
        cfg = make_config("fragment-dae", "smoke", data=FRAGMENT_DATA, epochs=2, device="cpu")
        started = time.monotonic()
        result = train(cfg, store)
        wall = time.monotonic() - started
        folder = store.run_dir(result.run_id)
    assert result.status == "completed"
    phases = read_phases(folder)
    assert phases is not None and (folder / PHASES_NAME).is_file()
    parts = [phases[f"{name}_s"] for name in PhaseTimes.NAMES]
    assert all(isinstance(v, float) and math.isfinite(v) and v >= 0 for v in parts)
    for name in ("data", "steps", "validation", "checkpoints"):
        assert phases[f"{name}_s"] > 0, name
    # The phases do not overlap, so they add up to at most the whole; the whole is this call's wall time.
    assert sum(parts) <= phases["total_s"] + 0.01
    assert phases["total_s"] <= wall + 0.01 and phases["total_s"] > 0.5 * wall
    assert 0 < phases["first_step_s"] <= phases["total_s"]
    # The first step comes after the data build and model set-up, and before the first validation ends.
    assert phases["first_step_s"] >= phases["data_s"] + phases["model_s"]


def test_a_run_is_never_left_running_when_the_data_build_fails_or_is_cancelled(tmp_path, monkeypatch):
    """In-process: a cancel raised inside the data build (as the handler does) ends the run cancelled."""
    from trainers.training import loop
    from trainers.training.tasks import FragmentTask

    def build_then_cancel(self, *args, **kwargs):
        raise loop.Cancelled()

    monkeypatch.setattr(FragmentTask, "build_data", build_then_cancel)
    with RunStore(tmp_path / "runs") as store:
        cfg = make_config("fragment-dae", "smoke", data=FRAGMENT_DATA, device="cpu")
        result = train(cfg, store)
        run = store.get_run(result.run_id)
    assert result.status == run.status == "cancelled"
    assert run.reason.startswith("cancelled before the first step") and result.step == 0
