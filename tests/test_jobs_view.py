"""The Train tab's jobs table as a page shows it: a study's runs under one group row with its shape and
progress, collapsible; the columns a browser chose; the eye column's hidden runs, which stay in the table
and leave the curve panels. Exact rows from hand-written job manager rows (no studio, no browser)."""

from __future__ import annotations

import json
import os

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from studio.curves import run_color  # noqa: E402
from studio.views.train import JOB_HEADERS, TrainSession, draw_curves, job_row  # noqa: E402
from studio.views.train.jobs_view import (  # noqa: E402
    DEFAULT_COLUMNS,
    GROUP_STYLE,
    OPTIONAL_COLUMNS,
    chosen_columns,
    group_progress,
    jobs_view,
    study_shape,
    toggle_hidden,
)

STUDY = "study-20261207-120000-ab12"
SHOWN = '<span class="run-eye" title="its curves shown in the panels: click to hide">◉</span>'
HIDDEN = '<span class="run-eye off" title="its curves hidden from the panels: click to show">○</span>'
GROUP_SHOWN = SHOWN.replace("its curves", "the study's runs")
GROUP_HIDDEN = HIDDEN.replace("its curves", "the study's runs")


def _row(run_id, variant, status, seed=0, study=None, percent=None, best=None, **extra):
    """A job manager row (``JobManager.jobs``) with the keys the table reads."""
    return {
        "id": run_id,
        "variant": variant,
        "domain": "sar",
        "status": status,
        "epoch": 1,
        "epochs": 2,
        "metric": "val/psnr",
        "best": best,
        "elapsed": 60.0 if status != "queued" else None,
        "preset": "smoke",
        "lr": 0.001,
        "seed": seed,
        "study": study,
        "tags": [study] if study else [],
        "name": None,
        "note": None,
        "percent": percent,
        **extra,
    }


@pytest.fixture
def rows():
    """Newest first: a lone running run, then a study of 2 variants × 2 seeds (2 done, 1 failed, 1 at 48%)."""
    return [
        _row("r5", "sar-resnet", "running", percent=10.0),
        _row("r4", "sar-residual", "running", 1, STUDY, percent=48.0),
        _row("r3", "sar-residual", "failed", 0, STUDY, percent=30.0),
        _row("r2", "sar-baseline", "completed", 1, STUDY, percent=100.0, best=23.5),
        _row("r1", "sar-baseline", "completed", 0, STUDY, percent=100.0, best=22.0),
    ]


def _run(row, hidden=False, in_study=False, columns=DEFAULT_COLUMNS):
    """The expected table row of a run: its eye, its run cell (marked), the chosen columns of job_row."""
    cells = job_row(row)
    classes = "run-cell" + (" run-hidden" if hidden else "") + (" in-study" if in_study else "")
    dot = f'<span class="run-dot" style="color:{run_color(row["id"])}">●</span>'
    run = f'<span class="{classes}" title="{row["id"]}">{dot} {row["id"]}</span>'
    return [HIDDEN if hidden else SHOWN, run, *[cells[JOB_HEADERS.index(c)] for c in columns]]


def test_a_study_is_one_group_row_with_its_shape_and_progress_above_its_runs(rows):
    view = jobs_view(rows)
    assert view.keys == ["r5", f"study:{STUDY}", "r4", "r3", "r2", "r1"]
    assert view.value["headers"] == ["show", "run", "status", "progress", "best", "speed · ETA", "variant"]
    best = job_row(rows[3])[5]  # r2's psnr 23.5 is the study's best
    assert best.startswith("psnr ↑ 23.5")
    assert view.value["data"][1] == [
        GROUP_SHOWN,
        f'<span class="run-cell" title="{STUDY}: 2 variants × 2 seeds">▾ <b>study 120000-ab12</b></span>',
        "running",
        "3/4 done (1 failed) · 1 running · 87%",  # (100 + 100 + 100 + 48) / 4
        best,
        "–",
        "2 variants × 2 seeds",
    ]
    assert view.value["data"][0] == _run(rows[0])  # no study: a plain row
    assert view.value["data"][2:] == [_run(r, in_study=True) for r in rows[1:]]
    blank = [""] * 7
    assert view.value["metadata"]["styling"] == [blank, [GROUP_STYLE] * 7, blank, blank, blank, blank]


def test_a_collapsed_study_shows_its_group_row_only(rows):
    view = jobs_view(rows, collapsed={STUDY})
    assert view.keys == ["r5", f"study:{STUDY}"]
    assert view.value["data"][1][1].endswith(">▸ <b>study 120000-ab12</b></span>")
    assert view.value["data"][1][3] == "3/4 done (1 failed) · 1 running · 87%"


def test_a_filter_keeps_the_group_of_a_matching_run_whose_progress_counts_the_whole_study(rows):
    view = jobs_view(rows, "status:running")
    assert view.keys == ["r5", f"study:{STUDY}", "r4"]
    assert view.value["data"][1][3] == "3/4 done (1 failed) · 1 running · 87%"
    assert jobs_view(rows, "status:completed", "oldest").keys == [f"study:{STUDY}", "r1", "r2"]
    # Without a study every row is a plain row, as before the grouping.
    lone = [_row("a", "sar-baseline", "queued"), _row("b", "sar-resnet", "completed")]
    assert jobs_view(lone).keys == ["a", "b"] and "metadata" not in jobs_view(lone).value


