"""The studio's job manager: every training run is its own `python -m trainers train` process.

The run store is the source of truth: the trainer writes status and metrics into it, the manager only
queues runs, has a backend launch, stop and watch their trainers, and fills in a status when a trainer
dies without writing one. Backends (`studio.backends`): local subprocesses of this machine (the default;
see `studio.backends.local` for why processes), or Ray jobs on a cluster (`studio.backends.ray`, whose
trainers send their results home through a sink actor). Because everything it needs is in the store, the
app can restart while jobs train: a new manager re-attaches to them (by pid, or by Ray submission id).

``JobManager`` is the facade the studio calls; its parts, one responsibility each:
``scheduler`` (the queue, FIFO starts, the scheduler thread) with ``packing`` (which GPU a job fits on),
``policy`` (ownership and the Space's limits: who may see and act on which run, the queue's caps, the
wall-time limit), ``reattach`` (the watched trainers, end statuses of trainers that died, re-attach to
running runs no one watches) and ``rows`` (the jobs table's rows).
"""

from __future__ import annotations

import logging
import math
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from studio.backends.base import Job, JobBackend, describe_host
from studio.backends.local import PROJECT_ROOT, LocalBackend
from studio.jobs.packing import _BUDGETS, GPU_MEMORY_USABLE, GpuPacking
from studio.jobs.policy import ACTIVE, OwnershipPolicy, SpaceLimits
from studio.jobs.reattach import _DETACHED, SWEEP_EVERY_S, UNCLAIMED_PID_GRACE_S, Reattacher, Watched
from studio.jobs.rows import KEY_METRICS, job_rows
from studio.jobs.scheduler import FOREIGN_QUEUED_MIN_AGE_S, RESUME_REASON, STARTING_REASON, Scheduler
from trainers.runs.store import RunStore

if TYPE_CHECKING:  # trainers.config imports torch; the job manager does not need it at import time
    from trainers.config import RunConfig

__all__ = [
    "ACTIVE",
    "CANCEL_GRACE_S",
    "FOREIGN_QUEUED_MIN_AGE_S",
    "GPU_MEMORY_USABLE",
    "KEY_METRICS",
    "RESUME_REASON",
    "STARTING_REASON",
    "SWEEP_EVERY_S",
    "UNCLAIMED_PID_GRACE_S",
    "_BUDGETS",
    "_DETACHED",
    "JobManager",
    "OwnershipPolicy",
    "SpaceLimits",
    "scrub_paths",
]

log = logging.getLogger(__name__)

