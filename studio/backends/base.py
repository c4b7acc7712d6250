"""The interface between the job manager and whatever runs its trainers.

The manager keeps the queue, the Space limits, the GPU packing and the run store's statuses; a backend only
launches a claimed run, stops or kills it, polls whether it still runs, reads its log, re-attaches to one
left running by an earlier manager, and says where it runs. Two implementations: `LocalBackend`
(subprocesses on this machine, the default) and `RayBackend` (Ray jobs on a cluster).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trainers.runs.store import RunRecord, RunStore

#: Hosts of runs trained on a Ray node start with this ("ray:<node ip>:<node id[:8]>", written by the trainer;
#: the studio writes "ray:" alone when it submits, so no local sweep ever takes the run for one of its own).
RAY_HOST_PREFIX = "ray:"


def describe_host(host: str | None, ended: bool = False) -> str | None:
    """Where a run trains, for the jobs table: its host, "ray node <ip>", or, before its trainer reported
    a node, "ray (waiting for a node)" ("ray (no node reported)" once it ended)."""
    if not host or not host.startswith(RAY_HOST_PREFIX):
        return host or None
    ip = host[len(RAY_HOST_PREFIX) :].split(":", 1)[0]
    if ip:
        return f"ray node {ip}"
    return "ray (no node reported)" if ended else "ray (waiting for a node)"


@dataclass
class Job:
    """A trainer the manager watches. ``slot`` is "cpu", "cuda:N" (a local slot the scheduler counts) or
    None (it holds no slot of this manager: a re-attached process of unknown pinning, a Ray job)."""

    run_id: str
    pid: int | None
    slot: str | None
    log_path: Path | None
    proc: Any = None  # the subprocess.Popen of a local job this manager started; None when re-attached
    cancel_requested: bool = False
    kill_at: float | None = None  # monotonic time of the forced stop when a cancel is not obeyed
    killed: bool = False
    budget: int = 0  # GPU memory bytes reserved for it on its GPU (0 on the CPU)
    started: float = field(default_factory=time.monotonic)
    time_limited: bool = False  # stopped by the Space's wall-time limit
    backend: str = "local"
    ref: str | None = None  # the backend's own handle of the job (a Ray submission id)


@dataclass(frozen=True)
class Ended:
    """How a job ended, as its backend saw it: ``what`` (one line, for the run's reason when the trainer
    wrote no end status), the exit ``code`` where known, and ``stopped`` when the backend itself stopped it
    (a Ray job stopped from outside): the run then ends cancelled, not failed."""

    what: str
    code: int | None = None
    stopped: bool = False


class JobBackend(ABC):
    """What the job manager needs from the machinery that runs trainers."""

    #: Short name, also ``Job.backend``.
    name: str = ""
    #: True when the backend places jobs itself (a cluster scheduler): the manager then hands it every
    #: queued run at once, instead of counting CPU slots and GPU memory on this machine.
    places_jobs: bool = False

    @abstractmethod
    def owns(self, run: RunRecord) -> bool:
        """Whether this backend runs (or ran) ``run``: only it may watch, re-attach, fail or stop it."""

    @abstractmethod
    def launch(self, run: RunRecord, slot: str, budget: int = 0, resume: bool = False) -> Job:
        """Start the trainer of ``run`` (already claimed as running); raises OSError or RuntimeError with a
        message when it cannot start. ``resume``: continue the run from its last checkpoint."""

    @abstractmethod
    def stop(self, job: Job) -> None:
        """Ask the trainer to stop: it saves its last checkpoint and ends its run ``cancelled``."""

    @abstractmethod
    def kill(self, job: Job) -> None:
        """Stop the trainer for sure, after it ignored ``stop`` for the grace period."""

    @abstractmethod
    def poll(self, job: Job) -> Ended | None:
        """None while the job runs, else how it ended."""

    @abstractmethod
    def adopt(self, run: RunRecord) -> Job | None:
        """Watch the live trainer of a running run started earlier (another manager, a restart); None when
        it is gone."""

    @abstractmethod
    def log_lines(self, run: RunRecord, n: int) -> list[str]:
        """The last ``n`` lines of the run's job log ([] while there is none)."""

    def bind(self, runs_dir: Path, store: RunStore) -> None:  # noqa: B027 - optional hook
        """Called once by the manager before it uses the backend: the studio's runs folder and store."""

    def describe_stop(self, job: Job, grace: float) -> str:
        """The user's message after ``stop``."""
        return f"Cancelling {job.run_id}: it stops after the current step and saves its last checkpoint."

    def has_gpu(self) -> bool | None:
        """Whether a run with device ``auto`` gets a GPU here; None: the manager's own GPUs decide."""
        return None

    def close(self, jobs_left: bool) -> None:  # noqa: B027 - optional hook
        """The manager shuts down; ``jobs_left``: some of this backend's jobs keep running without it."""
