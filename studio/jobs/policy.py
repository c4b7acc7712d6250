"""The ownership and Space policy: who may see and act on which run, and what a public Space allows.

A local studio has one user: every run is theirs. On a public Space every run belongs to the visitor who
launched it (``RunRecord.owner``), and a visitor sees, uses, labels, exports and reads the media and logs of
their own runs only (the shipped reference checkpoints are not runs: everyone sees those); other visitors'
runs show at most as anonymous entries of the jobs queue. This module is the one place that says so:
``OwnershipPolicy.may_see`` is consulted by the job manager (cancel, resume, logs, the jobs rows) and, through
``VisibleRuns``, by every view that turns a run id into a run (the studio context's store is a
``VisibleRuns``).

Who asks (a "requester"): None is the server itself (startup, the scheduler, a script, a local studio),
which sees everything; a visitor id (``StudioContext.visitor``); or ``NOBODY`` ("", a request whose visitor
cannot be told), which owns and sees no run.
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from studio.backends.base import Job
    from trainers.runs.store import RunRecord, RunStore

#: The requester of a request whose visitor cannot be told: no run is theirs.
NOBODY = ""
#: The statuses of a run that holds a place in the queue (counted by the Space's caps).
ACTIVE: tuple[str, ...] = ("queued", "running")


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
    max_jobs_per_address: int = 2  # queued or running, from one client address (new sessions do not add any)
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
            f"jobs queued or running ({self.max_jobs_per_address} per client address, {self.max_queued} "
            "for everyone together); each visitor sees only their own runs. Uploads: at most 50 MB; "
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


class OwnershipPolicy:
    """Who may see and act on which run, and how much of the queue one visitor may hold.

    ``limits`` None: a local studio, every run is everyone's (``private`` forces the visibility rule without
    limits: the studio context of a Space). Otherwise a public Space: a requester (see the module's
    docstring) sees and acts on the runs they launched only.
    """

    def __init__(self, limits: SpaceLimits | None = None, private: bool | None = None) -> None:
        self.limits = limits
        self.private = limits is not None if private is None else bool(private)
        # The client address each run of this app was launched from (kept in memory, never in the store:
        # an address is personal data, and the run config travels to exports and the Hub).
        self._addresses: dict[str, str] = {}
        self._lock = threading.Lock()

    def may_see(self, run: RunRecord, requester: str | None) -> bool:
        """Whether `requester` may see, use, label, export and read the media and log of `run`."""
        if not self.private or requester is None:
            return True
        return bool(requester) and run.owner == requester

    def check_may_act(self, run: RunRecord, requester: str | None, action: str) -> None:
        """Raise PermissionError unless `requester` may `action` ("cancel", "resume") the run."""
        if requester is not None and run.owner != requester:
            raise PermissionError(f"run {run.id} was started by someone else; only they may {action} it")

    def check_may_read_log(self, run: RunRecord, requester: str | None) -> None:
        """Raise ValueError unless `requester` may read the run's log (on a Space: their own runs only)."""
        if not self.may_see(run, requester):
            raise ValueError(f"the log of run {run.id} is private to the visitor who launched it")

    def admit(self, owner: str | None, active: Sequence[RunRecord], address: str | None = None) -> None:
        """Raise ValueError when one more job of `owner` (from client `address`) would overfill the Space's
        queue, the visitor's share of it or the address's share; `active` are the queued and running runs."""
        limits = self.limits
        if limits is None:
            return
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
        with self._lock:
            same = [r for r in active if address and self._addresses.get(r.id) == address]
        if len(same) >= limits.max_jobs_per_address:
            raise ValueError(
                f"your address already has {len(same)} jobs queued or running (from this or another "
                f"session); this public Space allows {limits.max_jobs_per_address} per address: cancel "
                "one or wait for it to finish"
            )

    def remember_address(self, run_id: str, address: str | None) -> None:
        """Count `run_id` against client `address` from now on (see ``admit``)."""
        if address:
            with self._lock:
                self._addresses[run_id] = address

    def timed_out(self, job: Job, now: float) -> bool:
        """Whether the job has run past the Space's wall-time limit (`now`: time.monotonic())."""
        return self.limits is not None and now - job.started > self.limits.max_seconds

    def time_limit_reason(self) -> str:
        """The reason of a run stopped at the Space's wall-time limit."""
        seconds = self.limits.max_seconds if self.limits is not None else 0.0
        return (
            f"Space time limit: stopped after {seconds:g} s of wall time (its last checkpoint is kept; "
            "train fewer epochs or steps to finish within the limit)"
        )


