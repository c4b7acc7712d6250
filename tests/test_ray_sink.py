"""The Ray result sink (trainers/runs/ray_sink.py): a trainer in another working directory, with its own runs
folder, sends its rows, status changes and checkpoints home to the studio's RunStore through the sink actor.

One local Ray instance serves the whole module. The training cases run `python -m trainers train --sink`
as a subprocess connected to it, from a worker folder that is not the studio's: the studio's runs folder is
named nowhere in the trainer's command line or environment, so all it gets there came through the sink.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

try:
    import ray
except ImportError:  # the studio and the trainers work without Ray; only the cluster cases need it
    ray = None
needs_ray = pytest.mark.skipif(
    ray is None, reason="ray is not installed (the `ray` extra: pip install 'ray[default]')"
)

from tests.helpers import smoke_train, start_trainer  # noqa: E402
from trainers.runs import checkpoints  # noqa: E402
from trainers.runs.ray_sink import (  # noqa: E402
    SINK_NAMESPACE,
    RunSink,
    SinkStore,
    get_sink,
    open_sink_store,
    replace_folder,
    sink_name,
    start_sink,
    stop_sink,
)
from trainers.runs.store import RunStore  # noqa: E402
from trainers.training.hooks import PAUSE_ENV, PAUSE_FILE_ENV  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = "fragments:python,max_files=12"  # 5 steps an epoch at the smoke preset's batch size


@pytest.fixture(scope="module")
def cluster():
    """A local Ray instance for the module; its workers import the project from this checkout."""
    if ray.is_initialized():
        ray.shutdown()
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), old) if p)
    try:
        # address="local": a new instance of our own, never one another process started on this machine
        ray.init(
            address="local",
            num_cpus=2,
            include_dashboard=False,
            namespace=SINK_NAMESPACE,
            log_to_driver=False,
        )
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


@pytest.fixture(scope="module")
def studio(cluster, tmp_path_factory):
    """The studio's runs folder, its store and its sink actor."""
    home = tmp_path_factory.mktemp("studio") / "runs"
    actor = start_sink(home)
    with RunStore(home) as store:
        yield home, store, actor
    stop_sink(home)


def _rows(store: RunStore, run_id: str) -> list[tuple]:
    rows, _ = store.metrics_after(run_ids=[run_id])
    return [
        (r.step, r.epoch, r.split, r.name, None if math.isnan(r.value) else r.value, r.time) for r in rows
    ]


def _files(folder: Path) -> dict[str, bytes]:
    folder = folder.resolve()
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def test_sink_name_is_per_runs_folder(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    name = sink_name("runs")
    assert name == sink_name(tmp_path / "runs") == sink_name(tmp_path / "x" / ".." / "runs")
    assert name.startswith("ae-studio-sink-") and len(name) == len("ae-studio-sink-") + 12
    int(name.rsplit("-", 1)[1], 16)
    assert sink_name(tmp_path / "other") != name


def test_replace_folder_is_atomic(tmp_path, monkeypatch) -> None:
    run = tmp_path / "run"
    first = replace_folder(run, "checkpoints/last", {"a.bin": b"1" * 10, "sub/b.json": b"{}"})
    link = run / "checkpoints" / "last"
    assert link.is_symlink() and link.resolve() == first.resolve()
    assert _files(link) == {"a.bin": b"1" * 10, "sub/b.json": b"{}"}
    second = replace_folder(run, "checkpoints/last", {"c.bin": b"2"})
    assert _files(link) == {"c.bin": b"2"}  # replaced, not merged
    assert not first.exists() and second.exists()
    # A bad name is refused before anything is written; the folder keeps its content.
    for bad in ("../escape", "/abs", "a/../../b", ""):
        with pytest.raises(ValueError, match="relative path|must name"):
            replace_folder(run, "checkpoints/last", {"ok": b"x", bad: b"y"})
    with pytest.raises(ValueError, match="relative path"):
        replace_folder(run, "../other", {"ok": b"x"})
    # A write that fails half-way (disk full) leaves the old folder in place and no half-written one.
    real_fsync, calls = os.fsync, []

    def failing_fsync(fd):
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="No space"):
        replace_folder(run, "checkpoints/last", {"d.bin": b"3", "e.bin": b"4"})
    monkeypatch.undo()
    assert _files(link) == {"c.bin": b"2"}
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last", second.name]


