"""Today's job backend: each run is a `python -m trainers train` subprocess on this machine.

Why processes and not threads: a crash, an OOM kill or a CUDA error in a job must never take the app down,
and a process group is the one thing that can be stopped for sure (SIGTERM, then SIGKILL) even while it
sits in a C++ kernel. Because everything the manager needs is in the run store and the jobs run in their
own sessions, the app can restart while jobs train: a new manager re-attaches to them by pid (a recycled
pid is told apart by the process's command line and start time).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

from studio.backends.base import Ended, Job, JobBackend

if TYPE_CHECKING:
    from trainers.runs.store import RunRecord, RunStore

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
LOG_NAME = "job.log"
# Process start times from procfs are whole seconds off at most (the boot time is rounded).
PROCESS_START_SLACK_S = 2.0
REASON_TAIL_LINES = 5
REASON_TAIL_CHARS = 600
#: Environment variables never passed to a trainer: the Hub tokens (the app pushes, trainers never do).
SECRET_VARIABLES = frozenset({"HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HUGGINGFACE_HUB_TOKEN", "HF_API_TOKEN"})


class LocalBackend(JobBackend):
    """Trainer subprocesses of this host, each in its own session (process group), logging to
    ``<runs>/<run id>/job.log``. `cpu_slots` and `gpus` only size the trainers' thread counts and tell a
    re-attached job's GPU; the manager does the scheduling."""

    name = "local"
    places_jobs = False

    def __init__(self, runs_dir: Path, store: RunStore, python: str, cpu_slots: int, gpus: list[int]) -> None:
        self.runs_dir = Path(runs_dir)
        self.store = store
        self.python = str(python)
        self.cpu_slots = cpu_slots
        self.gpus = list(gpus)
        self.host = socket.gethostname()

    def owns(self, run: RunRecord) -> bool:
        """Runs of this host (or of no recorded host yet), never those of another host or a Ray node."""
        return not run.host or run.host == self.host

    def launch(self, run: RunRecord, slot: str, budget: int = 0, resume: bool = False) -> Job:
        folder = self.store.run_dir(run.id)
        log_path = folder / LOG_NAME
        device = "cpu" if slot == "cpu" else "cuda"
        # Only where and as what to run: the trainer reads every setting from the run's stored config.
        attach = "--resume" if resume else "--run-id"
        cmd = [self.python, "-m", "trainers", "train", run.variant, attach, run.id]
        cmd += ["--runs-dir", str(self.runs_dir), "--no-progress", "--device", device]
        env = self._environment(slot)
        folder.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as handle:
            pin = f"CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']!r}"
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            handle.write(f"[studio {stamp}] {pin} {shlex.join(cmd)}\n".encode())
            handle.flush()
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=handle,
                stderr=subprocess.STDOUT,
                cwd=PROJECT_ROOT,
                env=env,
                start_new_session=True,  # own process group: a cancel reaches the trainer's workers too
                close_fds=True,
            )
        job = Job(run.id, proc.pid, slot, log_path, proc=proc, budget=budget)
        self.store.update_run(run.id, pid=proc.pid, host=self.host, device=slot, log_path=str(log_path))
        log.info("started run %s on %s (pid %d)", run.id, slot, proc.pid)
        return job

    def _environment(self, slot: str) -> dict[str, str]:
        # Trainers never talk to the Hub: no token (HF_TOKEN, a Space's secrets) reaches their processes.
        env = {k: v for k, v in os.environ.items() if k not in SECRET_VARIABLES}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p)
        env["PYTHONUNBUFFERED"] = "1"  # the log must show lines as they happen, not when a buffer fills
        if slot == "cpu":
            env["CUDA_VISIBLE_DEVICES"] = ""
        else:
            env["CUDA_VISIBLE_DEVICES"] = slot.split(":", 1)[1]
        # Concurrent jobs share the cores; each one spinning up a thread per core would thrash (OpenMP
        # threads busy-wait). An explicit setting in the app's environment wins.
        sharing = self.cpu_slots if slot == "cpu" else len(self.gpus)
        threads = str(max(1, (os.cpu_count() or 1) // max(1, sharing)))
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env.setdefault(name, threads)
        return env

    def stop(self, job: Job) -> None:
        self._signal(job, signal.SIGTERM)

    def kill(self, job: Job) -> None:
        self._signal(job, signal.SIGKILL)

    def describe_stop(self, job: Job, grace: float) -> str:
        return (
            f"Cancelling {job.run_id}: sent SIGTERM to its trainer (pid {job.pid}); it stops after the "
            f"current step and saves its last checkpoint, or is killed after {grace:g} s."
        )

    def _signal(self, job: Job, sig: signal.Signals) -> None:
        """Signal the job's process group (it leads one when a manager started it), else the process."""
        if job.pid is None:
            return
        try:
            group = os.getpgid(job.pid)
            if group == job.pid and group != os.getpgrp():
                os.killpg(group, sig)
            else:
                os.kill(job.pid, sig)
        except ProcessLookupError:
            pass  # it ended meanwhile; the monitor sees that
        except PermissionError as exc:
            log.warning("cannot signal run %s (pid %d): %s", job.run_id, job.pid, exc)

    def poll(self, job: Job) -> Ended | None:
        alive, code = _poll(job)
        if alive:
            return None
        how = "killed with SIGKILL after the grace period" if job.killed else "stopped by SIGTERM"
        if job.cancel_requested:
            return Ended(f"trainer {how}; {_describe_exit(code)}", code)
        if job.proc is None and code is None:
            return Ended(f"trainer process {job.pid} ended without reporting a status (exit code unknown)")
        return Ended(f"trainer exited with {_describe_exit(code)}", code)

    def adopt(self, run: RunRecord) -> Job | None:
        """Watch the live trainer process of a running run of this host (None when it is gone)."""
        if run.pid is None or run.pid == os.getpid() or not self.owns(run):
            return None
        if not _is_run_process(run.pid, run.id, run.started_at):
            return None
        job = Job(run.id, run.pid, self._slot_of(run), self.log_path(run))
        log.info("re-attached to run %s (pid %d)", run.id, run.pid)
        return job

    def _slot_of(self, run: RunRecord) -> str | None:
        # The pinned GPU is in the process environment; fall back on the device the trainer recorded.
        env = _environ(run.pid) if run.pid is not None else None
        visible = (env or {}).get("CUDA_VISIBLE_DEVICES")
        if visible is not None and visible.strip().isdigit() and int(visible) in self.gpus:
            return f"cuda:{int(visible)}"
        if visible == "" or (run.device or "").startswith("cpu"):
            return "cpu"
        return None

    def log_path(self, run: RunRecord) -> Path:
        return Path(run.log_path) if run.log_path else self.store.run_dir(run.id) / LOG_NAME

    def log_lines(self, run: RunRecord, n: int) -> list[str]:
        return _tail_lines(self.log_path(run), n)


# -- process helpers ---------------------------------------------------------------------------------------


def _proc_state(pid: int) -> str:
    """'alive', 'zombie' or 'gone'."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return "gone"
    except OSError:  # no procfs (macOS): ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return "gone"
        except PermissionError:
            return "alive"
        return "alive"
    state = stat.rsplit(")", 1)[-1].split()[:1]
    return "zombie" if state and state[0] in ("Z", "X") else "alive"


def _cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _environ(pid: int) -> dict[str, str] | None:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    pairs = (part.decode(errors="replace").partition("=") for part in raw.split(b"\0") if part)
    return {key: value for key, _, value in pairs}


def _process_start(pid: int) -> float | None:
    """When the process started (Unix time, to about a second), or None without procfs."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        boot = next(
            float(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime")
        )
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22 of stat: starttime in ticks
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _is_run_process(pid: int, run_id: str, started_at: float | None) -> bool:
    """Whether `pid` is still the process that trains this run, and not a recycled pid.

    A process whose command line names the run (the manager's `--run-id`, a `--resume`) is it. So is one
    that started before the run did: a trainer started from a terminal or a script that calls `train()`
    (a recycled pid belongs to a process started after the original one ended).
    """
    if _proc_state(pid) != "alive":
        return False
    args = _cmdline(pid)
    if args is None:  # without procfs (macOS) the live pid is all there is to go on
        return not Path("/proc").is_dir()
    if run_id in args:
        return True
    start = _process_start(pid)
    return start is not None and started_at is not None and start <= started_at + PROCESS_START_SLACK_S


def _poll(job: Job) -> tuple[bool, int | None]:
    """(alive, exit code); the code is None when unknown (a re-attached process that is not our child)."""
    if job.proc is not None:
        code = job.proc.poll()
        return code is None, code
    state = _proc_state(job.pid)
    if state == "alive":
        return True, None
    if state == "zombie":  # reap it when it is our child (a re-attach within the same process)
        with contextlib.suppress(ChildProcessError, OSError):
            pid, status = os.waitpid(job.pid, os.WNOHANG)
            if pid == job.pid:
                return False, os.waitstatus_to_exitcode(status)
    return False, None


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "exit code unknown"
    if code < 0:
        try:
            return f"code {code} ({signal.Signals(-code).name})"
        except ValueError:
            return f"code {code} (signal {-code})"
    return f"code {code}"


def _tail_lines(path: Path, n: int, max_bytes: int = 256 * 1024) -> list[str]:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            start = max(0, size - max_bytes)
            handle.seek(start)
            data = handle.read()
    except (FileNotFoundError, NotADirectoryError):
        return []
    lines = data.decode("utf-8", errors="replace").splitlines()
    if start > 0 and lines:
        lines = lines[1:]  # the first line was cut by the seek
    return lines[-n:]


def reason_tail(lines: list[str]) -> str:
    """The last few non-empty log lines on one line, for a run's reason (the table shows one line)."""
    kept = [line.strip() for line in lines if line.strip()]
    text = " | ".join(kept[-REASON_TAIL_LINES:])
    return text if len(text) <= REASON_TAIL_CHARS else "..." + text[-REASON_TAIL_CHARS:]
