"""The Train tab's logic without a browser: the incremental curve cache, the figure, and the handlers'
answers to bad input."""

from __future__ import annotations

import json
import math
import os
import time

import gradio as gr
import numpy as np
import pandas as pd
import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from studio.app import make_context  # noqa: E402
from studio.curves import (  # noqa: E402
    PALETTE,
    X_AXES,
    CurveCache,
    RunLabel,
    curve_uirevision,
    ema,
    figure_points,
    keep_view,
    make_figure,
    run_color,
    thin,
)
from studio.views.train import (  # noqa: E402
    JOB_HEADERS,
    PANEL_SLOTS,
    TrainSession,
    cancel_run,
    check_curve_request,
    default_panels,
    format_elapsed,
    job_table,
    launch_runs,
    log_tail,
    parse_settings,
    plot_selection,
    poll,
    preset_summary,
    progress_text,
    refresh_panels,
    resource_texts,
    run_labels,
    set_run_labels,
    speed_text,
)
from trainers.runs.store import RunStore  # noqa: E402
from trainers.settings import make_config  # noqa: E402


class CountingStore:
    """Wraps a RunStore and records every metrics_after call, to see what the cache asks for."""

    def __init__(self, store: RunStore) -> None:
        self.store = store
        self.calls: list[tuple[int, list[str], int]] = []

    def metrics_after(self, cursor, run_ids=None, names=None, limit=None):
        rows, new_cursor = self.store.metrics_after(cursor, run_ids, names, limit)
        self.calls.append((cursor, list(run_ids or []), len(rows)))
        return rows, new_cursor


@pytest.fixture
def store(tmp_path):
    with RunStore(tmp_path / "runs") as s:
        yield s


def _log_losses(store: RunStore, run_id: str, steps: range, offset: float = 0.0) -> None:
    for step in steps:
        store.log_metrics(run_id, step, 0, "train", {"loss": 1.0 / (step + 1) + offset})


# ------------------------------------------------------------------------------------------------ cache
def test_cache_reads_only_new_rows(store):
    a = store.create_run("fragment-dae", "fragments", {"lr": 1e-3})
    b = store.create_run("sar-baseline", "sar", {"lr": 1e-3})
    _log_losses(store, a, range(0, 10))
    _log_losses(store, b, range(0, 4))
    store.log_metrics(a, 10, 1, "val", {"loss": 0.3, "byte_accuracy": 0.9})
    counting = CountingStore(store)
    cache = CurveCache()

    assert cache.update(counting, [a, b]) == 10 + 4 + 2
    first_cursor = cache.cursor(a)
    assert first_cursor == cache.cursor(b) == store.metrics_after(0)[1]
    assert cache.update(counting, [a, b]) == 0
    assert counting.calls[-1] == (first_cursor, [a, b], 0)  # nothing re-read

    _log_losses(store, a, range(11, 14))
    _log_losses(store, b, range(4, 6))
    assert cache.update(counting, [a, b]) == 5
    assert counting.calls[-1] == (first_cursor, [a, b], 5)
    assert cache.last_rows_read == 5
    steps, values = cache.series(a, "train/loss")
    np.testing.assert_array_equal(steps, [*range(10), 11, 12, 13])
    np.testing.assert_allclose(values, [1.0 / (s + 1) for s in steps])
    assert cache.series(a, "val/byte_accuracy")[1].tolist() == [0.9]
    assert cache.metric_names([a]) == ["train/loss", "val/byte_accuracy", "val/loss"]
    assert cache.point_counts("train/loss", [a, b]) == {a: 13, b: 6}


def test_cache_adds_a_run_without_losing_or_duplicating_points(store):
    a = store.create_run("fragment-dae", "fragments", {})
    b = store.create_run("fragment-dae", "fragments", {})
    _log_losses(store, a, range(5))
    _log_losses(store, b, range(7))
    cache = CurveCache()
    assert cache.update(store, [a]) == 5
    # b joins: its history is read once, a's rows that come back in the same query are skipped.
    assert cache.update(store, [a, b]) == 7
    assert cache.point_counts("train/loss", [a, b]) == {a: 5, b: 7}
    assert cache.cursor(a) == cache.cursor(b)
    _log_losses(store, b, range(7, 9))
    assert cache.update(store, [b]) == 2  # a is not watched now; its cursor stays
    _log_losses(store, a, range(5, 6))
    assert cache.update(store, [a, b]) == 1
    assert cache.point_counts("train/loss", [a, b]) == {a: 6, b: 9}


def test_cache_keeps_the_latest_value_of_a_repeated_step_and_nan(store):
    run = store.create_run("fragment-dae", "fragments", {})
    _log_losses(store, run, range(4))
    store.log_metrics(run, 2, 0, "train", {"loss": 5.0})  # a resumed run logs step 2 again
    store.log_metrics(run, 4, 0, "train", {"loss": math.nan})
    cache = CurveCache()
    cache.update(store, [run])
    steps, values = cache.series(run, "train/loss")
    assert steps.tolist() == [0, 1, 2, 3, 4]
    assert values[2] == 5.0 and math.isnan(values[4])
    reference = store.metric_series(run, "train/loss")
    assert [s for s, _ in reference] == steps.tolist()
    np.testing.assert_allclose([v for _, v in reference], values)


def test_cache_rejects_bad_run_ids(store):
    with pytest.raises(ValueError, match="run ids"):
        CurveCache().update(store, ["", None])


