"""The jobs table's rows: one dict per run, read from the run store, with progress, the key metric's best
value and, for running trainers of this host, CPU, memory and GPU use."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from studio.backends.base import describe_host
from trainers.runs.store import RunRecord, RunStore

# The domain's headline validation metric for the jobs table, first one present wins.
KEY_METRICS: dict[str, tuple[str, ...]] = {
    "sar": ("psnr",),
    "audio": ("loss",),
    "fragments": ("accuracy_corrupted", "loss"),
}


def key_metric(store: RunStore, run: RunRecord) -> tuple[str | None, float | None]:
    """("val/<name>", its best value or None) of the run's domain's key metric."""
    best = store.best_metrics(run.id)
    for name in KEY_METRICS.get(run.domain, ("loss",)):
        value = best.get(name)
        if value is not None and math.isfinite(value):
            return f"val/{name}", value
    names = KEY_METRICS.get(run.domain, ("loss",))
    return f"val/{names[0]}", None


def _reason(store: RunStore, run: RunRecord) -> str:
    """The run's reason, and the trainer's collapse warning where it raised one (its run folder's
    collapse.json), so a collapsed model is flagged in the table after it ends too."""
    from trainers.metrics.collapse import collapse_note

    note = "" if run.status == "queued" else collapse_note(store.run_dir(run.id))
    if not note or note in run.reason:  # while it runs the trainer puts the warning in its reason itself
        return run.reason
    return f"{run.reason} · {note}" if run.reason else note


# An ended run's key metric and reason do not change until the run does (a resume changes its status), so
# they are read once per ended run, not once per poll: a table of 1,000 runs then costs one listing of the
# runs instead of 2,000 reads (benchmarks/jobs_table.py).
# (store path, run id) -> (stamp, metric, best, reason).
_ENDED: dict[tuple[str, str], tuple[tuple[Any, ...], str | None, float | None, str]] = {}


def _facts(store: RunStore, run: RunRecord) -> tuple[str | None, float | None, str]:
    """(key metric, its best value, reason) of a run; an ended run's from the memo while it is unchanged."""
    if not run.is_terminal:
        return (*key_metric(store, run), _reason(store, run))
    key = (str(store.path), run.id)
    stamp = (run.status, run.ended_at, run.step, run.reason)
    hit = _ENDED.get(key)
    if hit is not None and hit[0] == stamp:
        return hit[1], hit[2], hit[3]
    metric, best = key_metric(store, run)
    reason = _reason(store, run)
    _ENDED[key] = (stamp, metric, best, reason)
    return metric, best, reason


def _forget_deleted(store: RunStore, runs: list[RunRecord]) -> None:
    """Drop the memo's entries of this store's runs that are gone (deleted runs, a replaced store)."""
    path, present = str(store.path), {run.id for run in runs}
    for key in [k for k in list(_ENDED) if k[0] == path and k[1] not in present]:
        _ENDED.pop(key, None)


def anonymous_row(run: RunRecord, place: int | None, wait: float | None) -> dict[str, Any]:
    """Another visitor's queued or running job as the jobs table shows it on a Space: no id, name, labels,
    settings or owner, only that it holds a place in the queue."""
    return {
        "id": "",
        "anonymous": True,
        "status": run.status,
        "domain": None,
        "queue_position": place,
        "queue_wait_s": wait,
    }


def job_rows(
    store: RunStore,
    host: str,
    has_gpus: bool,
    queue_wait: Callable[[int | None], float | None],
    visible: Callable[[RunRecord], bool] | None = None,
) -> list[dict[str, Any]]:
    """One row per run, newest first (see ``JobManager.jobs`` for the keys); `host` is this machine's name,
    `queue_wait` the estimated wait of a queue place; runs that are not `visible` (to the visitor asking)
    are left out, or anonymous rows while queued or running."""
    from studio.progress import SETTINGS, gpu_usage, process_usage, progress, queue_positions

    now = time.time()
    rows = []
    runs = store.list_runs()
    places = queue_positions(runs)
    local = [r.pid for r in runs if r.status == "running" and r.pid and r.host in (None, host)]
    gpus = gpu_usage(local) if has_gpus else {}
    for run in runs:
        if visible is not None and not visible(run):
            if run.status in ("queued", "running"):
                rows.append(anonymous_row(run, places.get(run.id), queue_wait(places.get(run.id))))
            continue
        metric, best, reason = _facts(store, run)
        elapsed = None
        if run.started_at is not None:
            elapsed = round(max(0.0, (run.ended_at or now) - run.started_at), 1)
        recent = store.recent_steps(run.id) if run.status == "running" else None
        usage = process_usage(run.pid) if run.pid in local else {}
        rows.append(
            {
                "id": run.id,
                "variant": run.variant,
                "domain": run.domain,
                "status": run.status,
                "epoch": run.epoch,
                "step": run.step,
                "metric": metric,
                "best": best,
                "elapsed": elapsed,
                "device": run.device,
                "where": describe_host(run.host, ended=run.is_terminal),
                "reason": reason,
                "study": run.config.get("study") or None,
                "name": run.name,
                "tags": list(run.tags),
                "note": run.note,
                "created_at": run.created_at,
                "steps_per_epoch": run.steps_per_epoch,
                **{key: run.config.get(key) for key in SETTINGS},
                **progress(run, recent, now),
                "queue_position": places.get(run.id),
                "queue_wait_s": queue_wait(places.get(run.id)),
                **usage,
                **gpus.get(run.pid or -1, {}),
            }
        )
    _forget_deleted(store, runs)
    return rows
