"""Metric rows while a large checkpoint travels home through the Ray result sink (issue 19 item 7: a
`sar-attention` checkpoint with its optimiser state is ~290 MB).

A local Ray instance holds the studio's sink actor (`trainers.runs.ray_sink.start_sink`); this driver is the
stand-in trainer with its own `SinkStore`. Each round saves a checkpoint of `--mb` random bytes, hands it to
the store, and then logs one metric row every `--interval-ms` for `--seconds`, while a thread polls the
studio's store as the curves do and notes when each row arrives. Two ways of sending the checkpoint, in
alternating order, `--repeats` times:

- `one call`: the whole folder as bytes in one `put_files` write of the ordered queue (before this change),
  so every row logged after it waits until the sink has written the checkpoint;
- `pieces`: the FileSender (8 MB pieces through the sink's "files" concurrency group; the row pointing at the
  checkpoint follows when it is home), so rows go on meanwhile.

Figures: the worst and p95 latency of the rows logged while the checkpoint travelled (median over the
repeats, with their range), and how long the checkpoint took to land.

    python -m benchmarks.ray_checkpoint_transfer                 # 290 MB, 3 repeats
    python -m benchmarks.ray_checkpoint_transfer --mb 32 --repeats 1 --no-write
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import REPO_ROOT, Figure, format_table, quantile, write_result  # noqa: E402

RESULT_FILE = REPO_ROOT / "benchmarks" / "results" / "ray_checkpoint_transfer.json"
MODES = ("one call", "pieces")
POLL_S = 0.01


def _round(
    store: Any, home: Any, mode: str, folder: Path, seconds: float, interval: float
) -> dict[str, float]:
    """One checkpoint hand-over and the rows after it; latencies of the rows logged before it landed."""
    from trainers.runs.ray_sink import read_folder

    run_id = store.create_run("sar-attention", "sar", {}, status="running")
    arrived: dict[int, float] = {}
    landed: list[float] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            now = time.time()
            for step, _ in home.metric_series(run_id, "train/loss"):
                arrived.setdefault(step, now)
            if not landed and (run := home.get_run(run_id)) is not None and run.last_checkpoint:
                landed.append(now)
            time.sleep(POLL_S)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    pushed = time.time()
    if mode == "one call":  # the write as it was: every byte in one call of the ordered queue, then the row
        store._send("put_files", (run_id, "checkpoints/last", read_folder(folder)), {})
        store._send("update_run", (run_id,), {"last_checkpoint": str(folder)})
    else:
        store.update_run(run_id, last_checkpoint=str(folder))
    handed = time.time() - pushed
    logged: dict[int, float] = {}
    step = 0
    while time.time() - pushed < seconds:
        step += 1
        logged[step] = time.time()
        store.log_metrics(run_id, step, 0, "train", {"loss": 1.0 / step}, time=logged[step])
        time.sleep(interval)
    store.flush(300)
    deadline = time.time() + 120
    while (len(arrived) < step or not landed) and time.time() < deadline:
        time.sleep(POLL_S)
    stop.set()
    poller.join()
    land = landed[0] if landed else float("nan")
    steps = [s for s in logged if logged[s] < land and s in arrived]  # logged while it travelled
    during = [arrived[s] - logged[s] for s in steps]
    return {
        "handed_over_s": handed,
        "landed_s": land - pushed,
        "rows_during": len(steps),
        "rows_home_before_landing": sum(1 for s in steps if arrived[s] < land),
        "max_latency_s": max(during) if during else float("nan"),
        "p95_latency_s": quantile(during, 0.95) if during else float("nan"),
    }


def measure(mb: int, repeats: int, seconds: float, interval_ms: float) -> tuple[list[Figure], dict]:
    import ray

    from trainers.runs.ray_sink import SINK_NAMESPACE, SinkStore, get_sink, sink_name, start_sink
    from trainers.runs.store import RunStore

    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
    work = Path(tempfile.mkdtemp(prefix="ae-ckpt-bench-"))
    ray.init(
        address="local", num_cpus=2, include_dashboard=False, namespace=SINK_NAMESPACE, log_to_driver=False
    )
    rounds: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
    try:
        start_sink(work / "studio")
        name = sink_name(work / "studio")
        home = RunStore(work / "studio")
        folder = work / "checkpoint"
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(os.urandom(mb * 2**20))
        (folder / "manifest.json").write_text("{}")
        for r in range(repeats):
            for mode in MODES if r % 2 == 0 else MODES[::-1]:
                store = SinkStore(
                    work / f"node-{r}-{mode[0]}", get_sink(name), sink_name=name, host="ray:bench"
                )
                try:
                    rounds[mode].append(_round(store, home, mode, folder, seconds, interval_ms / 1000))
                finally:
                    store.close()
                print(mode, json.dumps(rounds[mode][-1]), file=sys.stderr)
        home.close()
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    figures = []
    for mode in MODES:
        for key, label in (
            ("max_latency_s", "worst row latency"),
            ("p95_latency_s", "p95 row latency"),
            ("landed_s", "checkpoint home after"),
        ):
            values = [r[key] for r in rounds[mode]]
            spread = f"median of {len(values)}, range {min(values):.2f}-{max(values):.2f} s"
            figures.append(
                Figure(
                    f"{mode.replace(' ', '_')}.{key}",
                    f"{mode}: {label} ({mb} MB)",
                    round(statistics.median(values), 3),
                    "s",
                    note=spread,
                )
            )
    return figures, {"mb": mb, "rounds": rounds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=290)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--interval-ms", type=float, default=20.0)
    parser.add_argument("--no-write", action="store_true", help=f"do not write {RESULT_FILE.name}")
    args = parser.parse_args(argv)
    started = time.monotonic()
    figures, detail = measure(args.mb, args.repeats, args.seconds, args.interval_ms)
    print(format_table(figures))
    if not args.no_write:
        settings = {
            "mb": args.mb,
            "repeats": args.repeats,
            "seconds": args.seconds,
            "interval_ms": args.interval_ms,
        }
        write_result(RESULT_FILE, settings, started, figures, detail)
    return 0


if __name__ == "__main__":
    sys.exit(main())
