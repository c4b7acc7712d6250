"""Live training curves: an incremental cache of logged metrics and the plotly figure built from it.

The Train tab polls every few seconds. Re-reading every metric of every run on each tick would grow with
the length of the runs, so ``CurveCache`` keeps what a browser session has already seen and asks the run
store only for rows newer than its cursor (``RunStore.metrics_after``). The figure is rebuilt from the cache;
its ``uirevision`` depends only on the metric, the set of runs and the axis type, so plotly keeps the
user's zoom and pan while new points arrive.
"""

from __future__ import annotations

import copy
import json
import math
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.colors import qualitative
from scipy.signal import lfilter
from tsdownsample import MinMaxLTTBDownsampler

# Rows read per update at most: a long run's first read is spread over a few ticks instead of one slow one.
MAX_ROWS_PER_UPDATE = 50_000
PALETTE: tuple[str, ...] = tuple(qualitative.Plotly) + tuple(qualitative.D3)
# Points drawn per trace at most. A screen is ~2k pixels wide, so more points add no detail, only JSON and
# browser work that grows with the run's length; MinMaxLTTB keeps the spikes, the first and the last point.
MAX_POINTS_PER_TRACE = 2_000


class CurveCache:
    """Metric points of the runs a session watches, read incrementally from a ``RunStore``.

    Each run has its own cursor (the last metric ``seq`` known to be applied for it). An update queries the
    chosen runs once, from the smallest of their cursors, and skips rows a run has already seen; so a run
    added to the selection costs one read of its history, and afterwards only new rows are read.
    Where a step repeats (a resumed run) the later row wins, as in ``RunStore.metric_series``.
    """

    def __init__(self) -> None:
        self._points: dict[str, dict[str, dict[int, float]]] = {}
        self._cursors: dict[str, int] = {}
        self._lock = threading.Lock()
        self.last_rows_read = 0  # rows the last update got from the store (including already-seen ones)
        self.total_rows_read = 0
        self.updates = 0

    def __deepcopy__(self, memo: dict[int, Any]) -> CurveCache:
        # gr.State deep-copies its initial value per browser session; a lock cannot be copied.
        clone = CurveCache()
        with self._lock:
            clone._points = copy.deepcopy(self._points, memo)
            clone._cursors = dict(self._cursors)
        return clone

    def update(self, store: Any, run_ids: Iterable[str]) -> int:
        """Read the rows logged for ``run_ids`` since this cache last saw them; returns the new points."""
        ids = list(dict.fromkeys(run_ids))
        if not ids:
            return 0
        for run_id in ids:
            if not isinstance(run_id, str) or not run_id:
                raise ValueError(f"run ids must be non-empty strings, got {run_id!r}")
        with self._lock:
            start = min(self._cursors.get(run_id, 0) for run_id in ids)
            rows, new_cursor = store.metrics_after(start, ids, limit=MAX_ROWS_PER_UPDATE)
            added = 0
            for row in rows:
                if row.seq <= self._cursors.get(row.run_id, 0):
                    continue
                series = self._points.setdefault(row.run_id, {}).setdefault(f"{row.split}/{row.name}", {})
                series.pop(row.step, None)  # re-insert so that dict order stays the logging order
                series[int(row.step)] = float(row.value)
                added += 1
            # The query covered every chosen run from `start`, so each one is complete up to `new_cursor`.
            for run_id in ids:
                self._cursors[run_id] = max(self._cursors.get(run_id, 0), new_cursor)
            self.last_rows_read = len(rows)
            self.total_rows_read += len(rows)
            self.updates += 1
        return added

    def cursor(self, run_id: str) -> int:
        """The last metric ``seq`` applied for ``run_id`` (0 before its first update)."""
        return self._cursors.get(run_id, 0)

    def series(self, run_id: str, metric: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of one "split/name" metric of one run, sorted by step; empty if unknown."""
        with self._lock:
            points = dict(self._points.get(run_id, {}).get(metric, {}))
        if not points:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
        steps = np.fromiter(points.keys(), dtype=np.int64, count=len(points))
        values = np.fromiter(points.values(), dtype=np.float64, count=len(points))
        order = np.argsort(steps, kind="stable")
        return steps[order], values[order]

    def metric_names(self, run_ids: Iterable[str] | None = None) -> list[str]:
        """The "split/name" metrics seen for ``run_ids`` (all cached runs when None), sorted."""
        with self._lock:
            ids = list(self._points) if run_ids is None else list(run_ids)
            names = {name for run_id in ids for name in self._points.get(run_id, {})}
        return sorted(names)

    def point_counts(self, metric: str, run_ids: Iterable[str]) -> dict[str, int]:
        """Number of cached points of ``metric`` per run (0 for runs without any)."""
        with self._lock:
            return {run_id: len(self._points.get(run_id, {}).get(metric, {})) for run_id in run_ids}


def ema(values: Sequence[float] | np.ndarray, smoothing: float) -> np.ndarray:
    """Debiased exponential moving average, as TensorBoard's smoothing slider computes it.

    s_t = sum_i w^i x_{t-i} / sum_i w^i with w = ``smoothing``: the plain EMA recursion divided by the sum
    of its weights, so the first points are not pulled towards zero.
    """
    check_smoothing(smoothing)
    x = np.asarray(values, dtype=np.float64)
    if smoothing == 0.0 or x.size == 0:
        return x.copy()
    denominator = [1.0, -float(smoothing)]
    weighted = lfilter([1.0], denominator, x)
    weights = lfilter([1.0], denominator, np.ones_like(x))
    return weighted / weights


def check_smoothing(smoothing: float) -> float:
    """Smoothing must lie in [0, 1): a weight of 1 would never move from the first point."""
    if isinstance(smoothing, bool) or not isinstance(smoothing, (int, float)) or not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing must be a number in [0, 1), e.g. 0.6; got {smoothing!r}")
    return float(smoothing)


def curve_uirevision(metric: str, runs: Iterable[str], log_y: bool) -> str:
    """Constant for one metric / set of runs / axis type, so plotly keeps the user's zoom across refreshes.

    The axis type is part of it because a zoom range on a linear axis means nothing on a log axis.
    """
    return f"{metric}|{'log' if log_y else 'linear'}|{','.join(sorted(set(runs)))}"


def thin(steps: np.ndarray, values: np.ndarray, max_points: int = MAX_POINTS_PER_TRACE):
    """At most ``max_points`` of a curve, chosen to look the same on screen (MinMaxLTTB: the extremes of
    each step bucket, then the most visible of them)."""
    if steps.size <= max_points:
        return steps, values
    keep = MinMaxLTTBDownsampler().downsample(steps, values, n_out=max_points)
    return steps[keep], values[keep]


def make_figure(
    cache: CurveCache,
    metric: str,
    runs: Sequence[str],
    smoothing: float = 0.0,
    log_y: bool = False,
) -> go.Figure:
    """One line per run of ``metric`` against step; with smoothing, the raw curve stays behind, faint.
    Long curves are drawn with at most ``MAX_POINTS_PER_TRACE`` points each (``thin``).

    Non-finite values (a diverged run) and, on a log axis, values <= 0 cannot be drawn and are left out.
    Traces carry their run id in ``meta`` (see ``figure_points``).
    """
    check_smoothing(smoothing)
    if not isinstance(metric, str):
        raise ValueError(f"metric must be a name like 'train/loss', got {metric!r}")
    fig = go.Figure()
    drawn = 0
    lows, highs = [], []
    for index, run_id in enumerate(runs):
        steps, values = cache.series(run_id, metric)
        keep = np.isfinite(values)
        if log_y:
            keep &= values > 0
        steps, values = steps[keep], values[keep]
        if steps.size == 0:
            continue
        color = PALETTE[index % len(PALETTE)]
        smoothed = ema(values, smoothing)  # over every point; only the drawing is thinned
        lows.append(float(values.min()))
        highs.append(float(values.max()))
        if smoothing > 0:
            raw_x, raw_y = thin(steps, values)
            fig.add_trace(
                go.Scatter(
                    x=raw_x,
                    y=raw_y,
                    mode="lines",
                    line={"color": color, "width": 1},
                    opacity=0.3,
                    name=f"{run_id} (raw)",
                    legendgroup=run_id,
                    showlegend=False,
                    hoverinfo="skip",
                )
            )
        line_x, line_y = thin(steps, smoothed)
        fig.add_trace(
            go.Scatter(
                x=line_x,
                y=line_y,
                mode="lines+markers" if steps.size < 30 else "lines",
                line={"color": color, "width": 2},
                marker={"size": 5},
                name=run_id,
                legendgroup=run_id,
                meta=run_id,
                hovertemplate=f"{run_id}<br>step %{{x}}<br>{metric} %{{y:.5g}}<extra></extra>",
            )
        )
        drawn += 1
    fig.update_layout(
        template="plotly_white",
        title={"text": metric or "no metric chosen", "x": 0.01},
        xaxis={"title": {"text": "step"}},
        yaxis={"title": {"text": metric}, "type": "log" if log_y else "linear"}
        | (log_ticks(math.log10(max(highs) / min(lows))) if log_y and lows else {}),
        uirevision=curve_uirevision(metric, runs, log_y),
        legend={"orientation": "h", "yanchor": "top", "y": -0.18, "x": 0},
        margin={"l": 60, "r": 20, "t": 50, "b": 40},
        height=440,
    )
    if drawn == 0:
        message = "Choose runs to plot" if not runs else f"No points of {metric} yet"
        fig.add_annotation(text=message, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5)
    return fig


def keep_view(fig: go.Figure, view: Any) -> go.Figure:
    """Re-apply the zoom the page had (``view``, JSON) when the new figure has the same ``uirevision``.

    Plotly keeps a user's zoom across ``Plotly.react`` by itself, but Gradio mounts a fresh plot for every
    new figure, so the page sends its current axis ranges along with each refresh (``VIEW_JS`` in the Train
    tab) and they are carried over here. ``view`` is ``{"uirevision": str, "x": [lo, hi] | null, "y": ...}``
    (ranges as plotly reports them: log10 units on a log axis); anything else is ignored.
    """
    if not view:
        return fig
    try:
        data = json.loads(view) if isinstance(view, str) else view
    except ValueError:
        return fig
    if not isinstance(data, Mapping) or data.get("uirevision") != fig.layout.uirevision:
        return fig
    for axis in ("x", "y"):
        bounds = data.get(axis)
        if (
            isinstance(bounds, (list, tuple))
            and len(bounds) == 2
            and all(is_finite_number(b) for b in bounds)
            and bounds[0] != bounds[1]
        ):
            fig.update_layout({f"{axis}axis": {"range": list(bounds), "autorange": False}})
            if axis == "y" and fig.layout.yaxis.type == "log":  # the zoomed span decides the labels
                fig.update_layout(yaxis={"tickformat": None, "dtick": None})
                fig.update_layout(yaxis=log_ticks(abs(bounds[1] - bounds[0])))
    return fig


def log_ticks(decades: float) -> dict[str, Any]:
    """Tick settings of a log axis spanning ``decades``. Over a decade or more: labels at 1, 2 and 5 of each
    decade written out (0.2, not plotly's bare "2" between 0.1 and 1, and not every digit, which overlap).
    Within a decade plotly's own ticks, which are already plain numbers there."""
    return {"dtick": "D2", "tickformat": ".2~g"} if decades >= 1.0 else {}


def figure_points(fig: go.Figure) -> dict[str, int]:
    """Points drawn per run (the main trace of each run, not its faint raw copy); JSON-able for the API."""
    counts: dict[str, int] = {}
    for trace in fig.data:
        if trace.meta is not None:
            counts[str(trace.meta)] = 0 if trace.x is None else len(trace.x)
    return counts


def is_finite_number(value: Any) -> bool:
    """True for ints/floats that are not NaN or inf (bools excluded)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
