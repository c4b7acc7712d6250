"""The studio's job manager: every training run is its own `python -m trainers train` process.

Why processes and not threads: a crash, an OOM kill or a CUDA error in a job must never take the app down,
and a process group is the one thing that can be stopped for sure (SIGTERM, then SIGKILL) even while it
sits in a C++ kernel. The run store is the source of truth: the trainer writes status and metrics into it,
the manager only launches, signals and watches processes, and fills in a status when a trainer dies
without writing one. Because everything it needs is in the store and the jobs run in their own sessions,
the app can restart while jobs train: a new manager re-attaches to them by pid.

A run is claimed by a compare-and-set from `queued` to `running` ("starting the trainer process") before
its process starts, so two managers on one runs folder never start the same run twice, and a restart in
the middle of a launch still finds the pid.

GPU jobs are packed: several share a GPU while their memory budgets (`trainers.memory`: weights, gradients,
Adam state and saved activations counted for the run's variant, batch size, model overrides and precision,
with a margin) fit in its memory, optionally capped at `gpu_jobs` per GPU. Queued GPU runs start in
submission order: one that does not fit yet holds back the ones after it, so a big job is not starved by a
stream of small ones. A job that does not fit even alone still gets a GPU of its own once one is idle.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainers.store import RunRecord, RunStore

if TYPE_CHECKING:  # trainers.config imports torch; the job manager does not need it at import time
    from trainers.config import RunConfig

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
LOG_NAME = "job.log"
CANCEL_GRACE_S = 15.0
# The domain's headline validation metric for the jobs table, first one present wins.
KEY_METRICS: dict[str, tuple[str, ...]] = {
    "sar": ("psnr",),
    "audio": ("loss",),
    "fragments": ("accuracy_corrupted", "loss"),
}
ACTIVE: tuple[str, ...] = ("queued", "running")
STARTING_REASON = "starting the trainer process"
# Queued runs this manager did not submit are picked up only once they are this old and have no pid: a
# trainer started from a terminal creates its run as queued and marks it running milliseconds later.
FOREIGN_QUEUED_MIN_AGE_S = 5.0
# How often running runs that no manager watches (trainer started from a terminal, a manager that died)
# are looked for; a running run without a pid is left alone this long (another manager may be launching it).
SWEEP_EVERY_S = 5.0
UNCLAIMED_PID_GRACE_S = 60.0
# Process start times from procfs are whole seconds off at most (the boot time is rounded).
PROCESS_START_SLACK_S = 2.0
# Share of a GPU's memory that packed jobs may budget for: the rest is for the driver and other processes.
GPU_MEMORY_USABLE = 0.95
REASON_TAIL_LINES = 5
#: Environment variables never passed to a trainer: the Hub tokens (the app pushes, trainers never do).
SECRET_VARIABLES = frozenset({"HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HUGGINGFACE_HUB_TOKEN", "HF_API_TOKEN"})
REASON_TAIL_CHARS = 600

# Processes left running by shutdown(): kept referenced so that their Popen objects are not collected
# (which warns, and reaps them behind the back of a manager that re-attached to them in this process).
_DETACHED: list[subprocess.Popen] = []
# Counted GPU memory budgets by configuration (trainers.memory.budget_key), shared by all managers.
_BUDGETS: dict[str, int] = {}


@dataclass(frozen=True)
class SpaceLimits:
    """What one job may ask for on a public Space, and how many jobs a visitor may hold.

    The defaults keep a job to minutes on a Space's 2 shared CPUs (the smoke run takes ~20 s) and the
    queue short enough that a visitor's wait stays in minutes.
    """

    max_items: int = 2000  # data n (examples / files read)
    max_files: int = 200  # fragments: files read
    max_image_size: int = 128  # SAR patch side
    max_batch_size: int = 64
    max_epochs: int = 10
    max_steps: int = 2000
    max_seconds: float = 300.0  # wall time of one job, then it is stopped ("Space time limit")
    max_jobs_per_visitor: int = 2  # queued or running
    max_queued: int = 8  # queued or running, all visitors together
    max_parameters: int = 30_000_000

    def describe(self) -> str:
        """The banner's sentence, so that the page states exactly what is enforced."""
        return (
            f"On this public Space each training job is limited to {self.max_epochs} epochs, "
            f"{self.max_steps:,} steps and {self.max_seconds / 60:g} minutes of wall time, at most "
            f"{self.max_items:,} examples (fragments: {self.max_files} files), SAR patches of at most "
            f"{self.max_image_size} px, batches of at most {self.max_batch_size}, and models of at most "
            f"{self.max_parameters / 1e6:g} M parameters; a visitor may have {self.max_jobs_per_visitor} "
            f"jobs queued or running ({self.max_queued} for everyone together). Uploads: at most 50 MB; "
            "server folders cannot be read."
        )

    def apply(self, cfg: Any) -> Any:
        """``cfg`` (a RunConfig) within the limits: absent bounds filled in, excesses refused clearly."""
        from models.registry import check_model_size
        from trainers.dataspec import format_data_spec, parse_data_spec

        def over(what: str, value: Any, limit: Any) -> ValueError:
            return ValueError(f"{what} is {value}; this public Space allows at most {limit} (Space limit)")

        if cfg.epochs > self.max_epochs:
            raise over("epochs", cfg.epochs, self.max_epochs)
        if cfg.batch_size > self.max_batch_size:
            raise over("batch_size", cfg.batch_size, self.max_batch_size)
        if cfg.max_steps is not None and cfg.max_steps > self.max_steps:
            raise over("max_steps", cfg.max_steps, self.max_steps)
        cfg.max_steps = cfg.max_steps or self.max_steps
        if cfg.data:
            spec = parse_data_spec(cfg.data)
            if "folder" in spec.options:
                raise ValueError("reading a server folder is disabled on this public Space (Space limit)")
            opts = spec.options
            if int(opts.get("n", 0)) > self.max_items:
                raise over("data n", opts["n"], self.max_items)
            if int(opts.get("max_files", 0)) > self.max_files:
                raise over("data max_files", opts["max_files"], self.max_files)
            if int(opts.get("size", 0)) > self.max_image_size:
                raise over("data size (SAR patch side)", opts["size"], self.max_image_size)
            if spec.domain == "fragments":  # the machine's Python library: thousands of files unless bounded
                opts.setdefault("n", self.max_items)
                opts.setdefault("max_files", self.max_files)
            cfg.data = format_data_spec(spec)
        check_model_size(cfg.variant, dict(cfg.model or {}), limit=self.max_parameters)
        return cfg


