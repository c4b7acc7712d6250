"""Space privacy by default (issue 19 item 3) without a server: the one ownership rule, the store view every
view resolves run ids through, the anonymous jobs rows, the per-address cap, the time-limit reason, labels at
launch and resume. The same rules through a served Space, with two visitors, are in test_space_visitors.py."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from studio.backends.base import Ended, Job  # noqa: E402
from studio.context import StudioContext  # noqa: E402
from studio.jobs import JobManager, SpaceLimits, check_labels  # noqa: E402
from studio.jobs.policy import NOBODY, OwnershipPolicy, VisibleRuns, client_address  # noqa: E402
from studio.views.train import speed_text  # noqa: E402
from tests.helpers import fake_python, wait_for  # noqa: E402
from trainers.runs.store import RunStore  # noqa: E402


@pytest.fixture
def space(tmp_path):
    """A Space context over a store with a run of visitor a, one of visitor b and one of the CLI (no owner),
    each with a metric row; yields (ctx, {"a": id, "b": id, "cli": id})."""
    store = RunStore(tmp_path / "runs")
    ids = {}
    for who, owner in (("a", "visitor-a"), ("b", "visitor-b"), ("cli", None)):
        run_id = store.create_run(
            "fragment-dae", "fragments", {"variant": "fragment-dae"}, status="completed"
        )
        if owner:
            store.update_run(run_id, owner=owner)
        store.log_metrics(run_id, 1, 0, "train", {"loss": 0.5})
        ids[who] = run_id
    ctx = StudioContext(runs_dir=tmp_path / "runs", store=store, space=True, reference={})
    yield ctx, ids
    store.close()


def test_a_space_visitor_sees_only_their_own_runs_through_the_context_store(space):
    ctx, ids = space
    assert isinstance(ctx.store, VisibleRuns)
    with ctx.acting_as("visitor-a"):
        assert [r.id for r in ctx.store.list_runs()] == [ids["a"]]
        assert ctx.store.get_run(ids["a"]) is not None
        assert ctx.store.get_run(ids["b"]) is None and ctx.store.get_run(ids["cli"]) is None
        rows, _ = ctx.store.metrics_after(0)
        assert {row.run_id for row in rows} == {ids["a"]}
        rows, cursor = ctx.store.metrics_after(0, run_ids=[ids["b"]])
        assert rows == [] and cursor == 0
        assert ctx.store.metric_names([ids["b"]]) == [] and ctx.store.best_metrics(ids["b"]) == {}
        with pytest.raises(ValueError, match="no run with id"):
            ctx.store.set_labels(ids["b"], name="hacked by a")
        with pytest.raises(ValueError, match="no run with id"):
            ctx.store.run_dir(ids["b"])
        assert [v for _, v, _ in ctx.checkpoint_folders("fragments")] == []  # no checkpoint saved yet
    assert ctx.store.store.get_run(ids["b"]).name is None  # nothing was written
    with ctx.acting_as(NOBODY):  # a request whose visitor cannot be told owns nothing
        assert ctx.store.list_runs() == []
    assert len(ctx.store.list_runs()) == 3  # the server itself (no request) sees every run
    ctx.space = False  # a local studio: one user, every run is theirs
    with ctx.acting_as("visitor-a"):
        assert len(ctx.store.list_runs()) == 3


def test_every_view_that_takes_a_run_id_refuses_another_visitors_run(space, tmp_path):
    """The handlers themselves (labels, export, media, resolve a checkpoint, curves, log) answer as for a
    run that does not exist, and change nothing."""
    from studio.views import hub, media
    from studio.views.common import resolve_checkpoint
    from studio.views.train import TrainSession, draw_curves, set_run_labels

    ctx, ids = space
    foreign = ids["b"]
    with ctx.acting_as("visitor-a"):
        with pytest.raises(ValueError, match="no run with id"):
            set_run_labels(ctx, foreign, "hacked by a", "x", "note")
        with pytest.raises(ValueError, match="no run with id"):
            hub.export_metrics(ctx, [ids["a"], foreign], "csv")
        with pytest.raises(ValueError, match="no run (with id|matches)"):  # typed names are matched too
            media.media_choices(ctx, foreign)
        with pytest.raises(ValueError, match="unknown checkpoint|no run"):
            resolve_checkpoint(ctx, f"{foreign}/best", "fragments")
        with pytest.raises(ValueError, match="no run with id"):
            draw_curves(ctx, TrainSession(), ["train/loss"], [foreign], 0.0, False, [""], True, {})
        assert [r for _, r in media.media_runs(ctx)] == [] and foreign not in str(hub.metric_runs(ctx))
        # The visitor's own run is theirs to label and export.
        assert set_run_labels(ctx, ids["a"], "mine", "", "").startswith("Saved: mine")
        _, path = hub.export_metrics(ctx, [ids["a"]], "csv")
        if zipfile.is_zipfile(path):  # the metrics with a settings sidecar
            with zipfile.ZipFile(path) as archive:
                data = b"".join(archive.read(name) for name in archive.namelist())
        else:
            data = Path(path).read_bytes()
        assert b"0.5" in data  # the run's one logged loss
    assert ctx.store.store.get_run(foreign).name is None


def test_client_address_takes_the_nearest_public_hop_behind_a_private_proxy():
    def request(peer, forwarded=None):
        headers = {"x-forwarded-for": forwarded} if forwarded is not None else {}
        return SimpleNamespace(client=SimpleNamespace(host=peer), headers=headers)

    # Behind a Space's proxy (a private peer): the client's forged left entry does not count.
    assert client_address(request("10.16.3.80", "6.6.6.6, 81.2.69.160, 10.0.0.2")) == "81.2.69.160"
    assert client_address(request("10.16.3.80", "")) == "10.16.3.80"
    # A public peer is the client itself, whatever header it sends.
    assert client_address(request("9.9.9.9", "93.184.216.34")) == "9.9.9.9"
    assert client_address(SimpleNamespace()) is None


@pytest.fixture
def space_jobs(tmp_path):
    """A Space's job manager whose trainers are a shell that sleeps (they hold their queue places)."""
    python = fake_python(tmp_path, "echo started\nsleep 60\n")
    limits = SpaceLimits(max_jobs_per_visitor=2, max_jobs_per_address=2)
    jobs = JobManager(
        tmp_path / "runs", cpu_slots=1, gpus=[], python=python, space_limits=limits, poll_interval=0.1
    )
    yield jobs
    jobs.shutdown(cancel_running=True)


