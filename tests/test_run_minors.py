"""Issue 19's minor findings about runs, each replayed: a SIGKILLed CLI run no longer stays `running` in
`trainers runs`; a damaged, a read-only and a full runs folder each get one clear sentence (CLI and app
start) instead of a traceback; an exploding learning rate (lr=1e9 itself) ends `diverged`; the train and
validation rows of one step carry one epoch number; CSV/JSONL export never imports torch; a killed run
resumes through the studio's /resume endpoint (the Train tab's Resume run button)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from benchmarks.fault_campaign import fragment_folder
from tests.conftest import free_port
from trainers.runs.faults import KILL_ENV
from trainers.runs.store import RunStore
from trainers.settings import make_config
from trainers.training.hooks import PAUSE_ENV, PAUSE_FILE_ENV
from trainers.training.loop import train

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"fragments:folder={fragment_folder(tmp_path_factory.mktemp('fragments'))},n=112,val=16"


def _cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "trainers", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )


def _train_args(runs: Path, data: str, *extra: str) -> list[str]:
    return ["train", "fragment-dae", "--preset", "smoke", "--runs-dir", str(runs), "--no-progress"] + [
        "--device", "cpu", "--epochs", "2", "--batch-size", "8", "--data", data, *extra,
    ]  # fmt: skip


def _runs_json(runs: Path) -> list[dict]:
    done = _cli("runs", "--runs-dir", str(runs), "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_a_killed_cli_run_is_failed_by_the_listing_and_a_live_one_stays_running(tmp_path, data) -> None:
    runs, marker = tmp_path / "runs", tmp_path / "paused"
    env = {**os.environ, "OMP_NUM_THREADS": "1", PAUSE_ENV: "validation", PAUSE_FILE_ENV: str(marker)}
    live = subprocess.Popen(
        [sys.executable, "-m", "trainers", *_train_args(runs, data)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        while not marker.exists() and live.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert marker.exists(), "the trainer never reached validation"
        [row] = _runs_json(runs)
        assert row["status"] == "running"  # held in validation, alive: the listing leaves it alone
        os.killpg(live.pid, signal.SIGKILL)
        live.wait(timeout=30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(live.pid, signal.SIGKILL)
        live.wait()
    [row] = _runs_json(runs)
    assert row["status"] == "failed"
    assert row["reason"].startswith(f"trainer process {live.pid} is gone (killed or crashed) at step ")


def test_a_run_killed_after_its_first_checkpoint_is_told_how_to_resume(tmp_path, data) -> None:
    runs = tmp_path / "runs"
    done = _cli(*_train_args(runs, data), env={KILL_ENV: "train-row:3"})
    assert done.returncode == -signal.SIGKILL
    [row] = _runs_json(runs)
    assert row["status"] == "failed"
    assert f"`python -m trainers train fragment-dae --resume {row['id']}` continues it" in row["reason"]


def test_a_killed_run_resumes_through_the_studio_api_from_its_checkpoint(studio, client, data) -> None:
    """Resume after a death from the studio, not only `JobManager.resume()`: the Train tab's Resume run button
    is the `/resume` endpoint. A trainer SIGKILLed in epoch 2 (its `last` is epoch 1's) ends `failed`; the
    API queues it again and it completes from that checkpoint's step, each step's row once."""
    before = {row["id"] for row in _runs_json(studio.runs_dir)}
    done = _cli(*_train_args(studio.runs_dir, data), env={KILL_ENV: "train-row:3"})
    assert done.returncode == -signal.SIGKILL
    [row] = [row for row in _runs_json(studio.runs_dir) if row["id"] not in before]
    run_id = row["id"]
    assert row["status"] == "failed"  # the listing saw its trainer gone
    with RunStore(studio.runs_dir) as store:
        checkpoint_step = store.get_run(run_id).step
    answer = client.predict(run_id, api_name="/resume")
    assert answer == f"Queued {run_id} to resume from its last checkpoint (step {checkpoint_step}).", answer
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        with RunStore(studio.runs_dir) as store:
            run = store.get_run(run_id)
        if run.status not in ("queued", "running"):
            break
        time.sleep(0.5)
    assert run.status == "completed", (run.status, run.reason)
    with RunStore(studio.runs_dir) as store:
        steps = [step for step, _ in store.metric_series(run_id, "train/loss")]
        resumed = store.get_run(run_id)
    assert len(steps) == len(set(steps)) and steps == sorted(steps)
    assert checkpoint_step == 7 and resumed.step == 14 and resumed.epoch == 2
    again = client.predict(run_id, api_name="/resume")  # a completed run: one sentence, nothing queued
    assert "is completed; only a failed or cancelled run can be resumed" in again, again


def _damaged_store(folder: Path) -> Path:
    """A store whose middle pages are garbage (the runs table spans them all)."""
    with RunStore(folder) as store:
        for i in range(40):
            store.create_run("fragment-dae", "fragments", {"i": i, "note": "x" * 400})
    with sqlite3.connect(folder / "runs.sqlite") as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    path = folder / "runs.sqlite"
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.seek(size // 2 // 4096 * 4096)
        f.write(os.urandom(3 * 4096))
    return path


def test_garbage_in_the_middle_of_the_database_is_one_sentence_in_the_cli(tmp_path) -> None:
    path = _damaged_store(tmp_path)
    done = _cli("runs", "--runs-dir", str(tmp_path))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip() == (
        f"error: {path} is not a usable run database, it is damaged (database disk image is malformed); "
        "move it aside (or restore a backup) and a new one is made"
    )


def test_garbage_in_the_middle_of_the_database_is_one_sentence_at_app_start(tmp_path) -> None:
    path = _damaged_store(tmp_path)
    done = subprocess.run(
        [sys.executable, "app.py", "--runs-dir", str(tmp_path), "--port", str(free_port())],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"},
    )
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert f"{path} is not a usable run database, it is damaged (database disk image" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_a_read_only_runs_folder_is_called_read_only_not_damaged(tmp_path) -> None:
    with RunStore(tmp_path) as store:
        store.create_run("fragment-dae", "fragments", {})
    # root ignores file modes, so make the folder immutable; skip where that is not allowed
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(tmp_path)]).returncode != 0:
        pytest.skip("chattr +i is not available here")
    try:
        done = _cli("runs", "--runs-dir", str(tmp_path))
    finally:
        subprocess.run(["chattr", "-i", str(tmp_path)], check=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith(f"error: the runs folder {tmp_path} is read-only (")
    assert "move it aside" not in done.stderr and "damaged" not in done.stderr


def test_a_full_disk_is_one_sentence_in_the_cli(tmp_path, data) -> None:
    runs = tmp_path / "runs"
    command = " ".join(["ulimit -f 300;", sys.executable, "-m", "trainers", *_train_args(runs, data)])
    done = subprocess.run(
        ["bash", "-c", command], cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    [line] = [x for x in done.stderr.splitlines() if x.startswith("error:")]
    assert line.startswith("error: the disk is full or a file-size limit was reached while writing ")
    assert line.endswith("(File too large); free some space and run again")
    [row] = _runs_json(runs)
    assert row["status"] == "failed" and "File too large" in row["reason"]


def _tiny(data: str, **overrides):
    return make_config("fragment-dae", "smoke", data=data, epochs=2, batch_size=8, device="cpu", **overrides)


def test_weights_that_blow_up_after_a_finite_loss_end_diverged_not_failed(tmp_path, data) -> None:
    """The lr=1e9 finding at its depth: the last step's update makes the weights non-finite after its loss
    was read back finite; the run must stop `diverged` before validation, media and metrics see NaN."""
    with RunStore(tmp_path) as store:
        holder: dict = {}

        def blow_up(step: int, loss: float) -> None:  # noqa: ARG001
            if step == 7:  # epoch 1's last step, after its row was logged
                with torch.no_grad():
                    next(holder["model"].parameters()).fill_(float("nan"))

        import trainers.training.loop as loop

        original = loop.Trainer.setup

        def setup(self, *args, **kwargs):
            original(self, *args, **kwargs)
            holder["model"] = self.model

        loop.Trainer.setup = setup
        try:
            result = train(_tiny(data), store, on_step=blow_up)
        finally:
            loop.Trainer.setup = original
        run = store.get_run(result.run_id)
        rows, _ = store.metrics_after(0)
    assert result.status == "diverged" and run.status == "diverged"
    assert run.reason.startswith("weights became non-finite") and "at step 7 (epoch 1)" in run.reason
    assert not [r for r in rows if r.split == "val"]  # no validation row of NaN weights


def test_a_learning_rate_of_1e9_ends_diverged_not_failed_nor_completed(tmp_path, data) -> None:
    """The reproduction itself: fragment-dae at lr=1e9 ended `failed` ("repaired: byte values must lie in
    0..255"); with its gated, bounded output the loss stays finite, so it then ended `completed` with a
    collapsed model. Adam's ~1e9 steps put the weights far past any trained net's: `diverged`, before
    validation."""
    with RunStore(tmp_path) as store:
        result = train(_tiny(data, lr=1e9), store)
        run = store.get_run(result.run_id)
        rows, _ = store.metrics_after(0)
    assert (result.status, run.status) == ("diverged", "diverged"), run.reason
    assert run.reason.startswith("weights exploded (|") and run.reason.endswith(
        "at step 7 (epoch 1); try a lower learning rate"
    )
    assert not [r for r in rows if r.split == "val"]


def test_train_and_validation_rows_of_one_step_carry_one_epoch(tmp_path, data) -> None:
    with RunStore(tmp_path) as store:
        result = train(_tiny(data), store)
        rows, _ = store.metrics_after(0, run_ids=[result.run_id])
    val = {(r.step, r.epoch) for r in rows if r.split == "val"}
    train_at = {r.step: r.epoch for r in rows if r.split == "train"}
    assert val == {(7, 1), (14, 2)}
    assert all(train_at[step] == epoch for step, epoch in val)
    assert {train_at[s] for s in train_at if s <= 7} == {1}  # rows within epoch 1 say epoch 1 too


def test_csv_and_jsonl_export_do_not_import_torch(tmp_path) -> None:
    with RunStore(tmp_path) as store:
        run_id = store.create_run("fragment-dae", "fragments", {})
        store.log_metrics(run_id, 5, 1, "train", {"loss": 0.5})
    where = ["--runs-dir", str(tmp_path), "--out", str(tmp_path)]
    code = (
        "import sys; from trainers.cli import main; "
        f"assert main(['export', '{run_id}', '--format', 'csv', *{where}]) == 0; "
        f"assert main(['export', '{run_id}', '--format', 'jsonl', *{where}]) == 0; "
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
    assert (tmp_path / f"{run_id}.csv").read_text().splitlines()[1].startswith("5,")