CANCEL_GRACE_S = 15.0


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
        gpus, gpu_memory = _checked_settings(
            cpu_slots, gpu_jobs, poll_interval, cancel_grace, gpus, gpu_memory, job_memory, backend
        )
        self.runs_dir = Path(runs_dir).resolve()
        if store is not None and Path(store.runs_dir).resolve() != self.runs_dir:
            raise ValueError(f"store is for {store.runs_dir}, but the job manager was given {runs_dir}")
        self._own_store = store is None
        self.store = store if store is not None else RunStore(self.runs_dir)
        self.cpu_slots = cpu_slots
        self.space_limits = space_limits
        self.policy = OwnershipPolicy(space_limits)
        self.python = str(python)
        self.poll_interval = float(poll_interval)
        self.cancel_grace = float(cancel_grace)
        self.host = socket.gethostname()
        self._closed = False
        self._packing = GpuPacking(list(gpus), gpu_jobs, gpu_memory, job_memory)
        self._local = LocalBackend(self.runs_dir, self.store, self.python, cpu_slots, self._packing.gpus)
        self.backend: JobBackend = backend if backend is not None else self._local
        self._watched = Watched(self.backend, self._local)
        self._reattacher = Reattacher(self.store, self._watched, self._packing, self.policy)
        self._scheduler = Scheduler(
            self.store,
            self._watched,
            self._packing,
            self._reattacher,
            self.policy,
            cpu_slots,
            self.poll_interval,
            self.cancel_grace,
        )
        try:
            if backend is not None:
                backend.bind(self.runs_dir, self.store)
            self._reattacher.sweep(startup=True)
        except BaseException:
            if backend is not None:
                backend.close(jobs_left=True)
            if self._own_store:
                self.store.close()
            raise
        self._scheduler.start()

    # The packing settings and the watched jobs, as they were named before the split (tests read them).
    @property
    def gpus(self) -> list[int]:
        return self._packing.gpus

    @property
    def gpu_jobs(self) -> int | None:
        return self._packing.gpu_jobs

    @property
    def gpu_memory(self) -> dict[int, int | None]:
        return self._packing.gpu_memory

    @property
    def _lock(self) -> threading.RLock:
        return self._watched.lock

    @property
    def _jobs(self) -> dict[str, Job]:
        return self._watched.jobs

    def _sweep(self, startup: bool = False) -> None:
        self._reattacher.sweep(startup=startup)

    # -- public API ---------------------------------------------------------------------------------------

    def submit(self, variant: str, preset: str = "smoke", **settings: Any) -> str:
        """Validate the settings, queue a run with its full config and return the run id.

        `settings` are those of `check` plus `owner` (the visitor whose run it is on a public Space) and
        `address` (the client address it comes from: a Space counts its jobs against it too), and the
        person's labels `name`, `tags` and `note` (checked first, stored with the run).
        """
        self._check_open()
        settings = dict(settings)
        owner = settings.pop("owner", None)
        address = settings.pop("address", None)
        labels = check_labels(
            settings.pop("name", None), settings.pop("tags", None), settings.pop("note", None)
        )
        cfg = self.check(variant, preset, **settings)
        if self.space_limits is not None:
            cfg = self.space_limits.apply(cfg)
            self.policy.admit(owner, self.store.list_runs(statuses=ACTIVE), address)
        if self._scheduler.has_gpu() and cfg.device != "cpu":
            self._packing.budget(cfg.to_dict())  # counted now in the caller's thread, not under the lock
        # The trainer attached with --run-id starts from this stored config, so every setting reaches it
        # (create_run refuses a config that is not JSON).
        run_id = self.store.create_run(variant, cfg.domain, cfg.to_dict(), status="queued")
        if owner:
            self.store.update_run(run_id, owner=str(owner))
        if labels:
            self.store.set_labels(run_id, **labels)
        self.policy.remember_address(run_id, address)
        with self._lock:
            self._watched.submitted.add(run_id)
        self._scheduler.wake.set()
        return run_id

    def check(self, variant: str, preset: str = "smoke", **settings: Any) -> RunConfig:
        """The run config `submit` would queue, or a ValueError/FileNotFoundError that says what is wrong.

        `settings` are RunConfig fields (epochs, batch_size, lr, data, seed, max_steps, model={...}, ...) and
        `device` ("auto", "cpu" or "cuda"; auto means a GPU when this machine has one). Changes nothing.
        """
        from trainers.settings import validate_run  # the one validation layer: CLI, Train tab and API too

        return validate_run(variant, preset, has_gpu=self._scheduler.has_gpu(), **settings)

    def resume(self, run_id: str, requester: str | None = None, address: str | None = None) -> str:
        """Queue an ended run (failed or cancelled) to continue from its last checkpoint; returns a message.

        The trainer starts with ``--resume``: same run id, its curves go on from the checkpoint's step.
        `requester` (the visitor on a public Space) may resume only the runs they launched, within the
        Space's caps (`address`: the client address it comes from).
        """
        self._check_open()
        run = self.store.get_run(run_id)
        if run is None or not self.policy.may_see(run, requester):
            where = "here" if self.policy.private else f"in {self.runs_dir}"
            raise ValueError(f"no run with id {run_id!r} {where}")
        self.policy.check_may_act(run, requester, "resume")
        if self.space_limits is not None:
            self.policy.admit(run.owner, self.store.list_runs(statuses=ACTIVE), address)
        if run.status not in ("failed", "cancelled"):
            raise ValueError(f"run {run_id} is {run.status}; only a failed or cancelled run can be resumed")
        if not run.last_checkpoint:
            raise ValueError(f"run {run_id} saved no 'last' checkpoint, so there is nothing to resume from")
        if not self.store.set_status(run_id, "queued", RESUME_REASON, from_statuses=("failed", "cancelled")):
            raise ValueError(f"run {run_id} changed status meanwhile; try again")
        self.policy.remember_address(run_id, address)
        with self._lock:
            self._watched.submitted.add(run_id)
        self._scheduler.wake.set()
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
                self.policy.check_may_act(run, requester, "cancel")
                if run.is_terminal:
                    return f"Run {run_id} already ended ({run.status}); nothing to cancel."
                if run.status == "queued":
                    if self.store.set_status(
                        run_id, "cancelled", "cancelled before it started", from_statuses=("queued",)
                    ):
                        self._watched.submitted.discard(run_id)
                        return f"Cancelled {run_id} before it started."
                    continue
                job = self._jobs.get(run_id)
                if job is not None and self._watched.backend_of(job).poll(job) is not None:
                    self._scheduler.monitor()  # it just ended: record how, then look again
                    continue
                job = job or self._reattacher.adopt(run)
                if job is None:
                    if self._watched.owner(run) is None and (run.host or "").startswith("ray:"):
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
                backend = self._scheduler.request_stop(job)
                self._scheduler.wake.set()
                return backend.describe_stop(job, self.cancel_grace)
        return f"Run {run_id} kept changing status; try again."

    def jobs(self, requester: str | None = None) -> list[dict[str, Any]]:
        """One row per run, newest first, for the jobs table; on a public Space a `requester` (the visitor
        asking) gets full rows of their own runs only, and other visitors' queued and running jobs as
        anonymous queue entries (id "", ``anonymous`` True, status and queue place only).

        Keys: id, variant, domain, status, epoch, step, metric ("val/<name>" of the domain's key metric),
        best (its best value so far or None), elapsed (seconds since the start, None while queued),
        device, where (the host, or "ray node <ip>", that runs it; None while unknown), reason; the person's
        labels name, tags, note; the settings (`studio.progress.SETTINGS`);
        progress (`studio.progress.progress`: epoch_now, epochs, total_steps, percent, steps_per_s, eta_s),
        queue_position (1 = next to start; None unless queued), queue_wait_s (its estimated longest wait on
        a public Space, see `queue_wait`), time_limit_s (a Space's wall-time limit of every job), and for
        running trainers of this host
        cpu_percent, rss_bytes and, where NVML is present, gpu_index, gpu_util_percent, gpu_memory_bytes.
        """
        policy = self.policy
        visible = None
        if requester is not None and policy.private:
            visible = lambda run: policy.may_see(run, requester)  # noqa: E731
        rows = job_rows(self.store, self.host, bool(self.gpus), self.queue_wait, visible)
        if self.space_limits is not None:  # every job stops there: the table warns of an ETA beyond it
            for row in rows:
                row["time_limit_s"] = float(self.space_limits.max_seconds)
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
        self.policy.check_may_read_log(run, requester)
        backend = self._watched.owner(run) or self._local
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
        self._scheduler.stop()
        left: set[str] = {self.backend.name}  # unknown until the jobs are counted below
        try:
            if cancel_running:
                with self._lock:
                    for job in self._jobs.values():
                        if not job.cancel_requested:
                            self._scheduler.request_stop(job)
                deadline = time.monotonic() + self.cancel_grace + 10.0
                while self._jobs and time.monotonic() < deadline:
                    with self._lock:
                        self._scheduler.monitor()
                    time.sleep(min(self.poll_interval, 0.2))
            with self._lock:
                left = self._reattacher.detach()
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

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the job manager has been shut down")


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