def test_a_checkpoint_in_pieces_lands_whole_or_not_at_all(tmp_path) -> None:
    """RunSink without Ray: pieces of a file arrive in any order, the folder switches only when every file has
    its full size; an incomplete upload is refused and the previous checkpoint stays."""
    sink = RunSink(str(tmp_path / "runs"))
    run_id = sink.store.create_run("fragment-dae", "fragments", {}, run_id="pieces-1")
    blob = os.urandom(3 * 1000 + 17)
    old = replace_folder(sink.store.run_dir(run_id), "checkpoints/last", {"old.bin": b"old"})
    head = (run_id, "checkpoints/last", "tok1", "replace")
    for offset in (2000, 0, 3000, 1000):  # out of order, as concurrent pieces may land
        sink.put_chunk(*head, "model.bin", offset, blob[offset : offset + 1000])
    sink.put_chunk(*head, "manifest.json", 0, b"{}")
    link = sink.store.run_dir(run_id) / "checkpoints" / "last"
    assert _files(link) == {"old.bin": b"old"}  # nothing visible before the commit
    with pytest.raises(ValueError, match="incomplete"):
        sink.commit_upload(*head, {"model.bin": len(blob) + 1, "manifest.json": 2})
    assert _files(link) == {"old.bin": b"old"}
    sink.commit_upload(*head, {"model.bin": len(blob), "manifest.json": 2})
    assert _files(link) == {"model.bin": blob, "manifest.json": b"{}"} and not old.exists()
    assert sink.list_files(run_id, "checkpoints/last") == {"manifest.json": 2, "model.bin": len(blob)}
    assert sink.read_chunk(run_id, "checkpoints/last", "model.bin", 1000, 500) == blob[1000:1500]
    # Media: files written under the folder one by one, a thinned one removed.
    write = (run_id, "", "tok2", "sync")
    sink.put_chunk(*write, "media/1/a.png", 0, b"png")
    sink.commit_upload(*write, {"media/1/a.png": 3})
    sink.put_chunk(*write[:2], "tok3", "sync", "media/index.json", 0, b"[]")
    sink.commit_upload(*write[:2], "tok3", "sync", {"media/index.json": 2}, removed=["media/1/a.png"])
    assert _files(sink.store.run_dir(run_id) / "media") == {"index.json": b"[]"}
    for bad in (("../x", "f"), ("checkpoints/last", "../../f")):
        with pytest.raises(ValueError, match="relative path"):
            sink.put_chunk(run_id, bad[0], "tok4", "replace", bad[1], 0, b"x")


def test_a_fenced_attempt_writes_nothing_more_even_after_a_sink_restart(tmp_path) -> None:
    home = tmp_path / "runs"
    sink = RunSink(str(home))
    run_id = sink.store.create_run("fragment-dae", "fragments", {}, run_id="fenced-1")
    row = ("log_metrics", (run_id, 1, 0, "train", {"train/loss": 1.0}), {})
    assert sink.apply([row], "attempt-a") == []
    sink.fence("attempt-a")
    for fresh in (sink, RunSink(str(home))):  # kept on disk: a restarted sink refuses it too
        errors = fresh.apply([("set_status", (run_id, "completed"), {})], "attempt-a")
        assert len(errors) == 1 and errors[0].startswith("fenced:"), errors
        with pytest.raises(PermissionError, match="fenced"):
            fresh.put_chunk(run_id, "checkpoints/last", "tok", "replace", "m.bin", 0, b"x", "attempt-a")
        assert fresh.apply([row], "attempt-b") == []  # the next attempt (a resume) writes again
    assert sink.store.get_run(run_id).status == "queued"


