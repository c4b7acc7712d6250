"""The curve panels: which runs and metrics a page plots first, each run's legend text, and one incremental
refresh of every panel (only the metric rows newer than what this session has; see ``studio.curves``)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
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
from studio.views.train.session import DEFAULT_METRIC, TrainSession, _blank, _rows_by_id, _where
from studio.views.train.table import _setting

# Runs preselected for the curves when a page opens: the running ones, else the newest few.
INITIAL_CURVE_RUNS = 4
# Metric panels side by side, and what they show first for runs of each domain.
PANEL_COUNT = 4
DEFAULT_PANEL_COUNT = 3
DEFAULT_PANELS: dict[str, tuple[str, ...]] = {
    "sar": ("train/loss", "val/psnr", "val/ssim", "val/epi"),
    "audio": ("train/loss", "val/loss", "val/spectral_convergence", "val/lsd"),
    "fragments": ("train/loss", "val/loss", "val/accuracy_corrupted", "val/accuracy"),
}
PANEL_HEIGHT = 340
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
        name = str(row.get("name") or run_id)
        diff = ", ".join(f"{LEGEND_SETTINGS[k]}={_setting(row.get(k), 'lr')}" for k in differing)
        settings = " · ".join(
            f"{word} {_setting(row.get(key), 'lr')}" for key, word in LEGEND_SETTINGS.items() if row.get(key)
        )
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
    metrics = list(DEFAULT_PANELS.get(domain or "", ("train/loss", "val/loss")))
    return (metrics + [DEFAULT_METRIC] * PANEL_COUNT)[:PANEL_COUNT]


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
) -> tuple[list[Any], Any]:
    """Refresh every panel from one incremental read: (plot payloads or skips, caption or skip). Runs the
    page does not list are an error with a message (a poll passes ``force=False`` and skips them)."""
    _, run_ids = check_curve_request(
        metrics[0] if metrics and not _blank(metrics[0]) else DEFAULT_METRIC, runs
    )
    rows = _rows_by_id(ctx) if rows is None else rows
    unknown = [run_id for run_id in run_ids if run_id not in rows and ctx.store.get_run(run_id) is None]
    if unknown:
        raise ValueError(f"no run with id {', '.join(map(repr, unknown))} {_where(ctx)}")
    settings = _check_plot_settings(smoothing, log_y)
    run_ids = [run_id for run_id in run_ids if run_id not in state.hidden]  # the jobs table's eye column
    state.cache.update(ctx.store, run_ids)
    plots, caption = [], gr.skip()
    for index, metric in enumerate(metrics):
        view = views[index] if index < len(views) else ""
        payload, points = draw_panel(ctx, state, index, metric, run_ids, settings, view, rows, force)
        plots.append(payload)
        if index == 0 and points is not None:
            caption = curve_caption(points, str(metric))
    return plots, caption


def _curves_section() -> SimpleNamespace:
    """Shared curve settings (runs, x-axis, smoothing, log scale, panel count) and the metric panels."""
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
            list(range(1, PANEL_COUNT + 1)),
            value=DEFAULT_PANEL_COUNT,
            label="Panels",
            scale=1,
            elem_id="train-panel-count",
        )
    ui.caption = gr.Markdown(label="Curve summary", elem_id="train-curve-info")
    ui.columns, ui.metrics, ui.plots, ui.views = [], [], [], []
    for first in range(0, PANEL_COUNT, 2):
        with gr.Row(equal_height=False):
            for index in range(first, min(first + 2, PANEL_COUNT)):
                with gr.Column(min_width=320, visible=index < DEFAULT_PANEL_COUNT) as column:
                    ui.metrics.append(
                        gr.Dropdown(
                            choices=[DEFAULT_METRIC],
                            value=default_panels(None)[index],
                            label=f"Panel {index + 1} metric",
                            allow_custom_value=True,
                            elem_id=f"train-metric-{index}",
                        )
                    )
                    ui.plots.append(gr.Plot(label=f"Panel {index + 1}", elem_id=f"train-plot-{index}"))
                    ui.views.append(gr.Textbox("", visible=False, label=f"Zoom of panel {index + 1} (JSON)"))
                ui.columns.append(column)
    return ui
