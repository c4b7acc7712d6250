"""The curve panels: which runs a page plots first, each run's legend text, and one incremental refresh of
the grid of panels, a panel per logged metric that matches the search (``metric_grid`` picks them; only the
metric rows newer than what this session has are read, see ``studio.curves``)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import gradio as gr

from studio.context import StudioContext
from studio.curves import (
    X_AXES,
    RunLabel,
    figure_points,
    figure_spec,
    keep_view_spec,
    plot_data,
)
from studio.views.train.metric_grid import (
    DEFAULT_MAX_PANELS,
    MAX_PANEL_CHOICES,
    PANEL_SLOTS,
    PanelPlan,
    default_metrics,
    plan_panels,
)
from studio.views.train.session import DEFAULT_METRIC, TrainSession, _blank, _rows_by_id, _where
from studio.views.train.table import _setting, short_run_id

# Runs preselected for the curves when a page opens: the running ones, else the newest few.
INITIAL_CURVE_RUNS = 4
PANEL_HEIGHT = 340
NO_RUNS_NOTE = "Choose runs to plot: a panel per metric they log appears here."
# Settings shown in the legend (where they differ between the plotted runs) and in the hover: key -> word.
LEGEND_SETTINGS: dict[str, str] = {
    "variant": "variant",
    "preset": "preset",
    "epochs": "epochs",
    "batch_size": "batch",
    "lr": "lr",
    "data": "data",
    "seed": "seed",
    "precision": "precision",
}


# Layout rules of the tab: numbers never wrap mid-value, the jobs table scrolls sideways instead of breaking
# words at 800 px, and dropdowns keep room for their arrow.
def view_js(slots: Mapping[int, int]) -> str:
    """JavaScript run in the browser before a curve refresh: puts the current zoom of panel p (see
    studio.curves.keep_view) into argument i of the event, for each i -> p of ``slots``."""
    pairs = json.dumps([[i, p] for i, p in slots.items()])
    return (
        "(...args) => {\n"
        f"    for (const [i, p] of {pairs}) {{\n"
        "        const graph = document.querySelector('#train-plot-' + p + ' .js-plotly-plot');\n"
        "        const full = graph && graph._fullLayout;\n"
        "        if (full && graph.layout) {\n"
        "            const range = (axis) => (axis && !axis.autorange ? axis.range : null);\n"
        "            args[i] = JSON.stringify({uirevision: graph.layout.uirevision ?? null,\n"
        "                                      x: range(full.xaxis), y: range(full.yaxis)});\n"
        "        }\n"
        "    }\n"
        "    return args;\n"
        "}"
    )


def run_labels(rows: Mapping[str, Mapping[str, Any]], run_ids: Sequence[str]) -> dict[str, RunLabel]:
    """Legend text and hover of each plotted run: its name (else id) plus the settings in which the plotted
    runs differ ("lr=0.002, batch=8"), so runs of the same variant can be told apart; the hover lists all."""
    known = [rows[r] for r in run_ids if r in rows]
    differing = [
        key for key in LEGEND_SETTINGS if len({json.dumps(row.get(key), default=str) for row in known}) > 1
    ]
    labels = {}
    for run_id in run_ids:
        row = rows.get(run_id)
        if row is None:
            labels[run_id] = RunLabel(run_id)
            continue
        # Without a name, the id less its creation time (the same for a whole launch, and what pushed the
        # legends of a narrow panel off its left edge); the hover keeps the whole id.
        name = str(row.get("name") or short_run_id(run_id))
        keys = differing if row.get("name") else [k for k in differing if k != "variant"]  # the id says it
        diff = ", ".join(f"{LEGEND_SETTINGS[k]}={_setting(row.get(k), 'lr')}" for k in keys)
        given = [
            f"{word} {_setting(row.get(key), 'lr')}" for key, word in LEGEND_SETTINGS.items() if row.get(key)
        ]
        settings = " · ".join([run_id, *given])
        total, epochs = row.get("total_steps"), row.get("epochs")
        per_epoch = row.get("steps_per_epoch")
        if not per_epoch and total and epochs and not row.get("max_steps"):
            per_epoch = total // epochs
        label = f"{name} ({diff})" if diff else name
        labels[run_id] = RunLabel(label, settings, per_epoch or None, domain=str(row.get("domain") or ""))
    return labels


def check_curve_request(metric: Any, runs: Any) -> tuple[str, list[str]]:
    """A curves request as (metric, run ids), with a message for a missing or malformed one."""
    if _blank(metric) or not isinstance(metric, str):
        raise ValueError("No metric chosen: pick one such as 'train/loss' or 'val/psnr'.")
    if _blank(runs):
        return metric, []
    if isinstance(runs, str):
        runs = [runs]
    if not isinstance(runs, Iterable) or not all(isinstance(r, str) and r for r in runs):
        raise ValueError(f"runs must be a list of run ids, got {runs!r}")
    return metric, list(dict.fromkeys(runs))


def initial_curve_runs(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The runs a fresh page plots: those running now, else the newest few; of one domain, the newest
    one's, since one axis cannot show a fragment cross-entropy of ~5 and a SAR loss of ~0.3 together."""
    candidates = [row for row in rows if row.get("status") == "running"] or list(rows)
    first = candidates[0].get("domain") if candidates else None
    return [row["id"] for row in candidates if row.get("domain") == first][:INITIAL_CURVE_RUNS]


