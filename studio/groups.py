"""Grouped runs: curves of repeated runs (seeds) drawn as one mean line with a band, and the hyperparameter
views (parallel coordinates, setting vs metric) of a study or any selection of runs.

A group is every run that shares a key: its variant, its study, or the value of any setting. The runs of a
group log at their own steps (a resumed run, another batch size), so the curves are put on one step grid
(the union of the runs' steps, thinned) by linear interpolation inside each run's logged range; outside it a
run does not count, so a band never invents a run's future.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import plotly.graph_objects as go

BANDS = ("min–max", "95% interval")
# Grid points of a group's curve: a screen is ~2k pixels wide.
GRID_POINTS = 1000


@dataclass
class GroupCurve:
    """A group's mean curve and its band over the runs that reach each grid step."""

    label: str
    runs: list[str]
    steps: np.ndarray
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray
    count: np.ndarray  # runs that count at each step


def group_key(run: Any, by: str) -> str:
    """The run's group under ``by``: "variant", "study" or a setting key (``lr``, ``model.base_channels``)."""
    from trainers.runs.studies import flatten_config, study_of

    if by == "variant":
        return run.variant
    if by == "study":
        return study_of(run) or "(no study)"
    value = flatten_config(run.config or {}).get(by, "–")
    return f"{by}={value}"


def _grid(series: Sequence[tuple[np.ndarray, np.ndarray]], points: int) -> np.ndarray:
    steps = np.unique(np.concatenate([s for s, _ in series])) if series else np.zeros(0)
    if len(steps) > points:  # evenly thinned, keeping the first and last step
        steps = steps[np.unique(np.linspace(0, len(steps) - 1, points).round().astype(int))]
    return steps.astype(np.float64)


def group_curve(
    label: str,
    series: Mapping[str, tuple[np.ndarray, np.ndarray]],
    band: str = BANDS[0],
    points: int = GRID_POINTS,
) -> GroupCurve:
    """The mean over ``series`` (run id -> (steps, values)) with a min–max band or a 95% t-interval of the
    mean (over the runs that count at each step; one run gives no interval, so its band is the line)."""
    if band not in BANDS:
        raise ValueError(f"band must be one of {', '.join(BANDS)}, got {band!r}")
    usable = {k: (np.asarray(s, float), np.asarray(v, float)) for k, (s, v) in series.items() if len(s)}
    grid = _grid(list(usable.values()), points)
    stack = np.full((len(usable), len(grid)), np.nan)
    for i, (steps, values) in enumerate(usable.values()):
        order = np.argsort(steps)
        steps, values = steps[order], values[order]
        finite = np.isfinite(values)
        if not finite.any():
            continue
        inside = (grid >= steps[finite][0]) & (grid <= steps[finite][-1])
        stack[i, inside] = np.interp(grid[inside], steps[finite], values[finite])
    count = np.isfinite(stack).sum(axis=0)
    # All-NaN columns (no run reached that step yet) are expected, numpy's RuntimeWarning is not news.
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(stack, axis=0)
        if band == BANDS[0]:
            low, high = np.nanmin(stack, axis=0), np.nanmax(stack, axis=0)
        else:
            from scipy import stats

            sd = np.nanstd(stack, axis=0, ddof=1)
            half = stats.t.ppf(0.975, np.maximum(count - 1, 1)) * sd / np.sqrt(np.maximum(count, 1))
            half = np.where(count > 1, half, 0.0)
            low, high = mean - half, mean + half
    keep = count > 0
    return GroupCurve(label, list(usable), grid[keep], mean[keep], low[keep], high[keep], count[keep])


