"""Train-tab curve figures a person can read: the legend clear of the x-axis title, one y axis per domain
when runs of several domains are plotted together, and panels that drop another domain's metric."""

from __future__ import annotations

from types import SimpleNamespace

from studio.curves import CurveCache, RunLabel, domain_axes, figure_spec


class _Store:
    """The one RunStore query CurveCache makes, over rows given here."""

    def __init__(self, rows):
        self.rows = rows

    def metrics_after(self, seq, run_ids, limit):
        rows = [r for r in self.rows if r.seq > seq and r.run_id in run_ids][:limit]
        return rows, max((r.seq for r in rows), default=seq)


def _cache(values: dict[str, list[float]]) -> CurveCache:
    rows, seq = [], 0
    for run_id, ys in values.items():
        for step, y in enumerate(ys, start=1):
            seq += 1
            rows.append(SimpleNamespace(seq=seq, run_id=run_id, split="train", name="loss", step=step,
                                        value=y, epoch=1, time=1e9 + step))  # fmt: skip
    cache = CurveCache()
    cache.update(_Store(rows), list(values))
    return cache


def test_the_legend_sits_above_the_plot_clear_of_the_x_axis_title():
    cache = _cache({"a": [1.0, 0.5], "b": [0.9, 0.4]})
    spec = figure_spec(
        cache, "train/loss", ["a", "b"], labels={"a": RunLabel("run a"), "b": RunLabel("run b")}
    )
    legend, layout = spec["layout"]["legend"], spec["layout"]
    assert legend["orientation"] == "h" and legend["yanchor"] == "bottom" and legend["y"] >= 1.0
    assert layout["xaxis"]["title"]["text"] == "step" and layout["yaxis"]["title"]["text"] == "train/loss"
    assert [t["name"] for t in spec["data"]] == ["run a", "run b"]
    assert {t["yaxis"] for t in spec["data"]} == {"y"}  # one domain: one axis


def test_runs_of_two_domains_get_a_y_axis_each():
    """One launch of SAR and fragment variants: a loss of ~0.3 and a cross-entropy of ~5 are not drawn on one
    scale; each domain's runs have their own stacked axis, titled with the domain."""
    cache = _cache({"sar1": [0.4, 0.3], "frag1": [5.5, 5.0], "sar2": [0.35, 0.25]})
    labels = {
        "sar1": RunLabel("sar-baseline", domain="sar"),
        "frag1": RunLabel("fragment-dae-bytes", domain="fragments"),
        "sar2": RunLabel("sar-resnet", domain="sar"),
    }
    runs = ["sar1", "frag1", "sar2"]
    assert domain_axes(runs, labels) == {"sar1": "y", "frag1": "y2", "sar2": "y"}
    spec = figure_spec(cache, "train/loss", runs, labels=labels, smoothing=0.5)
    layout = spec["layout"]
    on = {t["meta"]: t["yaxis"] for t in spec["data"] if t.get("meta")}
    assert on == {"sar1": "y", "frag1": "y2", "sar2": "y"}
    # the faint raw copies go on their run's axis too
    assert all(t["yaxis"] == on[t["legendgroup"]] for t in spec["data"])
    top, bottom = layout["yaxis"]["domain"], layout["yaxis2"]["domain"]
    assert bottom[1] < top[0]  # stacked, not overlapping
    assert layout["yaxis"]["title"]["text"] == "train/loss · sar"
    assert layout["yaxis2"]["title"]["text"] == "train/loss · fragments"
    assert layout["yaxis2"]["anchor"] == "x"  # one shared step axis