def curve_caption(points: Mapping[str, int], metric: str) -> str:
    """One line under the plots: how many points of which metric over how many runs."""
    if not points:
        return f"*{metric}: choose runs to plot.*"
    with_points = sum(1 for n in points.values() if n)
    return (
        f"*{metric}: {sum(points.values())} points from {with_points} of {len(points)} run(s)"
        f" · updated {time.strftime('%H:%M:%S')}*"
    )


def default_panels(domain: str | None) -> list[str]:
    """The metrics the panels show first for runs of ``domain``."""
    return default_metrics([domain])


def draw_panel(
    ctx: StudioContext,
    state: TrainSession,
    index: int,
    metric: Any,
    run_ids: list[str],
    settings: tuple[float, bool],
    view: Any,
    rows: Mapping[str, Mapping[str, Any]],
    force: bool,
) -> tuple[Any, dict[str, int] | None]:
    """(plot payload, points per run) of one panel, or (skip, None) when nothing it shows has changed.
    ``settings`` is (smoothing, log scale); the cache must be up to date (``CurveCache.update``)."""
    if _blank(metric):
        return gr.skip(), None
    smoothing, log_y = settings
    labels = run_labels(rows, run_ids)
    key = (
        metric,
        tuple(run_ids),
        smoothing,
        log_y,
        state.x_axis,
        tuple(sorted((r, lab.label, lab.settings) for r, lab in labels.items())),
        tuple(state.cache.point_counts(metric, run_ids).values()),
    )
    if not force and state.panel_keys.get(index) == key:
        return gr.skip(), None
    spec = figure_spec(
        state.cache, metric, run_ids, smoothing, log_y, state.x_axis, labels, height=PANEL_HEIGHT
    )
    keep_view_spec(spec, view)
    state.panel_keys[index] = key
    return plot_data(spec), {run_id: 0 for run_id in run_ids} | figure_points(spec)


def _check_plot_settings(smoothing: Any, log_y: Any) -> tuple[float, bool]:
    if isinstance(smoothing, bool) or not isinstance(smoothing, (int, float)):
        raise ValueError(f"smoothing must be a number in [0, 1), e.g. 0.6; got {smoothing!r}")
    return float(smoothing), bool(log_y)