@dataclass
class _Job:
    run_id: str
    pid: int
    slot: str | None  # "cpu", "cuda:N", or None for a watched process that holds no slot of ours
    log_path: Path
    proc: subprocess.Popen | None = None  # None: re-attached, watched by pid
    cancel_requested: bool = False
    kill_at: float | None = None  # monotonic time of the SIGKILL when a cancel is not obeyed
    killed: bool = False
    budget: int = 0  # GPU memory bytes reserved for it on its GPU (0 on the CPU)
    started: float = field(default_factory=time.monotonic)
    time_limited: bool = False  # stopped by the Space's wall-time limit


class JobManager:
    """Runs training jobs as background processes, FIFO: on the GPUs as many as fit in their memory (at most
    `gpu_jobs` per GPU when given), on the CPU `cpu_slots` at once.

    Thread-safe: the Gradio worker threads call submit/cancel/jobs while a scheduler thread starts queued
    runs and watches the processes every `poll_interval` seconds.

    `gpu_memory` ({gpu index: bytes}) and `job_memory` (run config -> bytes) replace the detected GPU
    memory and the counted job budgets, for tests and for machines where the defaults are wrong.
    """

    def __init__(
        self,
        runs_dir: str | Path,
        store: RunStore | None = None,
        cpu_slots: int = 2,
        gpus: list[int] | None = None,
        python: str = sys.executable,
        poll_interval: float = 0.5,
        cancel_grace: float = CANCEL_GRACE_S,
        gpu_jobs: int | None = None,
        gpu_memory: Mapping[int, int] | None = None,
        job_memory: Callable[[dict[str, Any]], int] | None = None,
        space_limits: SpaceLimits | None = None,
    ) -> None:
        if isinstance(cpu_slots, bool) or not isinstance(cpu_slots, int) or cpu_slots < 1:
            raise ValueError(f"cpu_slots must be a positive int, got {cpu_slots!r}")
        if gpu_jobs is not None and (
            isinstance(gpu_jobs, bool) or not isinstance(gpu_jobs, int) or gpu_jobs < 1
        ):
            raise ValueError(
                f"gpu_jobs must be a positive int (jobs per GPU) or None (as many as fit), got {gpu_jobs!r}"
            )
        if not isinstance(poll_interval, (int, float)) or not 0 < poll_interval <= 60:
            raise ValueError(f"poll_interval must be a number of seconds in (0, 60], got {poll_interval!r}")
        if not isinstance(cancel_grace, (int, float)) or not 0 <= cancel_grace < math.inf:
            raise ValueError(f"cancel_grace must be a non-negative number of seconds, got {cancel_grace!r}")
        if gpus is None:
            gpus = _detect_gpus()
        if not isinstance(gpus, (list, tuple)) or any(
            isinstance(g, bool) or not isinstance(g, int) or g < 0 for g in gpus
        ):
            raise ValueError(f"gpus must be a list of GPU indices (ints >= 0) or None, got {gpus!r}")
        if len(set(gpus)) != len(gpus):
            raise ValueError(f"gpus lists an index twice: {gpus!r}")
        detected = gpu_memory is None
        if gpu_memory is None:
            gpu_memory = _detect_gpu_memory(list(gpus))
        elif not isinstance(gpu_memory, Mapping) or any(
            isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in gpu_memory.values()
        ):
            raise ValueError(
                f"gpu_memory must map GPU indices to their memory in bytes (> 0), got {gpu_memory!r}"
            )
        missing = [g for g in gpus if g not in gpu_memory]
        if missing and not detected:
            raise ValueError(f"gpu_memory has no size for GPU(s) {missing}")
        if job_memory is not None and not callable(job_memory):
            raise ValueError(f"job_memory must be a function of a run config, got {job_memory!r}")
        self.runs_dir = Path(runs_dir).resolve()
        if store is not None and Path(store.runs_dir).resolve() != self.runs_dir:
            raise ValueError(f"store is for {store.runs_dir}, but the job manager was given {runs_dir}")
        self._own_store = store is None
        self.store = store if store is not None else RunStore(self.runs_dir)
        self.cpu_slots = cpu_slots
        self.gpus = list(gpus)
        self.gpu_jobs = gpu_jobs
        # None: the size could not be read, and that GPU runs one job at a time.
        self.gpu_memory: dict[int, int | None] = {g: gpu_memory.get(g) for g in gpus}
        self._job_memory = job_memory
        self.space_limits = space_limits
        self.python = str(python)
        self.poll_interval = float(poll_interval)
        self.cancel_grace = float(cancel_grace)
        self.host = socket.gethostname()
        self._jobs: dict[str, _Job] = {}
        self._submitted: set[str] = set()
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._closed = False
        self._next_sweep = 0.0
        try:
            self._sweep(startup=True)
        except BaseException:
            if self._own_store:
                self.store.close()
            raise
        self._thread = threading.Thread(target=self._run, name="studio-job-scheduler", daemon=True)
        self._thread.start()

    # -- public API ---------------------------------------------------------------------------------------

    def submit(self, variant: str, preset: str = "smoke", **settings: Any) -> str:
        """Validate the settings, queue a run with its full config and return the run id.

        `settings` are those of `check` plus `owner` (who may cancel the run on a public Space).
        """
        self._check_open()
        settings = dict(settings)
        owner = settings.pop("owner", None)
        cfg = self.check(variant, preset, **settings)
        limits = self.space_limits
        if limits is not None:
            cfg = limits.apply(cfg)
            active = self.store.list_runs(statuses=ACTIVE)
            if len(active) >= limits.max_queued:
                raise ValueError(
                    f"the Space's queue is full ({len(active)} jobs queued or running, at most "
                    f"{limits.max_queued}); try again in a few minutes"
                )
            mine = [r for r in active if owner and r.owner == str(owner)]
            if len(mine) >= limits.max_jobs_per_visitor:
                raise ValueError(
                    f"you already have {len(mine)} jobs queued or running; this public Space allows "
                    f"{limits.max_jobs_per_visitor} per visitor: cancel one or wait for it to finish"
                )
        if self.gpus and cfg.device != "cpu":
            self._budget(cfg.to_dict())  # counted now, in the caller's thread, not under the scheduler lock
        # The trainer attached with --run-id starts from this stored config, so every setting reaches it
        # (create_run refuses a config that is not JSON).
        run_id = self.store.create_run(variant, cfg.domain, cfg.to_dict(), status="queued")
        if owner:
            self.store.update_run(run_id, owner=str(owner))
        with self._lock:
            self._submitted.add(run_id)
        self._wake.set()
        return run_id

    def check(self, variant: str, preset: str = "smoke", **settings: Any) -> RunConfig:
        """The run config `submit` would queue, or a ValueError/FileNotFoundError that says what is wrong.

        `settings` are RunConfig fields (epochs, batch_size, lr, data, seed, max_steps, model={...}, ...) and
        `device` ("auto", "cpu" or "cuda"; auto means a GPU when this machine has one). Changes nothing.
        """
        from trainers.settings import validate_run  # the one validation layer: CLI, Train tab and API too

        return validate_run(variant, preset, has_gpu=bool(self.gpus), **settings)

    def cancel(self, run_id: str, requester: str | None = None) -> str:
        """Cancel a queued or running run; returns a message for the user (no change for ended runs).

        `requester` (the browser session on a public Space) may cancel only the runs it submitted.
        """
        self._check_open()
        with self._lock:
            for _ in range(3):  # the status can change under us (a launch, an exit): act on the fresh one
                run = self.store.get_run(run_id)
                if run is None:
                    raise ValueError(f"no run with id {run_id!r} in {self.runs_dir}")
                if requester is not None and run.owner != requester:
                    raise PermissionError(
                        f"run {run_id} was started by someone else; only they may cancel it"
                    )
                if run.is_terminal:
                    return f"Run {run_id} already ended ({run.status}); nothing to cancel."
                if run.status == "queued":
                    if self.store.set_status(
                        run_id, "cancelled", "cancelled before it started", from_statuses=("queued",)
                    ):
                        self._submitted.discard(run_id)
                        return f"Cancelled {run_id} before it started."
                    continue
                job = self._jobs.get(run_id)
                if job is not None and not _poll(job)[0]:  # it just ended: record how, then look again
                    self._monitor()
                    continue
                job = job or self._adopt(run)
                if job is None:
                    if run.host and run.host != self.host:
                        return f"Run {run_id} runs on host {run.host}; cancel it there."
                    if run.pid == os.getpid():
                        return f"Run {run_id} trains inside this app's own process; it cannot be cancelled."
                    if self.store.set_status(
                        run_id,
                        "cancelled",
                        "cancelled; its trainer process was already gone",
                        from_statuses=ACTIVE,
                    ):
                        return f"Cancelled {run_id} (its trainer process was already gone)."
                    continue
                if job.cancel_requested:
                    return f"Run {run_id} is already being cancelled."
                job.cancel_requested = True
                job.kill_at = time.monotonic() + self.cancel_grace
                self._signal(job, signal.SIGTERM)
                self._wake.set()
                return (
                    f"Cancelling {run_id}: sent SIGTERM to its trainer (pid {job.pid}); it stops after the "
                    f"current step and saves its last checkpoint, or is killed after {self.cancel_grace:g} s."
                )
        return f"Run {run_id} kept changing status; try again."

    def jobs(self) -> list[dict[str, Any]]:
        """One row per run, newest first, for the jobs table.

        Keys: id, variant, domain, status, epoch, step, metric ("val/<name>" of the domain's key metric),
        best (its best value so far or None), elapsed (seconds since the start, None while queued),
        device, reason; the person's labels name, tags, note; the settings (`studio.progress.SETTINGS`);
        progress (`studio.progress.progress`: epoch_now, epochs, total_steps, percent, steps_per_s, eta_s),
        queue_position (1 = next to start; None unless queued), queue_wait_s (its estimated longest wait on
        a public Space, see `queue_wait`), and for running trainers of this host
        cpu_percent, rss_bytes and, where NVML is present, gpu_index, gpu_util_percent, gpu_memory_bytes.
        """
        from studio.progress import SETTINGS, gpu_usage, process_usage, progress, queue_positions

        now = time.time()
        rows = []
        runs = self.store.list_runs()
        places = queue_positions(runs)
        local = [r.pid for r in runs if r.status == "running" and r.pid and r.host in (None, self.host)]
        gpus = gpu_usage(local) if self.gpus else {}
        for run in runs:
            metric, best = self._key_metric(run)
            elapsed = None
            if run.started_at is not None:
                elapsed = round(max(0.0, (run.ended_at or now) - run.started_at), 1)
            recent = self.store.recent_steps(run.id) if run.status == "running" else None
            usage = process_usage(run.pid) if run.pid in local else {}
            rows.append(
                {
                    "id": run.id,
                    "variant": run.variant,
                    "domain": run.domain,
                    "status": run.status,
                    "epoch": run.epoch,
                    "step": run.step,
                    "metric": metric,
                    "best": best,
                    "elapsed": elapsed,
                    "device": run.device,
                    "reason": run.reason,
                    "name": run.name,
                    "tags": list(run.tags),
                    "note": run.note,
                    "created_at": run.created_at,
                    "steps_per_epoch": run.steps_per_epoch,
                    **{key: run.config.get(key) for key in SETTINGS},
                    **progress(run, recent, now),
                    "queue_position": places.get(run.id),
                    "queue_wait_s": self.queue_wait(places.get(run.id)),
                    **usage,
                    **gpus.get(run.pid or -1, {}),
                }
            )
        return rows

    def queue_wait(self, place: int | None) -> float | None:
        """Estimated longest wait in seconds of the run at `place` in the queue (1 = next), on a public Space
        where every job stops at the wall-time limit: the jobs ahead of it and the running ones, `cpu_slots`
        at a time, each taking at most ``max_seconds``. None elsewhere (a job there has no time bound)."""
        if place is None or self.space_limits is None:
            return None
        return math.ceil(place / self.cpu_slots) * float(self.space_limits.max_seconds)

    def log_tail(self, run_id: str, n: int = 40, requester: str | None = None) -> str:
        """The last `n` lines of the run's job log ("" while the job has not started).

        On a public Space (``space_limits``) a `requester` (the visitor) reads only the logs of their own
        runs, and server paths in the lines are replaced by placeholders."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive number of lines, got {n!r}")
        run = self.store.get_run(run_id)
        if run is None:
            where = "here" if self.space_limits is not None else f"in {self.runs_dir}"
            raise ValueError(f"no run with id {run_id!r} {where}")
        if self.space_limits is not None and requester is not None and run.owner != requester:
            raise ValueError(f"the log of run {run_id} is private to the visitor who launched it")
        path = Path(run.log_path) if run.log_path else self.store.run_dir(run_id) / LOG_NAME
        text = "\n".join(_tail_lines(path, n))
        return scrub_paths(text, self.runs_dir) if self.space_limits is not None else text

    def running_jobs(self) -> list[str]:
        """Ids of the runs whose processes this manager watches right now."""
        with self._lock:
            return list(self._jobs)

    def shutdown(self, cancel_running: bool = False) -> None:
        """Stop the scheduler; jobs keep running (a later manager re-attaches) unless `cancel_running`.

        With `cancel_running`, waits until the jobs have ended (SIGKILL after the grace period). Idempotent.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._stop.set()
        self._wake.set()
        if self._thread is not threading.current_thread():
            self._thread.join()
        try:
            if cancel_running:
                with self._lock:
                    for job in self._jobs.values():
                        if not job.cancel_requested:
                            job.cancel_requested = True
                            job.kill_at = time.monotonic() + self.cancel_grace
                            self._signal(job, signal.SIGTERM)
                deadline = time.monotonic() + self.cancel_grace + 10.0
                while self._jobs and time.monotonic() < deadline:
                    with self._lock:
                        self._monitor()
                    time.sleep(min(self.poll_interval, 0.2))
            with self._lock:
                _DETACHED.extend(job.proc for job in self._jobs.values() if job.proc is not None)
                self._jobs.clear()
        finally:
            if self._own_store:
                self.store.close()

    def __enter__(self) -> JobManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # -- scheduler ----------------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the job manager has been shut down")

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with self._lock:
                    if self._stop.is_set():
                        break
                    self._monitor()
                    if time.monotonic() >= self._next_sweep:
                        self._sweep()
                    self._schedule()
            except Exception:  # a store hiccup must not end scheduling for the app's lifetime
                log.exception("job scheduler tick failed; retrying")
            self._wake.wait(self.poll_interval)
            self._wake.clear()

    def _monitor(self) -> None:
        now = time.monotonic()
        for job in list(self._jobs.values()):
            alive, code = _poll(job)
            limits = self.space_limits
            timed_out = limits is not None and now - job.started > limits.max_seconds
            if alive and timed_out and not job.cancel_requested:
                job.time_limited = job.cancel_requested = True
                job.kill_at = now + self.cancel_grace
                self._signal(job, signal.SIGTERM)
            if alive:
                if job.kill_at is not None and now >= job.kill_at and not job.killed:
                    job.killed = True
                    self._signal(job, signal.SIGKILL)
                continue
            del self._jobs[job.run_id]
            self._finish(job, code)

    def _finish(self, job: _Job, code: int | None) -> None:
        """The job's process is gone: give the run an end status unless the trainer wrote one."""
        run = self.store.get_run(job.run_id)
        if run is None or run.is_terminal:
            return
        if job.time_limited:
            reason = f"Space time limit: stopped after {self.space_limits.max_seconds:g} s of wall time"
            self.store.set_status(job.run_id, "cancelled", reason, from_statuses=ACTIVE)
            return
        if job.cancel_requested:
            how = "killed with SIGKILL after the grace period" if job.killed else "stopped by SIGTERM"
            reason = f"cancelled (trainer {how}; {_describe_exit(code)})"
            self.store.set_status(job.run_id, "cancelled", reason, from_statuses=ACTIVE)
            return
        if job.proc is None and code is None:
            what = f"trainer process {job.pid} ended without reporting a status (exit code unknown)"
        else:
            what = f"trainer exited with {_describe_exit(code)}"
        tail = _reason_tail(job.log_path)
        reason = f"{what}; last log lines: {tail}" if tail else f"{what}; its log is empty"
        self.store.set_status(job.run_id, "failed", reason, from_statuses=ACTIVE)

    def _sweep(self, startup: bool = False) -> None:
        """Watch running runs of this host that no one watches; fail those whose process is gone."""
        self._next_sweep = time.monotonic() + SWEEP_EVERY_S
        for run in self.store.list_runs(statuses="running"):
            if run.id in self._jobs or (run.host and run.host != self.host) or run.pid == os.getpid():
                continue  # watched already, elsewhere, or trained inside this very process
            if run.pid is None:
                if run.started_at is not None and time.time() - run.started_at < UNCLAIMED_PID_GRACE_S:
                    continue
                tail = _reason_tail(self._log_path(run))
                self.store.set_status(
                    run.id,
                    "failed",
                    "running without a recorded trainer process (app restarted during a launch?)"
                    + (f"; last log lines: {tail}" if tail else ""),
                    from_statuses=("running",),
                )
                continue
            if self._adopt(run) is None:
                tail = _reason_tail(self._log_path(run))
                when = "app restarted?" if startup else "it ended without reporting a status"
                reason = f"trainer process {run.pid} is gone ({when})"
                reason += f"; last log lines: {tail}" if tail else ""
                self.store.set_status(run.id, "failed", reason, from_statuses=("running",))

    def _adopt(self, run: RunRecord) -> _Job | None:
        """Start watching the live trainer process of a running run of this host (None when it is gone)."""
        if run.pid is None or run.pid == os.getpid() or (run.host and run.host != self.host):
            return None
        if not _is_run_process(run.pid, run.id, run.started_at):
            return None
        job = _Job(run.id, run.pid, self._slot_of(run), self._log_path(run))
        if job.slot is not None and job.slot.startswith("cuda"):
            job.budget = self._budget(run.config)
        self._jobs[run.id] = job
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

    def _log_path(self, run: RunRecord) -> Path:
        return Path(run.log_path) if run.log_path else self.store.run_dir(run.id) / LOG_NAME

    def _schedule(self) -> None:
        queued = self.store.list_runs(statuses="queued")
        self._submitted &= {run.id for run in queued}
        now = time.time()
        gpu_blocked = False  # a GPU run that does not fit yet holds back the GPU runs queued after it
        for run in sorted(queued, key=lambda r: (r.created_at, r.id)):  # FIFO
            if run.id not in self._submitted and (
                run.pid is not None or now - run.created_at < FOREIGN_QUEUED_MIN_AGE_S
            ):
                continue
            want = str(run.config.get("device", "auto"))
            if want == "cuda" and not self.gpus:
                self.store.set_status(
                    run.id,
                    "failed",
                    "the run asks for a GPU (device cuda) but this machine has none",
                    from_statuses=("queued",),
                )
                continue
            if want == "cpu" or not self.gpus:
                if self._free_cpu_slot():
                    self._launch(run, "cpu")
                continue
            if gpu_blocked:
                continue
            budget = self._budget(run.config)
            gpu = self._gpu_for(budget)
            if gpu is None:
                gpu_blocked = True
                continue
            self._launch(run, f"cuda:{gpu}", budget)

    def _free_cpu_slot(self) -> bool:
        return [job.slot for job in self._jobs.values()].count("cpu") < self.cpu_slots

    def _gpu_for(self, budget: int) -> int | None:
        """The GPU to start a job of `budget` bytes on now: an idle GPU, or the one with the most memory left
        among those where the job fits next to the jobs already there (and below `gpu_jobs`); else None."""
        best: tuple[int, int] | None = None
        for g in self.gpus:
            there = [job for job in self._jobs.values() if job.slot == f"cuda:{g}"]
            if self.gpu_jobs is not None and len(there) >= self.gpu_jobs:
                continue
            size = self.gpu_memory[g]
            if size is None and there:
                continue
            left = int((size or 0) * GPU_MEMORY_USABLE) - sum(job.budget for job in there)
            if there and budget > left:
                continue
            if best is None or left > best[1]:
                best = (g, left)
        return None if best is None else best[0]

    def gpu_budget(self, config: Mapping[str, Any]) -> int:
        """The GPU memory (bytes) a run with this stored config is given when it is packed."""
        return self._budget(dict(config))

    def _budget(self, config: dict[str, Any]) -> int:
        """A run's GPU memory budget from its stored config, counted once per configuration."""
        if self._job_memory is not None:
            return int(self._job_memory(config))
        from trainers.memory import budget_key, estimate_job_memory

        variant = str(config.get("variant", ""))
        batch = config.get("batch_size", 1)
        model = config.get("model") or {}
        precision = str(config.get("precision", "auto"))
        key = budget_key(variant, batch, model, precision)
        if key not in _BUDGETS:
            try:
                estimate = estimate_job_memory(variant, batch, model, precision)
                _BUDGETS[key] = estimate.budget
                log.info("GPU memory budget of %s: %s", key, estimate.describe())
            except Exception:  # an unbuildable config fails in its trainer, with the trainer's message
                log.warning(
                    "could not count the GPU memory of %s; it gets a GPU of its own", key, exc_info=True
                )
                return max((m for m in self.gpu_memory.values() if m), default=1)
        return _BUDGETS[key]

    def _launch(self, run: RunRecord, slot: str, budget: int = 0) -> None:
        if not self.store.set_status(run.id, "running", STARTING_REASON, from_statuses=("queued",)):
            return  # cancelled, or claimed by another manager, since we listed it
        self._submitted.discard(run.id)
        folder = self.store.run_dir(run.id)
        log_path = folder / LOG_NAME
        device = "cpu" if slot == "cpu" else "cuda"
        # Only where and as what to run: the trainer reads every setting from the run's stored config.
        cmd = [self.python, "-m", "trainers", "train", run.variant, "--run-id", run.id]
        cmd += ["--runs-dir", str(self.runs_dir), "--no-progress", "--device", device]
        env = self._environment(slot)
        try:
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
        except OSError as exc:
            self.store.set_status(run.id, "failed", f"could not start the trainer process: {exc}")
            return
        self._jobs[run.id] = _Job(run.id, proc.pid, slot, log_path, proc=proc, budget=budget)
        self.store.update_run(run.id, pid=proc.pid, host=self.host, device=slot, log_path=str(log_path))
        log.info("started run %s on %s (pid %d)", run.id, slot, proc.pid)

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

    def _signal(self, job: _Job, sig: signal.Signals) -> None:
        """Signal the job's process group (it leads one when a manager started it), else the process."""
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

    def _key_metric(self, run: RunRecord) -> tuple[str | None, float | None]:
        best = self.store.best_metrics(run.id)
        for name in KEY_METRICS.get(run.domain, ("loss",)):
            value = best.get(name)
            if value is not None and math.isfinite(value):
                return f"val/{name}", value
        names = KEY_METRICS.get(run.domain, ("loss",))
        return f"val/{names[0]}", None