def check_labels(name: Any = None, tags: Any = None, note: Any = None) -> dict[str, Any]:
    """A run's labels as ``RunStore.set_labels`` takes them (blank ones left out), or a ValueError with a
    message; checked before a run is queued, so a bad label launches nothing."""
    from trainers.runs.store import NAME_MAX_CHARS, NOTE_MAX_CHARS, check_tags

    labels: dict[str, Any] = {}
    for what, value, limit in (("name", name, NAME_MAX_CHARS), ("note", note, NOTE_MAX_CHARS)):
        if value is None or value == "":
            continue
        if not isinstance(value, str):
            raise ValueError(f"the run's {what} must be text, got {type(value).__name__}")
        text = value.strip()
        if what == "name" and ("\n" in text or "\r" in text):
            raise ValueError("the run's name must be one line")
        if len(text) > limit:
            raise ValueError(f"the run's {what} is {len(text)} characters long; at most {limit}")
        if text:
            labels[what] = text
    if tags not in (None, "", []):
        labels["tags"] = check_tags(tags)
    return labels


def _checked_settings(
    cpu_slots: Any,
    gpu_jobs: Any,
    poll_interval: Any,
    cancel_grace: Any,
    gpus: Any,
    gpu_memory: Any,
    job_memory: Any,
    backend: Any,
) -> tuple[list[int], dict[int, int | None]]:
    """The manager's settings checked, each bad one with its message; returns (gpus, their memory), detected
    where not given."""
    if isinstance(cpu_slots, bool) or not isinstance(cpu_slots, int) or cpu_slots < 1:
        raise ValueError(f"cpu_slots must be a positive int, got {cpu_slots!r}")
    if gpu_jobs is not None and (isinstance(gpu_jobs, bool) or not isinstance(gpu_jobs, int) or gpu_jobs < 1):
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
    return list(gpus), {g: gpu_memory.get(g) for g in gpus}
