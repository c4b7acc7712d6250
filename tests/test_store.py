"""The SQLite run store: schema, WAL, run bookkeeping, incremental metric reads across processes."""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import re
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from trainers.runs.store import STATUSES, TERMINAL, MetricRow, RunRecord, RunStore, lower_is_better


@pytest.fixture
def store(tmp_path: Path):
    with RunStore(tmp_path / "runs") as s:
        yield s


def test_database_is_wal_with_schema(tmp_path: Path) -> None:
    with RunStore(tmp_path / "r") as store:
        assert store.path == tmp_path / "r" / "runs.sqlite"
        assert store.journal_mode() == "wal"
    # Check with an independent connection that the mode persisted in the file and the schema is there.
    conn = sqlite3.connect(tmp_path / "r" / "runs.sqlite")
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        run_cols = [row[1] for row in conn.execute("PRAGMA table_info(runs)")]
        assert run_cols == [
            "id", "variant", "domain", "config", "status", "reason", "created_at", "started_at", "ended_at",
            "device", "pid", "host", "best_checkpoint", "last_checkpoint", "step", "epoch", "log_path",
            "owner", "name", "tags", "note", "steps_per_epoch",
        ]  # fmt: skip
        metric_cols = [row[1] for row in conn.execute("PRAGMA table_info(metrics)")]
        assert metric_cols == [
            "seq", "run_id", "step", "epoch", "split", "name", "value", "time", "superseded",
        ]  # fmt: skip
        indexed = [row[2] for row in conn.execute("PRAGMA index_info(metrics_run_seq)")]
        assert indexed == ["run_id", "seq"]
    finally:
        conn.close()


def test_statuses() -> None:
    assert STATUSES == ("queued", "running", "completed", "failed", "cancelled", "diverged")
    assert set(TERMINAL) == {"completed", "failed", "cancelled", "diverged"}


def test_create_get_list_update_round_trip(store: RunStore) -> None:
    config = {
        "variant": "sar-residual",
        "lr": 1e-4,
        "batch_size": 32,
        "data": "sar:synthetic",
        "tags": [1, 2],
    }
    before = time.time()
    run_id = store.create_run("sar-residual", "sar", config)
    assert re.fullmatch(r"\d{8}-\d{6}-sar-residual-[0-9a-f]{4}", run_id)
    assert run_id[:15] == time.strftime("%Y%m%d-%H%M%S", time.gmtime(store.get_run(run_id).created_at))

    run = store.get_run(run_id)
    assert isinstance(run, RunRecord)
    assert (run.id, run.variant, run.domain, run.status, run.reason) == (
        run_id,
        "sar-residual",
        "sar",
        "queued",
        "",
    )
    assert run.config == config
    assert before <= run.created_at <= time.time()
    assert run.started_at is None and run.ended_at is None and not run.is_terminal

    store.update_run(
        run_id, device="cuda:1", pid=4242, host="ws1", step=300, epoch=2, log_path=Path("/tmp/x.log"),
        best_checkpoint="runs/a/checkpoints/best", config={**config, "lr": 3e-4},
    )  # fmt: skip
    run = store.get_run(run_id)
    assert (run.device, run.pid, run.host, run.step, run.epoch) == ("cuda:1", 4242, "ws1", 300, 2)
    assert run.log_path == "/tmp/x.log" and run.best_checkpoint == "runs/a/checkpoints/best"
    assert run.config["lr"] == 3e-4 and run.last_checkpoint is None

    assert store.get_run("nope") is None
    # A second instance (as the studio would open) sees the same data.
    with RunStore(store.runs_dir) as other:
        assert other.get_run(run_id) == run


def test_list_runs_newest_first_and_filters(store: RunStore) -> None:
    ids = []
    for i, variant in enumerate(["sar-baseline", "audio-vae", "sar-baseline", "fragment-dae"]):
        ids.append(store.create_run(variant, variant.split("-")[0], {"i": i}))
        time.sleep(0.002)  # created_at must differ for the order to be observable
    store.set_status(ids[1], "running")
    store.set_status(ids[2], "completed")
    assert [r.id for r in store.list_runs()] == ids[::-1]
    assert [r.id for r in store.list_runs(variant="sar-baseline")] == [ids[2], ids[0]]
    assert [r.id for r in store.list_runs(statuses=["running", "completed"])] == [ids[2], ids[1]]
    assert [r.id for r in store.list_runs(statuses="queued")] == [ids[3], ids[0]]
    assert [r.id for r in store.list_runs(statuses=["queued"], variant="sar-baseline")] == [ids[0]]
    assert store.list_runs(statuses=[]) == []
    with pytest.raises(ValueError, match="invalid run status 'done'; expected one of queued, running"):
        store.list_runs(statuses=["done"])