def test_jobs_rows_show_other_visitors_only_as_anonymous_queue_entries(space_jobs):
    a1 = space_jobs.submit("fragment-dae", "smoke", owner="visitor-a", name="secret name", note="secret note")
    a2 = space_jobs.submit("fragment-dae", "smoke", owner="visitor-a", data="fragments:python,max_files=5")
    wait_for(lambda: space_jobs.store.get_run(a1).status == "running", 20, "the first job to start")
    mine = {row["id"]: row for row in space_jobs.jobs("visitor-a")}
    assert set(mine) == {a1, a2} and mine[a1]["name"] == "secret name" and mine[a1]["note"] == "secret note"
    theirs = space_jobs.jobs("visitor-b")
    assert [(r["id"], r["status"], r["anonymous"]) for r in theirs] == [
        ("", "queued", True),
        ("", "running", True),
    ]
    assert theirs[0]["queue_position"] == 1 and theirs[0]["queue_wait_s"] == 300.0
    text = repr(theirs)
    assert (
        "secret" not in text and a1 not in text and "visitor-a" not in text and "fragments:python" not in text
    )
    with pytest.raises(ValueError, match="log of run .* is private"):
        space_jobs.log_tail(a1, requester="visitor-b")
    with pytest.raises(ValueError, match="no run with id"):
        space_jobs.resume(a1, requester="visitor-b")
    assert len(space_jobs.jobs()) == 2  # the server itself sees both in full


def test_the_per_visitor_cap_also_holds_per_client_address(space_jobs):
    for _ in range(2):
        space_jobs.submit("fragment-dae", "smoke", owner="session-1", address="81.2.69.160")
    with pytest.raises(ValueError, match="per visitor"):
        space_jobs.submit("fragment-dae", "smoke", owner="session-1", address="81.2.69.160")
    # A new client session from the same address does not get two more jobs.
    with pytest.raises(ValueError, match="your address already has 2 jobs"):
        space_jobs.submit("fragment-dae", "smoke", owner="session-2", address="81.2.69.160")
    assert len(space_jobs.store.list_runs()) == 2
    space_jobs.submit("fragment-dae", "smoke", owner="session-3", address="9.9.9.9")  # another address