# -- helpers -----------------------------------------------------------------------------------------------


def scrub_paths(text: str, runs_dir: Path) -> str:
    """``text`` with the server's folders (runs, project, home, temporary, Python) as placeholders."""
    import sysconfig
    import tempfile

    folders = {
        str(runs_dir): "<runs>",
        str(PROJECT_ROOT): "<app>",
        sysconfig.get_paths()["stdlib"]: "<python>",
        sysconfig.get_paths()["purelib"]: "<site-packages>",
        sys.prefix: "<python>",
        tempfile.gettempdir(): "<tmp>",
        str(Path.home()): "<home>",
    }
    for folder, name in sorted(folders.items(), key=lambda kv: -len(kv[0])):  # longest (innermost) first
        if folder and folder != "/":
            text = text.replace(folder, name)
    return text


def _detect_gpu_memory(gpus: list[int]) -> dict[int, int | None]:
    """Total memory of each GPU in bytes, None where it cannot be read (that GPU then runs one job at a
    time). Read from the device properties, which creates no CUDA context in the app."""
    sizes: dict[int, int | None] = {}
    for g in gpus:
        try:
            import torch

            sizes[g] = int(torch.cuda.get_device_properties(g).total_memory)
        except Exception:
            log.warning("could not read the memory of GPU %d; it runs one job at a time", g)
            sizes[g] = None
    return sizes


def _detect_gpus() -> list[int]:
    try:
        import torch

        return list(range(torch.cuda.device_count()))
    except Exception:  # a broken CUDA install must not stop the studio: train on CPU
        log.warning("could not count CUDA devices; training on CPU", exc_info=True)
        return []


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


def _poll(job: _Job) -> tuple[bool, int | None]:
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


def _reason_tail(path: Path) -> str:
    """The last few non-empty log lines on one line, for a run's reason (the table shows one line)."""
    lines = [line.strip() for line in _tail_lines(path, 50) if line.strip()]
    text = " | ".join(lines[-REASON_TAIL_LINES:])
    return text if len(text) <= REASON_TAIL_CHARS else "..." + text[-REASON_TAIL_CHARS:]
