"""The studio's job manager with real processes.

The scheduling, cancel, crash and restart behaviour is checked against the real trainer CLI (fragments smoke
runs, the cheapest domain). Where a behaviour needs a trainer that misbehaves on purpose (ignores SIGTERM,
crashes with a traceback) or a GPU this machine lacks, `python=` points the manager at a small shell script
that plays the trainer: it is still a real process group that is signalled and watched.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from studio.backends.local import LOG_NAME, _cmdline, _proc_state  # noqa: E402
from studio.jobs import JobManager  # noqa: E402
from tests.helpers import fake_python, wait_for  # noqa: E402
from trainers.runs import checkpoints  # noqa: E402
from trainers.runs.store import RunStore  # noqa: E402
from trainers.settings import make_config  # noqa: E402

FAST = {"poll_interval": 0.1}


@pytest.fixture(autouse=True)
def one_thread_per_job(monkeypatch: pytest.MonkeyPatch) -> None:
    """Jobs inherit these (the manager only fills them in when unset). On a shared 2-core machine a trainer
    with 2 OpenMP threads that spin in barriers runs several times slower than with one."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MKL_NUM_THREADS", "1")


def group_gone(pgid: int) -> bool:
    """No live (non-zombie) process is left in the group."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
                return False
    return True


def statuses(store: RunStore, *ids: str) -> list[str]:
    return [store.get_run(i).status for i in ids]


def trainer_started(store: RunStore, run_id: str) -> bool:
    """The trainer itself is training: it logged a train loss while the run is running."""
    run = store.get_run(run_id)
    return run.status == "running" and bool(store.metric_series(run_id, "train/loss"))


# --- the real trainer CLI -------------------------------------------------------------------------------


@pytest.mark.timeout(240)
def test_two_cpu_jobs_run_at_once_queue_waits_cancel_and_kill(tmp_path: Path, managers: list) -> None:
    jm = JobManager(tmp_path / "runs", cpu_slots=2, gpus=[], **FAST)
    managers.append(jm)
    store = jm.store
    long_run = {"epochs": 50, "batch_size": 16, "max_steps": 5000}
    a = jm.submit("fragment-dae", "smoke", **long_run)
    b = jm.submit("fragment-dae", "smoke", seed=1, **long_run)
    c = jm.submit("fragment-dae", "smoke", seed=2, **long_run)
    assert statuses(store, a, b, c)[2] == "queued"

    # Both trainers are training at the same moment, seen through the store; the third waits for a slot.
    wait_for(
        lambda: trainer_started(store, a) and trainer_started(store, b), 150, "two runs training at once"
    )
    assert statuses(store, a, b) == ["running", "running"]
    ra, rb = store.get_run(a), store.get_run(b)
    assert ra.pid != rb.pid and ra.device == rb.device == "cpu, fp32"
    assert store.get_run(c).status == "queued" and store.get_run(c).pid is None
    assert sorted(jm.running_jobs()) == sorted([a, b])
    env_a = Path(f"/proc/{ra.pid}/environ").read_bytes().split(b"\0")
    assert b"CUDA_VISIBLE_DEVICES=" in env_a  # pinned to no GPU

    # A queued run is cancelled at once and never starts.
    message = jm.cancel(c)
    assert "before it started" in message
    assert store.get_run(c).status == "cancelled"

    # Cancel: SIGTERM, the trainer finishes its step, saves `last` and records `cancelled` itself.
    message = jm.cancel(a)
    assert "SIGTERM" in message
    wait_for(lambda: store.get_run(a).status == "cancelled", 60, "the cancelled run to end")
    assert store.get_run(a).reason.startswith("cancelled at step")
    assert checkpoints.checkpoint_path(tmp_path / "runs" / a, "last") is not None
    wait_for(lambda: _proc_state(ra.pid) == "gone", 10, "the cancelled trainer to exit")

    # A trainer killed outright (OOM killer, kill -9) is marked failed with its exit code and log tail.
    os.killpg(rb.pid, signal.SIGKILL)
    wait_for(lambda: store.get_run(b).status == "failed", 20, "the killed run to be marked failed")
    reason = store.get_run(b).reason
    assert "trainer exited with code -9 (SIGKILL)" in reason
    assert "last log lines:" in reason

    time.sleep(0.5)  # free slots must not revive the cancelled queued run
    assert store.get_run(c).status == "cancelled" and not (tmp_path / "runs" / c / LOG_NAME).exists()
    assert jm.running_jobs() == []
    assert "already ended (cancelled)" in jm.cancel(a)
    rows = {row["id"]: row for row in jm.jobs()}
    assert rows[b]["status"] == "failed" and rows[b]["step"] >= 5 and rows[b]["elapsed"] > 0
    assert "[studio" in jm.log_tail(a) and LOG_NAME in store.get_run(a).log_path


@pytest.mark.timeout(240)
def test_restarted_app_reattaches_a_running_job_and_its_curve_goes_on(tmp_path: Path, managers: list) -> None:
    runs = tmp_path / "runs"
    first = JobManager(runs, cpu_slots=1, gpus=[], **FAST)
    managers.append(first)
    run_id = first.submit("fragment-dae", "smoke", epochs=1, batch_size=16, max_steps=25)
    wait_for(lambda: trainer_started(first.store, run_id), 150, "the trainer to log its first points")
    pid = first.store.get_run(run_id).pid
    # Pause the trainer over the restart so that a fast machine cannot finish it before the new app looks.
    os.killpg(pid, signal.SIGSTOP)
    try:
        first.shutdown()  # the app goes away; the job does not
        assert _proc_state(pid) == "alive"

        second = JobManager(runs, cpu_slots=1, gpus=[], **FAST)
        managers.append(second)
        store = second.store
        assert second.running_jobs() == [run_id]
        assert store.get_run(run_id).status == "running"
        _, cursor = store.metrics_after(0, run_ids=[run_id])
        seen_step = max(step for step, _ in store.metric_series(run_id, "train/loss"))
        waiting = second.submit("fragment-dae", "smoke")
        time.sleep(0.5)
        assert store.get_run(waiting).status == "queued"  # the re-attached job holds the only CPU slot
        second.cancel(waiting)
    finally:
        os.killpg(pid, signal.SIGCONT)

    wait_for(lambda: store.get_run(run_id).status != "running", 150, "the re-attached run to finish")
    run = store.get_run(run_id)
    assert run.status == "completed", run.reason
    new_rows, _ = store.metrics_after(cursor, run_ids=[run_id])
    new_train_steps = [r.step for r in new_rows if r.key == "train/loss"]
    assert new_train_steps and min(new_train_steps) > seen_step and max(new_train_steps) == 25
    assert any(r.key == "val/accuracy_corrupted" for r in new_rows)
    wait_for(lambda: second.running_jobs() == [], 5, "the manager to notice the exit")
    row = next(r for r in second.jobs() if r["id"] == run_id)
    assert row["metric"] == "val/accuracy_corrupted"
    assert row["best"] == pytest.approx(store.best_metrics(run_id)["accuracy_corrupted"])


# --- stand-in trainers: misbehaviour and GPUs -------------------------------------------------------------


def test_a_crashing_trainer_is_failed_with_exit_code_and_log_tail(tmp_path: Path, managers: list) -> None:
    python = fake_python(
        tmp_path,
        """
        echo "loading data"
        echo "Traceback (most recent call last):"
        echo "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB" >&2
        exit 3
        """,
    )
    jm = JobManager(tmp_path / "runs", gpus=[], python=python, **FAST)
    managers.append(jm)
    run_id = jm.submit("fragment-dae", "smoke")
    wait_for(lambda: jm.store.get_run(run_id).status == "failed", 20, "the crash to be recorded")
    reason = jm.store.get_run(run_id).reason
    assert reason.startswith("trainer exited with code 3; last log lines:")
    assert reason.endswith("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB")
    assert "loading data" in jm.log_tail(run_id)
    assert (
        jm.log_tail(run_id, n=1) == "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
    )


def test_cancel_escalates_to_sigkill_when_sigterm_is_ignored(tmp_path: Path, managers: list) -> None:
    python = fake_python(tmp_path, "trap '' TERM\necho stubborn\nsleep 60\n")
    jm = JobManager(tmp_path / "runs", gpus=[], python=python, cancel_grace=0.5, **FAST)
    managers.append(jm)
    run_id = jm.submit("fragment-dae", "smoke")
    wait_for(lambda: "stubborn" in jm.log_tail(run_id), 20, "the stand-in trainer to start")
    pid = jm.store.get_run(run_id).pid
    started = time.monotonic()
    jm.cancel(run_id)
    time.sleep(0.3)
    assert _proc_state(pid) == "alive"  # SIGTERM ignored, still within the grace period
    wait_for(lambda: jm.store.get_run(run_id).status == "cancelled", 20, "the SIGKILL")
    assert time.monotonic() - started >= 0.5
    assert "SIGKILL after the grace period" in jm.store.get_run(run_id).reason
    wait_for(lambda: group_gone(pid), 10, "the whole process group, sleep included, to be gone")


def test_one_job_per_gpu_pinned_with_cuda_visible_devices(
    tmp_path: Path, managers: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS")
    python = fake_python(
        tmp_path, 'echo "CVD=[$CUDA_VISIBLE_DEVICES] OMP=[$OMP_NUM_THREADS] ARGS=$*"\nsleep 60\n'
    )
    jm = JobManager(tmp_path / "runs", cpu_slots=4, gpus=[0, 1], python=python, **FAST)
    managers.append(jm)
    ids = [jm.submit("fragment-dae", "smoke", seed=i) for i in range(3)]
    cpu = jm.submit("fragment-dae", "smoke", device="cpu")
    wait_for(lambda: all("CVD=" in jm.log_tail(i) for i in (*ids[:2], cpu)), 20, "three jobs to start")
    time.sleep(0.3)
    assert jm.store.get_run(ids[2]).status == "queued"  # both GPUs busy: FIFO wait
    pins = sorted(jm.log_tail(i).split("CVD=[")[1][0] for i in ids[:2])
    assert pins == ["0", "1"]
    for i in ids[:2]:
        assert "--device cuda" in jm.log_tail(i) and f"--run-id {i}" in jm.log_tail(i)
    assert "CVD=[]" in jm.log_tail(cpu) and "--device cpu" in jm.log_tail(cpu)
    cores = os.cpu_count() or 1
    assert f"OMP=[{max(1, cores // 2)}]" in jm.log_tail(ids[0])  # the cores are shared by the GPU jobs
    assert f"OMP=[{max(1, cores // 4)}]" in jm.log_tail(cpu)  # ... and by the CPU slots

    jm.cancel(ids[0])  # its GPU goes to the next queued run
    wait_for(lambda: "CVD=" in jm.log_tail(ids[2]), 20, "the queued run to get the freed GPU")
    assert jm.store.get_run(ids[0]).status == "cancelled"
    assert jm.store.get_run(ids[2]).device == jm.store.get_run(ids[0]).device


def test_restart_fails_runs_whose_process_is_gone_and_reattached_jobs_can_be_cancelled(
    tmp_path: Path, managers: list
) -> None:
    runs = tmp_path / "runs"
    python = fake_python(tmp_path, "echo step 1\nsleep 60\n")
    first = JobManager(runs, gpus=[], python=python, **FAST)
    managers.append(first)
    alive = first.submit("fragment-dae", "smoke")
    wait_for(lambda: "step 1" in first.log_tail(alive), 20, "the stand-in trainer to start")
    first.shutdown()

    # A run the previous app was running whose process died while no app watched it.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    first_store = RunStore(runs)
    gone = first_store.create_run("fragment-dae", "fragments", make_config("fragment-dae", "smoke").to_dict())
    first_store.set_status(gone, "running")
    log_path = runs / gone / LOG_NAME
    log_path.parent.mkdir(parents=True)
    log_path.write_text("epoch 1\nKilled\n")
    first_store.update_run(gone, pid=dead.pid, host=socket.gethostname(), log_path=str(log_path))
    first_store.close()

    second = JobManager(runs, gpus=[], python=python, cancel_grace=5.0, **FAST)
    managers.append(second)
    failed = second.store.get_run(gone)
    assert failed.status == "failed"
    assert (
        failed.reason
        == f"trainer process {dead.pid} is gone (app restarted?); last log lines: epoch 1 | Killed"
    )
    assert second.running_jobs() == [alive]

    pid = second.store.get_run(alive).pid
    assert "SIGTERM" in second.cancel(alive)
    wait_for(lambda: second.store.get_run(alive).status == "cancelled", 20, "the re-attached job to stop")
    assert "stopped by SIGTERM" in second.store.get_run(alive).reason
    wait_for(lambda: _proc_state(pid) == "gone", 10, "the process to be reaped")


# --- validation and bookkeeping (no processes) ----------------------------------------------------------


@pytest.mark.parametrize(
    ("variant", "settings", "error", "message"),
    [
        ("no-such-variant", {}, ValueError, "unknown variant"),
        ("fragment-dae", {"preset": "huge"}, ValueError, "unknown preset"),
        ("fragment-dae", {"epochs": 0}, ValueError, "epochs must be a whole number >= 1"),
        ("fragment-dae", {"epochs": 1.5}, ValueError, "epochs must be a whole number"),
        ("fragment-dae", {"lr": "fast"}, ValueError, "learning rate must be a positive number"),
        ("fragment-dae", {"lr": -1.0}, ValueError, "learning rate must be a positive number"),
        ("fragment-dae", {"max_steps": 0}, ValueError, "max_steps must be a whole number >= 1"),
        ("fragment-dae", {"colour": "red"}, ValueError, "unknown run setting 'colour'"),
        ("fragment-dae", {"patience": 1.5}, ValueError, "patience must be a whole number"),
        ("fragment-dae", {"data": "sar:synthetic"}, ValueError, "is sar data"),
        ("fragment-dae", {"data": "fragments:max_files=lots"}, ValueError, "max_files"),
        ("fragment-dae", {"data": "fragments:folder=/no/such/folder"}, FileNotFoundError, "does not exist"),
        ("fragment-dae", {"device": "cuda"}, ValueError, "no GPU"),
        ("fragment-dae", {"device": "tpu"}, ValueError, "device must be"),
        ("fragment-dae", {"model": [1, 2]}, ValueError, "model overrides must be a dict"),
        ("fragment-dae", {"precision": "fp16"}, ValueError, "unknown precision 'fp16'"),
    ],
)
def test_bad_settings_raise_and_queue_nothing(
    tmp_path: Path, managers: list, variant: str, settings: dict, error: type, message: str
) -> None:
    jm = JobManager(tmp_path / "runs", gpus=[], python="/bin/false", **FAST)
    managers.append(jm)
    settings = dict(settings)
    preset = settings.pop("preset", "smoke")
    with pytest.raises(error, match=message):
        jm.check(variant, preset, **settings)
    with pytest.raises(error, match=message):
        jm.submit(variant, preset, **settings)
    assert jm.store.list_runs() == []


def test_cancel_of_unknown_or_ended_runs_changes_nothing(tmp_path: Path, managers: list) -> None:
    jm = JobManager(tmp_path / "runs", gpus=[], python="/bin/false", **FAST)
    managers.append(jm)
    with pytest.raises(ValueError, match="no run with id"):
        jm.cancel("nope")
    done = jm.store.create_run("fragment-dae", "fragments", {"epochs": 1}, status="completed")
    assert jm.cancel(done) == f"Run {done} already ended (completed); nothing to cancel."
    assert jm.store.get_run(done).status == "completed"
    with pytest.raises(ValueError, match="positive number of lines"):
        jm.log_tail(done, n=0)
    assert jm.log_tail(done) == ""


@pytest.mark.timeout(240)
def test_the_trainer_runs_exactly_the_submitted_config(tmp_path: Path, managers: list) -> None:
    """The manager passes only the run id: every setting, flagless ones included, reaches the trainer."""
    jm = JobManager(tmp_path / "runs", cpu_slots=1, gpus=[], **FAST)
    managers.append(jm)
    settings = {
        "epochs": 1,
        "max_steps": 3,
        "batch_size": 16,
        "patience": 2,
        "grad_clip": 0.5,
        "seed": 7,
        "data": "fragments:python,max_files=12",
        "model": {"channels": [8, 16, 32]},
    }
    run_id = jm.submit("fragment-dae", "smoke", **settings)
    submitted = jm.store.get_run(run_id).config
    wait_for(lambda: jm.store.get_run(run_id).status == "completed", 200, "the run to complete")
    run = jm.store.get_run(run_id)
    assert {**run.config, "device": "auto"} == submitted  # the trainer records what it ran; only the
    assert run.config["device"] == "cpu"  # device is the slot's
    assert run.step == 3
    folder = Path(run.last_checkpoint)
    assert json.loads((folder / "config.json").read_text())["channels"] == [8, 16, 32]
    launch_line = jm.log_tail(run_id, n=200).splitlines()[0]
    assert f"--run-id {run_id}" in launch_line and "--epochs" not in launch_line


def test_jobs_rows_show_the_domains_key_metric(tmp_path: Path, managers: list) -> None:
    jm = JobManager(tmp_path / "runs", gpus=[], python="/bin/false", **FAST)
    managers.append(jm)
    store = jm.store
    expected = {}
    for variant, domain, name, values, best in [
        ("sar-residual", "sar", "psnr", [18.0, 21.5, 20.0], 21.5),
        ("audio-vae", "audio", "loss", [0.9, 0.4, 0.6], 0.4),
        ("fragment-dae", "fragments", "accuracy_corrupted", [0.1, 0.3, 0.2], 0.3),
    ]:
        run_id = store.create_run(variant, domain, {"epochs": 3}, status="running")
        for epoch, value in enumerate(values, 1):
            store.log_metrics(run_id, epoch * 10, epoch, "val", {name: value, "other": -value})
        store.set_status(run_id, "completed")
        expected[run_id] = (f"val/{name}", best)
    rows = jm.jobs()
    assert [r["id"] for r in rows] == list(reversed(expected))  # newest first
    for row in rows:
        assert (row["metric"], row["best"]) == expected[row["id"]]
        assert row["status"] == "completed" and row["elapsed"] >= 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cpu_slots": 0}, "cpu_slots must be a positive int"),
        ({"gpus": [0, -1]}, "gpus must be a list of GPU indices"),
        ({"gpus": [1, 1]}, "gpus lists an index twice"),
        ({"poll_interval": 0}, "poll_interval must be"),
        ({"cancel_grace": -1}, "cancel_grace must be"),
    ],
)
def test_bad_manager_arguments_raise(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        JobManager(tmp_path / "runs", **kwargs)


def test_a_store_of_another_runs_folder_is_refused(tmp_path: Path) -> None:
    with RunStore(tmp_path / "a") as other, pytest.raises(ValueError, match="store is for"):
        JobManager(tmp_path / "b", store=other, gpus=[])


def test_submit_stores_the_full_config_with_an_absolute_data_folder(
    tmp_path: Path, managers: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "corpus").mkdir()
    monkeypatch.chdir(tmp_path)  # the trainer runs elsewhere, so a relative folder must not reach it
    jm = JobManager(tmp_path / "runs", gpus=[], python="/bin/false", **FAST)
    managers.append(jm)
    run_id = jm.submit("fragment-dae", "smoke", epochs=2.0, lr=1, data="fragments:folder=corpus,val=0.25")
    expected = make_config(
        "fragment-dae", "smoke", epochs=2, lr=1.0, data=f"fragments:folder={tmp_path / 'corpus'},val=0.25"
    ).to_dict()
    assert jm.store.get_run(run_id).config == expected
    assert jm.check(
        "fragment-dae", "smoke", epochs=2.0, lr=1, data="fragments:folder=corpus,val=0.25"
    ).to_dict() == (expected)
    # /bin/false plays a trainer that dies at once without a word: failed, with its exit code.
    wait_for(lambda: jm.store.get_run(run_id).status == "failed", 20, "the failed start")
    assert jm.store.get_run(run_id).reason.startswith("trainer exited with code 1; last log lines: [studio")


def test_restart_tells_a_live_trainer_from_a_recycled_pid(tmp_path: Path, managers: list) -> None:
    """A running run's pid may belong to a trainer without --run-id in its command line (started from a
    terminal or a script): it is the run's process if it started before the run. One that started after
    the run did is a recycled pid, and the run is failed."""
    runs = tmp_path / "runs"
    sleeper = f"{sys.executable} -c 'import time; time.sleep(60)'"
    # Started before its run, like a script calling train(); orphaned so that it is not the test's child.
    out = subprocess.run(["sh", "-c", f"{sleeper} >/dev/null 2>&1 & echo $!"], capture_output=True, text=True)
    script_pid = int(out.stdout)
    recycled = None
    try:
        time.sleep(0.2)
        with RunStore(runs) as store:
            config = make_config("fragment-dae", "smoke").to_dict()
            own, stale = (store.create_run("fragment-dae", "fragments", config) for _ in range(2))
            for run_id in (own, stale):
                store.set_status(run_id, "running")
            store.update_run(stale, started_at=time.time() - 120)
            time.sleep(2 * 2.0 + 0.5)  # past the slack for start times that procfs rounds
            recycled = subprocess.Popen(sleeper, shell=True)  # a new process that got the stale run's pid
            store.update_run(own, pid=script_pid, host=socket.gethostname())
            store.update_run(stale, pid=recycled.pid, host=socket.gethostname())

        jm = JobManager(runs, gpus=[], python="/bin/false", **FAST)
        managers.append(jm)
        assert jm.running_jobs() == [own]
        assert jm.store.get_run(own).status == "running"
        assert jm.store.get_run(stale).status == "failed"
        assert jm.store.get_run(stale).reason == f"trainer process {recycled.pid} is gone (app restarted?)"

        os.kill(script_pid, signal.SIGKILL)  # it dies without a word, and it is no child of the app
        wait_for(lambda: jm.store.get_run(own).status == "failed", 20, "the dead script's run to fail")
        reason = jm.store.get_run(own).reason
        expected = f"trainer process {script_pid} ended without reporting a status (exit code unknown)"
        assert reason == f"{expected}; its log is empty"
        assert jm.running_jobs() == []
    finally:
        if "time.sleep(60)" in " ".join(_cmdline(script_pid) or []):
            os.kill(script_pid, signal.SIGKILL)
        if recycled is not None:
            recycled.kill()
            recycled.wait()


def test_only_the_owner_may_cancel_when_a_requester_is_named(tmp_path: Path, managers: list) -> None:
    """On a public Space the Train tab names the browser session; one visitor cannot cancel another's job."""
    python = fake_python(tmp_path, "sleep 60\n")
    jm = JobManager(tmp_path / "runs", cpu_slots=1, gpus=[], python=python, **FAST)
    managers.append(jm)
    running = jm.submit("fragment-dae", "smoke", owner="session-a")
    queued = jm.submit("fragment-dae", "smoke", owner="session-a")
    wait_for(lambda: jm.store.get_run(running).status == "running", 20, "the first job to start")
    assert jm.store.get_run(queued).owner == "session-a"
    for run_id in (running, queued):
        with pytest.raises(PermissionError, match="someone else"):
            jm.cancel(run_id, requester="session-b")
    assert jm.store.get_run(running).status == "running" and jm.store.get_run(queued).status == "queued"
    assert "Cancelled" in jm.cancel(queued, requester="session-a")
    jm.cancel(running, requester="session-a")
    wait_for(lambda: jm.store.get_run(running).status == "cancelled", 30, "the owner's cancel")