def test_ids_unique_and_explicit(store: RunStore) -> None:
    ids = {store.create_run("fragment-dae", "fragments", {}) for _ in range(50)}
    assert len(ids) == 50  # same second, random suffixes, collisions retried
    assert store.create_run("audio-vae", "audio", {}, run_id="my-run.1") == "my-run.1"
    with pytest.raises(ValueError, match="a run with id 'my-run.1' already exists"):
        store.create_run("audio-vae", "audio", {}, run_id="my-run.1")
    assert store.run_dir("my-run.1") == store.runs_dir / "my-run.1"


def test_invalid_inputs_raise_and_change_nothing(store: RunStore) -> None:
    run_id = store.create_run("sar-baseline", "sar", {"a": 1})
    snapshot = store.get_run(run_id)
    with pytest.raises(ValueError, match="invalid run status 'finished'; expected one of queued, running"):
        store.set_status(run_id, "finished")
    with pytest.raises(ValueError, match="invalid run status"):
        store.update_run(run_id, status="done", step=5)
    with pytest.raises(
        ValueError, match=r"unknown run column\(s\) colour, id; expected some of best_checkpoint"
    ):
        store.update_run(run_id, colour="red", id="x", step=5)
    with pytest.raises(ValueError, match="must be JSON-serialisable"):
        store.update_run(run_id, config={"f": object()})
    with pytest.raises(ValueError, match="takes a str or number"):
        store.update_run(run_id, step=[1])
    assert store.get_run(run_id) == snapshot
    with pytest.raises(ValueError, match="no run with id 'missing'"):
        store.update_run("missing", step=1)
    with pytest.raises(ValueError, match="no run with id 'missing'"):
        store.set_status("missing", "running")
    with pytest.raises(ValueError, match="invalid run status"):
        store.create_run("sar-baseline", "sar", {}, status="paused")
    with pytest.raises(ValueError, match="run config must be a dict"):
        store.create_run("sar-baseline", "sar", ["lr", 1])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="invalid variant 'sar baseline/..'"):
        store.create_run("sar baseline/..", "sar", {})
    with pytest.raises(ValueError, match="invalid run id '../escape'"):
        store.create_run("sar-baseline", "sar", {}, run_id="../escape")
    with pytest.raises(ValueError, match=r"must not contain a Hub token \(found one at config.hub.token\)"):
        store.create_run("sar-baseline", "sar", {"hub": {"token": "x"}})
    with pytest.raises(ValueError, match="must not contain a Hub token"):
        store.create_run("sar-baseline", "sar", {"note": "hf_" + "a" * 34})
    assert [r.id for r in store.list_runs()] == [run_id]


def test_set_status_timestamps_and_compare_and_set(store: RunStore) -> None:
    run_id = store.create_run("audio-vae", "audio", {})
    assert store.set_status(run_id, "running")
    first = store.get_run(run_id)
    assert first.status == "running" and first.started_at is not None and first.ended_at is None
    assert store.set_status(run_id, "diverged", reason="loss became nan at step 812")
    run = store.get_run(run_id)
    assert (run.status, run.reason) == ("diverged", "loss became nan at step 812")
    assert run.ended_at >= run.started_at and run.is_terminal
    # Resuming keeps the first start time and clears the end time.
    assert store.set_status(run_id, "running", reason="resumed")
    run = store.get_run(run_id)
    assert run.started_at == first.started_at and run.ended_at is None and run.reason == "resumed"
    # Compare-and-set: a cancel must not overwrite a run that completed meanwhile.
    assert store.set_status(run_id, "completed")
    assert not store.set_status(run_id, "cancelled", "user", from_statuses=["queued", "running"])
    assert store.get_run(run_id).status == "completed"
    assert store.set_status(run_id, "failed", "boom", from_statuses=["completed"])
    assert store.get_run(run_id).status == "failed"
    with pytest.raises(ValueError, match="invalid run status 'ok'"):
        store.set_status(run_id, "cancelled", from_statuses=["ok"])
    terminal = store.create_run("audio-vae", "audio", {}, status="completed")
    assert store.get_run(terminal).ended_at is not None


