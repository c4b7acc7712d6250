"""Grouped curves and hyperparameter views (studio.groups): the mean and band against numpy on a shared
grid, runs that stop early, and the parallel-coordinates / scatter figures of a study's settings."""

from __future__ import annotations

import types

import numpy as np
import pytest

from studio.groups import (
    BANDS,
    band_traces,
    group_curve,
    group_key,
    numeric_settings,
    parallel_coordinates,
    setting_scatter,
)


def _run(run_id, variant="sar-baseline", **config):
    return types.SimpleNamespace(id=run_id, variant=variant, config=config, label=run_id)


def test_mean_and_min_max_band_on_shared_steps():
    steps = np.arange(0, 100, 10)
    series = {f"r{i}": (steps, np.linspace(1, 0, 10) + i * 0.1) for i in range(3)}
    curve = group_curve("sar-baseline", series)
    assert np.allclose(curve.mean, np.linspace(1, 0, 10) + 0.1)
    assert np.allclose(curve.low, np.linspace(1, 0, 10)) and np.allclose(
        curve.high, np.linspace(1, 0, 10) + 0.2
    )
    assert (curve.count == 3).all() and curve.runs == ["r0", "r1", "r2"]


def test_ci_band_is_the_t_interval_of_the_mean():
    from scipy import stats

    steps = np.array([0, 1])
    values = [np.array([1.0, 2.0]), np.array([2.0, 4.0]), np.array([3.0, 9.0])]
    curve = group_curve("g", {f"r{i}": (steps, v) for i, v in enumerate(values)}, band=BANDS[1])
    at1 = np.array([2.0, 4.0, 9.0])
    half = stats.t.ppf(0.975, 2) * at1.std(ddof=1) / np.sqrt(3)
    assert curve.mean[1] == pytest.approx(5.0) and curve.high[1] == pytest.approx(5.0 + half)


def test_a_run_that_stopped_early_does_not_count_past_its_last_step():
    long = (np.arange(0, 11), np.full(11, 1.0))
    short = (np.array([0, 5]), np.array([3.0, 3.0]))
    curve = group_curve("g", {"long": long, "short": short})
    at = dict(zip(curve.steps.tolist(), curve.count.tolist(), strict=True))
    assert at[5] == 2 and at[10] == 1
    assert curve.mean[curve.steps.tolist().index(10)] == 1.0  # only the long run there
    assert curve.mean[curve.steps.tolist().index(5)] == 2.0


def test_grid_is_thinned_for_long_runs_and_bad_band_is_refused():
    steps = np.arange(100_000)
    curve = group_curve(
        "g", {"a": (steps, np.sin(steps / 1e4)), "b": (steps, np.cos(steps / 1e4))}, points=500
    )
    assert len(curve.steps) <= 500 and curve.steps[0] == 0 and curve.steps[-1] == 99_999
    with pytest.raises(ValueError, match="band must be one of"):
        group_curve("g", {}, band="stderr")


def test_band_traces_share_a_legend_group_and_say_how_many_runs():
    curve = group_curve("lr=0.001", {"a": (np.arange(3), np.ones(3)), "b": (np.arange(3), np.zeros(3))})
    fill, line = band_traces(curve, "#1f77b4")
    assert fill.fill == "toself" and fill.legendgroup == line.legendgroup and not fill.showlegend
    assert line.name == "lr=0.001 (mean of 2)" and fill.fillcolor == "rgba(31,119,180,0.18)"


def test_group_keys_by_variant_study_or_setting():
    run = _run("a", lr=0.001, study="study-1", model={"base_channels": 8})
    assert group_key(run, "variant") == "sar-baseline" and group_key(run, "study") == "study-1"
    assert group_key(run, "model.base_channels") == "model.base_channels=8"
    assert group_key(_run("b"), "study") == "(no study)"


def test_parallel_coordinates_has_an_axis_per_differing_setting_and_the_metric():
    runs = [
        _run(f"r{i}", lr=lr, seed=i, model={"w": w})
        for i, (lr, w) in enumerate([(1e-4, 8), (1e-2, 16), (1e-3, 8)])
    ]
    assert set(numeric_settings(runs)) == {"lr", "model.w"}
    fig = parallel_coordinates(runs, "val/psnr", [14.0, 15.5, None])
    labels = [d.label for d in fig.data[0].dimensions]
    assert labels == ["log10 lr", "model.w", "val/psnr"]  # lr spans 100x: a log axis
    assert np.allclose(fig.data[0].dimensions[0].values, [-4, -2, -3])
    assert np.isnan(fig.data[0].dimensions[-1].values[2])
    with pytest.raises(ValueError, match="no runs chosen"):
        parallel_coordinates([], "val/psnr", [])


def test_setting_scatter_has_a_trace_per_variant():
    runs = [_run("a", lr=1e-3), _run("b", "sar-resnet", lr=1e-2), _run("c", lr=1e-2)]
    fig = setting_scatter(runs, "lr", "val/psnr", [1.0, 2.0, 3.0])
    assert [t.name for t in fig.data] == ["sar-baseline", "sar-resnet"]
    assert list(fig.data[0].x) == [1e-3, 1e-2] and list(fig.data[0].y) == [1.0, 3.0]