def _rgba(color: str, alpha: float) -> str:
    color = color.lstrip("#")
    r, g, b = (int(color[i : i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def band_traces(curve: GroupCurve, color: str, band: str = BANDS[0]) -> list[go.Scatter]:
    """The band as a filled area (legend-less, grouped with the line so one legend click hides both) and
    the mean line, labelled with the group and its number of runs."""
    group = f"group:{curve.label}"
    fill = go.Scatter(
        x=np.concatenate([curve.steps, curve.steps[::-1]]),
        y=np.concatenate([curve.high, curve.low[::-1]]),
        fill="toself",
        fillcolor=_rgba(color, 0.18),
        line={"width": 0},
        hoverinfo="skip",
        showlegend=False,
        legendgroup=group,
        name=f"{curve.label} {band}",
    )
    line = go.Scatter(
        x=curve.steps,
        y=curve.mean,
        mode="lines",
        line={"color": color, "width": 2},
        legendgroup=group,
        name=f"{curve.label} (mean of {len(curve.runs)})",
        customdata=curve.count,
        hovertemplate="%{y:.4g} at step %{x} (%{customdata} runs)<extra>" + curve.label + "</extra>",
    )
    return [fill, line]


def numeric_settings(runs: Sequence[Any]) -> dict[str, list[Any]]:
    """The settings that differ between ``runs`` (flattened), with each run's value in order."""
    from trainers.runs.studies import differing_settings, flatten_config

    keys = list(differing_settings(runs)) or ["seed"]
    flat = [flatten_config(r.config or {}) for r in runs]
    return {key: [f.get(key) for f in flat] for key in keys}


def _dimension(label: str, values: list[Any]) -> dict[str, Any]:
    """A Parcoords axis: numbers as they are (log-spaced ones on a log10 axis), the rest as categories."""
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if len(numbers) == len(values):
        arr = np.asarray(values, dtype=float)
        if (arr > 0).all() and arr.max() / arr.min() >= 100:
            return {"label": f"log10 {label}", "values": np.log10(arr)}
        return {"label": label, "values": arr}
    names = sorted({str(v) for v in values})
    return {
        "label": label,
        "values": [names.index(str(v)) for v in values],
        "tickvals": list(range(len(names))),
        "ticktext": names,
    }


def parallel_coordinates(runs: Sequence[Any], metric: str, scores: Sequence[float | None]) -> go.Figure:
    """One line per run through its differing settings (and variant) to ``metric``, coloured by it."""
    if not runs:
        raise ValueError("no runs chosen: pick a study or some runs for the parallel-coordinates view")
    dims = [_dimension("variant", [r.variant for r in runs])] if len({r.variant for r in runs}) > 1 else []
    dims += [_dimension(key, values) for key, values in numeric_settings(runs).items()]
    values = [math.nan if s is None else float(s) for s in scores]
    dims.append({"label": metric, "values": values})
    fig = go.Figure(
        go.Parcoords(
            line={"color": values, "colorscale": "Viridis", "showscale": True, "colorbar": {"title": metric}},
            dimensions=dims,
        )
    )
    fig.update_layout(margin={"l": 60, "r": 60, "t": 50, "b": 30}, height=420, template="plotly_white")
    return fig


def setting_scatter(
    runs: Sequence[Any], setting: str, metric: str, scores: Sequence[float | None]
) -> go.Figure:
    """``metric`` against one setting, a point per run, a colour per variant."""
    from trainers.runs.studies import flatten_config

    fig = go.Figure()
    for variant in dict.fromkeys(r.variant for r in runs):
        picked = [(r, s) for r, s in zip(runs, scores, strict=True) if r.variant == variant]
        fig.add_scatter(
            x=[flatten_config(r.config or {}).get(setting) for r, _ in picked],
            y=[s for _, s in picked],
            mode="markers",
            name=variant,
            text=[r.label for r, _ in picked],
            hovertemplate="%{text}: %{y:.4g} at " + setting + "=%{x}<extra></extra>",
        )
    fig.update_layout(
        xaxis_title=setting, yaxis_title=metric, height=380, margin={"t": 40}, template="plotly_white"
    )
    return fig