def client_address(request: Any) -> str | None:
    """The address a request comes from: behind a proxy on a private network (a Hugging Face Space) the
    nearest public address in ``X-Forwarded-For`` (read from the right, so a client cannot pass itself off
    with a forged entry on the left), else the peer's address; None when neither is known."""
    client = getattr(request, "client", None)
    peer = getattr(client, "host", None)
    headers = getattr(request, "headers", None)
    forwarded = ""
    if headers is not None and _is_internal(peer):
        try:
            forwarded = str(headers.get("x-forwarded-for") or "")
        except AttributeError:
            forwarded = ""
    for hop in reversed([h.strip() for h in forwarded.split(",") if h.strip()]):
        if not _is_internal(hop):
            return hop
    return str(peer) if peer else None


def _is_internal(address: Any) -> bool:
    try:
        ip = ipaddress.ip_address(str(address))
    except ValueError:
        return False
    return ip.is_private or ip.is_loopback or ip.is_link_local


class VisibleRuns:
    """The run store as one requester may see it: what the studio's views read runs through.

    Wraps a ``RunStore``; `private()` says whether runs belong to their visitors now (the studio is a public
    Space) and `requester()` who is asking (see the module's docstring). A run the requester may not see is
    absent: ``get_run`` answers None, listings leave it out, metric reads return nothing for it and writes
    refuse it as an unknown id, so every handler that resolves a run id says "no run with id ..." as for a
    run that does not exist. Other methods pass through to the store.
    """

    def __init__(self, store: RunStore, private: Callable[[], bool], requester: Callable[[], str | None]):
        self.store = store
        self._private = private
        self._requester = requester

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def _policy(self) -> tuple[OwnershipPolicy, str | None]:
        return OwnershipPolicy(private=self._private()), self._requester()

    def _sees(self, run_id: Any) -> bool:
        policy, requester = self._policy()
        if not policy.private or requester is None:
            return True
        run = self.store.get_run(str(run_id))
        return run is not None and policy.may_see(run, requester)

    def _visible_ids(self, run_ids: Iterable[str] | None) -> list[str] | None:
        """`run_ids` less the invisible ones; None (all runs) becomes the visible runs' ids when filtering."""
        policy, requester = self._policy()
        if not policy.private or requester is None:
            return None if run_ids is None else list(run_ids)
        if run_ids is None:
            return [run.id for run in self.list_runs()]
        return [r for r in run_ids if self._sees(r)]

    def get_run(self, run_id: str) -> RunRecord | None:
        run = self.store.get_run(run_id)
        policy, requester = self._policy()
        return run if run is None or policy.may_see(run, requester) else None

    def list_runs(self, *args: Any, **kwargs: Any) -> list[RunRecord]:
        policy, requester = self._policy()
        return [run for run in self.store.list_runs(*args, **kwargs) if policy.may_see(run, requester)]

    def metrics_after(self, cursor: int, run_ids: Iterable[str] | None = None, *args: Any, **kwargs: Any):
        ids = self._visible_ids(run_ids)
        if ids is not None and not ids:
            return [], cursor
        return self.store.metrics_after(cursor, ids, *args, **kwargs)

    def metric_names(self, run_ids: Iterable[str] | None = None) -> list[str]:
        ids = self._visible_ids(run_ids)
        return [] if ids is not None and not ids else self.store.metric_names(ids)

    def metric_series(self, run_id: str, *args: Any, **kwargs: Any) -> list[tuple[int, float]]:
        return self.store.metric_series(run_id, *args, **kwargs) if self._sees(run_id) else []

    def best_metrics(self, run_id: str) -> dict[str, float]:
        return self.store.best_metrics(run_id) if self._sees(run_id) else {}

    def recent_steps(self, run_id: str, *args: Any, **kwargs: Any) -> list[tuple[int, float]]:
        return self.store.recent_steps(run_id, *args, **kwargs) if self._sees(run_id) else []

    def _checked(self, run_id: Any) -> str:
        if not self._sees(run_id):
            raise ValueError(f"no run with id {str(run_id)!r} here")
        return str(run_id)

    def set_labels(self, run_id: str, *args: Any, **kwargs: Any) -> Any:
        return self.store.set_labels(self._checked(run_id), *args, **kwargs)

    def update_run(self, run_id: str, *args: Any, **kwargs: Any) -> Any:
        return self.store.update_run(self._checked(run_id), *args, **kwargs)

    def set_status(self, run_id: str, *args: Any, **kwargs: Any) -> Any:
        return self.store.set_status(self._checked(run_id), *args, **kwargs)

    def run_dir(self, run_id: str) -> Any:
        return self.store.run_dir(self._checked(run_id))
