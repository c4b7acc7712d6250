"""Issue 19's resume duplicates, replayed: a trainer SIGKILLed at each point between a logged metric row and
a saved checkpoint (a kill hook, not a timer), then resumed, ends with every (split, metric, step) once in
queries, curves and exports, and none lost; plus the same through the fault campaign's own code."""

from __future__ import annotations

import json
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from benchmarks.fault_campaign import (
    EPOCHS,
    Injection,
    Outcome,
    audit,
    fragment_folder,
    inject,
    plan,
    run_campaign,
    summary,
)
from trainers.runs.export import csv_text, jsonl_text
from trainers.runs.faults import KILL_POINTS
from trainers.runs.store import RunStore


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fragment_folder(tmp_path_factory.mktemp("fragments"))


def _where(point: str) -> str:
    """The kill point's arrival in epoch 2 (train rows come twice an epoch: the third is epoch 2's first)."""
    return f"{point}:{3 if point == 'train-row' else 2}"


@pytest.fixture(scope="module")
def killed(data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Outcome, Path]]:
    """Every kill point's injection and resume, three at a time (each trainer is its own one-thread process,
    as in the fault campaign): the outcome and the folder of its runs, by kill point. One arrival in epoch 2,
    when epoch 1's `last` exists, so each is a resume and not a fresh start (train rows come twice an epoch:
    the third is epoch 2's first)."""

    def one(point: str) -> tuple[str, tuple[Outcome, Path]]:
        base = tmp_path_factory.mktemp(point)
        return point, (inject(Injection("kill", _where(point)), base, data), base)

    with ThreadPoolExecutor(3) as pool:
        return dict(pool.map(one, KILL_POINTS))


@pytest.mark.timeout(600)
@pytest.mark.parametrize("point", KILL_POINTS)
def test_a_kill_at_each_point_then_resume_leaves_each_row_once(
    point: str, killed: dict[str, tuple[Outcome, Path]]
) -> None:
    outcome, tmp_path = killed[point]
    assert outcome.struck, f"the trainer was never killed at {_where(point)}"
    assert outcome.restarts == 0 and outcome.attempts == 2
    assert outcome.status == "completed", outcome.problems
    assert (outcome.duplicates, outcome.lost) == (0, 0), outcome.problems
    with RunStore(tmp_path / "runs") as store:
        [run] = store.list_runs()
        rows, _ = store.metrics_after(0, run_ids=[run.id])
        series = store.metric_series(run.id, "train/loss")
    assert run.step == rows[-1].step and run.epoch == EPOCHS
    # curves read one value per step; the CSV export has one train row and one val row per logged step
    assert len(series) == len({s for s, _ in series})
    lines = csv_text(rows).splitlines()[1:]
    assert len(lines) == len({(r.step, r.split) for r in rows})
    # train and validation rows of one step carry the same epoch number
    epochs = {(r.split, r.step): r.epoch for r in rows}
    for split, step in epochs:
        if split == "val" and ("train", step) in epochs:
            assert epochs[("train", step)] == epochs[("val", step)]


def test_resume_supersedes_the_killed_attempts_rows(killed: dict[str, tuple[Outcome, Path]]) -> None:
    """The reproduction's shape: killed after an epoch's rows but before `last` (at "last-files:2"); the
    superseded rows stay in the database (nothing deleted) but no query, curve or export shows them."""
    outcome, tmp_path = killed["last-files"]
    assert outcome.ok, outcome.problems
    with RunStore(tmp_path / "runs") as store:
        [run] = store.list_runs()
        visible, _ = store.metrics_after(0, run_ids=[run.id])
    with sqlite3.connect(tmp_path / "runs" / "runs.sqlite") as conn:
        stored, superseded = conn.execute("SELECT COUNT(*), SUM(superseded) FROM metrics").fetchone()
        killed_steps = {s for (s,) in conn.execute("SELECT step FROM metrics WHERE superseded = 1")}
    assert superseded > 0 and stored == len(visible) + superseded
    # the killed attempt's steps were logged again by the resumed one, each once
    exported = [(p["key"], p["step"]) for p in map(json.loads, jsonl_text(visible).splitlines())]
    assert len(exported) == len(set(exported))
    assert killed_steps <= {step for _, step in exported}


def test_the_campaign_runs_a_handful_of_injections_through_the_same_code(tmp_path: Path) -> None:
    injections = [
        Injection("kill-twice", "val-row:2", "last-manifest:1"),
        Injection("cancel", "validation"),
        Injection("timed-kill", "5.0s"),
        Injection("app-trainer-kill", "0.5s"),  # the studio's job manager and its trainer, both killed
    ]
    outcomes = run_campaign(injections, workers=4, keep=tmp_path)
    result = summary(outcomes)
    assert result["injections"] == 4 and result["completed"] == 4, result["failed_injections"]
    assert (result["duplicate_rows"], result["lost_rows"]) == (0, 0), result["failed_injections"]
    assert result["failed_injections"] == [] or all(
        not o["struck"] and o["label"].startswith("timed-kill") for o in result["failed_injections"]
    )


def test_the_full_plan_has_at_least_60_injections_of_every_kind() -> None:
    injections = plan()
    kinds = {i.kind for i in injections}
    assert len(injections) >= 60 and kinds == {
        "kill",
        "kill-twice",
        "cancel",
        "timed-kill",
        "app-kill",
        "app-trainer-kill",
    }
    assert {i.where.split(":")[0] for i in injections if i.kind == "kill"} == set(KILL_POINTS)


def test_audit_counts_a_duplicate_and_a_lost_row(tmp_path: Path) -> None:
    """The audit itself can fail: a row logged twice at one step and a missing validation are counted."""
    with RunStore(tmp_path) as store:
        run_id = store.create_run("fragment-dae", "fragments", {})
        for step in (5, 7, 12, 14):
            store.log_metrics(run_id, step, 1 + (step > 7), "train", {"loss": 0.1})
        store.log_metrics(run_id, 14, 2, "train", {"loss": 0.2})  # the duplicate
        store.log_metrics(run_id, 7, 1, "val", {"loss": 0.1})
        store.log_metrics(run_id, 14, 2, "val", {"loss": 0.1})
        store.update_run(run_id, step=14)
    duplicates, lost, problems = audit(tmp_path, run_id)
    assert duplicates == 2  # once in the query, once in the export
    assert lost == 1 and "2 validations for 3 epochs" in problems[-1]


def test_the_plans_random_delays_scale_with_the_measured_run_length() -> None:
    """The timed faults are drawn for the run the machine gives: on a quiet machine (a short run) they
    must fall inside it, at the same fractions of the run as on a loaded one."""
    slow, quick = plan(run_seconds=25.0), plan(run_seconds=5.0)
    assert [i.kind for i in slow] == [i.kind for i in quick]
    timed = [(a.where, b.where) for a, b in zip(slow, quick, strict=True) if a.where.endswith("s")]
    assert len(timed) == 6 + 13 + 4 + 4  # random cancels, timed kills, app kills, app + trainer kills
    for a, b in timed:
        assert float(b[:-1]) == pytest.approx(float(a[:-1]) / 5, abs=0.01)
        assert 0 <= float(b[:-1]) <= 5.0
    fixed = [(a.where, b.where) for a, b in zip(slow, quick, strict=True) if not a.where.endswith("s")]
    assert all(a == b for a, b in fixed)