def test_metrics_after_returns_only_new_rows(store: RunStore) -> None:
    a = store.create_run("sar-baseline", "sar", {})
    b = store.create_run("sar-resnet", "sar", {})
    rows, cursor = store.metrics_after()
    assert rows == [] and cursor == 0
    store.log_metrics(a, step=1, epoch=0, split="train", values={"loss": 0.5, "mse": 0.1}, time=100.0)
    store.log_metrics(b, step=1, epoch=0, split="train", values={"loss": 0.7})
    rows, cursor = store.metrics_after(0)
    assert [(r.run_id, r.name, r.value) for r in rows] == [
        (a, "loss", 0.5),
        (a, "mse", 0.1),
        (b, "loss", 0.7),
    ]
    assert rows[0] == MetricRow(rows[0].seq, a, 1, 0, "train", "loss", 0.5, 100.0)
    assert rows[0].key == "train/loss" and rows[0].time == 100.0
    assert cursor == rows[-1].seq and [r.seq for r in rows] == sorted(r.seq for r in rows)
    assert store.metrics_after(cursor) == ([], cursor)  # nothing new: same cursor back

    store.log_metrics(a, step=2, epoch=0, split="val", values={"loss": 0.4, "psnr": 21.5})
    new, cursor2 = store.metrics_after(cursor)
    assert [(r.step, r.split, r.name) for r in new] == [(2, "val", "loss"), (2, "val", "psnr")]
    assert cursor2 > cursor
    # Filters: by run, by "split/name" or bare name, and a limit that pages through in order.
    assert [r.run_id for r in store.metrics_after(0, run_ids=[b])[0]] == [b]
    assert store.metrics_after(0, run_ids=[]) == ([], 0)
    assert [(r.split, r.name) for r in store.metrics_after(0, names=["val/loss"])[0]] == [("val", "loss")]
    assert [(r.run_id, r.split) for r in store.metrics_after(0, names=["loss"])[0]] == [
        (a, "train"),
        (b, "train"),
        (a, "val"),
    ]
    page, c = store.metrics_after(0, limit=2)
    rest, c2 = store.metrics_after(c)
    assert [r.seq for r in page + rest] == [r.seq for r in store.metrics_after(0)[0]] and c2 == cursor2
    with pytest.raises(ValueError, match="cursor must be a non-negative int"):
        store.metrics_after(-1)
    with pytest.raises(ValueError, match="limit must be a positive int"):
        store.metrics_after(0, limit=0)


def test_log_metrics_validation_is_all_or_nothing(store: RunStore) -> None:
    run_id = store.create_run("fragment-dae", "fragments", {})
    with pytest.raises(ValueError, match="metric 'acc' must be a real number"):
        store.log_metrics(run_id, 1, 0, "val", {"loss": 0.1, "acc": "high"})
    with pytest.raises(ValueError, match="no run with id 'ghost'"):
        store.log_metrics("ghost", 1, 0, "val", {"loss": 0.1})
    with pytest.raises(ValueError, match="split must be a non-empty name without '/'"):
        store.log_metrics(run_id, 1, 0, "val/x", {"loss": 0.1})
    with pytest.raises(ValueError, match="step must be a non-negative int"):
        store.log_metrics(run_id, -1, 0, "val", {"loss": 0.1})
    with pytest.raises(ValueError, match="epoch must be a non-negative int or None"):
        store.log_metrics(run_id, 1, "0", "val", {"loss": 0.1})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="values must be a dict"):
        store.log_metrics(run_id, 1, 0, "val", [("loss", 0.1)])  # type: ignore[arg-type]
    assert store.metrics_after(0) == ([], 0)


