"""The queue and the scheduler: which queued run starts next, where, and watching it until it ends.

Runs start FIFO. A run is claimed by a compare-and-set from `queued` to `running` ("starting the trainer
process") before its process starts, so two managers on one runs folder never start the same run twice, and
a restart in the middle of a launch still finds the pid.

GPU jobs are packed (``GpuPacking``): several share a GPU while their memory budgets (`trainers.memory`:
weights, gradients, Adam state and saved activations counted for the run's variant, batch size, model
overrides and precision, with a margin) fit in its memory, optionally capped at `gpu_jobs` per GPU. Queued
GPU runs start in submission order: one that does not fit yet holds back the ones after it, so a big job is
not starved by a stream of small ones. A job that does not fit even alone still gets a GPU of its own once
one is idle.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from studio.backends.base import Job, JobBackend
from studio.backends.local import LocalBackend

if TYPE_CHECKING:
    from studio.jobs.policy import OwnershipPolicy
    from studio.jobs.reattach import Reattacher
    from trainers.store import RunRecord, RunStore

log = logging.getLogger(__name__)

ACTIVE: tuple[str, ...] = ("queued", "running")
STARTING_REASON = "starting the trainer process"
#: The reason of a run queued by `JobManager.resume`: its trainer starts with --resume (kept in the store, so
#: a restarted app still resumes it instead of training it from scratch).
RESUME_REASON = "queued to resume from its last checkpoint"
# Queued runs this manager did not submit are picked up only once they are this old and have no pid: a
# trainer started from a terminal creates its run as queued and marks it running milliseconds later.
FOREIGN_QUEUED_MIN_AGE_S = 5.0
# Share of a GPU's memory that packed jobs may budget for: the rest is for the driver and other processes.
GPU_MEMORY_USABLE = 0.95

# Counted GPU memory budgets by configuration (trainers.memory.budget_key), shared by all managers.
_BUDGETS: dict[str, int] = {}


class Watched:
    """The trainers one manager watches (run id -> Job), the runs it queued itself, and the backends that run
    them; shared by the scheduler, the re-attacher and the manager, under one lock."""

    def __init__(self, backend: JobBackend, local: LocalBackend) -> None:
        self.jobs: dict[str, Job] = {}
        self.submitted: set[str] = set()
        self.lock = threading.RLock()
        self.local = local
        self.backend = backend
        # The launching backend first; the local one also watches this host's processes of earlier managers.
        self.backends: list[JobBackend] = [backend] + ([local] if backend is not local else [])

    def backend_of(self, job: Job) -> JobBackend:
        return next((b for b in self.backends if b.name == job.backend), self.local)

    def owner(self, run: RunRecord) -> JobBackend | None:
        """The backend of this manager that runs `run`, or None (another host, a Ray run without Ray)."""
        return next((b for b in self.backends if b.owns(run)), None)


class GpuPacking:
    """Which GPU a job of a given memory budget starts on, and each configuration's counted budget.

    `gpu_memory` {gpu: bytes or None (unknown: one job at a time there)}; `job_memory` (run config -> bytes)
    replaces the counted budgets (tests, machines where the count is wrong)."""

    def __init__(
        self,
        gpus: list[int],
        gpu_jobs: int | None,
        gpu_memory: Mapping[int, int | None],
        job_memory: Callable[[dict[str, Any]], int] | None = None,
    ) -> None:
        self.gpus = list(gpus)
        self.gpu_jobs = gpu_jobs
        self.gpu_memory: dict[int, int | None] = {g: gpu_memory.get(g) for g in gpus}
        self._job_memory = job_memory

    def gpu_for(self, budget: int, jobs: list[Job]) -> int | None:
        """The GPU to start a job of `budget` bytes on now, next to `jobs`: an idle GPU, or the one with the
        most memory left among those where the job fits next to the jobs already there (and below
        `gpu_jobs`); else None."""
        best: tuple[int, int] | None = None
        for g in self.gpus:
            there = [job for job in jobs if job.slot == f"cuda:{g}"]
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

    def budget(self, config: Mapping[str, Any]) -> int:
        """A run's GPU memory budget from its stored config, counted once per configuration."""
        config = dict(config)
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


