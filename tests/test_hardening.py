"""Faults and bad inputs from the hardening campaign (issue 12), each replayed as a regression test.

The memory bombs have their own file (tests/test_memory_bombs.py), as they measure a subprocess's peak.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models import create_model
from studio.context import StudioContext
from trainers.runs import checkpoints
from trainers.runs.store import RunStore

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def ctx(tmp_path):
    with RunStore(tmp_path / "runs") as store:
        yield StudioContext(runs_dir=tmp_path / "runs", store=store)


def _model():
    torch.manual_seed(0)
    return create_model("fragment-dae", channels=[8, 16, 16])


def test_resume_takes_the_best_value_of_a_best_checkpoint_saved_after_last(tmp_path):
    # The campaign's case: killed after best-N was saved, before last-N; last holds the older best value.
    run = tmp_path / "run"
    model = _model()
    checkpoints.save_checkpoint(run, "last", model, state={"step": 100, "epoch": 1, "best": 0.05174})
    checkpoints.save_checkpoint(run, "best", model, state={"step": 200, "epoch": 2, "best": 0.02908})
    last = checkpoints.checkpoint_path(run, "last")
    state = checkpoints.resume_state(last)
    assert state["best"] == 0.02908 and state["step"] == 100  # resumes from last, with the real best value
    # The usual order (best, then last at the same or a later step): last's own value stands.
    checkpoints.save_checkpoint(run, "last", model, state={"step": 300, "epoch": 3, "best": 0.01})
    assert checkpoints.resume_state(checkpoints.checkpoint_path(run, "last"))["best"] == 0.01


def test_resume_with_a_broken_best_link_keeps_the_last_value(tmp_path):
    run = tmp_path / "run"
    checkpoints.save_checkpoint(run, "last", _model(), state={"step": 100, "best": 0.5})
    link = run / checkpoints.CHECKPOINTS_DIR / "best"
    link.symlink_to("/etc")
    assert checkpoints.resume_state(checkpoints.checkpoint_path(run, "last"))["best"] == 0.5


@pytest.mark.parametrize("target", ["best-999", "/etc"])
def test_the_app_builds_with_a_broken_or_escaping_link(ctx, target):
    from studio.app import build_app
    from studio.views.common import dropdown_update

    run_id = ctx.store.create_run(
        "fragment-dae", "fragments", {"variant": "fragment-dae"}, status="completed"
    )
    checkpoints.save_checkpoint(ctx.store.run_dir(run_id), "last", _model(), state={"step": 1})
    (ctx.store.run_dir(run_id) / checkpoints.CHECKPOINTS_DIR / "best").symlink_to(target)
    demo = build_app(ctx)  # the campaign's app exited here with a ValueError
    assert demo is not None
    update = dropdown_update(ctx, "fragments")
    assert [label.split(" · ")[2] for label, _ in update["choices"] if label.startswith(run_id)] == ["last"]


def test_trainers_get_no_hub_token(tmp_path, monkeypatch):
    from studio.jobs import JobManager

    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    monkeypatch.setenv("HUGGING_FACE_HUB_TOKEN", "hf_secret")
    jobs = JobManager(tmp_path / "runs", cpu_slots=1)
    try:
        env = jobs.backend._environment("cpu")  # the local backend, the default
    finally:
        jobs.shutdown()
    assert "HF_TOKEN" not in env and "HUGGING_FACE_HUB_TOKEN" not in env
    assert "hf_secret" not in json.dumps(env)


def test_eval_of_an_oversized_checkpoint_is_a_message_not_a_traceback(tmp_path):
    folder = tmp_path / "ck"
    _model().save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config["channels"] = [1000000000]
    (folder / "config.json").write_text(json.dumps(config))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-m", "trainers", "eval", str(folder)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert out.returncode != 0
    assert "Traceback" not in out.stderr, out.stderr[-2000:]
    assert "parameters" in out.stderr + out.stdout


def test_space_hub_load_never_reads_a_server_folder(ctx, monkeypatch):
    from studio.views import hub
    from trainers.hub import push as hub_lib

    seen: list[str] = []

    def fake_snapshot(repo_id, **kwargs):
        seen.append(repo_id)
        raise OSError("offline")

    monkeypatch.setattr(hub_lib, "snapshot_download", fake_snapshot)
    ctx.space = True
    existing = Path(__file__).resolve().parents[1] / "assets"
    messages = []
    for source in ("assets/sar", "assets/no-such-folder"):
        with pytest.raises((ValueError, FileNotFoundError, OSError)) as err:
            hub.load(ctx, source)
        messages.append(str(err.value))
    assert seen == ["assets/sar", "assets/no-such-folder"]  # both went to the Hub, neither was read here
    assert all(str(existing) not in m for m in messages)
    assert messages[0].replace("sar", "X") == messages[1].replace("no-such-folder", "X")  # nothing revealed
    assert ctx.external == {}


# ---------------------------------------------------------------------------------------------- Space mode
@pytest.mark.parametrize(
    "settings, message",
    [
        ({"data": "sar:n=100000,size=4096"}, "data n is 100000"),
        ({"data": "sar:n=100,size=4096"}, r"SAR patch side\) is 4096"),
        ({"data": "fragments:n=100000"}, "data n is 100000"),
        ({"batch_size": 1000000}, "batch_size is 1000000"),
        ({"max_steps": 10**9}, "max_steps is 1000000000"),
        ({"model": {"channels": [4000, 4000, 4000]}}, "parameters"),
    ],
)
def test_space_limits_refuse_the_campaigns_launches(tmp_path, settings, message):
    from studio.jobs import JobManager, SpaceLimits

    variant = "sar-baseline" if str(settings.get("data", "")).startswith("sar") else "fragment-dae"
    with JobManager(tmp_path / "runs", cpu_slots=1, gpus=[], space_limits=SpaceLimits()) as jobs:
        with pytest.raises(ValueError, match=message):
            jobs.submit(variant, "smoke", **settings)
        assert jobs.store.list_runs() == []


def test_space_bounds_fill_in_and_a_visitor_holds_at_most_n_jobs(tmp_path):
    from studio.jobs import JobManager, SpaceLimits

    limits = SpaceLimits(max_jobs_per_visitor=2)
    fake = tmp_path / "fake-python"
    fake.write_text("#!/bin/sh\nsleep 60\n")
    fake.chmod(0o755)
    with JobManager(tmp_path / "runs", cpu_slots=1, gpus=[], python=str(fake), space_limits=limits) as jobs:
        run_id = jobs.submit("fragment-dae", "smoke", data="fragments:n=50", owner="visitor-a")
        config = jobs.store.get_run(run_id).config
        assert config["max_steps"] == limits.max_steps and "max_files=200" in config["data"]
        jobs.submit("fragment-dae", "smoke", owner="visitor-a")
        with pytest.raises(ValueError, match="you already have 2 jobs queued or running"):
            jobs.submit("fragment-dae", "smoke", owner="visitor-a")
        jobs.submit("fragment-dae", "smoke", owner="visitor-b")  # another visitor is not held back
        for run in jobs.store.list_runs():
            jobs.cancel(run.id)


def test_space_wall_time_limit_stops_the_job_and_says_so(tmp_path):
    import time

    from studio.jobs import JobManager, SpaceLimits

    fake = tmp_path / "fake-python"
    fake.write_text("#!/bin/sh\necho started\nsleep 60\n")
    fake.chmod(0o755)
    limits = SpaceLimits(max_seconds=1.0)
    with JobManager(
        tmp_path / "runs", cpu_slots=1, gpus=[], python=str(fake), poll_interval=0.1, space_limits=limits
    ) as jobs:
        run_id = jobs.submit("fragment-dae", "smoke", owner="v")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not jobs.store.get_run(run_id).is_terminal:
            time.sleep(0.1)
        run = jobs.store.get_run(run_id)
    assert run.status == "cancelled" and run.reason.startswith("Space time limit"), (run.status, run.reason)


def test_space_banner_states_the_limits(tmp_path):
    from studio.app import build_app, make_context

    ctx = make_context(tmp_path / "runs", cpu_slots=1, space=True)
    try:
        demo = build_app(ctx)
        texts = [getattr(b, "value", "") or "" for b in demo.blocks.values()]
        banner = next(t for t in texts if isinstance(t, str) and t.startswith("**Space limits.**"))
        assert ctx.jobs.space_limits.describe() in banner and "10 epochs" in banner
    finally:
        ctx.jobs.shutdown()
        ctx.store.close()


# ------------------------------------------------------------------------------------------------ orphans
LAUNCHER = r"""
import sys, time
from benchmarks.common import exit_cleanly_on_signals
from studio.jobs import JobManager

