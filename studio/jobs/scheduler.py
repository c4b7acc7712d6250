"""The queue and the scheduler: which queued run starts next, where, and watching it until it ends.

Runs start FIFO. A run is claimed by a compare-and-set from `queued` to `running` ("starting the trainer
process") before its process starts, so two managers on one runs folder never start the same run twice, and
a restart in the middle of a launch still finds the pid.

GPU jobs are packed (``studio.jobs.packing``). Queued GPU runs start in submission order: one that does not
fit yet holds back the ones after it, so a big job is not starved by a stream of small ones.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from studio.backends.base import Job, JobBackend
from studio.jobs.packing import GpuPacking
from studio.jobs.reattach import Reattacher, Watched

if TYPE_CHECKING:
    from studio.jobs.policy import OwnershipPolicy
    from trainers.runs.store import RunRecord, RunStore

log = logging.getLogger(__name__)

STARTING_REASON = "starting the trainer process"
#: The reason of a run queued by `JobManager.resume`: its trainer starts with --resume (kept in the store, so
#: a restarted app still resumes it instead of training it from scratch).
RESUME_REASON = "queued to resume from its last checkpoint"
# Queued runs this manager did not submit are picked up only once they are this old and have no pid: a
# trainer started from a terminal creates its run as queued and marks it running milliseconds later.
FOREIGN_QUEUED_MIN_AGE_S = 5.0


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
