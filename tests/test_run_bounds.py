"""Issue 19's blocker, replayed: a seed of 1e30 (API) or 10**23 (CLI) is refused in the one validation layer
with a one-sentence message and leaves nothing behind; the store refuses what it could not read back, and
the runs listing (the studio's /jobs) survives any single bad row already stored."""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import smoke_train
from trainers.runs.store import RunStore
from trainers.settings import WHOLE_MAXIMUM, validate_run

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"seed": 1e30}, r"seed must be a whole number from 0 to 4294967295, got 1e\+30"),
        ({"seed": 10**23}, "seed must be a whole number from 0 to 4294967295, got 100000000000000000000000"),
        ({"seed": 2**32}, "seed must be a whole number from 0 to 4294967295"),
        ({"seed": "1e30"}, "seed must be a whole number from 0 to 4294967295"),
        ({"epochs": 10**12}, "epochs must be a whole number from 1 to 1000000"),
        ({"batch_size": 2**40}, "batch size must be a whole number from 1 to 1048576"),
        ({"max_steps": 2**70}, "max_steps must be a whole number from 1 to 1000000000"),
        ({"num_workers": 10**6}, "num_workers must be a whole number from 0 to 256"),
        ({"log_every": 10**30}, "log_every must be a whole number from 1 to 1000000"),
        ({"lr": 1e31}, r"learning rate must be at most 1e\+30"),
        ({"kl_weight": 1e300}, r"kl_weight must be at most 1e\+06"),
        ({"model": {"widths": [8, 10**20]}}, "model setting 'widths' must hold numbers from 0 to 65536"),
        ({"model": {"dropout": math.inf}}, "model setting 'dropout' must hold numbers from 0 to 65536"),
        # The data spec's numbers too: audio:n=1e23 reached the data set ("OverflowError: cannot fit 'int'
        # into an index-sized integer", a failed run with a traceback).
        ({"data": "fragments:n=100000000000000000000000"}, "'n' .*an integer >= 1 and <= 1000000000"),
        ({"data": "fragments:python,max_files=10000000000"}, "'max_files' .*and <= 1000000000"),
        ({"data": "fragments:seed=4294967296"}, "'seed' .*expected an integer >= 0 and <= 4294967295"),
        ({"data": "fragments:val=10000000000"}, "'val' .*a count >= 1 and <= 1000000000"),
    ],
)
def test_every_numeric_setting_is_bounded(settings: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_run("fragment-dae", "smoke", **settings)


@pytest.mark.parametrize(
    ("variant", "data", "key"),
    [
        ("audio-vae", "audio:n=100000000000000000000000", "n"),
        ("sar-baseline", "sar:size=1048576", "size"),
        ("sar-baseline", "sar:looks=1e300", "looks"),
        ("sar-baseline", "sar:folder=/x,band=70000", "band"),
    ],
)
def test_data_spec_numbers_of_every_domain_are_bounded(variant: str, data: str, key: str) -> None:
    with pytest.raises(ValueError, match=f"invalid value .* for data key '{key}'.*(<=|at most) "):
        validate_run(variant, "smoke", data=data)


def test_the_bounds_themselves_are_accepted() -> None:
    cfg = validate_run("fragment-dae", "smoke", seed=2**32 - 1, lr=1e9, epochs=WHOLE_MAXIMUM["epochs"])
    assert (cfg.seed, cfg.lr, cfg.epochs) == (2**32 - 1, 1e9, 1_000_000)


def test_cli_huge_seed_is_one_sentence_and_leaves_no_database(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    args = smoke_train("fragment-dae", runs, "--seed", "100000000000000000000000")
    done = subprocess.run(
        [sys.executable, "-m", "trainers", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "error: seed must be a whole number from 0 to 4294967295, got 100000000000000000000000"
    )
    assert "Traceback" not in done.stderr + done.stdout
    assert not runs.exists()  # no runs folder, no runs.sqlite


def test_store_refuses_values_it_could_not_read_back(tmp_path: Path) -> None:
    with RunStore(tmp_path) as store:
        with pytest.raises(ValueError, match=r"config.seed is 10{30}, beyond the 64-bit integers"):
            store.create_run("fragment-dae", "fragments", {"seed": 10**30})
        with pytest.raises(ValueError, match=r"config.model.dropout is nan, which the run store cannot hold"):
            store.create_run("fragment-dae", "fragments", {"model": {"dropout": math.nan}})
        run_id = store.create_run("fragment-dae", "fragments", {"seed": 2**63 - 1})
        with pytest.raises(ValueError, match="run column step is 1180591620717411303424, beyond the 64-bit"):
            store.update_run(run_id, step=2**70)
        with pytest.raises(ValueError, match="step must be a non-negative int of at most 64 bits"):
            store.log_metrics(run_id, 2**64, 0, "train", {"loss": 1.0})
        with pytest.raises(ValueError, match=r"config.lr is inf"):
            store.update_run(run_id, config={"lr": math.inf})
        # nothing of the refused writes is there: one run, its config and columns as first written
        [run] = store.list_runs()
        assert (run.id, run.config, run.step) == (run_id, {"seed": 2**63 - 1}, None)
        assert store.metrics_after(0) == ([], 0)


def _insert_raw(path: Path, run_id: str, config_text: str) -> None:
    """A row written behind the store's back (an older version, or an edit by hand)."""
    with sqlite3.connect(path) as conn:
        conn.execute(
            "INSERT INTO runs (id, variant, domain, config, status, reason, created_at)"
            " VALUES (?, 'fragment-dae', 'fragments', ?, 'failed', '', 1.0)",
            (run_id, config_text),
        )


def test_listing_skips_and_logs_each_bad_row(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with RunStore(tmp_path) as store:
        good = store.create_run("fragment-dae", "fragments", {"seed": 1})
        _insert_raw(store.path, "huge-seed", '{"seed": 1000000000000000000000000000000}')
        _insert_raw(store.path, "not-json", "{seed")
        _insert_raw(store.path, "a-list", "[1, 2]")
        with caplog.at_level(logging.WARNING, logger="trainers.runs.records"):
            runs = store.list_runs()
        assert [r.id for r in runs] == [good]
        for bad in ("huge-seed", "not-json", "a-list"):
            assert f"skipping run '{bad}'" in caplog.text
            with pytest.raises(ValueError, match=f"run '{bad}' has a stored record that cannot be read"):
                store.get_run(bad)
        # what the studio's /jobs serialises: every field of every listed run is plain JSON
        json.dumps([vars(r) for r in runs], allow_nan=False)


def test_cli_runs_lists_the_good_runs_beside_a_bad_row(tmp_path: Path) -> None:
    with RunStore(tmp_path) as store:
        good = store.create_run("fragment-dae", "fragments", {"seed": 1}, status="completed")
        _insert_raw(store.path, "huge-seed", '{"seed": 1000000000000000000000000000000}')
    done = subprocess.run(
        [sys.executable, "-m", "trainers", "runs", "--runs-dir", str(tmp_path), "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert [row["id"] for row in json.loads(done.stdout)] == [good]
    assert "skipping run 'huge-seed'" in done.stderr


def test_api_huge_seed_is_refused_and_jobs_survive_a_bad_row(client, studio) -> None:
    """The reproduction through gradio_client: /launch with seed=1e30 answers with the bound and creates no
    run; a bad row already in the studio's database does not break /jobs for anyone."""
    before = {row["id"] for row in client.predict(api_name="/jobs")}
    status, *_ = client.predict(
        variants=["fragment-dae"],
        preset="smoke",
        epochs="",
        batch_size="",
        lr="",
        data="",
        seed=1e30,
        device="auto",
        plotted_runs=[],
        api_name="/launch",
    )
    assert "seed must be a whole number from 0 to 4294967295" in status
    _insert_raw(studio.runs_dir / "runs.sqlite", "zz-bad-row", '{"seed": 1000000000000000000000000000000}')
    try:
        rows = client.predict(api_name="/jobs")
        assert {row["id"] for row in rows} == before  # the refused launch added nothing; the bad row skipped
    finally:
        with sqlite3.connect(studio.runs_dir / "runs.sqlite") as conn:
            conn.execute("DELETE FROM runs WHERE id = 'zz-bad-row'")
