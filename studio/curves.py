"""Live training curves: an incremental cache of logged metrics and the plotly figure built from it.

The Train tab polls every few seconds. Re-reading every metric of every run on each tick would grow with
the length of the runs, so ``CurveCache`` keeps what a browser session has already seen and asks the run
store only for rows newer than its cursor (``RunStore.metrics_after``). The figure is rebuilt from the cache;
its ``uirevision`` depends only on the metric, the set of runs and the axis type, so plotly keeps the
user's zoom and pan while new points arrive.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import html
import json
import math
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
from plotly.colors import qualitative
from scipy.signal import lfilter

# Rows read per update at most: a long run's first read is spread over a few ticks instead of one slow one.
MAX_ROWS_PER_UPDATE = 50_000
PALETTE: tuple[str, ...] = tuple(qualitative.Plotly) + tuple(qualitative.D3)
# Points drawn per trace at most. A screen is ~2k pixels wide, so more points add no detail, only JSON and
# browser work that grows with the run's length; MinMax thinning keeps the spikes, the first and last point.
MAX_POINTS_PER_TRACE = 2_000


X_AXES: tuple[str, ...] = ("step", "epoch", "wall time", "relative time")


class _Series:
    """One metric of one run as growing numpy buffers (step, value, epoch, time): a refresh appends the new
    rows and reads views, so its cost does not grow with the history already held (a dict of 10k points
    turned into arrays on every refresh cost ~1 ms per curve)."""

    __slots__ = ("epochs", "index", "n", "ordered", "steps", "times", "values")

    def __init__(self) -> None:
        self.steps = np.zeros(64, dtype=np.int64)
        self.values = np.zeros(64, dtype=np.float64)
        self.epochs = np.zeros(64, dtype=np.float64)
        self.times = np.zeros(64, dtype=np.float64)
        self.index: dict[int, int] = {}
        self.n = 0
        self.ordered = True  # steps were appended in increasing order (no sort needed)

    def add(self, step: int, value: float, epoch: int | None, stamp: float) -> None:
        at = self.index.get(step)
        if at is None:  # a new step; a repeated one (a resumed run) is overwritten: the later row wins
            at = self.n
            if at == self.steps.size:
                for name in ("steps", "values", "epochs", "times"):
                    buffer = getattr(self, name)
                    setattr(self, name, np.concatenate([buffer, np.zeros_like(buffer)]))
            if at and step < self.steps[at - 1]:
                self.ordered = False
            self.index[step] = at
            self.n += 1
        self.steps[at] = step
        self.values[at] = value
        self.epochs[at] = math.nan if epoch is None else epoch
        self.times[at] = stamp

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Copies of (steps, values, epochs, times), sorted by step."""
        n = self.n
        out = (self.steps[:n].copy(), self.values[:n].copy(), self.epochs[:n].copy(), self.times[:n].copy())
        if self.ordered:
            return out
        order = np.argsort(out[0], kind="stable")
        return tuple(a[order] for a in out)  # type: ignore[return-value]