def test_nan_and_inf_values(store: RunStore) -> None:
    import numpy as np

    run_id = store.create_run("audio-vae", "audio", {})
    store.log_metrics(
        run_id,
        5,
        1,
        "train",
        {"loss": float("nan"), "kl": math.inf, "lsd": -math.inf, "mse": np.float32(0.25)},
    )
    store.log_metrics(run_id, 6, 1, "train", {"loss": np.array(0.5)})
    rows, _ = store.metrics_after(0)
    got = {r.name: r.value for r in rows if r.step == 5}
    assert (
        math.isnan(got["loss"]) and got["kl"] == math.inf and got["lsd"] == -math.inf and got["mse"] == 0.25
    )
    series = store.metric_series(run_id, "train/loss")
    assert series[0][0] == 5 and math.isnan(series[0][1]) and series[1] == (6, 0.5)
    # NaN is stored as NULL (SQLite has no NaN); checked directly in the file.
    conn = sqlite3.connect(store.path)
    try:
        assert conn.execute("SELECT value FROM metrics WHERE name = 'loss' AND step = 5").fetchone() == (
            None,
        )
    finally:
        conn.close()


def test_metric_series_and_names(store: RunStore) -> None:
    a = store.create_run("sar-attention", "sar", {})
    b = store.create_run("audio-vae", "audio", {})
    for step, loss in [(10, 0.9), (20, 0.8), (30, 0.7)]:
        store.log_metrics(a, step, 0, "train", {"loss": loss})
    store.log_metrics(a, 30, 0, "val", {"loss": 0.75, "psnr": 22.0})
    # A resume from step 20 re-logs step 30: the latest value wins, the series stays sorted by step.
    store.log_metrics(a, 30, 0, "train", {"loss": 0.65})
    store.log_metrics(a, 25, 0, "train", {"loss": 0.69})
    store.log_metrics(b, 1, 0, "train", {"kl": 3.0})
    assert store.metric_series(a, "train/loss") == [(10, 0.9), (20, 0.8), (25, 0.69), (30, 0.65)]
    assert store.metric_series(a, "loss", split="val") == [(30, 0.75)]
    assert store.metric_series(a, "psnr") == [(30, 22.0)]  # only one split has it
    assert store.metric_series(a, "nothing") == []
    with pytest.raises(ValueError, match=r"logged in several splits \(train, val\); pass split="):
        store.metric_series(a, "loss")
    assert store.metric_names() == ["train/kl", "train/loss", "val/loss", "val/psnr"]
    assert store.metric_names([b]) == ["train/kl"]
    assert store.metric_names([]) == []


def test_best_metrics_follow_the_metric_registry(store: RunStore) -> None:
    run_id = store.create_run("fragment-dae", "fragments", {})
    history = [
        {"loss": 0.5, "mse": 0.05, "kl": 2.0, "ber": 0.02, "lsd": 3.0, "spectral_convergence": 0.4,
         "psnr": 20.0, "ssim": 0.60, "accuracy": 0.91, "broken_fraction": 0.02, "enl_ratio": 0.5,
         "identity_accuracy": 0.9, "byte_accuracy": 0.1},
        {"loss": 0.3, "mse": 0.07, "kl": 1.0, "ber": 0.03, "lsd": 2.0, "spectral_convergence": 0.5,
         "psnr": 23.0, "ssim": 0.58, "accuracy": 0.95, "broken_fraction": 0.01, "enl_ratio": 2.5,
         "identity_accuracy": 0.8, "byte_accuracy": 0.3},
        {"loss": 0.4, "mse": 0.06, "kl": 1.5, "ber": 0.01, "lsd": 2.5, "spectral_convergence": 0.3,
         "psnr": 22.0, "ssim": 0.70, "accuracy": 0.93, "broken_fraction": 0.03, "enl_ratio": 1.45,
         "identity_accuracy": 0.85, "byte_accuracy": 0.2},
    ]  # fmt: skip
    for step, values in enumerate(history):
        store.log_metrics(run_id, step, step, "val", values)
    store.log_metrics(run_id, 3, 3, "train", {"loss": 0.01, "psnr": 99.0})  # train never counts
    store.log_metrics(run_id, 4, 4, "val", {"loss": float("nan"), "psnr": float("inf"), "ssim": float("nan")})
    store.log_metrics(run_id, 5, 5, "val", {"fixed_fraction": float("nan")})
    best = store.best_metrics(run_id)
    # Minima, maxima (NaN and inf ignored), the ENL ratio closest to its 0.7-1.3 band (1.45, not the max
    # 2.5), broken_fraction the least (the old substring rules disagreed on it), a metric only ever NaN.
    assert best == {
        "loss": 0.3, "mse": 0.05, "ber": 0.01, "lsd": 2.0, "spectral_convergence": 0.3, "psnr": 23.0,
        "ssim": 0.70, "accuracy": 0.95, "broken_fraction": 0.01, "enl_ratio": 1.45,
        "fixed_fraction": pytest.approx(math.nan, nan_ok=True),
    }  # fmt: skip
    # KL (a regulariser) and identity_accuracy (a baseline) have no better side; byte_accuracy is not a
    # registered metric: none of them gets a "best".
    assert store.best_metrics(store.create_run("sar-baseline", "sar", {})) == {}
    with pytest.raises(ValueError, match="no run with id 'x'"):
        store.best_metrics("x")