class Scheduler:
    """The scheduler thread: every `poll_interval` seconds (or when woken) it watches the running jobs,
    looks for runs no one watches (the re-attacher's sweep), and starts queued runs where they fit."""

    def __init__(
        self,
        store: RunStore,
        watched: Watched,
        packing: GpuPacking,
        reattacher: Reattacher,
        policy: OwnershipPolicy,
        cpu_slots: int,
        poll_interval: float,
        cancel_grace: float,
    ) -> None:
        self.store = store
        self.watched = watched
        self.packing = packing
        self.reattacher = reattacher
        self.policy = policy
        self.cpu_slots = cpu_slots
        self.poll_interval = poll_interval
        self.cancel_grace = cancel_grace
        self.stopping = threading.Event()
        self.wake = threading.Event()
        self.thread = threading.Thread(target=self.run, name="studio-job-scheduler", daemon=True)

    def has_gpu(self) -> bool:
        """Whether a run with device auto trains on a GPU: this machine's, or the Ray cluster's."""
        cluster = self.watched.backend.has_gpu()
        return bool(self.packing.gpus) if cluster is None else cluster

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        """End the thread (after its current tick); jobs keep running."""
        self.stopping.set()
        self.wake.set()
        if self.thread is not threading.current_thread() and self.thread.is_alive():
            self.thread.join()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                with self.watched.lock:
                    if self.stopping.is_set():
                        break
                    self.monitor()
                    self.reattacher.sweep_when_due()
                    self.schedule()
            except Exception:  # a store hiccup must not end scheduling for the app's lifetime
                log.exception("job scheduler tick failed; retrying")
            self.wake.wait(self.poll_interval)
            self.wake.clear()

    def request_stop(self, job: Job, now: float | None = None) -> JobBackend:
        """Ask the job's trainer to stop (SIGKILL after the grace period); returns its backend."""
        job.cancel_requested = True
        job.kill_at = (time.monotonic() if now is None else now) + self.cancel_grace
        backend = self.watched.backend_of(job)
        backend.stop(job)
        return backend

    def monitor(self) -> None:
        """Stop jobs past the Space's time limit, kill those that ignored a stop, record those that ended."""
        now = time.monotonic()
        jobs = self.watched.jobs
        for job in list(jobs.values()):
            backend = self.watched.backend_of(job)
            ended = backend.poll(job)
            if ended is None and not job.cancel_requested and self.policy.timed_out(job, now):
                job.time_limited = True
                self.request_stop(job, now)
            if ended is None:
                if job.kill_at is not None and now >= job.kill_at and not job.killed:
                    job.killed = True
                    backend.kill(job)
                continue
            del jobs[job.run_id]
            self.reattacher.finish(job, ended)

    def schedule(self) -> None:
        """Start the queued runs that fit now, oldest first."""
        queued = self.store.list_runs(statuses="queued")
        submitted = self.watched.submitted
        submitted &= {run.id for run in queued}
        now = time.time()
        backend = self.watched.backend
        gpu_blocked = False  # a GPU run that does not fit yet holds back the GPU runs queued after it
        for run in sorted(queued, key=lambda r: (r.created_at, r.id)):  # FIFO
            if run.id not in submitted and (
                run.pid is not None or now - run.created_at < FOREIGN_QUEUED_MIN_AGE_S
            ):
                continue
            want = str(run.config.get("device", "auto"))
            if want == "cuda" and not self.has_gpu():
                where = "the Ray cluster has" if backend.places_jobs else "this machine has"
                self.store.set_status(
                    run.id,
                    "failed",
                    f"the run asks for a GPU (device cuda) but {where} none",
                    from_statuses=("queued",),
                )
                continue
            if backend.places_jobs:  # the cluster places it: submit it now with its resource needs
                on_gpu = want != "cpu" and self.has_gpu()
                self.launch(
                    run, "cuda" if on_gpu else "cpu", self.packing.budget(run.config) if on_gpu else 0
                )
                continue
            if want == "cpu" or not self.packing.gpus:
                if self.free_cpu_slot():
                    self.launch(run, "cpu")
                continue
            if gpu_blocked:
                continue
            budget = self.packing.budget(run.config)
            gpu = self.packing.gpu_for(budget, list(self.watched.jobs.values()))
            if gpu is None:
                gpu_blocked = True
                continue
            self.launch(run, f"cuda:{gpu}", budget)

    def free_cpu_slot(self) -> bool:
        return [job.slot for job in self.watched.jobs.values()].count("cpu") < self.cpu_slots

    def launch(self, run: RunRecord, slot: str, budget: int = 0) -> None:
        """Claim the queued run and have the backend start its trainer."""
        resume = run.reason == RESUME_REASON
        if not self.store.set_status(run.id, "running", STARTING_REASON, from_statuses=("queued",)):
            return  # cancelled, or claimed by another manager, since we listed it
        self.watched.submitted.discard(run.id)
        try:
            job = self.watched.backend.launch(run, slot, budget, resume=resume)
        except (OSError, RuntimeError) as exc:
            self.store.set_status(run.id, "failed", f"could not start the trainer process: {exc}")
            return
        self.watched.jobs[run.id] = job
