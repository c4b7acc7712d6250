"""The Train tab: launch jobs for chosen variants, watch the jobs table and live curve panels, name, tag and
cancel runs.

Handlers are plain functions of the studio context that raise ValueError with a message for a person; the
Gradio wrappers in :func:`build_tab` turn those into a status line and a warning toast, so bad input never
shows a stack trace and never launches anything. Polling is one ``gr.Timer``: each tick reads the jobs
table and only the metric rows newer than what this browser session has (see ``studio.curves``), and skips
every output that did not change, so an idle page costs a couple of small SQLite queries.

The modules: ``form`` (the launch form and its handlers), ``table`` (the jobs table's rows, filter and
sort), ``jobs_view`` (the table as the page shows it: grouped by study, chosen columns, hidden runs; and
its section), ``run_actions`` (the selected run's labels, cancel, log), ``panels`` (the curve panels),
``metric_grid`` (which metric each panel shows: the search, the order, the cap),
``media`` (the media section), ``polling`` (the timer and the page load), ``wiring`` (the events and the
layout), ``session`` (what they share). The names below stay importable from ``studio.views.train``.
"""

from __future__ import annotations

from studio.views.train.form import (
    PRESET_IF_ZERO,
    SPACE_MAX_EPOCHS,
    _launch_form,
    launch_runs,
    parse_settings,
    plot_selection,
    preset_summary,
    queue_note,
    variant_choices,
)
from studio.views.train.jobs_view import DEFAULT_COLUMNS, JobsView, _jobs_section, jobs_view
from studio.views.train.metric_grid import (
    DEFAULT_MAX_PANELS,
    DEFAULT_PANELS,
    PANEL_SLOTS,
    PanelPlan,
    order_metrics,
    plan_panels,
)
from studio.views.train.panels import (
    INITIAL_CURVE_RUNS,
    LEGEND_SETTINGS,
    PANEL_HEIGHT,
    _curves_section,
    check_curve_request,
    curve_caption,
    default_panels,
    draw_curves,
    draw_panel,
    initial_curve_runs,
    refresh_panels,
    run_labels,
    view_js,
)
from studio.views.train.polling import poll
from studio.views.train.run_actions import cancel_run, log_tail, set_run_labels
from studio.views.train.session import DEFAULT_METRIC, LOG_LINES, POLL_SECONDS, TrainSession
from studio.views.train.table import (
    JOB_HEADERS,
    NOTE_CHARS,
    SORTS,
    format_bytes,
    format_count,
    format_elapsed,
    job_row,
    job_table,
    progress_text,
    resource_texts,
    row_matches,
    run_cell,
    sort_rows,
    speed_text,
)
from studio.views.train.wiring import CSS, build_tab

__all__ = [
    "CSS",
    "DEFAULT_COLUMNS",
    "DEFAULT_METRIC",
    "DEFAULT_MAX_PANELS",
    "DEFAULT_PANELS",
    "INITIAL_CURVE_RUNS",
    "JobsView",
    "JOB_HEADERS",
    "LEGEND_SETTINGS",
    "LOG_LINES",
    "NOTE_CHARS",
    "PANEL_HEIGHT",
    "PANEL_SLOTS",
    "POLL_SECONDS",
    "PRESET_IF_ZERO",
    "PanelPlan",
    "SORTS",
    "SPACE_MAX_EPOCHS",
    "TrainSession",
    "_curves_section",
    "_jobs_section",
    "_launch_form",
    "build_tab",
    "cancel_run",
    "check_curve_request",
    "curve_caption",
    "default_panels",
    "draw_curves",
    "draw_panel",
    "format_bytes",
    "format_count",
    "format_elapsed",
    "initial_curve_runs",
    "job_row",
    "job_table",
    "jobs_view",
    "launch_runs",
    "log_tail",
    "order_metrics",
    "parse_settings",
    "plan_panels",
    "plot_selection",
    "poll",
    "preset_summary",
    "progress_text",
    "queue_note",
    "refresh_panels",
    "resource_texts",
    "row_matches",
    "run_cell",
    "run_labels",
    "set_run_labels",
    "sort_rows",
    "speed_text",
    "variant_choices",
    "view_js",
]
