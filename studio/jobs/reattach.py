"""Persistence and re-attach: the run store is the source of truth, so a manager can start (or restart) while
jobs train.

The trainer writes status and metrics into the store; the manager only fills in an end status when a
trainer dies without writing one (``Reattacher.finish``), and looks for running runs no one watches
(``Reattacher.sweep``): a trainer started from a terminal, the jobs of a manager that died or of the app
before its restart. Those of its backends it re-attaches to (by pid, or by Ray submission id); the others
that are gone end failed with the last lines of their log.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from typing import TYPE_CHECKING

from studio.backends.base import Ended, Job
from studio.backends.local import reason_tail
from studio.jobs.policy import ACTIVE

if TYPE_CHECKING:
    from studio.backends.base import JobBackend
    from studio.backends.local import LocalBackend
    from studio.jobs.packing import GpuPacking
    from studio.jobs.policy import OwnershipPolicy
    from trainers.runs.store import RunRecord, RunStore

# How often running runs that no manager watches (trainer started from a terminal, a manager that died)
# are looked for; a running run without a pid is left alone this long (another manager may be launching it).
SWEEP_EVERY_S = 5.0
UNCLAIMED_PID_GRACE_S = 60.0

# Processes left running by shutdown(): kept referenced so that their Popen objects are not collected
# (which warns, and reaps them behind the back of a manager that re-attached to them in this process).
_DETACHED: list[subprocess.Popen] = []


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


class Reattacher:
    """Records how watched jobs ended and re-attaches to (or fails) the running runs no one watches."""

    def __init__(
        self, store: RunStore, watched: Watched, packing: GpuPacking, policy: OwnershipPolicy
    ) -> None:
        self.store = store
        self.watched = watched
        self.packing = packing
        self.policy = policy
        self.next_sweep = 0.0

    def finish(self, job: Job, ended: Ended) -> None:
        """The job's trainer is gone: give the run an end status unless the trainer wrote one."""
        run = self.store.get_run(job.run_id)
        if run is not None and job.time_limited and run.status in (*ACTIVE, "cancelled"):
            # The trainer obeys the stop as a cancel ("signal during a training step"): say why it came.
            self.store.set_status(
                job.run_id, "cancelled", self.policy.time_limit_reason(), from_statuses=(*ACTIVE, "cancelled")
            )
            return
        if run is None or run.is_terminal:
            return
        if job.cancel_requested or ended.stopped:
            self.store.set_status(job.run_id, "cancelled", f"cancelled ({ended.what})", from_statuses=ACTIVE)
            return
        tail = reason_tail(self.watched.backend_of(job).log_lines(run, 50))
        what = ended.what
        reason = f"{what}; last log lines: {tail}" if tail else f"{what}; its log is empty"
        self.store.set_status(job.run_id, "failed", reason, from_statuses=ACTIVE)

    def sweep_when_due(self) -> None:
        if time.monotonic() >= self.next_sweep:
            self.sweep()

    def sweep(self, startup: bool = False) -> None:
        """Watch running runs of this manager's backends that no one watches; fail those that are gone."""
        self.next_sweep = time.monotonic() + SWEEP_EVERY_S
        local = self.watched.local
        for run in self.store.list_runs(statuses="running"):
            owner = self.watched.owner(run)
            if run.id in self.watched.jobs or owner is None or run.pid == os.getpid():
                continue  # watched already, elsewhere, or trained inside this very process
            if owner is not local:  # a Ray run: its backend re-attaches by submission id
                if self.adopt(run) is None:
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
                tail = reason_tail(local.log_lines(run, 50))
                self.store.set_status(
                    run.id,
                    "failed",
                    "running without a recorded trainer process (app restarted during a launch?)"
                    + (f"; last log lines: {tail}" if tail else ""),
                    from_statuses=("running",),
                )
                continue
            if self.adopt(run) is None:
                tail = reason_tail(local.log_lines(run, 50))
                when = "app restarted?" if startup else "it ended without reporting a status"
                reason = f"trainer process {run.pid} is gone ({when})"
                reason += f"; last log lines: {tail}" if tail else ""
                self.store.set_status(run.id, "failed", reason, from_statuses=("running",))

    def adopt(self, run: RunRecord) -> Job | None:
        """Start watching the live trainer of a running run (None when it is gone or not ours to watch)."""
        owner = self.watched.owner(run)
        job = owner.adopt(run) if owner is not None else None
        if job is None:
            return None
        if job.slot is not None and job.slot.startswith("cuda"):
            job.budget = self.packing.budget(run.config)
        self.watched.jobs[run.id] = job
        return job

    def detach(self) -> set[str]:
        """Stop watching every job (they keep running; a later manager re-attaches); returns the names of the
        backends that still run some."""
        jobs = self.watched.jobs
        _DETACHED.extend(job.proc for job in jobs.values() if job.proc is not None)
        left = {job.backend for job in jobs.values()}
        jobs.clear()
        return left
