"""The studio's job manager: every training run is its own `python -m trainers train` process.

The run store is the source of truth: the trainer writes status and metrics into it, the manager only
queues runs, has a backend launch, stop and watch their trainers, and fills in a status when a trainer
dies without writing one. Backends (`studio.backends`): local subprocesses of this machine (the default;
see `studio.backends.local` for why processes), or Ray jobs on a cluster (`studio.backends.ray`, whose
trainers send their results home through a sink actor). Because everything it needs is in the store, the
app can restart while jobs train: a new manager re-attaches to them (by pid, or by Ray submission id).

A run is claimed by a compare-and-set from `queued` to `running` ("starting the trainer process") before
its process starts, so two managers on one runs folder never start the same run twice, and a restart in
the middle of a launch still finds the pid.

GPU jobs are packed: several share a GPU while their memory budgets (`trainers.training.memory`: weights,
gradients,
Adam state and saved activations counted for the run's variant, batch size, model overrides and precision,
with a margin) fit in its memory, optionally capped at `gpu_jobs` per GPU. Queued GPU runs start in
submission order: one that does not fit yet holds back the ones after it, so a big job is not starved by a
stream of small ones. A job that does not fit even alone still gets a GPU of its own once one is idle.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from studio.backends.base import Ended, Job, JobBackend, describe_host
from studio.backends.local import PROJECT_ROOT, LocalBackend, reason_tail
from trainers.runs.store import RunRecord, RunStore

if TYPE_CHECKING:  # trainers.config imports torch; the job manager does not need it at import time
    from trainers.config import RunConfig

log = logging.getLogger(__name__)

CANCEL_GRACE_S = 15.0
# The domain's headline validation metric for the jobs table, first one present wins.
KEY_METRICS: dict[str, tuple[str, ...]] = {
    "sar": ("psnr",),
    "audio": ("loss",),
    "fragments": ("accuracy_corrupted", "loss"),
}
ACTIVE: tuple[str, ...] = ("queued", "running")
STARTING_REASON = "starting the trainer process"
#: The reason of a run queued by `JobManager.resume`: its trainer starts with --resume (kept in the store, so
#: a restarted app still resumes it instead of training it from scratch).
RESUME_REASON = "queued to resume from its last checkpoint"
# Queued runs this manager did not submit are picked up only once they are this old and have no pid: a
# trainer started from a terminal creates its run as queued and marks it running milliseconds later.
FOREIGN_QUEUED_MIN_AGE_S = 5.0
# How often running runs that no manager watches (trainer started from a terminal, a manager that died)
# are looked for; a running run without a pid is left alone this long (another manager may be launching it).
SWEEP_EVERY_S = 5.0
UNCLAIMED_PID_GRACE_S = 60.0
# Share of a GPU's memory that packed jobs may budget for: the rest is for the driver and other processes.
GPU_MEMORY_USABLE = 0.95

# Processes left running by shutdown(): kept referenced so that their Popen objects are not collected
# (which warns, and reaps them behind the back of a manager that re-attached to them in this process).
_DETACHED: list[subprocess.Popen] = []
# Counted GPU memory budgets by configuration (trainers.training.memory.budget_key), shared by all managers.
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
        from trainers.data.spec import format_data_spec, parse_data_spec

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


_Job = Job  # the name before the backends moved it


class JobManager:
    """Runs training jobs as background processes, FIFO: on the GPUs as many as fit in their memory (at most
    `gpu_jobs` per GPU when given), on the CPU `cpu_slots` at once.

    Thread-safe: the Gradio worker threads call submit/cancel/jobs while a scheduler thread starts queued
    runs and watches the processes every `poll_interval` seconds.

    `gpu_memory` ({gpu index: bytes}) and `job_memory` (run config -> bytes) replace the detected GPU
    memory and the counted job budgets, for tests and for machines where the defaults are wrong.

    `backend` runs the trainers: None = subprocesses of this machine; a `studio.backends.ray.RayBackend`
    submits every queued run to a Ray cluster at once with its resource needs, and Ray places it. Runs of
    this host that an earlier local manager started are still watched by pid either way.
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
        backend: JobBackend | None = None,
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
        if backend is not None and not isinstance(backend, JobBackend):
            raise ValueError(f"backend must be a studio.backends JobBackend or None, got {backend!r}")
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
        self._local = LocalBackend(self.runs_dir, self.store, self.python, cpu_slots, self.gpus)
        self.backend: JobBackend = backend if backend is not None else self._local
        # The launching backend first; the local one also watches this host's processes of earlier managers.
        self._backends: list[JobBackend] = [self.backend] + ([self._local] if backend is not None else [])
        try:
            if backend is not None:
                backend.bind(self.runs_dir, self.store)
            self._sweep(startup=True)
        except BaseException:
            if backend is not None:
                backend.close(jobs_left=True)
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
        if self._has_gpu() and cfg.device != "cpu":
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

        return validate_run(variant, preset, has_gpu=self._has_gpu(), **settings)

    def _has_gpu(self) -> bool:
        """Whether a run with device auto trains on a GPU: this machine's, or the Ray cluster's."""
        cluster = self.backend.has_gpu()
        return bool(self.gpus) if cluster is None else cluster

    def resume(self, run_id: str, requester: str | None = None) -> str:
        """Queue an ended run (failed or cancelled) to continue from its last checkpoint; returns a message.

        The trainer starts with ``--resume``: same run id, its curves go on from the checkpoint's step.
        `requester` (the browser session on a public Space) may resume only the runs it submitted.
        """
        self._check_open()
        run = self.store.get_run(run_id)
        if run is None:
            raise ValueError(f"no run with id {run_id!r} in {self.runs_dir}")
        if requester is not None and run.owner != requester:
            raise PermissionError(f"run {run_id} was started by someone else; only they may resume it")
        if run.status not in ("failed", "cancelled"):
            raise ValueError(f"run {run_id} is {run.status}; only a failed or cancelled run can be resumed")
        if not run.last_checkpoint:
            raise ValueError(f"run {run_id} saved no 'last' checkpoint, so there is nothing to resume from")
        if not self.store.set_status(run_id, "queued", RESUME_REASON, from_statuses=("failed", "cancelled")):
            raise ValueError(f"run {run_id} changed status meanwhile; try again")
        with self._lock:
            self._submitted.add(run_id)
        self._wake.set()
        return f"Queued {run_id} to resume from its last checkpoint (step {run.step})."

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
                if job is not None and self._backend_of(job).poll(job) is not None:
                    self._monitor()  # it just ended: record how, then look again
                    continue
                job = job or self._adopt(run)
                if job is None:
                    if self._owner(run) is None and (run.host or "").startswith("ray:"):
                        return (
                            f"Run {run_id} runs on the Ray cluster ({describe_host(run.host)}); cancel it "
                            "from a studio started with --backend ray on that cluster."
                        )
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
                backend = self._backend_of(job)
                backend.stop(job)
                self._wake.set()
                return backend.describe_stop(job, self.cancel_grace)
        return f"Run {run_id} kept changing status; try again."

    def jobs(self) -> list[dict[str, Any]]:
        """One row per run, newest first, for the jobs table.

        Keys: id, variant, domain, status, epoch, step, metric ("val/<name>" of the domain's key metric),
        best (its best value so far or None), elapsed (seconds since the start, None while queued),
        device, where (the host, or "ray node <ip>", that runs it; None while unknown), reason; the person's
        labels name, tags, note; the settings (`studio.progress.SETTINGS`);
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
                    "where": describe_host(run.host, ended=run.is_terminal),
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
        backend = self._owner(run) or self._local
        text = "\n".join(backend.log_lines(run, n))
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
        left: set[str] = {self.backend.name}  # unknown until the jobs are counted below
        try:
            if cancel_running:
                with self._lock:
                    for job in self._jobs.values():
                        if not job.cancel_requested:
                            job.cancel_requested = True
                            job.kill_at = time.monotonic() + self.cancel_grace
                            self._backend_of(job).stop(job)
                deadline = time.monotonic() + self.cancel_grace + 10.0
                while self._jobs and time.monotonic() < deadline:
                    with self._lock:
                        self._monitor()
                    time.sleep(min(self.poll_interval, 0.2))
            with self._lock:
                _DETACHED.extend(job.proc for job in self._jobs.values() if job.proc is not None)
                left = {job.backend for job in self._jobs.values()}
                self._jobs.clear()
        finally:
            try:
                if self.backend is not self._local:
                    self.backend.close(jobs_left=self.backend.name in left)
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
            backend = self._backend_of(job)
            ended = backend.poll(job)
            limits = self.space_limits
            timed_out = limits is not None and now - job.started > limits.max_seconds
            if ended is None and timed_out and not job.cancel_requested:
                job.time_limited = job.cancel_requested = True
                job.kill_at = now + self.cancel_grace
                backend.stop(job)
            if ended is None:
                if job.kill_at is not None and now >= job.kill_at and not job.killed:
                    job.killed = True
                    backend.kill(job)
                continue
            del self._jobs[job.run_id]
            self._finish(job, ended)

    def _finish(self, job: Job, ended: Ended) -> None:
        """The job's trainer is gone: give the run an end status unless the trainer wrote one."""
        run = self.store.get_run(job.run_id)
        if run is None or run.is_terminal:
            return
        if job.time_limited:
            reason = f"Space time limit: stopped after {self.space_limits.max_seconds:g} s of wall time"
            self.store.set_status(job.run_id, "cancelled", reason, from_statuses=ACTIVE)
            return
        if job.cancel_requested or ended.stopped:
            self.store.set_status(job.run_id, "cancelled", f"cancelled ({ended.what})", from_statuses=ACTIVE)
            return
        tail = reason_tail(self._backend_of(job).log_lines(run, 50))
        what = ended.what
        reason = f"{what}; last log lines: {tail}" if tail else f"{what}; its log is empty"
        self.store.set_status(job.run_id, "failed", reason, from_statuses=ACTIVE)

    def _backend_of(self, job: Job) -> JobBackend:
        return next((b for b in self._backends if b.name == job.backend), self._local)

    def _owner(self, run: RunRecord) -> JobBackend | None:
        """The backend of this manager that runs `run`, or None (another host, a Ray run without Ray)."""
        return next((b for b in self._backends if b.owns(run)), None)

    def _sweep(self, startup: bool = False) -> None:
        """Watch running runs of this manager's backends that no one watches; fail those that are gone."""
        self._next_sweep = time.monotonic() + SWEEP_EVERY_S
        for run in self.store.list_runs(statuses="running"):
            owner = self._owner(run)
            if run.id in self._jobs or owner is None or run.pid == os.getpid():
                continue  # watched already, elsewhere, or trained inside this very process
            if owner is not self._local:  # a Ray run: its backend re-attaches by submission id
                if self._adopt(run) is None:
                    self.store.set_status(
                        run.id,
                        "failed",
                        "its Ray job was never submitted (app stopped during the launch?)",
                        from_statuses=("running",),
                    )
                continue
            if run.pid is None:
                if run.started_at is not None and time.time() - run.started_at < UNCLAIMED_PID_GRACE_S:
                    continue
                tail = reason_tail(self._local.log_lines(run, 50))
                self.store.set_status(
                    run.id,
                    "failed",
                    "running without a recorded trainer process (app restarted during a launch?)"
                    + (f"; last log lines: {tail}" if tail else ""),
                    from_statuses=("running",),
                )
                continue
            if self._adopt(run) is None:
                tail = reason_tail(self._local.log_lines(run, 50))
                when = "app restarted?" if startup else "it ended without reporting a status"
                reason = f"trainer process {run.pid} is gone ({when})"
                reason += f"; last log lines: {tail}" if tail else ""
                self.store.set_status(run.id, "failed", reason, from_statuses=("running",))

    def _adopt(self, run: RunRecord) -> Job | None:
        """Start watching the live trainer of a running run (None when it is gone or not ours to watch)."""
        owner = self._owner(run)
        job = owner.adopt(run) if owner is not None else None
        if job is None:
            return None
        if job.slot is not None and job.slot.startswith("cuda"):
            job.budget = self._budget(run.config)
        self._jobs[run.id] = job
        return job

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
            if want == "cuda" and not self._has_gpu():
                where = "the Ray cluster has" if self.backend.places_jobs else "this machine has"
                self.store.set_status(
                    run.id,
                    "failed",
                    f"the run asks for a GPU (device cuda) but {where} none",
                    from_statuses=("queued",),
                )
                continue
            if self.backend.places_jobs:  # the cluster places it: submit it now with its resource needs
                on_gpu = want != "cpu" and self._has_gpu()
                self._launch(run, "cuda" if on_gpu else "cpu", self._budget(run.config) if on_gpu else 0)
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
        from trainers.training.memory import budget_key, estimate_job_memory

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
        resume = run.reason == RESUME_REASON
        if not self.store.set_status(run.id, "running", STARTING_REASON, from_statuses=("queued",)):
            return  # cancelled, or claimed by another manager, since we listed it
        self._submitted.discard(run.id)
        try:
            job = self.backend.launch(run, slot, budget, resume=resume)
        except (OSError, RuntimeError) as exc:
            self.store.set_status(run.id, "failed", f"could not start the trainer process: {exc}")
            return
        self._jobs[run.id] = job

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