def test_the_chosen_columns_in_table_order_and_a_group_shows_its_runs_differing_values(rows):
    view = jobs_view(rows, columns=["seed", "note", "preset", "lr"])
    assert view.value["headers"] == ["show", "run", "preset", "lr", "seed", "note"]  # the table's order
    assert view.value["data"][1][2:] == ["smoke", "0.001", "1, 0", ""]
    assert view.value["data"][2] == _run(rows[1], in_study=True, columns=("preset", "lr", "seed", "note"))
    assert chosen_columns(["tags", "no such column", "run"]) == ("tags",)
    assert chosen_columns(None) == DEFAULT_COLUMNS and chosen_columns("status") == DEFAULT_COLUMNS
    assert chosen_columns([]) == ()
    assert jobs_view(rows, columns=list(OPTIONAL_COLUMNS)).value["headers"][2:] == list(OPTIONAL_COLUMNS)


def test_hidden_runs_stay_in_the_table_marked_and_the_eye_of_a_study_hides_all_its_runs(rows):
    view = jobs_view(rows, hidden={"r4"})
    assert view.keys == ["r5", f"study:{STUDY}", "r4", "r3", "r2", "r1"]
    assert view.value["data"][2] == _run(rows[1], hidden=True, in_study=True)
    assert view.value["data"][1][0] == GROUP_SHOWN  # three of its runs are still shown
    everything = {"r1", "r2", "r3", "r4"}
    assert jobs_view(rows, hidden=everything).value["data"][1][0] == GROUP_HIDDEN
    group = f"study:{STUDY}"
    assert toggle_hidden({"r4"}, group, rows) == ["r1", "r2", "r3", "r4"]  # any shown: hide them all
    assert toggle_hidden(everything | {"r5"}, group, rows) == ["r5"]  # all hidden: show them all
    assert toggle_hidden(["r5"], "r5", rows) == [] and toggle_hidden([], "r5", rows) == ["r5"]


def test_study_shape_names_a_sweep_and_group_progress_counts_queued_runs():
    swept = [
        _row(f"s{i}", "sar-baseline", "queued", seed=i % 2, study=STUDY, lr=lr)
        for i, lr in enumerate((1e-3, 1e-3, 3e-4, 3e-4))
    ]
    assert study_shape(swept) == "1 variant × 2 seeds × 2 lr"
    assert group_progress(swept) == "0/4 done · 4 queued · 0%"
    unnamed = [_row(f"m{i}", "sar-baseline", "completed", seed=i % 2, study=STUDY) for i in range(4)]
    assert study_shape(unnamed) == "1 variant × 2 seeds × 2 sweep values"  # a model key swept
    named = [dict(r, name=f"wide · sar-baseline · seed {r['seed']}") for r in unnamed]
    view = jobs_view(named)
    shape = "1 variant × 2 seeds × 2 sweep values"
    title = f"wide ({STUDY}): {shape}"
    assert view.value["data"][0][1] == (
        f'<span class="run-cell" title="{title}">▾ <b>wide</b> <small>study 120000-ab12</small></span>'
    )
    assert view.value["data"][0][6] == shape
    # Under its group a run's name is told without the study's name it starts with; its tooltip has all.
    assert view.value["data"][1][1].endswith("</span> <b>sar-baseline · seed 0</b></span>")
    assert 'title="wide · sar-baseline · seed 0 (m0)"' in view.value["data"][1][1]


def test_the_run_cell_tells_runs_apart_by_name_or_by_the_id_without_its_creation_time():
    from studio.views.train.jobs_view import compact_run_cell

    row = {"id": "20261207-173748-sar-residual-3fa2"}
    dot = f'<span class="run-dot" style="color:{run_color(row["id"])}">●</span>'
    assert compact_run_cell(row) == f"{dot} sar-residual-3fa2"
    assert compact_run_cell(row, "a <b>") == f"{dot} <b>a &lt;b&gt;</b>"
    other = f'<span class="run-dot" style="color:{run_color("my-run")}">●</span>'
    assert compact_run_cell({"id": "my-run"}) == f"{other} my-run"


def test_anonymous_rows_of_other_visitors_have_no_eye_and_no_group():
    rows = [{"id": "", "anonymous": True, "status": "running"}, _row("mine", "sar-baseline", "queued")]
    view = jobs_view(rows)
    assert view.keys == ["", "mine"]
    assert view.value["data"][0][:4] == ["", "<i>another visitor's job</i>", "running", "running"]


def test_hidden_runs_leave_the_curve_panels(tmp_path):
    from studio.app import make_context

    ctx = make_context(tmp_path / "runs", cpu_slots=1, space=False)
    try:
        runs = [ctx.store.create_run("sar-baseline", "sar", {}, status="running") for _ in range(2)]
        for run in runs:
            for step in range(3):
                ctx.store.log_metrics(run, step, 0, "train", {"loss": 1.0 / (step + 1)})
        state = TrainSession()
        plots, _ = draw_curves(ctx, state, ["train/loss"], runs, 0.0, False, [""], True)
        assert {t["meta"] for t in json.loads(plots[0].plot)["data"]} == set(runs)
        state.hidden = frozenset({runs[1]})
        plots, caption = draw_curves(ctx, state, ["train/loss"], runs, 0.0, False, [""], False)
        assert {t["meta"] for t in json.loads(plots[0].plot)["data"]} == {runs[0]}  # redrawn without it
        assert "from 1 of 1 run(s)" in caption
    finally:
        ctx.jobs.shutdown()
        ctx.store.close()