# ------------------------------------------------------------------------------------------------ figure
@pytest.mark.parametrize("weight", [0.0, 0.3, 0.9, 0.99])
def test_smoothing_matches_a_debiased_ema_reference(weight):
    rng = np.random.default_rng(0)
    x = rng.normal(size=200).cumsum()
    reference = pd.Series(x).ewm(alpha=1.0 - weight, adjust=True).mean().to_numpy() if weight else x
    np.testing.assert_allclose(ema(x, weight), reference, rtol=1e-10, atol=1e-12)
    # The same recursion written out, TensorBoard style.
    last, out = 0.0, []
    for i, value in enumerate(x):
        last = last * weight + (1 - weight) * value
        out.append(last / (1 - weight ** (i + 1)) if weight else value)
    np.testing.assert_allclose(ema(x, weight), out, rtol=1e-9)


@pytest.mark.parametrize("bad", [-0.1, 1.0, 2, "0.5", True, math.nan])
def test_smoothing_out_of_range_is_refused(bad):
    with pytest.raises(ValueError, match=r"smoothing must be a number in \[0, 1\)"):
        ema([1.0, 2.0], bad)
    with pytest.raises(ValueError, match="smoothing"):
        make_figure(CurveCache(), "train/loss", [], bad)


def test_figure_draws_smoothed_curves_and_log_axis(store):
    a = store.create_run("fragment-dae", "fragments", {})
    b = store.create_run("fragment-dae", "fragments", {})
    _log_losses(store, a, range(20))
    _log_losses(store, b, range(10), offset=0.5)
    store.log_metrics(b, 10, 0, "train", {"loss": math.inf})
    cache = CurveCache()
    cache.update(store, [a, b])

    fig = make_figure(cache, "train/loss", [a, b], smoothing=0.6, log_y=True)
    # Over a decade: 1-2-5 labels written out (0.2, not a bare "2"), not every digit (they overlap).
    assert fig.layout.yaxis.type == "log" and fig.layout.yaxis.dtick == "D2"
    assert fig.layout.yaxis.tickformat == ".2~g"
    narrow = CurveCache()
    c = store.create_run("fragment-dae", "fragments", {})
    _log_losses(store, c, range(20), offset=0.25)  # 1.25 .. 0.3: under a decade, plotly's own ticks
    narrow.update(store, [c])
    assert make_figure(narrow, "train/loss", [c], log_y=True).layout.yaxis.dtick is None
    view = {"uirevision": fig.layout.uirevision, "x": [0, 5], "y": [-0.5, -0.2]}  # zoomed within a decade
    zoomed = keep_view(fig, view)
    assert zoomed.layout.yaxis.dtick is None and zoomed.layout.yaxis.tickformat is None
    assert figure_points(fig) == {a: 20, b: 10}  # the inf point is left out
    main = [t for t in fig.data if t.meta == a][0]
    raw = [t for t in fig.data if t.name == f"{a} (raw)"][0]
    np.testing.assert_allclose(raw.y, [1.0 / (s + 1) for s in range(20)])
    np.testing.assert_allclose(main.y, ema(raw.y, 0.6))
    assert main.line.color == raw.line.color

    linear = make_figure(cache, "train/loss", [a, b], smoothing=0.0, log_y=False)
    assert linear.layout.yaxis.type == "linear"
    assert len(linear.data) == 2  # no raw copies without smoothing
    np.testing.assert_allclose([t for t in linear.data if t.meta == a][0].y, raw.y)


def test_long_curves_are_thinned_but_keep_their_spikes_and_ends():
    rng = np.random.default_rng(0)
    steps = np.arange(1, 20_001, dtype=np.int64)
    values = 1.0 / np.sqrt(steps) + 0.01 * rng.standard_normal(steps.size)
    values[12_345], values[3_000] = 5.0, -1.0  # a loss spike and a dip that must stay visible
    x, y = thin(steps, values, 2_000)
    assert 1_900 <= x.size <= 2_000 and np.all(np.diff(x) > 0)
    assert {1, 20_000, 12_346, 3_001} <= set(x.tolist())
    np.testing.assert_array_equal(y, values[x - 1])  # thinned points are real points
    short_x, short_y = thin(steps[:50], values[:50], 2_000)
    np.testing.assert_array_equal(short_x, steps[:50])
    np.testing.assert_array_equal(short_y, values[:50])


def test_figure_of_a_long_run_draws_a_bounded_number_of_points(tmp_path):
    from benchmarks.studio import fill_store
    from studio.curves import MAX_POINTS_PER_TRACE

    store, (a,) = fill_store(tmp_path / "long", 1, 3 * MAX_POINTS_PER_TRACE)
    with store:
        cache = CurveCache()
        cache.update(store, [a])
    fig = make_figure(cache, "train/loss", [a], smoothing=0.9)
    assert len(fig.data) == 2 and all(
        0.95 * MAX_POINTS_PER_TRACE <= len(t.x) <= MAX_POINTS_PER_TRACE for t in fig.data
    )
    main = next(t for t in fig.data if t.meta == a)
    steps, values = cache.series(a, "train/loss")
    assert steps.size == 3 * MAX_POINTS_PER_TRACE
    # The smoothing runs over every point; only the drawing is thinned.
    assert main.x[-1] == steps[-1] and main.y[-1] == pytest.approx(ema(values, 0.9)[-1], rel=1e-6)


