"""Polling: one ``gr.Timer`` tick reads the jobs table and only the metric rows newer than what this browser
session has, and skips every output that did not change; and the fill of a freshly opened page."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import gradio as gr

from studio.context import StudioContext
from studio.views.train.jobs_view import chosen_columns, jobs_view
from studio.views.train.metric_grid import PANEL_SLOTS
from studio.views.train.panels import initial_curve_runs, refresh_panels, view_js
from studio.views.train.run_actions import RESUMABLE, log_tail
from studio.views.train.session import (
    POLL_SECONDS,
    TrainSession,
    _blank,
    _rows_by_id,
    job_rows,
)

log = logging.getLogger(__name__)


def poll(
    ctx: StudioContext,
    state: TrainSession,
    query: Any,
    order: Any,
    runs: Any,
    smoothing: Any,
    log_y: Any,
    n_panels: Any,
    search: Any,
    views: Sequence[Any],
    run_id: Any,
    requester: str | None = None,
) -> dict[str, Any]:
    """One tick of the page: what changed since this session's last look (others are ``gr.skip()``);
    `requester` is the visitor on a public Space, who sees only their own runs' logs."""
    every = job_rows(ctx)
    rows = _rows_by_id(ctx, every)
    out: dict[str, Any] = {}
    try:
        view = jobs_view(every, query or "", order or "newest", state.columns, state.collapsed, state.hidden)
        table, ids = view.value, view.keys
    except ValueError:
        table, ids = state.table, state.table_ids
    out["table"] = gr.skip() if table == state.table else table
    state.table, state.table_ids = table, ids
    run_ids = tuple(rows)
    out["choices"] = gr.skip()
    if run_ids != state.run_ids:
        state.run_ids = run_ids
        out["choices"] = gr.update(choices=list(run_ids))
    try:
        grid = refresh_panels(ctx, state, runs, search, n_panels, smoothing, log_y, views, False, rows)
        out["plots"], out["columns"], out["caption"], out["note"] = (
            grid.plots,
            grid.columns,
            grid.caption,
            grid.note,
        )
    except ValueError:  # a bad selection; the curves event has already said so
        out["plots"] = out["columns"] = [gr.skip()] * PANEL_SLOTS
        out["caption"] = out["note"] = gr.skip()
    out["log"] = out["cancel"] = out["resume"] = gr.skip()
    if not _blank(run_id):
        try:
            text = log_tail(ctx, run_id, requester=requester)
        except (ValueError, FileNotFoundError) as exc:
            text = str(exc)
        if text != state.log:
            state.log = out["log"] = text
        row = rows.get(str(run_id))
        enabled = row is not None and row.get("status") in ("queued", "running")
        if enabled != state.cancel_enabled:
            state.cancel_enabled = enabled
            out["cancel"] = gr.update(interactive=enabled)
        resumable = row is not None and row.get("status") in RESUMABLE
        if resumable != state.resume_enabled:
            state.resume_enabled = resumable
            out["resume"] = gr.update(interactive=resumable)
    return out


def _wire_poll(ctx: StudioContext, jobs: SimpleNamespace, curves: SimpleNamespace, session: gr.State) -> None:
    """The one timer: table, pickers, panels, log and Cancel's state, each only when it changed."""
    timer = gr.Timer(POLL_SECONDS)
    n = PANEL_SLOTS

    def tick(query, order, runs, smoothing, log_y, n_panels, search, run_id, *rest):
        *views, state = rest
        try:
            out = poll(
                ctx,
                state,
                query,
                order,
                runs,
                smoothing,
                log_y,
                n_panels,
                search,
                views,
                run_id,
                ctx.requester(),  # the visitor of the Gradio event being handled (None off a Space)
            )
        except Exception:  # noqa: BLE001 - a failing poll must not put an error on the page every 2 s
            log.exception("Train tab poll failed")
            return (*[gr.skip()] * (9 + 2 * n), state)
        return (
            out["table"],
            out["choices"],
            out["choices"],
            out["choices"],
            *out["plots"],
            *out["columns"],
            out["caption"],
            out["note"],
            out["log"],
            out["cancel"],
            out["resume"],
            state,
        )

    timer.tick(
        tick,
        inputs=[
            jobs.filter,
            jobs.sort,
            curves.runs,
            curves.smoothing,
            curves.log_y,
            curves.n_panels,
            curves.search,
            jobs.selected,
            *curves.views,
            session,
        ],
        outputs=[
            jobs.table,
            curves.runs,
            jobs.selected,
            jobs.hidden,
            *curves.plots,
            *curves.columns,
            curves.caption,
            curves.note,
            jobs.log,
            jobs.cancel,
            jobs.resume,
            session,
        ],
        js=view_js({8 + i: i for i in range(n)}),
        api_visibility="private",
        concurrency_limit=None,
        show_progress="hidden",  # a poll every 2 s must not flash a timer over the panels and notes
    )


def _wire_load(
    ctx: StudioContext,
    jobs: SimpleNamespace,
    curves: SimpleNamespace,
    session: gr.State,
    prefs: gr.BrowserState,
    launch_box: gr.Accordion,
) -> None:
    """Fill the table and pickers when the page opens, not on the first tick, with the columns and the
    launch form's fold this browser kept (``prefs``); choosing the plotted runs draws their panels (the runs
    picker's change event)."""

    def load(saved: Any, state: TrainSession):
        saved = saved if isinstance(saved, dict) else {}
        state.columns = chosen_columns(saved.get("columns"))
        every = job_rows(ctx)
        rows = _rows_by_id(ctx, every)
        state.run_ids = tuple(rows)
        view = jobs_view(every, columns=state.columns)
        state.table, state.table_ids = view.value, view.keys
        plotted = initial_curve_runs(list(rows.values()))
        ids = list(state.run_ids)
        selected = gr.update(choices=ids, value=plotted[0] if plotted else None)
        # Only a fold is sent: setting open=True on an open accordion makes Gradio 6.31's next click on it
        # fire collapse and expand both, so it stays open.
        fold = gr.update(open=False) if saved.get("launch_open") is False else gr.skip()
        return (
            state.table,
            gr.update(choices=ids, value=plotted),
            selected,
            gr.update(choices=ids),
            list(state.columns),
            fold,
            state,
        )

    root = gr.context.Context.root_block
    if root is not None:
        root.load(
            load,
            inputs=[prefs, session],
            outputs=[
                jobs.table,
                curves.runs,
                jobs.selected,
                jobs.hidden,
                jobs.columns,
                launch_box,
                session,
            ],
            api_visibility="private",
        )