def test_a_resume_supersedes_the_killed_attempts_rows_in_the_studio_store(tmp_path) -> None:
    """A resumed trainer's supersede travels in order with its rows: the studio's queries keep one row a
    step, the resumed attempt's (the local store and the studio's agree)."""
    sink = RunSink(str(tmp_path / "runs"))
    run_id = sink.store.create_run("fragment-dae", "fragments", {}, run_id="resumed-1")
    killed = [("log_metrics", (run_id, s, 0, "train", {"loss": 9.0}), {}) for s in (5, 10, 15)]
    resumed = [("supersede_after", (run_id, 5), {})]
    resumed += [("log_metrics", (run_id, s, 0, "train", {"loss": 1.0}), {}) for s in (10, 15)]
    assert sink.apply(killed) == [] and sink.apply(resumed) == []
    assert sink.store.metric_series(run_id, "loss", split="train") == [(5, 9.0), (10, 1.0), (15, 1.0)]


def test_without_ray_the_sink_says_how_to_get_it(monkeypatch, capsys) -> None:
    """Without Ray the module imports and names sinks; asking for a sink says what to install (CLI too)."""
    from trainers import cli

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if it were not installed
    assert sink_name("runs").startswith("ae-studio-sink-")
    with pytest.raises(ValueError, match=r"Ray is not installed.*\[ray\]"):
        open_sink_store("ae-studio-sink-0123456789ab")
    code = cli.main(["train", "fragment-dae", "--preset", "smoke", "--sink", "ae-studio-sink-0123456789ab"])
    assert code == 2 and "Ray is not installed" in capsys.readouterr().err


@needs_ray
def test_sink_writes_into_the_studio_store(studio) -> None:
    home, store, actor = studio
    assert start_sink(home)._actor_id == actor._actor_id  # get-or-create: a restarted studio gets it back
    info = ray.get(actor.ping.remote())
    assert info["node_id"] == ray.get_runtime_context().get_node_id()
    assert Path(info["runs_dir"]) == home.resolve()
    run_id = store.create_run("fragment-dae", "fragments", {"lr": 0.01}, run_id="direct-1")
    ray.get(actor.set_status.remote(run_id, "running"))
    ray.get(actor.log_metrics.remote(run_id, 3, 0, "train", {"loss": 0.5, "odd": math.nan}, time=123.0))
    files = {"model.safetensors": b"\x00" * 1000, "manifest.json": b"{}"}
    ray.get(actor.put_files.remote(run_id, "checkpoints/best", files))
    ray.get(
        actor.update_run.remote(
            run_id,
            best_checkpoint=f"/node/x/runs/{run_id}/checkpoints/best",
            log_path="/node/x/train.log",
            step=3,
        )
    )
    errors = ray.get(
        actor.apply.remote([("set_status", (run_id, "completed", "done"), {}), ("drop", (), {})])
    )
    assert errors == ["drop: ValueError: unknown sink write 'drop'"]
    # Rows in one batch share a transaction; a bad one is reported alone and the others are kept.
    rows = [("log_metrics", (run_id, s, 0, "val", {"psnr": float(s)}), {"time": 200.0 + s}) for s in (4, 5)]
    bad = ("log_metrics", ("no-such-run", 4, 0, "val", {"psnr": 1.0}), {})
    errors = ray.get(actor.apply.remote([rows[0], bad, rows[1]]))
    assert errors == ["log_metrics: ValueError: no run with id 'no-such-run'"]
    record = store.get_run(run_id)
    assert record.status == "completed" and record.reason == "done" and record.step == 3
    assert record.best_checkpoint == str(home.resolve() / run_id / "checkpoints" / "best")
    assert record.log_path == str(home.resolve() / run_id / "train.log")  # no path of the trainer's node
    assert _rows(store, run_id) == [
        (3, 0, "train", "loss", 0.5, 123.0),
        (3, 0, "train", "odd", None, 123.0),
        (4, 0, "val", "psnr", 4.0, 204.0),
        (5, 0, "val", "psnr", 5.0, 205.0),
    ]
    assert _files(Path(record.best_checkpoint)) == files
    assert ray.get(actor.get_files.remote(run_id, "checkpoints/best")) == files
    assert ray.get(actor.get_files.remote(run_id, "checkpoints/last")) == {}
    assert ray.get(actor.get_run.remote("no-such-run")) is None
    with pytest.raises(ray.exceptions.RayTaskError, match="relative path"):
        ray.get(actor.put_files.remote(run_id, "../../etc", files))
    stats = ray.get(actor.stats.remote())
    assert stats["rows"] >= 2 and stats["errors"] >= 1 and stats["bytes"] >= 1002