exit_cleanly_on_signals()
jobs = JobManager(sys.argv[1], cpu_slots=1, gpus=[], python=sys.argv[2], poll_interval=0.1, cancel_grace=2)
try:
    run_id = jobs.submit("fragment-dae", "smoke", max_steps=2)
    while jobs.store.get_run(run_id).pid is None:
        time.sleep(0.05)
    print(jobs.store.get_run(run_id).pid, flush=True)
    time.sleep(600)
finally:
    jobs.shutdown(cancel_running=True)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_an_interrupted_launcher_leaves_no_trainer_running(tmp_path):
    import signal
    import time

    fake = tmp_path / "fake-python"
    fake.write_text("#!/bin/sh\necho training\nsleep 120\n")
    fake.chmod(0o755)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    launcher = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, str(tmp_path / "runs"), str(fake)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        pid = int(launcher.stdout.readline())
        assert _alive(pid)
        launcher.send_signal(signal.SIGTERM)  # what `timeout` does to a benchmark
        assert launcher.wait(30) == 128 + signal.SIGTERM
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(pid), "the trainer outlived its launcher"
        with RunStore(tmp_path / "runs") as store:
            assert [r.status for r in store.list_runs()] == ["cancelled"]
    finally:
        launcher.kill()


def test_an_app_on_a_temporary_runs_folder_cancels_its_jobs_at_shutdown(tmp_path):
    import tempfile

    from studio.app import is_temporary

    assert is_temporary(Path(tempfile.gettempdir()) / "bench" / "runs")
    assert not is_temporary(Path("/srv/studio/runs"))  # (the checkout itself may be cloned under /tmp)


def test_space_logs_are_private_and_show_no_server_paths(tmp_path):
    from studio.jobs import JobManager, SpaceLimits

    fake = tmp_path / "fake-python"
    fake.write_text(f"#!/bin/sh\necho reading {ROOT}/assets/sar and {tmp_path}/runs/x\nsleep 60\n")
    fake.chmod(0o755)
    with JobManager(
        tmp_path / "runs",
        cpu_slots=1,
        gpus=[],
        python=str(fake),
        poll_interval=0.1,
        space_limits=SpaceLimits(),
    ) as jobs:
        run_id = jobs.submit("fragment-dae", "smoke", owner="alice")
        import time

        deadline = time.monotonic() + 20
        while "reading" not in jobs.log_tail(run_id) and time.monotonic() < deadline:
            time.sleep(0.1)
        text = jobs.log_tail(run_id, requester="alice")
        assert "reading <app>/assets/sar and <runs>/x" in text and str(tmp_path) not in text
        with pytest.raises(ValueError, match="private to the visitor who launched it"):
            jobs.log_tail(run_id, requester="mallory")
        jobs.cancel(run_id)
