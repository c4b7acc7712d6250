"""The ownership and Space policy: who may act on which run, and what a public Space allows.

A local studio has one user: every run is theirs. On a public Space (``SpaceLimits`` given) every run
belongs to the visitor who launched it (``RunRecord.owner``); this module is the one place that says what
follows from that, for the job manager (cancel, resume, logs, the queue's caps, the wall-time limit).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from studio.backends.base import Job
    from trainers.store import RunRecord


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


class OwnershipPolicy:
    """Who may act on which run and how much of the queue one visitor may hold.

    ``limits`` None: a local studio, no rule applies. Otherwise a public Space: a `requester` (the visitor
    asking, see ``StudioContext.visitor``) acts only on the runs they launched.
    """

    def __init__(self, limits: SpaceLimits | None = None) -> None:
        self.limits = limits

    @property
    def private(self) -> bool:
        """Whether runs belong to their visitors (a public Space)."""
        return self.limits is not None

    def check_may_act(self, run: RunRecord, requester: str | None, action: str) -> None:
        """Raise PermissionError unless `requester` may `action` ("cancel", "resume") the run."""
        if requester is not None and run.owner != requester:
            raise PermissionError(f"run {run.id} was started by someone else; only they may {action} it")

    def check_may_read_log(self, run: RunRecord, requester: str | None) -> None:
        """Raise ValueError unless `requester` may read the run's log (on a Space: their own runs only)."""
        if self.private and requester is not None and run.owner != requester:
            raise ValueError(f"the log of run {run.id} is private to the visitor who launched it")

    def admit(self, owner: str | None, active: Sequence[RunRecord]) -> None:
        """Raise ValueError when one more job of `owner` would overfill the Space's queue or the visitor's
        share of it; `active` are the queued and running runs."""
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

    def timed_out(self, job: Job, now: float) -> bool:
        """Whether the job has run past the Space's wall-time limit (`now`: time.monotonic())."""
        return self.limits is not None and now - job.started > self.limits.max_seconds

    def time_limit_reason(self) -> str:
        """The reason of a run stopped at the Space's wall-time limit."""
        seconds = self.limits.max_seconds if self.limits is not None else 0.0
        return f"Space time limit: stopped after {seconds:g} s of wall time"
