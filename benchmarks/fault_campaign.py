"""Fault campaign (issue 19): SIGKILL and cancel tiny trainer runs at every point between a logged row and a
saved checkpoint, resume them, and count the metric rows that come out duplicated or lost (both must be 0).

Injections, each on its own tiny `fragment-dae` run (smoke preset, a few kB of stdlib files, one thread):

- ``kill``: SIGKILL at the N-th arrival at a kill point (`trainers.runs.faults.KILL_POINTS`: after a train or
  val row, after the media, inside each checkpoint write: files without manifest, manifest without link,
  link without the store told), then ``--resume`` until the run completes;
- ``kill-twice``: a kill, then a kill during the resumed attempt, then a resume to the end;
- ``timed-kill``: SIGKILL of the trainer's process group after a seeded random delay, then resume;
- ``cancel``: SIGTERM to the group while the trainer is held in a phase (`trainers.training.hooks.PHASES`),
  or after a random delay, then resume;
- ``app-kill``: the run is launched by a studio job manager (`studio.jobs.JobManager`, in an "app" process
  of its own), the app is SIGKILLed after a random delay while its trainer trains on, and a restarted app
  re-attaches to the run and watches it to the end;
- ``app-trainer-kill``: the app and the trainer's process group are SIGKILLed together; the restarted app
  finds the trainer gone (the run fails) and resumes it with `JobManager.resume`, as the Resume button does.

After the last attempt the run is audited through what users read (`RunStore.metrics_after`, which curves
and exports use, and the JSONL export): a *duplicate* is a (split, metric, step) seen more than once; a
*lost* row is a train-loss gap wider than `log_every` steps, a train/val epoch without rows, or a val row
set missing some metric. A run killed before its first `last` checkpoint has nothing to resume: it is
started again (that is counted, not audited as a loss).

    python -m benchmarks.fault_campaign                 # >= 60 injections, 3 at a time
    python -m benchmarks.fault_campaign --quick 4       # a handful, for a look
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.common import REPO_ROOT, Figure, exit_cleanly_on_signals, format_table, write_result
from trainers.runs.faults import KILL_ENV, KILL_POINTS
from trainers.training.hooks import PAUSE_ENV, PAUSE_FILE_ENV

EPOCHS = 3
BATCH = 8
# 9 steps an epoch with log_every 5: a train row mid-epoch and one at its end, so kills land on both.
DATA_OPTIONS = "n=112,val=16"
LOG_EVERY = 5
CANCEL_PHASES = ("first-batch", "step", "validation", "checkpoint")
PROCESS_TIMEOUT_S = 300.0


@dataclass
class Injection:
    """One fault: `kind` (kill, kill-twice, timed-kill, cancel), where it strikes, and a label."""

    kind: str
    where: str  # a kill point "last-files:2", a phase "validation", or a delay "12.5s"
    then: str = ""  # kill-twice: the kill point of the resumed attempt

    @property
    def label(self) -> str:
        return f"{self.kind}@{self.where}" + (f"+{self.then}" if self.then else "")


@dataclass
class Outcome:
    """What one injection did and what the audit found."""

    label: str
    struck: bool = False  # the fault happened (the trainer died or was cancelled where asked)
    attempts: int = 0
    restarts: int = 0  # killed before its first `last` checkpoint: started again
    status: str = ""
    duplicates: int = 0
    lost: int = 0
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.struck and self.status == "completed" and not self.duplicates and not self.lost


def fragment_folder(base: Path) -> Path:
    """A few kB of real files for the fragments (the stdlib's json package): a data build of milliseconds."""
    folder = base / "fragment-files"
    if not folder.is_dir():
        folder.mkdir(parents=True)
        for path in sorted(Path(json.__file__).parent.glob("*.py")):
            shutil.copy(path, folder / path.name)
    return folder


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (KILL_ENV, PAUSE_ENV, PAUSE_FILE_ENV)}
    # One thread each: on a shared machine several intra-op threads per trainer only wait on each other.
    env.update({"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}, **extra)
    return env


def _train_args(runs: Path, data: Path, resume: str | None) -> list[str]:
    args = [sys.executable, "-m", "trainers", "train", "fragment-dae", "--preset", "smoke", "--no-progress"]
    args += ["--runs-dir", str(runs), "--device", "cpu", "--num-workers", "0"]
    args += [
        "--epochs",
        str(EPOCHS),
        "--batch-size",
        str(BATCH),
        "--data",
        f"fragments:folder={data},{DATA_OPTIONS}",
    ]
    return args + (["--resume", resume] if resume else [])


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(
            args, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def _finish(proc: subprocess.Popen, timeout: float = PROCESS_TIMEOUT_S) -> int:
    """Wait for the trainer; whatever is still alive of its group afterwards is killed (we started it)."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def _run_id(runs: Path) -> str | None:
    from trainers.runs.store import RunStore

    if not (runs / "runs.sqlite").exists():
        return None
    with RunStore(runs) as store:
        found = store.list_runs()
    return found[0].id if found else None


def _has_last(runs: Path, run_id: str | None) -> bool:
    from trainers.runs import checkpoints

    if run_id is None:
        return False
    try:
        return checkpoints.checkpoint_path(runs / run_id, "last") is not None
    except ValueError:
        return False


def _attempt(
    runs: Path,
    data: Path,
    resume: str | None,
    log: Path,
    fault: dict[str, str] | None = None,
    pause: str | None = None,
    delay: float | None = None,
    sig: int = signal.SIGKILL,
) -> tuple[int, bool]:
    """One trainer process: plain, with a kill point, held at a pause and signalled, or signalled after a
    delay. Returns (exit code, whether the fault struck)."""
    extra = dict(fault or {})
    marker = log.with_suffix(".paused")
    marker.unlink(missing_ok=True)
    if pause:
        extra.update({PAUSE_ENV: pause, PAUSE_FILE_ENV: str(marker)})
    proc = _start(_train_args(runs, data, resume), _env(extra), log)
    struck = False
    if pause or delay is not None:
        deadline = time.monotonic() + (PROCESS_TIMEOUT_S if pause else delay)  # type: ignore[operator]
        while proc.poll() is None and time.monotonic() < deadline and not (pause and marker.exists()):
            time.sleep(0.05)
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            struck = True
    code = _finish(proc)
    if fault:
        struck = code == -signal.SIGKILL
    return code, struck


def inject(injection: Injection, base: Path, data: Path) -> Outcome:
    """Run one injection in its own runs folder under `base`, resume to the end, audit the rows."""
    started = time.monotonic()
    out = Outcome(injection.label)
    runs = base / "runs"
    log = base / "trainer.log"
    kind, where = injection.kind, injection.where
    if kind in ("kill", "kill-twice"):
        _, out.struck = _attempt(runs, data, None, log, fault={KILL_ENV: where})
    elif kind == "timed-kill":
        _, out.struck = _attempt(runs, data, None, log, delay=float(where.rstrip("s")))
    elif kind == "cancel":
        if where.endswith("s"):
            _, out.struck = _attempt(
                runs, data, None, log, delay=float(where.rstrip("s")), sig=signal.SIGTERM
            )
        else:
            _, out.struck = _attempt(runs, data, None, log, pause=where, sig=signal.SIGTERM)
    elif kind in APP_KINDS:
        return _inject_app(injection, base, data, out, started)
    else:
        raise ValueError(f"unknown injection kind {kind!r}")
    out.attempts = 1
    then = injection.then
    for _ in range(4):  # resume (or start again) until the run completes
        run_id = _run_id(runs)
        status = _status(runs, run_id)
        if status == "completed":
            break
        resume = run_id if _has_last(runs, run_id) else None
        if resume is None:  # killed before its first `last`: nothing to resume, so start over
            out.restarts += 1
            shutil.rmtree(runs, ignore_errors=True)
        fault = {KILL_ENV: then} if then else None
        code, struck_again = _attempt(runs, data, resume, log, fault=fault)
        out.attempts += 1
        if then:
            out.struck = out.struck and struck_again
            then = ""
        if code not in (0, -signal.SIGKILL):
            out.problems.append(f"attempt {out.attempts} exited {code}")
    return _audited(out, runs, started)


APP_KINDS = ("app-kill", "app-trainer-kill")
# A studio's job manager as its own process: `submit` queues the campaign's run and prints its id; `watch`
# (a restarted app) re-attaches, resumes a failed run that has a checkpoint (the Resume button's call), and
# returns when the run has ended, printing its status.
_APP = """
import sys, time
from studio.jobs import JobManager
runs, data, mode = sys.argv[1:4]
with JobManager(runs, cpu_slots=1, gpus=[], poll_interval=0.2) as jm:
    if mode == "submit":
        settings = dict(epochs=int(sys.argv[4]), batch_size=int(sys.argv[5]), device="cpu", num_workers=0)
        print("run", jm.submit("fragment-dae", "smoke", data=data, **settings), flush=True)
    resumed = 0
    while True:
        [run] = jm.store.list_runs()
        if run.status == "failed" and run.last_checkpoint and resumed < 2:
            print(jm.resume(run.id), flush=True)
            resumed += 1
        elif run.is_terminal:
            print("ended", run.status, resumed, flush=True)
            break
        time.sleep(0.2)
"""


def _app(runs: Path, data: Path, mode: str, log: Path) -> subprocess.Popen:
    spec = f"fragments:folder={data},{DATA_OPTIONS}"
    args = [sys.executable, "-c", _APP, str(runs), spec, mode, str(EPOCHS), str(BATCH)]
    with open(log, "ab") as out:
        return subprocess.Popen(
            args, cwd=REPO_ROOT, env=_env({}), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def _trainer_pid(runs: Path) -> int | None:
    from trainers.runs.store import RunStore

    run_id = _run_id(runs)
    if run_id is None:
        return None
    with RunStore(runs) as store:
        run = store.get_run(run_id)
    return run.pid if run is not None and run.status == "running" else None


def _inject_app(injection: Injection, base: Path, data: Path, out: Outcome, started: float) -> Outcome:
    """An app SIGKILLed `where` seconds after its trainer started (app-kill), or with its trainer `where`
    seconds after the first `last` (app-trainer-kill); a restarted app re-attaches (or resumes) and watches
    the run to its end; then the audit."""
    runs, log = base / "runs", base / "app.log"
    app = _app(runs, data, "submit", log)
    try:
        # From the trainer's start (app-kill) or its first `last` checkpoint (app-trainer-kill: there is
        # then always something to resume, the path under test).
        ready = _trainer_pid if injection.kind == "app-kill" else lambda r: _has_last(r, _run_id(r)) or None
        deadline = time.monotonic() + PROCESS_TIMEOUT_S
        while ready(runs) is None and app.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(float(injection.where.rstrip("s")))
        trainer = _trainer_pid(runs)
        out.struck = app.poll() is None and trainer is not None
        if injection.kind == "app-trainer-kill" and trainer is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(trainer, signal.SIGKILL)
    finally:
        _finish(app, timeout=0.0)  # SIGKILL of the app's group (the trainer has a session of its own)
    out.attempts = 1
    watcher = _app(runs, data, "watch", log)
    code = _finish(watcher)
    if code != 0:
        out.problems.append(f"the restarted app exited {code}")
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("Queued "):
            out.attempts += 1
    return _audited(out, runs, started)


def _audited(out: Outcome, runs: Path, started: float) -> Outcome:
    """The outcome completed with the run's final status, its audit and the injection's wall time."""
    run_id = _run_id(runs)
    out.status = _status(runs, run_id)
    if run_id is not None:
        out.duplicates, out.lost, problems = audit(runs, run_id)
        out.problems += problems
    out.seconds = round(time.monotonic() - started, 1)
    return out


def _status(runs: Path, run_id: str | None) -> str:
    from trainers.runs.store import RunStore

    if run_id is None:
        return ""
    with RunStore(runs) as store:
        run = store.get_run(run_id)
    return run.status if run else ""


def audit(runs: Path, run_id: str) -> tuple[int, int, list[str]]:
    """(duplicates, lost, what was wrong) of a finished run, read as the curves and exports read it."""
    from trainers.runs.export import jsonl_text
    from trainers.runs.store import RunStore

    with RunStore(runs) as store:
        run = store.get_run(run_id)
        rows, _ = store.metrics_after(0, run_ids=[run_id])
    assert run is not None
    problems: list[str] = []
    seen = Counter((r.split, r.name, r.step) for r in rows)
    exported = Counter(
        (p["split"], p["name"], p["step"])
        for p in map(json.loads, filter(str.strip, jsonl_text(rows).splitlines()))  # no rows: one "\n"
    )
    duplicates = sum(n - 1 for n in seen.values() if n > 1) + sum(n - 1 for n in exported.values() if n > 1)
    if duplicates:
        problems.append(f"duplicated: {sorted(k for k, n in seen.items() if n > 1)[:5]}")
    lost = 0
    final = run.step or 0
    train = sorted(r.step for r in rows if r.split == "train" and r.name == "loss")
    previous = 0
    for step in [*train, final] if train and train[-1] != final else train:
        if step - previous > LOG_EVERY:
            lost += 1
            problems.append(f"train loss gap {previous}->{step}")
        previous = step
    if not train:
        lost += 1
        problems.append("no train rows")
    val_steps = sorted({r.step for r in rows if r.split == "val"})
    if len(val_steps) != EPOCHS:
        lost += abs(EPOCHS - len(val_steps))
        problems.append(f"{len(val_steps)} validations for {EPOCHS} epochs at steps {val_steps}")
    names = {s: {r.name for r in rows if r.split == "val" and r.step == s} for s in val_steps}
    full = set().union(*names.values()) if names else set()
    for s, got in names.items():
        if got != full:
            lost += len(full - got)
            problems.append(f"val step {s} lacks {sorted(full - got)}")
    if any(r.step > final for r in rows):
        problems.append(f"rows past the run's final step {final}")
        lost += 1
    epochs_of = {(r.split, r.step): r.epoch for r in rows}
    for s in val_steps:
        if ("train", s) in epochs_of and epochs_of[("train", s)] != epochs_of[("val", s)]:
            problems.append(
                f"step {s}: train epoch {epochs_of[('train', s)]} != val epoch {epochs_of[('val', s)]}"
            )
    return duplicates, lost, problems


# The seeded delays were first drawn for runs of about 25 s (the shared machine under load); they scale with
# the run's measured length, so that a quiet machine, whose runs end sooner, is struck at the same moments
# of the run (with the 25 s delays on an idle machine, 24 of the 27 timed faults came after their run had
# ended).
REFERENCE_RUN_SECONDS = 25.0


def plan(n_target: int = 60, seed: int = 0, run_seconds: float = REFERENCE_RUN_SECONDS) -> list[Injection]:
    """The injections of a full campaign: every kill point at epochs 1-3, kills during a resumed attempt,
    cancels in each phase and at random times, SIGKILLs at random times; the random times are drawn for a
    run of ``run_seconds`` (:func:`calibrate`)."""
    scale = run_seconds / REFERENCE_RUN_SECONDS

    def delay(rng: random.Random, lo: float, hi: float) -> str:
        return f"{rng.uniform(lo, hi) * scale:.2f}s"

    rng = random.Random(seed)
    out = [Injection("kill", f"{point}:{n}") for n in (1, 2, 3) for point in KILL_POINTS]
    second = [p for p in KILL_POINTS if not p.startswith("best")]
    # the first kill after the first `last` exists (so the second strikes a resumed attempt)
    out += [Injection("kill-twice", f"{rng.choice(second)}:2", f"{rng.choice(second)}:1") for _ in range(10)]
    out += [Injection("cancel", phase) for phase in CANCEL_PHASES]
    out += [Injection("cancel", delay(rng, 8, 22)) for _ in range(6)]
    while len(out) < n_target:
        out.append(Injection("timed-kill", delay(rng, 6, 24)))
    # The studio's side (after the 60 above, so their seeded delays stay as measured): an app killed while its
    # trainer runs, alone or with the trainer, then restarted.
    app_rng = random.Random(seed + 1)
    # (app-kill: 2-14 s of a 25 s run after the trainer started; app-trainer-kill: 0-1.2 s after its first
    # `last`, within the 3 epochs)
    out += [Injection("app-kill", delay(app_rng, 2, 14)) for _ in range(4)]
    out += [Injection("app-trainer-kill", delay(app_rng, 0, 1.2)) for _ in range(4)]
    return out


def calibrate(workers: int = 3) -> float:
    """The median wall time of `workers` clean runs side by side (the campaign's load), start to exit."""
    base = Path(tempfile.mkdtemp(prefix="fault-campaign-calibration-"))
    try:
        data = fragment_folder(base)

        def one(i: int) -> float:
            folder = base / f"clean-{i}"
            folder.mkdir()
            start = time.monotonic()
            code = _finish(_start(_train_args(folder / "runs", data, None), _env({}), folder / "log"))
            if code != 0:
                raise RuntimeError(f"a clean calibration run exited {code}: see {folder / 'log'}")
            return time.monotonic() - start

        with ThreadPoolExecutor(workers) as pool:
            return float(statistics.median(pool.map(one, range(workers))))
    finally:
        shutil.rmtree(base, ignore_errors=True)


def run_campaign(injections: list[Injection], workers: int = 3, keep: Path | None = None) -> list[Outcome]:
    """Run the injections, `workers` at a time, each in a fresh temporary folder."""
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="fault-campaign-", dir=keep))
    data = fragment_folder(base)

    def one(item: tuple[int, Injection]) -> Outcome:
        i, injection = item
        folder = base / f"{i:03d}"
        folder.mkdir()
        outcome = inject(injection, folder, data)
        mark = "ok " if outcome.ok else "BAD"
        print(
            f"{mark} {i:3d} {outcome.label:<36} attempts {outcome.attempts} {outcome.status:<10} "
            f"dup {outcome.duplicates} lost {outcome.lost} {outcome.seconds:6.1f}s",
            "; ".join(outcome.problems),
            flush=True,
        )
        if outcome.ok and keep is None:
            shutil.rmtree(folder, ignore_errors=True)
        return outcome

    try:
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(one, enumerate(injections)))
    finally:
        if keep is None:
            shutil.rmtree(base, ignore_errors=True)


def summary(outcomes: list[Outcome]) -> dict[str, Any]:
    kinds = Counter(o.label.split("@")[0] for o in outcomes)
    return {
        "injections": len(outcomes),
        "by_kind": dict(kinds),
        "struck": sum(o.struck for o in outcomes),
        "completed": sum(o.status == "completed" for o in outcomes),
        "duplicate_rows": sum(o.duplicates for o in outcomes),
        "lost_rows": sum(o.lost for o in outcomes),
        "restarts_before_first_checkpoint": sum(o.restarts for o in outcomes),
        "resume_attempts": sum(o.attempts - 1 for o in outcomes),
        "failed_injections": [asdict(o) for o in outcomes if not o.ok],
    }


RESULT_PATH = REPO_ROOT / "benchmarks" / "results" / "fault_campaign.json"


def figures(result: dict[str, Any], whole: bool = True) -> list[Figure]:
    """The campaign's figures against issue 19's targets: >= 60 injections (for the `whole` plan), 0
    duplicate and 0 lost rows."""
    count = {"bound": 60, "goal": "min"} if whole else {}
    return [
        Figure("injections", "fault injections", result["injections"], "", **count),
        Figure("duplicate_rows", "duplicate metric rows", result["duplicate_rows"], "", bound=0, goal="max"),
        Figure("lost_rows", "lost metric rows", result["lost_rows"], "", bound=0, goal="max"),
        Figure("completed", "runs completed after resume", result["completed"], ""),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", type=int, metavar="N", help="only N injections (spread over the kinds)")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, help="keep every run folder under this folder")
    parser.add_argument(
        "--kinds", help="only these kinds, comma-separated (e.g. app-kill,app-trainer-kill); own result file"
    )
    parser.add_argument(
        "--run-seconds",
        type=float,
        help="length of a clean run that the random delays are drawn for (default: measured first)",
    )
    args = parser.parse_args(argv)
    run_seconds = args.run_seconds or calibrate(args.workers)
    print(f"a clean run takes {run_seconds:.1f} s here; random delays drawn for it", flush=True)
    injections = plan(seed=args.seed, run_seconds=run_seconds)
    kinds = sorted(set(args.kinds.split(","))) if args.kinds else []
    if kinds:
        injections = [i for i in injections if i.kind in kinds]
    if args.quick:
        injections = injections[:: max(1, len(injections) // args.quick)][: args.quick]
    exit_cleanly_on_signals()
    started = time.monotonic()
    outcomes = run_campaign(injections, args.workers, args.keep)
    result = summary(outcomes)
    found = figures(result, whole=not kinds)
    if not args.quick:
        settings = {"epochs": EPOCHS, "batch_size": BATCH, "data": DATA_OPTIONS, "workers": args.workers}
        settings["run_seconds"] = round(run_seconds, 2)
        path = RESULT_PATH.with_stem("_".join([RESULT_PATH.stem, *kinds])) if kinds else RESULT_PATH
        settings["kinds"] = kinds or "all"
        write_result(path, settings, started, found, {**result, "outcomes": [asdict(o) for o in outcomes]})
    print(json.dumps({k: v for k, v in result.items() if k != "failed_injections"}, indent=1))
    print(format_table(found))
    return 0 if not result["failed_injections"] else 1


if __name__ == "__main__":
    sys.exit(main())