def test_uirevision_is_stable_across_refreshes_and_changes_with_the_selection(store):
    a = store.create_run("fragment-dae", "fragments", {})
    b = store.create_run("fragment-dae", "fragments", {})
    cache = CurveCache()
    _log_losses(store, a, range(3))
    cache.update(store, [a, b])
    before = make_figure(cache, "train/loss", [a, b], 0.5, False).layout.uirevision
    _log_losses(store, a, range(3, 8))
    _log_losses(store, b, range(2))
    cache.update(store, [a, b])
    after = make_figure(cache, "train/loss", [b, a], 0.8, False)  # other order, other smoothing
    assert after.layout.uirevision == before == curve_uirevision("train/loss", [a, b], False)
    assert figure_points(after) == {a: 8, b: 2}
    others = {
        make_figure(cache, "val/loss", [a, b], 0.5, False).layout.uirevision,
        make_figure(cache, "train/loss", [a], 0.5, False).layout.uirevision,
        make_figure(cache, "train/loss", [a, b], 0.5, True).layout.uirevision,
    }
    assert before not in others and len(others) == 3


def test_figure_without_points_says_so():
    fig = make_figure(CurveCache(), "val/psnr", ["nope"], 0.0, False)
    assert not fig.data
    assert "No points of val/psnr yet" in fig.layout.annotations[0].text


# ------------------------------------------------------------------------------------------------ handlers
@pytest.fixture
def ctx(tmp_path):
    """A real studio context (store + job manager); the bad inputs below must never reach a trainer."""
    context = make_context(tmp_path / "runs", cpu_slots=1, space=False)
    yield context
    context.jobs.shutdown()
    context.store.close()


def test_a_fresh_page_plots_the_newest_runs_of_one_domain():
    from studio.views.train import initial_curve_runs

    rows = [  # newest first, as the jobs table lists them
        {"id": "f2", "variant": "fragment-dae-bytes", "domain": "fragments", "status": "completed"},
        {"id": "s2", "variant": "sar-resnet", "domain": "sar", "status": "running"},
        {"id": "f1", "variant": "fragment-dae", "domain": "fragments", "status": "completed"},
        {"id": "s1", "variant": "sar-baseline", "domain": "sar", "status": "running"},
        {"id": "a1", "variant": "audio-vae", "domain": "audio", "status": "running"},
    ]
    assert initial_curve_runs(rows) == ["s2", "s1"]  # the running ones, of the newest one's domain
    ended = [{**row, "status": "completed"} for row in rows]
    assert initial_curve_runs(ended) == ["f2", "f1"]
    assert initial_curve_runs([]) == []


def test_a_launch_plots_the_new_runs_beside_those_of_their_domain(ctx):
    sar = ctx.store.create_run("sar-baseline", "sar", {})
    frag = ctx.store.create_run("fragment-dae", "fragments", {})
    new_sar = ctx.store.create_run("sar-resnet", "sar", {})
    assert plot_selection(ctx, [sar, frag], [new_sar]) == [sar, new_sar]
    assert plot_selection(ctx, [sar, "deleted-run"], [frag]) == [frag]
    assert plot_selection(ctx, None, [new_sar, sar]) == [new_sar, sar]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"variants": []}, ValueError, "No variant chosen: tick one or more variants"),
        ({"variants": None}, ValueError, "No variant chosen"),
        ({"variants": ["sar-huge"]}, ValueError, "unknown variant(s) 'sar-huge'"),
        ({"preset": "medium"}, ValueError, "preset must be one of smoke, reference, full"),
        ({"lr": "fast"}, ValueError, "learning rate must be a positive number such as 3e-4"),
        ({"lr": "inf"}, ValueError, "learning rate must be a positive number"),
        ({"lr": -1e-3}, ValueError, "learning rate must be a positive number"),
        ({"lr": "nan"}, ValueError, "learning rate must be a positive number"),
        ({"epochs": "-1"}, ValueError, "epochs must be a whole number >= 1"),
        ({"epochs": "two"}, ValueError, "epochs must be a whole number >= 1"),
        ({"batch_size": 2.5}, ValueError, "batch size must be a whole number >= 1"),
        ({"seed": "-1"}, ValueError, "seed must be a whole number >= 0"),
        ({"data": "pictures:n=3"}, ValueError, "unknown data domain 'pictures'"),
        ({"data": "fragments:colour=red"}, ValueError, "colour"),
        (
            {"data": "sar:synthetic,n=8"},
            ValueError,
            "is sar data, but fragment-dae train(s) on fragments data",
        ),
        ({"data": "fragments:folder=/no/such/dir"}, FileNotFoundError, "/no/such/dir"),
    ],
)
def test_launch_refuses_bad_input_with_a_message_and_queues_nothing(ctx, kwargs, error, message):
    settings = {"variants": ["fragment-dae"], "preset": "smoke", **kwargs}
    with pytest.raises(error) as info:
        launch_runs(ctx, **settings)
    assert message in str(info.value)
    assert ctx.store.list_runs() == []


def test_one_bad_variant_setting_queues_none_of_the_others(ctx):
    # The data spec fits sar-baseline but not fragment-dae: neither may be queued.
    with pytest.raises(ValueError, match="fragment-dae"):
        launch_runs(ctx, ["sar-baseline", "fragment-dae"], "smoke", data="sar:synthetic,n=8,size=64")
    assert ctx.store.list_runs() == []


def test_a_space_launches_only_the_smoke_preset(tmp_path):
    context = make_context(tmp_path / "runs", cpu_slots=1, space=True)
    try:
        with pytest.raises(ValueError, match="only the smoke preset"):
            launch_runs(context, ["sar-residual"], "full")
        with pytest.raises(ValueError, match="at most 10 epochs"):
            launch_runs(context, ["sar-residual"], "smoke", epochs="11")
        with pytest.raises(ValueError, match="built-in data only"):
            launch_runs(context, ["fragment-dae"], "smoke", data=f"fragments:folder={tmp_path}")
        assert context.store.list_runs() == []
        # One visitor's job cannot be cancelled from another visitor's session.
        (run_id,) = launch_runs(context, ["fragment-dae"], "smoke", epochs="1", owner="visitor-a")
        with pytest.raises(PermissionError, match="someone else"):
            cancel_run(context, run_id, requester="visitor-b")
        assert context.store.get_run(run_id).status in ("queued", "running")
        assert "ancel" in cancel_run(context, run_id, requester="visitor-a")
    finally:
        context.jobs.shutdown(cancel_running=True)
        context.store.close()