def test_lower_is_better_reads_the_registry() -> None:
    for name in [
        "loss",
        "val/loss",
        "MSE",
        "ber",
        "lsd",
        "spectral_convergence",
        "roundtrip_lsd",
        "broken_fraction",
    ]:
        assert lower_is_better(name), name
    # recon_loss and byte_accuracy are not registered: unknown, not guessed from "loss" / "accuracy".
    for name in [
        "psnr",
        "ssim",
        "psnr_8bit",
        "epi",
        "enl_ratio",
        "accuracy",
        "kl",
        "recon_loss",
        "identity_ber",
    ]:
        assert not lower_is_better(name), name


def test_closed_store_raises(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    store.close()
    store.close()
    with pytest.raises(ValueError, match="is closed"):
        store.list_runs()
    (tmp_path / "file").write_text("x")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "runs.sqlite").write_bytes(b"this is not an sqlite file" * 100)
    with pytest.raises(ValueError, match="is not a usable run database"):
        RunStore(broken)
    with pytest.raises(ValueError, match="is not a directory"):
        RunStore(tmp_path / "file")


def test_threads_share_one_store(store: RunStore) -> None:
    run_id = store.create_run("sar-baseline", "sar", {})
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            for step in range(25):
                store.log_metrics(run_id, step, 0, "train", {f"w{worker}": float(step)})
                store.metrics_after(0, run_ids=[run_id])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    rows, _ = store.metrics_after(0)
    assert len(rows) == 100
    for worker in range(4):
        assert store.metric_series(run_id, f"train/w{worker}") == [(s, float(s)) for s in range(25)]


N_STEPS = 150
NAMES = ("loss", "mse", "psnr")


def _writer(runs_dir: str, run_id: str) -> None:
    """Child process: a trainer logging metrics step by step."""
    with RunStore(runs_dir) as store:
        store.set_status(run_id, "running")
        for step in range(N_STEPS):
            store.log_metrics(
                run_id, step, step // 50, "train", {n: step + i / 10 for i, n in enumerate(NAMES)}
            )
            time.sleep(0.001)  # a trainer logs between steps; lets the reader interleave
        store.set_status(run_id, "completed")


def test_writer_in_another_process_is_read_incrementally_exactly_once(tmp_path: Path) -> None:
    runs_dir = tmp_path / "runs"
    with RunStore(runs_dir) as store:
        run_id = store.create_run("sar-residual", "sar", {})
        proc = mp.get_context("spawn").Process(target=_writer, args=(str(runs_dir), run_id))
        proc.start()
        seen: list[MetricRow] = []
        cursor = 0
        polls_with_rows = 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            finished = store.get_run(run_id).status == "completed"
            rows, cursor = store.metrics_after(cursor, run_ids=[run_id])
            polls_with_rows += bool(rows)
            seen.extend(rows)
            if finished:  # status read before the last poll, so that poll saw every row
                break
            time.sleep(0.005)
        proc.join(timeout=30)
        assert proc.exitcode == 0
    assert len(seen) == N_STEPS * len(NAMES)
    assert [r.seq for r in seen] == sorted({r.seq for r in seen})  # in order, no duplicates
    expected = [(step, n, step + i / 10) for step in range(N_STEPS) for i, n in enumerate(NAMES)]
    assert [(r.step, r.name, r.value) for r in seen] == expected
    assert polls_with_rows > 1  # it really was read while being written, not all at the end