@needs_ray
def test_slow_sink_holds_the_trainer_back_and_keeps_order(cluster, tmp_path) -> None:
    """A sink slower than the trainer: the trainer's queue stays within its bound (the writes wait), and
    after flush() the studio has every row, in the order written."""

    class SlowSink(RunSink):
        def apply(self, ops):
            time.sleep(0.05)
            return super().apply(ops)

    home = tmp_path / "home"
    RunStore(home).close()
    actor = ray.remote(SlowSink).options(num_cpus=0).remote(str(home))
    local = SinkStore(
        tmp_path / "node" / "runs", actor, host="ray:test", max_queue=4, max_in_flight=1, max_batch=2
    )
    try:
        run_id = local.create_run("fragment-dae", "fragments", {}, status="running")
        local.update_run(run_id, pid=1, host="somewhere")
        start, depth = time.monotonic(), []
        for step in range(1, 31):
            local.log_metrics(run_id, step, 0, "train", {"loss": 1.0 / step})
            depth.append(local.unacknowledged)
        elapsed = time.monotonic() - start
        assert max(depth) <= 4 + 1 * 2 + 1  # queue + in flight (+ the write just made)
        assert elapsed >= 0.3  # 30 writes in batches of <= 2 at 50 ms each: the writer waited
        assert local.flush(30) and local.unacknowledged == 0
        with RunStore(home) as store:
            assert _rows(store, run_id) == _rows(local, run_id)
            assert [r[0] for r in _rows(store, run_id)] == list(range(1, 31))
            assert store.get_run(run_id).host == local.get_run(run_id).host == "ray:test"
    finally:
        local.close()
        ray.kill(actor)


@needs_ray
def test_sink_restart_loses_nothing_and_studio_folder_is_refused(studio, tmp_path, monkeypatch) -> None:
    home, store, actor = studio
    name = sink_name(home)
    local = SinkStore(tmp_path / "node" / "runs", get_sink(name), sink_name=name)
    try:
        run_id = local.create_run("fragment-dae", "fragments", {}, status="running")
        for step in range(1, 6):
            local.log_metrics(run_id, step, 0, "train", {"loss": 1.0})
        assert local.flush(30)
        ray.kill(actor, no_restart=False)  # the sink process dies; Ray restarts it (max_restarts=-1)
        for step in range(6, 11):
            local.log_metrics(run_id, step, 0, "train", {"loss": 1.0})
        assert local.flush(60) and local.lost == 0
        assert {r[0] for r in _rows(store, run_id)} == set(range(1, 11))
    finally:
        local.close()
    # A trainer must never write into the studio's runs folder: named explicitly it is refused; reached as
    # ./runs (a job on the studio's node starts in the studio's working folder) the trainer goes elsewhere.
    with pytest.raises(ValueError, match="the studio's own runs folder"):
        open_sink_store(name, home)
    monkeypatch.chdir(home.parent)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    with open_sink_store(name) as elsewhere:
        assert elsewhere.runs_dir == tmp_path / "tmp" / "ae-studio-ray" / "runs"