class _Request:
    """What the handlers read of a ``gr.Request``: the page session and, with OAuth, the login."""

    def __init__(self, session_hash: str, username: str | None = None):
        self.session_hash, self.username = session_hash, username


def test_a_space_visitor_keeps_their_jobs_across_a_reload_and_others_see_no_log(tmp_path):
    """Through the app's own handlers: the page load ties a session to the browser's visitor id, so the
    reloaded page (a new session, the same id) still cancels the visitor's job and reads its log, while
    another visitor can do neither; a queued job's place and estimated wait are stated."""
    from studio.app import build_app

    context = make_context(tmp_path / "runs", cpu_slots=1, space=True)
    try:
        demo = build_app(context)
        fns = {f.api_name or f.fn.__name__: f.fn for f in demo.fns.values()}
        remember, launch, cancel, log = fns["remember"], fns["launch"], fns["cancel"], fns["log_tail"]
        visitor = remember("", _Request("page-1"))  # a fresh browser: a new id, stored in the browser
        status, *_ = launch(
            ["fragment-dae", "fragment-dae-bytes"],
            "smoke",
            "1",
            "",
            "",
            "",
            "",
            "auto",
            "auto",
            False,
            [],
            TrainSession(),
            _Request("page-1"),
        )
        first, second = [r["id"] for r in sorted(context.jobs.jobs(), key=lambda r: r["created_at"])]
        assert {context.store.get_run(r).owner for r in (first, second)} == {visitor}
        waiting = next(r for r in context.jobs.jobs() if r["status"] == "queued")
        limit = context.jobs.space_limits.max_seconds
        assert waiting["queue_wait_s"] == waiting["queue_position"] * limit  # one CPU slot on a Space
        assert f"is #{waiting['queue_position']} in line, wait ≤ ~" in status and "an estimate" in status
        assert remember(visitor, _Request("page-2")) == visitor  # the reload keeps the browser's id
        other = remember("", _Request("page-3"))
        assert other != visitor
        assert "private" in log(second, _Request("page-3"))
        assert "private" not in log(second, _Request("page-2"))
        assert "someone else" in cancel(second, _Request("page-3"))
        assert "someone else" in cancel(second, _Request("page-1", username="mallory"))  # an HF login
        assert "ancel" in cancel(second, _Request("page-2")) and "someone else" not in cancel(
            first, _Request("page-2")
        )
    finally:
        context.jobs.shutdown(cancel_running=True)
        context.store.close()


def test_launch_api_needs_only_the_variants_and_checks_numbers_in_the_settings_words(tmp_path):
    """The number fields are gr.Number, optional in the /launch API (empty: the preset's value); a number
    the settings refuse gets their message, not a silent rounding."""
    from studio.app import build_app

    context = make_context(tmp_path / "runs", cpu_slots=1, space=False)
    try:
        demo = build_app(context)
        endpoint = demo.get_api_info()["named_endpoints"]["/launch"]
        params = {p["parameter_name"]: p for p in endpoint["parameters"]}
        assert [name for name, p in params.items() if not p["parameter_has_default"]] == []
        for name, default in (("epochs", None), ("batch_size", None), ("lr", None), ("seed", 0)):
            assert (params[name]["component"], params[name]["parameter_default"]) == ("Number", default)
        launch = next(f.fn for f in demo.fns.values() if f.api_name == "launch")
        status, *_ = launch(["fragment-dae"], "smoke", 2.5)
        assert "epochs must be a whole number >= 1, got 2.5 (or leave it blank or 0" in status
        assert context.jobs.jobs() == []
    finally:
        context.jobs.shutdown(cancel_running=True)
        context.store.close()


def test_a_launch_says_launching_at_once_instead_of_the_previous_launchs_ids(tmp_path):
    """Issue 19: during a launch the status line kept the previous launch's "Queued … id". The Launch
    button's first handler, outside the queue (it answers at once, even while launches wait), writes
    "Launching…" into the very status line the launch itself then fills."""
    from studio.app import build_app

    context = make_context(tmp_path / "runs", cpu_slots=1, space=False)
    try:
        demo = build_app(context)
        launch = next(f for f in demo.fns.values() if f.api_name == "launch")
        button = launch.targets[0]
        first = [f for f in demo.fns.values() if f.targets == [button] and f is not launch]
        assert len(first) == 1 and first[0]._id < launch._id  # registered first: it runs first
        assert first[0].queue is False and first[0].inputs == []
        assert first[0].outputs == [launch.outputs[0]]  # the launch's own status line
        assert first[0].fn() == "⏳ Launching…"
    finally:
        context.jobs.shutdown(cancel_running=True)
        context.store.close()


def test_parse_settings_leaves_blanks_to_the_preset():
    assert parse_settings("", " ", None, "", "") == {}
    # The page shows a number field without a value as 0: where 0 means nothing it is the preset's value.
    assert parse_settings(0, 0.0, "0", "", 0) == {"seed": 0}
    assert parse_settings("3", 16.0, " 3e-4 ", " sar:synthetic,n=8 ", 0) == {
        "epochs": 3,
        "batch_size": 16,
        "lr": 3e-4,
        "data": "sar:synthetic,n=8",
        "seed": 0,
    }


