"""What the selected run's buttons do: save its labels, cancel it, read its log's tail. Plain functions of
the studio context that raise ValueError with a message for a person."""

from __future__ import annotations

from typing import Any

from studio.context import StudioContext
from studio.views.train.session import LOG_LINES, _blank, _where
from trainers.runs.store import check_tags


def set_run_labels(ctx: StudioContext, run_id: Any, name: Any, tags: Any, note: Any) -> str:
    """Save a run's name, tags (comma-separated) and note; the answer is the message for the user."""
    if _blank(run_id):
        raise ValueError("No run selected: pick a run in the jobs table (or the run dropdown) to label.")
    for what, value in (("name", name), ("tags", tags), ("note", note)):
        if value is not None and not isinstance(value, (str, list)):
            raise ValueError(f"the run's {what} must be text, got {type(value).__name__}")
    if ctx.store.get_run(str(run_id)) is None:
        raise ValueError(f"no run with id {str(run_id)!r} {_where(ctx)}")
    record = ctx.store.set_labels(str(run_id), name=name or "", tags=check_tags(tags or []), note=note or "")
    tags_text = f" · tags {', '.join(record.tags)}" if record.tags else ""
    return f"Saved: {record.label}{tags_text}"


def cancel_run(ctx: StudioContext, run_id: Any, requester: str | None = None) -> str:
    """Ask the job manager to cancel a run; its answer is the message for the user.

    On a public Space `requester` is the browser session: a visitor may cancel only the runs they launched.
    """
    if _blank(run_id):
        raise ValueError("No run selected: pick a run in the jobs table (or the run dropdown) to cancel.")
    if ctx.jobs is None:
        raise ValueError("this studio has no job manager; start it with `python app.py`")
    return str(ctx.jobs.cancel(str(run_id), requester=requester if ctx.space else None))


def log_tail(ctx: StudioContext, run_id: Any, lines: int = LOG_LINES, requester: str | None = None) -> str:
    """The last lines of a run's log, or a hint while there is none.

    On a public Space `requester` (the visitor) reads only the logs of the runs they launched."""
    if _blank(run_id):
        return ""
    if ctx.jobs is None:
        return "(no job manager in this studio)"
    text = ctx.jobs.log_tail(str(run_id), lines, requester=requester if ctx.space else None)
    if text:
        return text
    run = ctx.store.get_run(str(run_id))
    if run is None or run.status == "queued":
        return "(no log yet: the run has not started)"
    return "(no log here: this run was started outside the studio, e.g. `python -m trainers train`)"


#: The statuses of a run that can be resumed from its last checkpoint (a killed trainer's run ends failed).
RESUMABLE = ("failed", "cancelled")


def resume_run(
    ctx: StudioContext, run_id: Any, requester: str | None = None, address: str | None = None
) -> str:
    """Queue a failed or cancelled run to go on from its last checkpoint (``JobManager.resume``: its trainer
    starts with ``--resume``); the answer is the message for the user.

    On a public Space `requester` (the visitor) may resume only their own runs, within the Space's caps."""
    if _blank(run_id):
        raise ValueError("No run selected: pick a failed or cancelled run in the jobs table to resume.")
    if ctx.jobs is None:
        raise ValueError("this studio has no job manager; start it with `python app.py`")
    return str(ctx.jobs.resume(str(run_id), requester=requester if ctx.space else None, address=address))