def _log_with_inherited(store: RunStore, run_id: str) -> None:
    store.log_metrics(run_id, 7, 0, "train", {"loss": 0.125})


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX-only")
def test_forked_child_reopens_its_own_connection(store: RunStore) -> None:
    run_id = store.create_run("sar-baseline", "sar", {})
    store.log_metrics(run_id, 1, 0, "train", {"loss": 1.0})
    proc = mp.get_context("fork").Process(target=_log_with_inherited, args=(store, run_id))
    proc.start()
    proc.join(timeout=30)
    assert proc.exitcode == 0
    # The parent's connection still works and sees the child's row.
    assert store.metric_series(run_id, "train/loss") == [(1, 1.0), (7, 0.125)]


def test_database_of_an_older_version_gains_new_columns_and_keeps_its_runs(tmp_path: Path) -> None:
    folder = tmp_path / "old"
    folder.mkdir()
    conn = sqlite3.connect(folder / "runs.sqlite")
    conn.executescript(
        "CREATE TABLE runs (id TEXT PRIMARY KEY, variant TEXT NOT NULL, domain TEXT NOT NULL,"
        " config TEXT NOT NULL, status TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '',"
        " created_at REAL NOT NULL, started_at REAL,"
        " ended_at REAL, device TEXT, pid INTEGER, host TEXT, best_checkpoint TEXT, last_checkpoint TEXT,"
        " step INTEGER, epoch INTEGER, log_path TEXT);"
        "INSERT INTO runs (id, variant, domain, config, status, created_at)"
        " VALUES ('old-run', 'fragment-dae', 'fragments', '{}', 'completed', 1.0);"
    )
    conn.commit()
    conn.close()
    with RunStore(folder) as store:
        runs = store.list_runs()
        assert [r.id for r in runs] == ["old-run"] and runs[0].owner is None
        assert (runs[0].name, runs[0].tags, runs[0].note, runs[0].steps_per_epoch) == (None, [], None, None)
        store.update_run("old-run", owner="someone")
        assert store.get_run("old-run").owner == "someone"
        store.set_labels("old-run", name="first try", tags="old, kept")
        labelled = store.get_run("old-run")
        assert (labelled.label, labelled.tags) == ("first try", ["old", "kept"])


def test_labels_round_trip_and_refuse_bad_input(store: RunStore) -> None:
    run_id = store.create_run("sar-baseline", "sar", {"lr": 1e-3})
    assert store.get_run(run_id).label == run_id  # no name yet: the id
    record = store.set_labels(run_id, name="  lr sweep · 3e-4 ", tags="sweep, lr,sweep, ", note="two\nlines")
    assert (record.name, record.tags, record.note, record.label) == (
        "lr sweep · 3e-4",
        ["sweep", "lr"],
        "two\nlines",
        "lr sweep · 3e-4",
    )
    # A second store (another process) reads the same labels; None leaves a label, "" clears it.
    with RunStore(store.runs_dir) as other:
        other.set_labels(run_id, tags=["baseline"], note="")
        assert (other.get_run(run_id).name, other.get_run(run_id).tags) == ("lr sweep · 3e-4", ["baseline"])
    assert store.get_run(run_id).note is None
    store.set_labels(run_id, name="")
    assert store.get_run(run_id).label == run_id
    for kwargs, message in [
        ({"name": "a\nb"}, "must be one line"),
        ({"name": "x" * 81}, "at most 80"),
        ({"tags": "two words"}, "invalid tag 'two words'"),
        ({"tags": 3}, "tags must be a list"),
        ({"tags": [f"t{i}" for i in range(17)]}, "at most 16 tags"),
        ({"note": 5}, "note must be text"),
    ]:
        with pytest.raises(ValueError, match=message):
            store.set_labels(run_id, **kwargs)
    assert store.get_run(run_id).tags == ["baseline"]  # nothing changed by the refused calls
    with pytest.raises(ValueError, match="no run with id 'nope'"):
        store.set_labels("nope", name="x")


def test_recent_steps_are_the_last_train_loss_rows(store: RunStore) -> None:
    run_id = store.create_run("sar-baseline", "sar", {})
    for step in range(1, 31):
        store.log_metrics(run_id, step * 5, 0, "train", {"loss": 1.0}, time=100.0 + step)
        store.log_metrics(run_id, step * 5, 0, "val", {"loss": 1.0}, time=100.0 + step)
    assert store.recent_steps(run_id, 3) == [(140, 128.0), (145, 129.0), (150, 130.0)]
    assert store.recent_steps(store.create_run("sar-baseline", "sar", {})) == []
