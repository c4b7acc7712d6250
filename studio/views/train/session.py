"""What the Train tab's modules share: the page session's state (what one browser has shown, so a poll can
skip what did not change), the jobs rows by id, who is asking on a Space, and the warning for bad input."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from studio.context import StudioContext
from studio.curves import CurveCache

POLL_SECONDS = 2.0
LOG_LINES = 40
DEFAULT_METRIC = "train/loss"


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


# Settings for which 0 is no value: a number field left at 0 takes the preset's value, as a blank one does
# -------------------------------------------------------------------------------------------- page state
@dataclass
class TrainSession:
    """What one browser session has shown, so a poll can skip everything that did not change."""

    cache: CurveCache = field(default_factory=CurveCache)
    run_ids: tuple[str, ...] = ()
    panel_keys: dict[int, tuple[Any, ...]] = field(default_factory=dict)
    log: str | None = None
    table: dict[str, Any] | None = None  # the jobs table's value as last sent (studio.views.train.jobs_view)
    table_ids: list[str] = field(default_factory=list)  # each row's key: a run id, or "study:<id>"
    columns: tuple[str, ...] | None = None  # the jobs table's optional columns (None: the defaults)
    collapsed: set[str] = field(default_factory=set)  # studies whose runs the jobs table folds away
    # Runs whose curves the panels leave out (the eye column); they stay in the jobs table.
    hidden: frozenset[str] = frozenset()
    x_axis: str = "step"
    cancel_enabled: bool | None = None
    resume_enabled: bool | None = None
    panel_metrics: tuple[str, ...] = ()  # the metric of each shown panel, in order (see metric_grid)
    panel_note: str | None = None  # the search's line last shown


def job_rows(ctx: StudioContext) -> list[dict[str, Any]]:
    """The jobs rows the visitor asking may see (``JobManager.jobs``): on a public Space their own runs,
    and other visitors' queued or running jobs as anonymous entries (id "")."""
    return ctx.jobs.jobs(ctx.requester()) if ctx.jobs is not None else []


def _rows_by_id(ctx: StudioContext, rows: list[dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """The visitor's runs' rows by id (anonymous entries left out)."""
    return {row["id"]: row for row in (job_rows(ctx) if rows is None else rows) if row.get("id")}


def _session(ctx: StudioContext, request: gr.Request | None) -> str | None:
    """Who is asking (``StudioContext.requester``): None off a public Space (a local studio has one user);
    on a Space the visitor's HF login, else the id their browser keeps (it survives a reload), else the page
    session, else ``NOBODY`` (owns no run)."""
    return ctx.requester(request) if ctx.space else None


def _where(ctx: StudioContext) -> str:
    """Where a run id was looked for, in a message: the runs folder, but no server path on a public Space."""
    return "here" if ctx.space else f"in {ctx.runs_dir}"


def _warn(exc: Exception) -> str:
    gr.Warning(html.escape(str(exc)))
    return f"⚠️ {exc}"  # Markdown sanitises HTML itself; escaping here would garble the API's text
