"""The Compare tab's rate-distortion plot: a legend entry per model instead of text stacked on the
points, R-D curves drawn where the leaderboard has them,
and an x axis fitted to the models, not to the codec sweeps."""

from __future__ import annotations

import math

import pytest

from studio.views.compare import SWEEP_SPAN, rd_figure


def _stats(mean: float) -> dict:
    return {"psnr": {"mean": mean, "ci95": [mean - 0.3, mean + 0.2]}}


def _result(rd: bool = False) -> dict:
    """Four models at one nominal rate (as the references are), a matched JPEG row, JPEG's sweep to 5 bpp
    and a row without a rate."""
    models = []
    for k, name in enumerate(("sar-baseline", "sar-resnet", "sar-residual", "sar-attention")):
        row = {"name": name, "kind": "checkpoint", "bpp": 0.5, "metrics": _stats(20.0 + k)}
        if rd:
            row["rd"] = [{"bpp": b, "metrics": {"psnr": 17.0 + k + 4 * b}} for b in (0.125, 0.25, 0.375, 0.5)]
        models.append(row)
    codec = {"name": "JPEG q=4", "kind": "codec", "codec": "JPEG", "bpp": 0.52, "metrics": _stats(18.0)}
    trip = {"name": "feature round trip", "kind": "codec", "bpp": None, "metrics": _stats(30.0)}
    sweep = [
        {"codec": "JPEG", "bpp": b, "metric": "psnr", "mean": 15 + 2 * b} for b in (0.3, 0.6, 0.9, 2.0, 5.0)
    ]
    return {
        "domain": "sar",
        "n": 8,
        "bpp_unit": "bits per pixel",
        "metrics": [{"name": "psnr", "direction": "max", "arrow": "↑"}],
        "rows": [*models, codec, trip],
        "rd_sweep": sweep,
    }


def _legend(fig) -> list[str]:
    return [t.name for t in fig.data if t.showlegend is not False]


def test_each_model_has_its_own_legend_entry_and_no_text_on_the_points():
    fig = rd_figure(_result())
    assert _legend(fig)[:4] == ["sar-baseline", "sar-resnet", "sar-residual", "sar-attention"]
    assert "JPEG" in _legend(fig) and "feature round trip" in _legend(fig)
    assert len(_legend(fig)) == len(set(_legend(fig)))  # a codec's sweep and its matched row: one entry
    assert all("text" not in (t.mode or "") for t in fig.data), "text labels stack when models share a rate"
    assert not fig.layout.annotations
    # Models at one rate stay distinguishable: each its own colour and marker shape.
    markers = [(t.marker.color, t.marker.symbol) for t in fig.data[:4]]
    assert len(set(markers)) == 4
    # The interval of each model is drawn from its CI.
    assert fig.data[0].error_y.array == pytest.approx([0.2]) and fig.data[
        0
    ].error_y.arrayminus == pytest.approx([0.3])


def test_the_x_axis_fits_the_models_and_the_sweep_is_cut_near_them():
    fig = rd_figure(_result())
    lo, hi = fig.layout.xaxis.range
    assert lo == 0 and 0.5 < hi <= SWEEP_SPAN * 0.5 * 1.1 + 1e-9
    sweep = next(t for t in fig.data if t.name == "JPEG" and t.mode == "lines+markers")
    assert max(sweep.x) <= SWEEP_SPAN * 0.5 and 0.3 in sweep.x  # 2 and 5 bpp are dropped
    # The no-rate row spans only the shown rates.
    trip = next(t for t in fig.data if t.name == "feature round trip")
    assert max(trip.x) <= hi and trip.line.dash == "dash"


def test_a_models_rd_list_is_drawn_as_a_line_with_markers():
    fig = rd_figure(_result(rd=True))
    curve = next(t for t in fig.data if t.meta == "sar-resnet" and t.mode == "lines+markers")
    assert list(curve.x) == [0.125, 0.25, 0.375, 0.5]
    assert list(curve.y) == pytest.approx([17.0 + 1 + 4 * b for b in curve.x])
    assert curve.showlegend is not False
    # its measured point stays, with the CI, under the same legend entry
    point = next(t for t in fig.data if t.meta == "sar-resnet" and t.mode == "markers")
    assert point.showlegend is False and point.legendgroup == curve.legendgroup
    assert _legend(fig).count("sar-resnet") == 1


def test_rates_over_a_wide_span_get_a_log_axis_and_missing_values_are_left_out():
    result = _result()
    result["rows"][0]["bpp"] = 64.0  # a model at 64 bpp beside ones at 0.5
    result["rows"][1]["metrics"]["psnr"]["mean"] = math.nan
    fig = rd_figure(result)
    assert fig.layout.xaxis.type == "log"
    lo, hi = fig.layout.xaxis.range
    assert lo < math.log10(0.5) and hi > math.log10(64)
    assert "sar-resnet" not in _legend(fig)
    for trace in fig.data:
        assert all(math.isfinite(y) for y in trace.y)


def test_legend_entries_of_one_runs_best_and_last_stay_apart():
    result = _result()
    result["rows"][0]["name"] = "20261207-141840-sar-resnet-897b (best)"
    result["rows"][1]["name"] = "20261207-141840-sar-resnet-897b (last)"
    result["rows"][2]["name"] = "a very long name a person gave their residual run (best)"
    legend = _legend(rd_figure(result))
    assert legend[:2] == ["141840-sar-resnet-897b (best)", "141840-sar-resnet-897b (last)"]
    assert len(legend[2]) <= 32 and legend[2].startswith("a very") and legend[2].endswith("(best)")