class CurveCache:
    """Metric points of the runs a session watches, read incrementally from a ``RunStore``.

    Each run has its own cursor (the last metric ``seq`` known to be applied for it). An update queries the
    chosen runs once, from the smallest of their cursors, and skips rows a run has already seen; so a run
    added to the selection costs one read of its history, and afterwards only new rows are read.
    Where a step repeats (a resumed run) the later row wins, as in ``RunStore.metric_series``. Each point
    keeps its epoch and wall time too, for the other x-axes.
    """

    def __init__(self) -> None:
        self._points: dict[str, dict[str, _Series]] = {}
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
                runs = self._points.setdefault(row.run_id, {})
                key = f"{row.split}/{row.name}"
                series = runs.get(key)
                if series is None:
                    series = runs[key] = _Series()
                series.add(int(row.step), float(row.value), row.epoch, float(row.time))
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
        steps, values, _, _ = self.points(run_id, metric)
        return steps, values

    def points(self, run_id: str, metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(steps, values, epochs, times) of one metric of one run, sorted by step; epochs NaN where none
        was logged, times in seconds since the Unix epoch. Empty arrays if unknown."""
        with self._lock:
            series = self._points.get(run_id, {}).get(metric)
            if series is not None:
                return series.arrays()
        empty = np.zeros(0, dtype=np.float64)
        return np.zeros(0, dtype=np.int64), empty, empty.copy(), empty.copy()

    def first_time(self, run_id: str) -> float:
        """Wall time of the run's first cached point (the zero of the relative-time axis); NaN if none."""
        with self._lock:
            firsts = [float(s.times[: s.n].min()) for s in self._points.get(run_id, {}).values() if s.n]
        return min(firsts, default=math.nan)

    def metric_names(self, run_ids: Iterable[str] | None = None) -> list[str]:
        """The "split/name" metrics seen for ``run_ids`` (all cached runs when None), sorted."""
        with self._lock:
            ids = list(self._points) if run_ids is None else list(run_ids)
            names = {name for run_id in ids for name in self._points.get(run_id, {})}
        return sorted(names)

    def point_counts(self, metric: str, run_ids: Iterable[str]) -> dict[str, int]:
        """Number of cached points of ``metric`` per run (0 for runs without any)."""
        with self._lock:
            counts = {}
            for run_id in run_ids:
                series = self._points.get(run_id, {}).get(metric)
                counts[run_id] = 0 if series is None else series.n
            return counts


def run_color(run_id: str) -> str:
    """The run's colour, the same in every view, panel and session: a hash of its id into the palette (a
    stable hash: Python's own ``hash`` of a str changes with every process)."""
    digest = hashlib.blake2s(run_id.encode(), digest_size=4).digest()
    return PALETTE[int.from_bytes(digest, "big") % len(PALETTE)]


@dataclass(frozen=True)
class RunLabel:
    """How a run appears in a figure: its legend text, the settings its hover lists, its steps per epoch
    (for the epoch axis; None: the logged epoch numbers are used) and its domain."""

    label: str
    settings: str = ""
    steps_per_epoch: int | None = None
    domain: str = ""  # runs of different domains get y axes of their own (see figure_spec)


def ema(values: Sequence[float] | np.ndarray, smoothing: float) -> np.ndarray:
    """Debiased exponential moving average, as TensorBoard's smoothing slider computes it.

    s_t = sum_i w^i x_{t-i} / sum_i w^i with w = ``smoothing``: the plain EMA recursion divided by the sum
    of its weights, so the first points are not pulled towards zero.
    """
    check_smoothing(smoothing)
    x = np.asarray(values, dtype=np.float64)
    if smoothing == 0.0 or x.size == 0:
        return x.copy()
    w = float(smoothing)
    weighted = lfilter([1.0], [1.0, -w], x)
    # sum_{i<=t} w^i in closed form; w^t is taken as 0 once below 1e-17 (subnormal powers are very slow)
    powers = np.zeros(x.size)
    k = min(x.size, int(math.log(1e-17) / math.log(w)) + 1) if w > 0 else 1
    powers[:k] = w ** np.arange(1, k + 1)
    weights = (1.0 - powers) / (1.0 - w)
    return weighted / weights


def check_smoothing(smoothing: float) -> float:
    """Smoothing must lie in [0, 1): a weight of 1 would never move from the first point."""
    if isinstance(smoothing, bool) or not isinstance(smoothing, (int, float)) or not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing must be a number in [0, 1), e.g. 0.6; got {smoothing!r}")
    return float(smoothing)


def curve_uirevision(metric: str, runs: Iterable[str], log_y: bool, x_axis: str = "step") -> str:
    """Constant for one metric / set of runs / axis types, so plotly keeps the user's zoom across refreshes.

    The axis types are part of it because a zoom range on a linear axis means nothing on a log axis, nor a
    range of steps on a time axis.
    """
    x = "" if x_axis == "step" else f"|x={x_axis}"
    return f"{metric}|{'log' if log_y else 'linear'}{x}|{','.join(sorted(set(runs)))}"


def thin_index(steps: np.ndarray, values: np.ndarray, max_points: int = MAX_POINTS_PER_TRACE) -> Any:
    """Indices of at most ``max_points`` points of a curve that look the same on screen: the first and the
    last point, and the lowest and highest point of each of (max_points - 2) / 2 equal runs of points (so
    every spike stays); a full slice when the curve is short. Vectorised numpy, ~0.1 ms for 10k points
    (tsdownsample's MinMaxLTTB took ~0.7 ms a call here, most of a 20-run refresh)."""
    n = int(steps.size)
    if n <= max_points:
        return slice(None)
    buckets = max(1, (max_points - 2) // 2)
    edges = np.linspace(1, n - 1, buckets + 1).astype(np.int64)  # the interior points, in near-equal runs
    width = int(np.diff(edges).max())
    index = np.minimum(
        edges[:-1, None] + np.arange(width)[None, :], edges[1:, None] - 1
    )  # repeats: no new extremes
    rows = values[index]
    lows = np.take_along_axis(index, rows.argmin(axis=1)[:, None], 1)[:, 0]
    highs = np.take_along_axis(index, rows.argmax(axis=1)[:, None], 1)[:, 0]
    pairs = np.sort(np.stack([lows, highs], axis=1), axis=1).ravel()  # in order: buckets do not overlap
    picks = np.concatenate(([0], pairs, [n - 1]))
    return picks[np.concatenate(([True], np.diff(picks) > 0))]  # a flat bucket gives one point, not two


def thin(steps: np.ndarray, values: np.ndarray, max_points: int = MAX_POINTS_PER_TRACE):
    """At most ``max_points`` of a curve (see ``thin_index``)."""
    keep = thin_index(steps, values, max_points)
    return steps[keep], values[keep]


def check_x_axis(x_axis: Any) -> str:
    if x_axis not in X_AXES:
        raise ValueError(f"x-axis must be one of {', '.join(X_AXES)}; got {x_axis!r}")
    return str(x_axis)


def _x_values(x_axis: str, steps, epochs, times, steps_per_epoch: int | None, t0: float):
    """The x coordinates of a run's points on the chosen axis (see ``make_figure``)."""
    if x_axis == "epoch":
        return steps / steps_per_epoch if steps_per_epoch else epochs
    if x_axis == "wall time":  # plotly date axes take ms since the epoch; shift them to local time
        return (times + time.localtime().tm_gmtoff) * 1000.0
    if x_axis == "relative time":
        return (times - t0) / 60.0
    return steps


X_TITLES = {"step": "step", "epoch": "epoch", "wall time": "time", "relative time": "minutes since start"}
X_HOVER = {
    "step": "step %{x}",
    "epoch": "epoch %{x:.2f}",
    "wall time": "%{x}",
    "relative time": "%{x:.1f} min",
}


def _trace_arrays(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Compact dtypes for the page: plotly sends numpy arrays as typed binary, and float32 halves them
    (7 significant digits, more than a curve shows; the hover rounds to 5)."""
    if x.dtype == np.int64 and (x.size == 0 or (x.min() >= -(2**31) and x.max() < 2**31)):
        x = x.astype(np.int32)
    elif x.dtype == np.float64 and not (x.size and np.abs(x).max() > 1e7):
        x = x.astype(np.float32)  # ms timestamps (~1.7e12) need float64
    return x, y.astype(np.float32)


@functools.lru_cache(maxsize=1)
def _template() -> dict[str, Any]:
    return pio.templates["plotly_white"].to_plotly_json()


def make_figure(*args: Any, **kwargs: Any) -> go.Figure:
    """``figure_spec`` as a plotly figure (built without per-trace validation, which cost ~1 ms a trace)."""
    return go.Figure(figure_spec(*args, **kwargs), _validate=False)


def figure_spec(
    cache: CurveCache,
    metric: str,
    runs: Sequence[str],
    smoothing: float = 0.0,
    log_y: bool = False,
    x_axis: str = "step",
    labels: Mapping[str, RunLabel] | None = None,
    height: int = 440,
) -> dict[str, Any]:
    """The plotly figure, as plain data, of one line per run of ``metric`` against ``x_axis`` (step,
    epoch, wall time or minutes since the run's first point); with smoothing, the raw curve stays behind,
    faint. Each run has its fixed colour (``run_color``); ``labels`` give its legend text and the settings
    its hover lists. Long curves are drawn with at most ``MAX_POINTS_PER_TRACE`` points each (``thin``).

    Non-finite values (a diverged run) and, on a log axis, values <= 0 cannot be drawn and are left out.
    Traces carry their run id in ``meta`` (see ``figure_points``).
    """
    check_smoothing(smoothing)
    check_x_axis(x_axis)
    if not isinstance(metric, str):
        raise ValueError(f"metric must be a name like 'train/loss', got {metric!r}")
    labels = labels or {}
    traces: list[dict[str, Any]] = []
    lows, highs = [], []
    axes = domain_axes(runs, labels)
    for run_id in runs:
        steps, values, epochs, times = cache.points(run_id, metric)
        keep = np.isfinite(values)
        if log_y:
            keep &= values > 0
        if not keep.all():
            steps, values, epochs, times = steps[keep], values[keep], epochs[keep], times[keep]
        if steps.size == 0:
            continue
        info = labels.get(run_id) or RunLabel(run_id)
        t0 = cache.first_time(run_id)
        x = _x_values(x_axis, steps, epochs, times, info.steps_per_epoch, t0)
        color = run_color(run_id)
        smoothed = ema(values, smoothing)  # over every point; only the drawing is thinned
        lows.append(float(values.min()))
        highs.append(float(values.max()))
        keep = thin_index(steps, values)  # one choice of points for the raw and the smoothed line
        if smoothing > 0:
            raw_x, raw_y = _trace_arrays(x[keep], values[keep])
            traces.append(
                {
                    "type": "scatter",
                    "x": raw_x,
                    "y": raw_y,
                    "mode": "lines",
                    "line": {"color": color, "width": 1},
                    "opacity": 0.3,
                    "name": f"{info.label} (raw)",
                    "yaxis": axes[run_id],
                    "legendgroup": run_id,
                    "showlegend": False,
                    "hoverinfo": "skip",
                }
            )
        line_x, line_y = _trace_arrays(x[keep], smoothed[keep])
        hover_settings = f"<br>{html.escape(info.settings)}" if info.settings else ""
        traces.append(
            {
                "type": "scatter",
                "x": line_x,
                "y": line_y,
                "mode": "lines+markers" if steps.size < 30 else "lines",
                "line": {"color": color, "width": 2},
                "marker": {"size": 5},
                "name": info.label,
                "yaxis": axes[run_id],
                "legendgroup": run_id,
                "meta": run_id,
                "hovertemplate": f"<b>{html.escape(info.label)}</b>{hover_settings}<br>{X_HOVER[x_axis]}"
                f"<br>{metric} %{{y:.5g}}<extra></extra>",
            }
        )
    yaxis: dict[str, Any] = {"title": {"text": metric}, "type": "log" if log_y else "linear"}
    if log_y and lows:
        yaxis |= log_ticks(math.log10(max(highs) / min(lows)))
    layout: dict[str, Any] = {
        "template": _template(),
        "xaxis": {"title": {"text": X_TITLES[x_axis]}} | ({"type": "date"} if x_axis == "wall time" else {}),
        "yaxis": yaxis,
        "uirevision": curve_uirevision(metric, runs, log_y, x_axis),
        # Above the plot: below it, a legend of a few rows covered the x-axis title. Right-aligned, clear of
        # the plot's label badge at the top left. The y-axis title names the metric: no figure title.
        "legend": {"orientation": "h", "yanchor": "bottom", "y": 1.02, "xanchor": "right", "x": 1},
        "margin": {"l": 60, "r": 20, "t": 30, "b": 40},
        "height": height,
    }
    _split_axes(layout, axes, labels, metric)
    if not traces:
        message = "Choose runs to plot" if not runs else f"No points of {metric} yet"
        layout["annotations"] = [
            {"text": message, "showarrow": False, "xref": "paper", "yref": "paper", "x": 0.5, "y": 0.5}
        ]
    return {"data": traces, "layout": layout}


def domain_axes(runs: Sequence[str], labels: Mapping[str, RunLabel]) -> dict[str, str]:
    """The y axis ("y", "y2", ...) of each run: one per domain among the runs, in the order they come, so a
    fragment cross-entropy of ~5 and a SAR loss of ~0.3 launched together are never drawn on one scale."""
    order: list[str] = []
    axes = {}
    for run_id in runs:
        domain = labels[run_id].domain if run_id in labels else ""
        if domain not in order:
            order.append(domain)
        k = order.index(domain)
        axes[run_id] = "y" if k == 0 else f"y{k + 1}"
    return axes


def _split_axes(
    layout: dict[str, Any], axes: Mapping[str, str], labels: Mapping[str, RunLabel], metric: str
) -> None:
    """With runs of several domains, stack one y axis per domain (sharing the x axis), each titled with
    its domain; with one domain, nothing changes."""
    names = list(dict.fromkeys(axes.values()))
    if len(names) < 2:
        return
    domains = {axis: labels[r].domain if r in labels else "" for r, axis in reversed(list(axes.items()))}
    gap = 0.08
    share = (1.0 - gap * (len(names) - 1)) / len(names)
    base = layout["yaxis"]
    for k, axis in enumerate(names):  # the first domain on top
        top = 1.0 - k * (share + gap)
        key = "yaxis" if axis == "y" else f"yaxis{axis[1:]}"
        spec = {**base, "domain": [max(0.0, top - share), top], "anchor": "x"}
        spec["title"] = {"text": f"{metric} · {domains[axis] or 'other'}"}
        layout[key] = spec


def plot_data(figure: go.Figure | Mapping[str, Any]) -> Any:
    """A figure (or ``figure_spec``) as Gradio's plot payload, serialised with orjson (plotly's default
    encoder took ~3x as long for 20 long runs); what ``gr.Plot.postprocess`` would send for it."""
    from gradio.components.plot import PlotData  # noqa: PLC0415 - the trainers-only install has no gradio

    return PlotData(type="plotly", plot=pio.to_json(figure, validate=False, engine="orjson"))


def keep_view(fig: go.Figure, view: Any) -> go.Figure:
    """Re-apply the zoom the page had (``view``, JSON) when the new figure has the same ``uirevision``.

    Plotly keeps a user's zoom across ``Plotly.react`` by itself, but Gradio mounts a fresh plot for every
    new figure, so the page sends its current axis ranges along with each refresh (``VIEW_JS`` in the Train
    tab) and they are carried over here. ``view`` is ``{"uirevision": str, "x": [lo, hi] | null, "y": ...}``
    (ranges as plotly reports them: log10 units on a log axis); anything else is ignored.
    """
    for update in view_updates(fig.layout.uirevision, fig.layout.yaxis.type == "log", view):
        fig.update_layout(update)
    return fig


def keep_view_spec(spec: dict[str, Any], view: Any) -> dict[str, Any]:
    """``keep_view`` for a ``figure_spec`` (plain data, as the Train tab sends it)."""
    layout = spec["layout"]
    for update in view_updates(layout.get("uirevision"), layout["yaxis"].get("type") == "log", view):
        for key, value in update.items():
            layout[key] = {**layout.get(key, {}), **value}
    return spec


def view_updates(uirevision: Any, log_y: bool, view: Any) -> list[dict[str, Any]]:
    """The layout updates (in order) that put back the page's zoom ``view`` on a figure (see keep_view)."""
    if not view:
        return []
    try:
        data = json.loads(view) if isinstance(view, str) else view
    except ValueError:
        return []
    if not isinstance(data, Mapping) or data.get("uirevision") != uirevision:
        return []
    updates: list[dict[str, Any]] = []
    for axis in ("x", "y"):
        bounds = data.get(axis)
        if (
            isinstance(bounds, (list, tuple))
            and len(bounds) == 2
            and (
                all(is_finite_number(b) for b in bounds)
                or (axis == "x" and all(isinstance(b, str) and b for b in bounds))  # a date axis
            )
            and bounds[0] != bounds[1]
        ):
            updates.append({f"{axis}axis": {"range": list(bounds), "autorange": False}})
            if axis == "y" and log_y:  # the zoomed span decides the labels
                updates.append({"yaxis": {"tickformat": None, "dtick": None}})
                updates.append({"yaxis": log_ticks(abs(bounds[1] - bounds[0]))})
    return updates


def log_ticks(decades: float) -> dict[str, Any]:
    """Tick settings of a log axis spanning ``decades``. Over a decade or more: labels at 1, 2 and 5 of each
    decade written out (0.2, not plotly's bare "2" between 0.1 and 1, and not every digit, which overlap).
    Within a decade plotly's own ticks, which are already plain numbers there."""
    return {"dtick": "D2", "tickformat": ".2~g"} if decades >= 1.0 else {}


def figure_points(fig: go.Figure | Mapping[str, Any]) -> dict[str, int]:
    """Points drawn per run (the main trace of each run, not its faint raw copy), of a figure or a
    ``figure_spec``; JSON-able for the API."""
    counts: dict[str, int] = {}
    if isinstance(fig, Mapping):
        for trace in fig["data"]:
            if trace.get("meta") is not None:
                counts[str(trace["meta"])] = len(trace.get("x") if trace.get("x") is not None else ())
        return counts
    for trace in fig.data:
        if trace.meta is not None:
            counts[str(trace.meta)] = 0 if trace.x is None else len(trace.x)
    return counts


def is_finite_number(value: Any) -> bool:
    """True for ints/floats that are not NaN or inf (bools excluded)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