def test_jobs_table_formats_the_job_managers_rows(ctx):
    config = make_config("fragment-dae", "smoke", epochs=2, batch_size=1_000_000, lr=3e-4).to_dict()
    done = ctx.store.create_run("fragment-dae", "fragments", config, status="running")
    ctx.store.update_run(done, epoch=2, step=40, device="cpu", steps_per_epoch=20)
    ctx.store.log_metrics(done, 20, 1, "val", {"accuracy_corrupted": 0.25, "loss": 0.5})
    ctx.store.log_metrics(done, 40, 2, "val", {"accuracy_corrupted": 0.75, "loss": 0.4})
    ctx.store.set_status(done, "completed")
    ctx.store.set_labels(done, name="big batch", tags="sweep, batch")
    failed = ctx.store.create_run("sar-baseline", "sar", {}, status="failed")
    ctx.store.set_status(failed, "failed", "CUDA out of memory " + "x" * 200)
    table, ids = job_table(ctx.jobs.jobs())
    assert ids == [failed, done]
    headers = {name: i for i, name in enumerate(JOB_HEADERS)}
    row = table[1]
    assert f"<b>big batch</b> <small>{done}</small>" in row[0] and run_color(done) in row[0]
    assert row[headers["status"]] == "completed"
    assert row[headers["progress"]] == "epoch 2 / 2 · 100%"
    assert row[headers["best"]] == "accuracy_corrupted ↑ 0.7500"
    assert row[headers["batch"]] == "1,000,000" and row[headers["lr"]] == "0.0003"
    assert row[headers["preset"]] == "smoke" and row[headers["tags"]] == "sweep, batch"
    assert row[headers["device"]].startswith("cpu")
    assert table[0][headers["progress"]] == "epoch 0 / ?" and table[0][headers["best"]] == "–"
    assert table[0][headers["note"]].startswith("CUDA out of memory") and len(table[0][headers["note"]]) <= 90
    # Filter by words, tags and status; sort by name and by the best value.
    assert job_table(ctx.jobs.jobs(), "tag:sweep")[1] == [done]
    assert job_table(ctx.jobs.jobs(), "status:fail")[1] == [failed]
    assert job_table(ctx.jobs.jobs(), "BIG status:completed")[1] == [done]
    assert job_table(ctx.jobs.jobs(), "tag:nope")[1] == []
    assert job_table(ctx.jobs.jobs(), "", "oldest")[1] == [done, failed]
    assert job_table(ctx.jobs.jobs(), "", "best")[1] == [done, failed]  # no value: last
    with pytest.raises(ValueError, match="sort must be one of"):
        job_table(ctx.jobs.jobs(), "", "size")


def test_progress_speed_eta_and_queue_places(ctx):
    from studio.progress import planned_steps, progress, queue_positions, steps_per_second

    assert planned_steps({"epochs": 10}, 50) == 500
    assert planned_steps({"epochs": 10, "max_steps": 120}, 50) == 120
    assert planned_steps({"epochs": 10}, None) is None
    assert steps_per_second([(100, 10.0), (150, 12.0), (200, 14.0)]) == pytest.approx(25.0)
    assert steps_per_second([(100, 10.0)]) is None
    run_id = ctx.store.create_run("sar-baseline", "sar", {"epochs": 4}, status="running")
    ctx.store.update_run(run_id, step=150, epoch=1, steps_per_epoch=100)
    info = progress(ctx.store.get_run(run_id), [(100, 10.0), (150, 12.0)])
    # 150 of 400 steps; 25 steps/s -> (400 - 150) / 25 = 10 s left; epoch 2 of 4 in progress.
    assert info["epoch_now"] == 2 and info["total_steps"] == 400
    assert info["percent"] == pytest.approx(37.5) and info["eta_s"] == pytest.approx(10.0)
    row = {"status": "running", "epochs": 4, **info}
    assert progress_text(row) == "epoch 2 / 4 · 38%" and speed_text(row) == "25 steps/s · ETA 10 s"
    # Queued runs get their place in line, in the order they start (oldest first).
    first = ctx.store.create_run("sar-baseline", "sar", {}, status="queued")
    second = ctx.store.create_run("sar-baseline", "sar", {}, status="queued")
    places = queue_positions(ctx.store.list_runs())
    assert places == {first: 1, second: 2}
    row = next(r for r in ctx.jobs.jobs() if r["id"] == second)
    assert row["queue_position"] == 2 and progress_text(row) == "queued · #2 in line"
    assert row["queue_wait_s"] is None  # no estimate where jobs have no time limit
    # On a Space every job stops at the time limit: #3 with 2 slots waits at most 2 jobs' limits.
    row = {"status": "queued", "queue_position": 3, "queue_wait_s": math.ceil(3 / 2) * 300.0}
    assert progress_text(row) == "queued · #3 in line · wait ≤ ~10m 00s (est.)"