def _trainer(cluster: str, cwd: Path, *args: str, pause: Path | None = None) -> subprocess.Popen:
    """`python -m trainers train` in `cwd`, connected to the module's Ray instance, as a Ray job runs it."""
    cwd.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("STUDIO_RUNS_DIR", PAUSE_ENV, PAUSE_FILE_ENV)}
    env.update(RAY_ADDRESS=cluster, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    if pause is not None:
        env.update({PAUSE_ENV: "step", PAUSE_FILE_ENV: str(pause)})
    args = ("--data", DATA, "--device", "cpu", *args)
    return start_trainer(smoke_train("fragment-dae", None, *args), cwd, env)


def _finish(proc: subprocess.Popen, timeout: float = 180) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return out


@needs_ray
def test_trainer_on_another_node_cancel_and_resume_through_the_sink(cluster, studio, tmp_path) -> None:
    home, store, actor = studio
    name = sink_name(home)
    run_id = store.create_run("fragment-dae", "fragments", {}, run_id="ray-smoke-1")  # queued by the studio

    # 1. A trainer in its own working folder attaches to the queued run; SIGTERM (Ray's job stop) at step 1.
    worker1, marker = tmp_path / "node1", tmp_path / "paused"
    proc = _trainer(cluster, worker1, "--run-id", run_id, "--sink", name, "--max-steps", "6", pause=marker)
    deadline = time.monotonic() + 120
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), f"the trainer never reached its first step: {_finish(proc)}"
    os.killpg(proc.pid, signal.SIGTERM)  # the job's process group, as Ray's stop_job signals it
    out = _finish(proc)
    assert proc.returncode == 0, out
    assert str(home) not in " ".join(proc.args) and "Traceback" not in out

    local1 = RunStore(worker1 / "runs")  # the default: ./runs under the trainer's own working folder
    record = store.get_run(run_id)
    assert record.status == "cancelled" and record.reason.startswith("cancelled at step 1"), record
    assert record.host.startswith("ray:") and record.host == local1.get_run(run_id).host
    assert record.host.endswith(":" + ray.get_runtime_context().get_node_id()[:8])
    assert record.last_checkpoint == str(home.resolve() / run_id / "checkpoints" / "last")
    assert record.best_checkpoint is None  # cancelled before the first validation
    last_home = checkpoints.checkpoint_path(home / run_id, "last")
    last_local = checkpoints.checkpoint_path(worker1 / "runs" / run_id, "last")
    assert _files(last_home) == _files(last_local)  # byte-identical, manifest included
    assert checkpoints.read_trainer_state(last_home)["step"] == 1
    assert _rows(store, run_id) == _rows(local1, run_id) != []
    local1.close()

    # 2. Resume on another node: nothing there but what the sink sends back; continues from step 1.
    worker2 = tmp_path / "node2"
    proc = _trainer(cluster, worker2, "--resume", run_id, "--sink", name, "--max-steps", "6")
    out = _finish(proc)
    assert proc.returncode == 0, out
    assert f"run {run_id}: completed after 6 steps" in out, out

    record = store.get_run(run_id)
    assert record.status == "completed" and record.step == 6 and record.reason == "stopped at max_steps=6"
    with RunStore(worker2 / "runs") as local2:
        # Home has the first trainer's rows, then the resumed one's, which start after step 1.
        resumed = _rows(local2, run_id)
        assert _rows(store, run_id) == _rows(RunStore(worker1 / "runs"), run_id) + resumed
        assert min(r[0] for r in resumed) > 1 and max(r[0] for r in resumed) == 6
        assert {"train", "val"} <= {r[2] for r in resumed} <= {"train", "val", "sys"}  # sys: CPU, memory use
    for kind in ("best", "last"):
        at_home = checkpoints.checkpoint_path(home / run_id, kind)
        assert _files(at_home) == _files(checkpoints.checkpoint_path(worker2 / "runs" / run_id, kind))
        assert checkpoints.is_complete(at_home)
    assert checkpoints.read_trainer_state(checkpoints.checkpoint_path(home / run_id, "last"))["step"] == 6
    from models import load_pretrained

    model = load_pretrained(
        checkpoints.checkpoint_path(home / run_id, "best"), expected_variant="fragment-dae"
    )
    assert sum(p.numel() for p in model.parameters()) > 0
    # The run's other files came home too: the media of each validation and the phase timings.
    assert (home / run_id / "phases.json").is_file() and (home / run_id / "media" / "index.json").is_file()
    assert _files(home / run_id / "media") == _files(worker2 / "runs" / run_id / "media")