def _known_runs(ctx: StudioContext, runs: Any, rows: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The run ids of a curves request; a run the page does not list (nor the store) is an error."""
    _, run_ids = check_curve_request(DEFAULT_METRIC, runs)
    unknown = [run_id for run_id in run_ids if run_id not in rows and ctx.store.get_run(run_id) is None]
    if unknown:
        raise ValueError(f"no run with id {', '.join(map(repr, unknown))} {_where(ctx)}")
    return run_ids


def draw_curves(
    ctx: StudioContext,
    state: TrainSession,
    metrics: Sequence[Any],
    runs: Any,
    smoothing: Any,
    log_y: Any,
    views: Sequence[Any],
    force: bool,
    rows: Mapping[str, Mapping[str, Any]] | None = None,
    updated: bool = False,
) -> tuple[list[Any], Any]:
    """Refresh every panel from one incremental read: (plot payloads or skips, caption or skip). Runs the
    page does not list are an error with a message (a poll passes ``force=False`` and skips them).
    ``updated``: the caller has just brought the cache up to date for these runs."""
    if metrics and not _blank(metrics[0]):
        check_curve_request(metrics[0], runs)
    rows = _rows_by_id(ctx) if rows is None else rows
    run_ids = _known_runs(ctx, runs, rows)
    settings = _check_plot_settings(smoothing, log_y)
    run_ids = [run_id for run_id in run_ids if run_id not in state.hidden]  # the jobs table's eye column
    if not updated:
        state.cache.update(ctx.store, run_ids)
    plots, caption = [], gr.skip()
    for index, metric in enumerate(metrics):
        view = views[index] if index < len(views) else ""
        payload, points = draw_panel(ctx, state, index, metric, run_ids, settings, view, rows, force)
        plots.append(payload)
        if index == 0 and points is not None:
            caption = curve_caption(points, str(metric))
    return plots, caption


def check_panel_count(value: Any) -> int:
    """The Panels choice as a whole number of panels, with a message for anything else."""
    try:
        count = int(value) if value is not None and float(value) == int(float(value)) else None
    except (TypeError, ValueError):
        count = None
    if count is None or not 1 <= count <= PANEL_SLOTS:
        raise ValueError(f"Panels must be a whole number from 1 to {PANEL_SLOTS}, got {value!r}")
    return count


@dataclass
class PanelRefresh:
    """What one refresh of the panel grid sends: a payload (or skip) per slot, a visibility update (or skip)
    per slot's column, the caption and the search's line (each or skip)."""

    plots: list[Any]
    columns: list[Any]
    caption: Any
    note: Any
    plan: PanelPlan


def refresh_panels(
    ctx: StudioContext,
    state: TrainSession,
    runs: Any,
    search: Any,
    count: Any,
    smoothing: Any,
    log_y: Any,
    views: Sequence[Any],
    force: bool,
    rows: Mapping[str, Mapping[str, Any]] | None = None,
) -> PanelRefresh:
    """The grid of panels: one per metric the plotted runs logged that matches ``search``, their domains'
    defaults first, at most ``count`` (``plan_panels``); each slot redrawn only when what it shows changed,
    its label set only when its metric changed, its column shown or hidden only when that changes."""
    rows = _rows_by_id(ctx) if rows is None else rows
    plotted = _known_runs(ctx, runs, rows)
    run_ids = [run_id for run_id in plotted if run_id not in state.hidden]  # the jobs table's eye column
    count = check_panel_count(count)
    _check_plot_settings(smoothing, log_y)
    state.cache.update(ctx.store, run_ids)
    domains = [rows[r].get("domain") for r in run_ids if r in rows]
    plan = plan_panels(state.cache.metric_names(run_ids), domains, str(search or ""), count)
    metrics: list[str | None] = [*plan.metrics, *[None] * (PANEL_SLOTS - len(plan.metrics))]
    plots, caption = draw_curves(ctx, state, metrics, runs, smoothing, log_y, views, force, rows, True)
    columns = [gr.skip()] * PANEL_SLOTS
    if plan.metrics != state.panel_metrics or force:
        previous = state.panel_metrics
        for index, metric in enumerate(metrics):
            was = previous[index] if index < len(previous) else None
            if (metric is None) != (was is None) or force:
                columns[index] = gr.update(visible=metric is not None)
            if metric is not None and (metric != was or force):  # its label names it, as its y axis does
                drawn = plots[index]
                plots[index] = (
                    gr.update(label=metric) if drawn == gr.skip() else gr.update(value=drawn, label=metric)
                )
        state.panel_metrics = plan.metrics
    if not plan.metrics:
        caption = f"*{plan.note}*"
    text = plan.note if plotted else NO_RUNS_NOTE
    note = gr.skip() if text == state.panel_note and not force else f"*{text}*"
    state.panel_note = text
    return PanelRefresh(plots, columns, caption, note, plan)


def _curves_section() -> SimpleNamespace:
    """Shared curve settings (runs, x-axis, smoothing, log scale, panel count, metric search) and the grid of
    metric panels (``PANEL_SLOTS`` of them, hidden until a metric fills one)."""
    ui = SimpleNamespace()
    gr.Markdown("### Curves")
    ui.runs = gr.Dropdown(
        choices=[],
        value=[],
        multiselect=True,
        allow_custom_value=True,
        label="Runs",
        elem_id="train-curve-runs",
    )
    with gr.Row():
        ui.x_axis = gr.Dropdown(list(X_AXES), value="step", label="x-axis", scale=1, elem_id="train-x-axis")
        ui.smoothing = gr.Slider(
            0.0, 0.99, value=0.6, step=0.01, label="Smoothing (EMA)", scale=2, elem_id="train-smoothing"
        )
        ui.log_y = gr.Checkbox(value=False, label="Log scale", scale=1, elem_id="train-log-scale")
        ui.n_panels = gr.Dropdown(
            list(MAX_PANEL_CHOICES),
            value=DEFAULT_MAX_PANELS,
            label="Panels",
            info="at most",
            scale=1,
            elem_id="train-panel-count",
        )
    ui.search = gr.Textbox(
        "",
        label="Metrics",
        placeholder="search: val/  ·  ^sys/  ·  psnr|ssim  (blank: all; Enter to apply)",
        info="a panel per logged metric that matches (a regular expression or text), defaults first",
        elem_id="train-metric-search",
    )
    ui.note = gr.Markdown(f"*{NO_RUNS_NOTE}*", elem_id="train-panel-note")
    ui.caption = gr.Markdown(label="Curve summary", elem_id="train-curve-info")
    # The `curves` API's metric (one metric's panel, for API clients); the page's panels follow the search.
    ui.api_metric = gr.Textbox(DEFAULT_METRIC, visible=False, label="Metric (API)")
    ui.columns, ui.plots, ui.views = [], [], []
    for first in range(0, PANEL_SLOTS, 2):
        with gr.Row(equal_height=False):
            for index in range(first, min(first + 2, PANEL_SLOTS)):
                # 400 px at least: in the dashboard's panel column a 1400 px page gets one panel a row, wide
                # enough for its legend; a wider page two.
                with gr.Column(min_width=400, visible=False) as column:
                    ui.plots.append(gr.Plot(label=f"Panel {index + 1}", elem_id=f"train-plot-{index}"))
                    ui.views.append(gr.Textbox("", visible=False, label=f"Zoom of panel {index + 1} (JSON)"))
                ui.columns.append(column)
    return ui