def test_process_usage_reads_this_process_and_gpu_usage_reads_nvml(monkeypatch):
    import sys
    import types

    from studio.progress import gpu_usage, process_usage

    first = process_usage(os.getpid())
    assert first["rss_bytes"] > 10 * 2**20 and first["cpu_percent"] is None  # no earlier reading yet
    sum(i * i for i in range(200_000))  # some CPU time between the readings
    second = process_usage(os.getpid())
    assert second["cpu_percent"] is not None and 0 <= second["cpu_percent"] < 100 * (os.cpu_count() or 1) + 50
    assert process_usage(None) == {"cpu_percent": None, "rss_bytes": None}

    assert gpu_usage([os.getpid()]) == {} or "pynvml" in sys.modules  # no NVML here: no GPU figures
    fake = types.SimpleNamespace(
        nvmlInit=lambda: None,
        nvmlShutdown=lambda: None,
        nvmlDeviceGetCount=lambda: 1,
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetUtilizationRates=lambda h: types.SimpleNamespace(gpu=45),
        nvmlDeviceGetComputeRunningProcesses=lambda h: [
            types.SimpleNamespace(pid=123, usedGpuMemory=3 * 2**30),
            types.SimpleNamespace(pid=999, usedGpuMemory=2**30),
        ],
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    assert gpu_usage([123]) == {
        123: {"gpu_index": 0.0, "gpu_util_percent": 45.0, "gpu_memory_bytes": 3 * 2**30}
    }
    cpu, gpu = resource_texts(
        {
            "status": "running",
            "cpu_percent": 97.4,
            "rss_bytes": 640 * 2**20,
            "gpu_index": 0.0,
            "gpu_util_percent": 45.0,
            "gpu_memory_bytes": 3 * 2**30,
        }
    )
    assert (cpu, gpu) == ("CPU 97% · 640 MiB", "GPU 0 · 45% · 3.0 GiB")


def test_labels_are_saved_through_the_handler_and_bad_ones_refused(ctx):
    run_id = ctx.store.create_run("sar-baseline", "sar", {})
    assert (
        set_run_labels(ctx, run_id, "lr sweep", "sweep, lr", "try 3e-4") == "Saved: lr sweep · tags sweep, lr"
    )
    run = ctx.store.get_run(run_id)
    assert (run.name, run.tags, run.note) == ("lr sweep", ["sweep", "lr"], "try 3e-4")
    with pytest.raises(ValueError, match="No run selected"):
        set_run_labels(ctx, "", "x", "", "")
    with pytest.raises(ValueError, match="no run with id 'nope'"):
        set_run_labels(ctx, "nope", "x", "", "")
    with pytest.raises(ValueError, match="invalid tag 'two words'"):
        set_run_labels(ctx, run_id, "x", "two words", "")
    assert ctx.store.get_run(run_id).name == "lr sweep"


def test_run_colours_are_fixed_and_legends_name_the_differing_settings(store):
    # The colour depends on the run id only: the same in every figure, panel, selection and process.
    assert run_color("20261121-041502-sar-baseline-3fa2") == run_color("20261121-041502-sar-baseline-3fa2")
    assert len({run_color(f"run-{i}") for i in range(200)}) == len(PALETTE)
    a = store.create_run("sar-baseline", "sar", {})
    b = store.create_run("sar-baseline", "sar", {})
    _log_losses(store, a, range(5))
    _log_losses(store, b, range(5))
    cache = CurveCache()
    cache.update(store, [a, b])
    rows = {
        a: {"id": a, "variant": "sar-baseline", "lr": 10.0, "batch_size": 8, "name": "huge lr"},
        b: {"id": b, "variant": "sar-baseline", "lr": 0.002, "batch_size": 8},
    }
    labels = run_labels(rows, [a, b])
    # Unnamed: the id less its creation time (the hover keeps the whole id).
    assert labels[a].label == "huge lr (lr=10)" and labels[b].label == f"{b[16:]} (lr=0.002)"
    assert b[16:].startswith("sar-baseline-") and labels[b].settings.startswith(b)
    assert "batch 8" in labels[a].settings and "variant sar-baseline" in labels[a].settings
    both = make_figure(cache, "train/loss", [a, b], labels=labels)
    alone = make_figure(cache, "train/loss", [b])
    color = {t.meta: t.line.color for t in both.data}
    assert color[b] == [t.line.color for t in alone.data][0] == run_color(b)
    hover = next(t.hovertemplate for t in both.data if t.meta == a)
    assert "huge lr" in hover and "lr 10" in hover


def test_x_axes_epoch_wall_and_relative_time(store):
    run = store.create_run("sar-baseline", "sar", {})
    for step in (10, 20, 30, 40):
        store.log_metrics(run, step, step // 20, "train", {"loss": 1.0 / step}, time=1_000.0 + 6 * step)
    cache = CurveCache()
    cache.update(store, [run])
    by_epoch = make_figure(cache, "train/loss", [run], x_axis="epoch", labels={run: RunLabel(run, "", 20)})
    np.testing.assert_allclose(by_epoch.data[0].x, [0.5, 1.0, 1.5, 2.0])  # step / steps per epoch
    logged = make_figure(cache, "train/loss", [run], x_axis="epoch")
    np.testing.assert_allclose(logged.data[0].x, [0, 1, 1, 2])  # the logged epochs without it
    relative = make_figure(cache, "train/loss", [run], x_axis="relative time")
    np.testing.assert_allclose(relative.data[0].x, [0.0, 1.0, 2.0, 3.0])  # minutes after the first point
    wall = make_figure(cache, "train/loss", [run], x_axis="wall time")
    assert wall.layout.xaxis.type == "date"
    offset = time.localtime().tm_gmtoff
    np.testing.assert_allclose(wall.data[0].x, [(1_060.0 + 60 * i + offset) * 1000 for i in range(4)])
    uirevisions = {make_figure(cache, "train/loss", [run], x_axis=x).layout.uirevision for x in X_AXES}
    assert len(uirevisions) == len(X_AXES)  # a zoom on one axis is not carried to another
    with pytest.raises(ValueError, match="x-axis must be one of"):
        make_figure(cache, "train/loss", [run], x_axis="time")


def _panel(update) -> dict:
    """The plotly figure of a panel's payload (a PlotData, or an update carrying one and a label)."""
    return json.loads((update["value"] if isinstance(update, dict) else update).plot)


def test_panels_redraw_only_what_changed_and_the_poll_reports_it(ctx):
    run = ctx.store.create_run("sar-baseline", "sar", make_config("sar-baseline", "smoke").to_dict())
    _log_losses(ctx.store, run, range(5))
    ctx.store.log_metrics(run, 5, 1, "val", {"psnr": 20.0, "ssim": 0.5})
    state = TrainSession()
    views = [""] * PANEL_SLOTS
    out = poll(ctx, state, "", "newest", [run], 0.0, False, 3, "", views, run)
    # The SAR defaults first, three panels (the Panels choice), each labelled with its metric and shown.
    assert [u["label"] for u in out["plots"][:3]] == ["train/loss", "val/psnr", "val/ssim"]
    assert out["columns"][:3] == [gr.update(visible=True)] * 3
    assert out["plots"][3:] == [gr.skip()] * 9 and out["columns"][3:] == [gr.skip()] * 9  # never shown
    assert (
        out["note"]
        == "*4 metrics match · showing the first 3; 1 more match — refine the search or show more panels*"
    )
    psnr = _panel(out["plots"][1])
    assert psnr["data"][0]["meta"] == run and psnr["layout"]["yaxis"]["title"]["text"] == "val/psnr"
    assert out["caption"].startswith("*train/loss: 5 points")
    again = poll(ctx, state, "", "newest", [run], 0.0, False, 3, "", views, run)
    assert again["plots"][:3] == [gr.skip()] * 3 and again["table"] == gr.skip()
    assert again["columns"] == [gr.skip()] * PANEL_SLOTS and again["note"] == gr.skip()
    ctx.store.log_metrics(run, 6, 1, "train", {"loss": 0.1})  # only train/loss changed
    third = poll(ctx, state, "", "newest", [run], 0.0, False, 3, "", views, run)
    assert type(third["plots"][0]).__name__ == "PlotData" and third["plots"][1:3] == [gr.skip()] * 2
    assert third["cancel"] == gr.skip()  # a queued run stays cancellable: nothing to change
    ctx.store.set_status(run, "completed")
    fourth = poll(ctx, state, "", "newest", [run], 0.0, False, 3, "", views, run)
    assert fourth["cancel"] == gr.update(interactive=False)  # Cancel is disabled for a finished run
    assert fourth["resume"] == gr.skip()  # a completed run has nothing to resume: Resume run stays disabled
    ctx.store.set_status(run, "failed", "trainer process 1 is gone (killed or crashed)")
    fifth = poll(ctx, state, "", "newest", [run], 0.0, False, 3, "", views, run)
    assert fifth["resume"] == gr.update(interactive=True)  # a killed run: Resume run (the /resume endpoint)
    assert default_panels("sar")[:3] == ["train/loss", "val/psnr", "val/ssim"]


def test_the_metric_search_fills_the_grid_with_what_matches(ctx):
    run = ctx.store.create_run("sar-baseline", "sar", make_config("sar-baseline", "smoke").to_dict())
    _log_losses(ctx.store, run, range(3))
    ctx.store.log_metrics(run, 3, 1, "val", {"psnr": 20.0, "ssim": 0.5, "loss": 0.2})
    ctx.store.log_metrics(run, 3, 1, "sys", {"cpu_percent": 50.0, "memory_mb": 900.0})
    state = TrainSession()
    views = [""] * PANEL_SLOTS
    first = refresh_panels(ctx, state, [run], "", 12, 0.0, False, views, force=True)
    assert first.plan.metrics == (
        "train/loss",
        "val/psnr",
        "val/ssim",
        "val/epi",  # a SAR default, waiting for its first point
        "val/loss",
        "sys/cpu_percent",
        "sys/memory_mb",
    )
    assert first.columns == [gr.update(visible=True)] * 7 + [gr.update(visible=False)] * 5
    assert "No points of val/epi yet" in json.dumps(_panel(first.plots[3])["layout"]["annotations"])
    # Searching for the resource use: two panels, in the slots the others had; the rest are hidden.
    found = refresh_panels(ctx, state, [run], "^sys/", 12, 0.0, False, views, force=False)
    assert found.plan.metrics == ("sys/cpu_percent", "sys/memory_mb")
    assert [u["label"] for u in found.plots[:2]] == ["sys/cpu_percent", "sys/memory_mb"]
    assert _panel(found.plots[1])["layout"]["yaxis"]["title"]["text"] == "sys/memory_mb"
    assert found.columns[:2] == [gr.skip()] * 2  # shown already
    assert found.columns[2:7] == [gr.update(visible=False)] * 5 and found.columns[7:] == [gr.skip()] * 5
    assert found.note == "*2 metrics match*"
    none = refresh_panels(ctx, state, [run], "accuracy", 12, 0.0, False, views, force=False)
    assert none.plan.metrics == () and none.columns[:2] == [gr.update(visible=False)] * 2
    assert none.caption == none.note == "*no logged metric matches 'accuracy'*"
    empty = refresh_panels(ctx, state, [], "", 12, 0.0, False, views, force=False)
    assert empty.plan.metrics == ("train/loss", "val/loss")  # waiting panels, and a line saying why
    assert empty.note == "*Choose runs to plot: a panel per metric they log appears here.*"
    assert "Choose runs to plot" in json.dumps(_panel(empty.plots[0])["layout"]["annotations"])
    with pytest.raises(ValueError, match="Panels must be a whole number from 1 to 12"):
        refresh_panels(ctx, state, [run], "", 13, 0.0, False, views, force=True)


def test_panels_follow_the_plotted_runs_to_another_domain(ctx):
    """Issue 19: the panels kept a SAR metric (val/psnr) after the plotted runs changed to fragment runs. The
    same session, once with a SAR run plotted and then with a fragment run only: no SAR panel stays."""
    sar = ctx.store.create_run("sar-baseline", "sar", make_config("sar-baseline", "smoke").to_dict())
    frag = ctx.store.create_run("fragment-dae", "fragments", make_config("fragment-dae", "smoke").to_dict())
    for run in (sar, frag):
        _log_losses(ctx.store, run, range(3))
    ctx.store.log_metrics(sar, 3, 1, "val", {"psnr": 20.0, "ssim": 0.5})
    ctx.store.log_metrics(frag, 3, 1, "val", {"accuracy": 0.9, "loss": 0.3})
    state, views = TrainSession(), [""] * PANEL_SLOTS
    before = refresh_panels(ctx, state, [sar], "", 12, 0.0, False, views, force=True)
    assert "val/psnr" in before.plan.metrics
    after = refresh_panels(ctx, state, [frag], "", 12, 0.0, False, views, force=False)
    assert after.plan.metrics[:2] == ("train/loss", "val/loss") and "val/accuracy" in after.plan.metrics
    assert not [m for m in after.plan.metrics if m in ("val/psnr", "val/ssim", "val/epi")], after.plan.metrics
    shown = [_panel(p)["layout"]["yaxis"]["title"]["text"] for p in after.plots if p != gr.skip()]
    assert not [t for t in shown if "psnr" in t or "ssim" in t], shown


def test_each_epoch_writes_one_log_line_with_loss_metrics_and_time(tmp_path, caplog):
    import logging

    from trainers.training.loop import train

    cfg = make_config("fragment-dae", "smoke", epochs=2, data="fragments:python,max_files=6")
    with RunStore(tmp_path / "runs") as store, caplog.at_level(logging.INFO, logger="trainers.training.loop"):
        result = train(cfg, store)
        run = store.get_run(result.run_id)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert len(lines) == 2 and lines[0].startswith("epoch 1/2 · step ") and lines[1].startswith("epoch 2/2")
    assert "train loss " in lines[0] and "accuracy_corrupted ↑ " in lines[0] and lines[0].endswith("s/epoch")
    assert run.steps_per_epoch and result.step == 2 * run.steps_per_epoch


def test_checkpoint_choices_offer_best_and_last_of_each_run(ctx):
    from models import create_model
    from trainers.runs import checkpoints

    run_id = ctx.store.create_run("fragment-dae", "fragments", {}, status="completed")
    model = create_model("fragment-dae", channels=[8, 16, 16])
    for kind in ("best", "last"):
        checkpoints.save_checkpoint(ctx.store.run_dir(run_id), kind, model, state={"step": 1, "epoch": 1})
    ctx.store.set_labels(run_id, name="first")
    ours = [(label, folder) for label, folder in ctx.checkpoint_choices("fragments") if run_id in label]
    assert [label for label, _ in ours] == [
        f"first · {run_id} · fragment-dae · best · completed",
        f"first · {run_id} · fragment-dae · last · completed",
    ]
    assert [value for _, value in ours] == [f"{run_id}/best", f"{run_id}/last"]  # ids, not server paths


@pytest.mark.parametrize(
    ("seconds", "text"), [(None, "–"), (0.4, "0 s"), (42, "42 s"), (185, "3m 05s"), (3720, "1h 02m")]
)
def test_format_elapsed(seconds, text):
    assert format_elapsed(seconds) == text


def test_cancel_log_and_curves_need_a_run(ctx):
    with pytest.raises(ValueError, match="No run selected"):
        cancel_run(ctx, "")
    with pytest.raises(ValueError, match="no run with id 'nope'"):
        cancel_run(ctx, "nope")
    assert log_tail(ctx, None) == ""
    # A run trained from the command line has no job log; say why rather than "not started".
    cli_run = ctx.store.create_run("fragment-dae", "fragments", {}, status="completed")
    assert "started outside the studio" in log_tail(ctx, cli_run)
    with pytest.raises(ValueError, match="No metric chosen"):
        check_curve_request("", ["a"])
    assert check_curve_request("val/psnr", "a") == ("val/psnr", ["a"])


def test_preset_summary_lists_each_variants_preset_values():
    text = preset_summary(["fragment-dae", "sar-baseline"], "smoke")
    smoke = make_config("sar-baseline", "smoke")
    assert "`fragment-dae`" in text and f"batch {smoke.batch_size}" in text and smoke.data in text
    assert preset_summary([], "smoke") == ""


def test_keep_view_carries_the_pages_zoom_over_only_for_the_same_uirevision(store):
    run = store.create_run("fragment-dae", "fragments", {})
    _log_losses(store, run, range(10))
    cache = CurveCache()
    cache.update(store, [run])
    fig = make_figure(cache, "train/loss", [run], 0.0, True)
    same = json.dumps({"uirevision": fig.layout.uirevision, "x": [2, 5], "y": None})
    zoomed = keep_view(fig, same)
    assert list(zoomed.layout.xaxis.range) == [2, 5] and zoomed.layout.xaxis.autorange is False
    assert zoomed.layout.yaxis.range is None  # y was not zoomed: it keeps autoscaling

    for view in (
        "",
        "not json",
        json.dumps({"uirevision": curve_uirevision("train/loss", [run], False), "x": [2, 5]}),  # other axis
        json.dumps({"uirevision": fig.layout.uirevision, "x": [3, "a"]}),
        json.dumps({"uirevision": fig.layout.uirevision, "x": [3, 3]}),
    ):
        fresh = make_figure(cache, "train/loss", [run], 0.0, True)
        assert keep_view(fresh, view).layout.xaxis.range is None, view