def test_a_job_stopped_at_the_time_limit_says_so_even_when_its_trainer_recorded_a_cancel(space_jobs):
    store = space_jobs.store
    run_id = store.create_run("fragment-dae", "fragments", {}, status="running")
    # What the trainer writes when the stop signal reaches it during a step.
    store.set_status(run_id, "cancelled", "cancelled (signal during a training step)")
    job = Job(run_id, pid=None, slot="cpu", log_path=None, cancel_requested=True, time_limited=True)
    space_jobs._reattacher.finish(job, Ended("exit code 0", 0))
    run = store.get_run(run_id)
    assert run.status == "cancelled" and run.reason.startswith("Space time limit: stopped after 300 s"), (
        run.reason
    )
    plain = store.create_run("fragment-dae", "fragments", {}, status="running")
    store.set_status(plain, "cancelled", "cancelled (signal during a training step)")
    space_jobs._reattacher.finish(
        Job(plain, None, "cpu", None, cancel_requested=True), Ended("exit code 0", 0)
    )
    assert (
        store.get_run(plain).reason == "cancelled (signal during a training step)"
    )  # a visitor's own cancel


def test_an_eta_past_the_space_limit_is_flagged():
    row = {"status": "running", "steps_per_s": 2.0, "eta_s": 19 * 60, "elapsed": 30.0, "time_limit_s": 300.0}
    assert "⚠ past the 5m 00s limit" in speed_text(row)
    assert "⚠" not in speed_text({**row, "eta_s": 60.0})
    assert "⚠" not in speed_text({k: v for k, v in row.items() if k != "time_limit_s"})  # not a Space


def test_labels_are_checked_before_launch_and_stored_with_the_run(tmp_path):
    assert check_labels(" lr sweep ", "a, b, a", "") == {"name": "lr sweep", "tags": ["a", "b"]}
    for bad, message in (
        (("x\ny", "", ""), "one line"),
        (("n" * 81, "", ""), "at most 80"),
        (("", "a b", ""), "tag"),
    ):
        with pytest.raises(ValueError, match=message):
            check_labels(*bad)
    python = fake_python(tmp_path, "sleep 60\n")
    with JobManager(tmp_path / "runs", cpu_slots=1, gpus=[], python=python) as jobs:
        with pytest.raises(ValueError, match="one line"):
            jobs.submit("fragment-dae", "smoke", name="two\nlines")
        assert jobs.store.list_runs() == []  # a bad label launches nothing
        run_id = jobs.submit("fragment-dae", "smoke", name="baseline", tags="sweep, lr", note="why")
        run = jobs.store.get_run(run_id)
        assert (run.name, run.tags, run.note) == ("baseline", ["sweep", "lr"], "why")
        jobs.cancel(run_id)


def test_the_policy_is_one_rule_off_and_on_a_space():
    run = SimpleNamespace(id="r", owner="visitor-a")
    local, space = OwnershipPolicy(), OwnershipPolicy(SpaceLimits())
    assert local.may_see(run, "visitor-b") and space.may_see(run, None)  # a local studio; the server itself
    assert space.may_see(run, "visitor-a") and not space.may_see(run, "visitor-b")
    assert not space.may_see(run, NOBODY)
    with pytest.raises(PermissionError, match="someone else"):
        space.check_may_act(run, "visitor-b", "cancel")


def test_the_train_tabs_media_list_follows_new_media_with_run_names(space):
    """Issue 19: Train → Media listed runs once at start (empty until ↻) and by id; now each refresh gives
    the runs with media by name, and nothing when nothing changed."""
    import json

    import gradio as gr

    from studio.views.train.media import media_choices_update

    ctx, ids = space
    with ctx.acting_as("visitor-a"):
        update, shown = media_choices_update(ctx, ())
        assert shown == () and update == gr.skip()  # no media yet, as the page already shows
        media = ctx.runs_dir / ids["a"] / "media"
        media.mkdir(parents=True)
        (media / "index.json").write_text(json.dumps({"entries": [{"step": 4, "items": []}]}))
        ctx.store.set_labels(ids["a"], name="alice's run")
        update, shown = media_choices_update(ctx, shown)
        assert [label.split(" · ")[0] for label, _ in update["choices"]] == ["alice's run"]
        assert [value for _, value in shown] == [ids["a"]]
        again, _ = media_choices_update(ctx, shown)
        assert again == gr.skip() and update != gr.skip()  # unchanged: nothing is sent to the page
