"""Throughput and latency of the Ray result sink under many trainers at once (issue: 20 concurrent jobs
logging every step, p95 latency <= 2 s from a metric logged on the worker to its row in the studio's store,
no backlog that grows).

A two-node `ray.cluster_utils.Cluster` on this machine: the head holds the studio's sink actor
(`trainers.runs.ray_sink.start_sink`), the worker node runs N Ray tasks, each a stand-in trainer with its own
node-local `SinkStore` that logs one metric row every `interval_ms` for `seconds`. Meanwhile this driver
polls the studio's store as the curves do (`metrics_after`) and notes when each row arrives:

- latency = arrival seen by the poller - the row's time (stamped by `log_metrics` on the worker; one clock);
- backlog(t) = rows logged by t - rows arrived by t, compared between the second and the last third of the
  run (a backlog that grows gets larger in the last third);
- the trainers' own view: the most writes a trainer had unacknowledged, and the rows it logged per second
  (a sink that held them back would lower it).

    python -m benchmarks.ray_sink_throughput                   # 20 trainers, 5 ms, 10 s
    python -m benchmarks.ray_sink_throughput --trainers 4 --seconds 3 --no-write
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import REPO_ROOT, Figure, format_table, quantile, write_result  # noqa: E402

RESULT_FILE = REPO_ROOT / "benchmarks" / "results" / "ray_sink.json"
POLL_S = 0.02


class _Gate:
    """Holds every stand-in trainer until all have started (worker processes start one by one), so the
    N trainers really log at the same time."""

    def __init__(self) -> None:
        self.arrived = 0
        self.go_at: float | None = None

    def arrive(self) -> None:
        self.arrived += 1

    def state(self) -> tuple[int, float | None]:
        return self.arrived, self.go_at

    def open(self, at: float) -> None:
        self.go_at = at


def _trainer(sink_name: str, run_id: str, local_dir: str, gate: Any, seconds: float, interval: float):
    """One stand-in trainer: a row every `interval` s through a SinkStore, as `_flush` logs train/loss."""
    import ray

    from trainers.runs.ray_sink import SinkStore, get_sink

    store = SinkStore(local_dir, get_sink(sink_name), sink_name=sink_name, host="ray:bench")
    try:
        store.pull_run(run_id)
        ray.get(gate.arrive.remote())
        while (go_at := ray.get(gate.state.remote())[1]) is None:
            time.sleep(0.05)
        time.sleep(max(0.0, go_at - time.time()))
        step, most, started = 0, 0, time.monotonic()
        next_at = started
        while time.monotonic() - started < seconds:
            step += 1
            store.log_metrics(run_id, step, 0, "train", {"loss": 1.0 / step})
            most = max(most, store.unacknowledged)
            next_at += interval
            time.sleep(max(0.0, next_at - time.monotonic()))
        elapsed = time.monotonic() - started
        flushed = store.flush(60)
        return {
            "run_id": run_id,
            "rows": step,
            "rows_per_s": step / elapsed,
            "most_unacked": most,
            "flushed": flushed,
            "lost": store.lost,
            "batches": store.sent_batches,
        }
    finally:
        store.close()


def measure_sink(
    trainers: int = 20, interval_ms: float = 5.0, seconds: float = 10.0
) -> tuple[list[Figure], dict]:
    import ray
    from ray.cluster_utils import Cluster

    from trainers.runs.ray_sink import SINK_NAMESPACE, sink_name, start_sink, stop_sink
    from trainers.runs.store import RunStore

    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
    tmp = Path(tempfile.mkdtemp(prefix="ray-sink-bench-"))
    home = tmp / "studio-runs"
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1, resources={"trainer_slots": trainers})
    try:
        ray.init(address=cluster.address, namespace=SINK_NAMESPACE, log_to_driver=False)
        start_sink(home)
        name = sink_name(home)
        store = RunStore(home)
        run_ids = [
            store.create_run("fragment-dae", "fragments", {}, run_id=f"bench-{i:02d}")
            for i in range(trainers)
        ]
        remote = ray.remote(_trainer).options(num_cpus=0, resources={"trainer_slots": 1})
        gate = ray.remote(_Gate).options(num_cpus=0).remote()
        refs = [
            remote.remote(name, rid, str(tmp / "node" / rid), gate, seconds, interval_ms / 1000)
            for rid in run_ids
        ]
        deadline = time.monotonic() + 300
        while ray.get(gate.state.remote())[0] < trainers:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"only {ray.get(gate.state.remote())[0]} of {trainers} trainers started in 300 s"
                )
            time.sleep(0.1)
        ray.get(gate.open.remote(time.time() + 0.5))
        arrivals: list[tuple[float, float]] = []  # (logged at, arrived at)
        cursor = 0
        pending = list(refs)
        while pending:
            rows, cursor = store.metrics_after(cursor, run_ids=run_ids)
            now = time.time()
            arrivals.extend((row.time, now) for row in rows)
            _, pending = ray.wait(pending, num_returns=len(pending), timeout=0)
            time.sleep(POLL_S)
        rows, cursor = store.metrics_after(cursor, run_ids=run_ids)
        now = time.time()
        arrivals.extend((row.time, now) for row in rows)
        results = ray.get(refs)
        sink_stats = ray.get(ray.get_actor(name, namespace=SINK_NAMESPACE).stats.remote())
        stop_sink(home)
        store.close()
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)

    logged = sum(r["rows"] for r in results)
    latencies = [arrived - at for at, arrived in arrivals]
    t0 = min(at for at, _ in arrivals)
    span = max(at for at, _ in arrivals) - t0

    def backlog(t: float) -> int:
        return sum(1 for at, _ in arrivals if at <= t) - sum(1 for _, arrived in arrivals if arrived <= t)

    def mean_backlog(lo: float, hi: float) -> float:
        points = [t0 + span * (lo + (hi - lo) * k / 20) for k in range(21)]
        return statistics.fmean(backlog(t) for t in points)

    middle, late = mean_backlog(1 / 3, 2 / 3), mean_backlog(2 / 3, 1.0)
    p50, p95, worst = quantile(latencies, 0.5), quantile(latencies, 0.95), max(latencies)
    rate = statistics.fmean(r["rows_per_s"] for r in results)
    aimed = 1000.0 / interval_ms
    grows = late > max(2.0 * middle, middle + 2 * trainers)
    where = f"{trainers} trainers x 1 row / {interval_ms:g} ms for {seconds:g} s, 2 nodes on one machine"
    figures = [
        Figure("ray_sink/latency_p50", f"sink latency p50 ({where})", p50, "s"),
        Figure(
            "ray_sink/latency_p95",
            "sink latency p95, logged on the worker -> row in the studio store",
            p95,
            "s",
            bound=2.0,
            goal="max",
            note=f"max {worst:.3f} s over {len(latencies)} rows",
        ),
        Figure(
            "ray_sink/backlog_growth",
            "sink backlog, last third / middle third of the run (mean rows)",
            (late + 1) / (middle + 1),
            "x",
            bound=2.0,
            goal="max",
            note=f"mean backlog {middle:.1f} rows (middle third), {late:.1f} (last third); "
            f"{'grows' if grows else 'does not grow'}",
        ),
        Figure(
            "ray_sink/rate_share",
            "rows logged per trainer / rows asked for (back-pressure cost)",
            100.0 * rate / aimed,
            "%",
            note=f"{rate:.0f} of {aimed:.0f} rows/s per trainer; "
            "below 100 % where the sink or the shared CPUs held the trainers back",
        ),
    ]
    detail = {
        "trainers": trainers,
        "interval_ms": interval_ms,
        "seconds": seconds,
        "rows_logged": logged,
        "rows_arrived": len(arrivals),
        "lost": sum(r["lost"] for r in results),
        "all_flushed": all(r["flushed"] for r in results),
        "most_unacknowledged": max(r["most_unacked"] for r in results),
        "batches": sum(r["batches"] for r in results),
        "rows_per_s_total": len(arrivals) / span if span > 0 else None,
        "backlog_middle_third": middle,
        "backlog_last_third": late,
        "backlog_grows": grows,
        "latency_p99_s": quantile(latencies, 0.99),
        "latency_max_s": worst,
        "sink": sink_stats,
    }
    return figures, detail


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trainers", type=int, default=20)
    parser.add_argument("--interval-ms", type=float, default=5.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--no-write", action="store_true", help=f"do not write {RESULT_FILE.name}")
    args = parser.parse_args(argv)
    started = time.monotonic()
    figures, detail = measure_sink(args.trainers, args.interval_ms, args.seconds)
    print(json.dumps(detail, indent=1))
    print(format_table(figures))
    if not args.no_write:
        settings = {"trainers": args.trainers, "interval_ms": args.interval_ms, "seconds": args.seconds}
        write_result(RESULT_FILE, settings, started, figures, detail)
    return 0


if __name__ == "__main__":
    sys.exit(main())
