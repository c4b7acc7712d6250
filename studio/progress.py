"""How far a run is and what it costs right now: progress, speed and ETA from the run store, and the trainer
process's CPU, memory and (where NVML is present) GPU use.

Everything here is read on each poll of the Train tab, so it stays cheap: one small indexed query per running
run for its speed, and procfs reads of a few files per trainer process. NVML (``pynvml`` / ``nvidia-ml-py``)
is used only where it is installed and a driver answers; elsewhere the GPU columns say so.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# Run settings copied from the stored config into each jobs-table row, to tell runs apart.
SETTINGS: tuple[str, ...] = ("preset", "epochs", "batch_size", "lr", "data", "seed", "precision", "max_steps")
# Train/loss rows the speed is measured over: recent enough to follow a change, long enough to be steady.
RATE_ROWS = 20
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_cpu_samples: dict[int, tuple[float, float]] = {}  # pid -> (cpu seconds, wall time) at the last reading
_cpu_lock = threading.Lock()


def planned_steps(config: Mapping[str, Any], steps_per_epoch: int | None) -> int | None:
    """The steps a run will make: epochs × steps per epoch, capped by max_steps; None while unknown."""
    epochs = config.get("epochs")
    max_steps = config.get("max_steps")
    total = None
    if steps_per_epoch and isinstance(epochs, int) and epochs > 0:
        total = epochs * int(steps_per_epoch)
    if isinstance(max_steps, int) and not isinstance(max_steps, bool) and max_steps > 0:
        total = max_steps if total is None else min(total, max_steps)
    return total


def steps_per_second(recent: list[tuple[int, float]]) -> float | None:
    """Speed over the recent (step, time) rows: steps made / seconds between the first and last row."""
    if len(recent) < 2:
        return None
    (s0, t0), (s1, t1) = recent[0], recent[-1]
    if t1 <= t0 or s1 <= s0:
        return None
    return (s1 - s0) / (t1 - t0)


def progress(run: Any, recent: list[tuple[int, float]] | None = None, now: float | None = None) -> dict:
    """Progress fields of one run (a ``RunRecord``): epoch_now, epochs, total_steps, percent, steps_per_s
    and eta_s (None where unknown). ``recent`` is ``RunStore.recent_steps`` of a running run.

    The stored ``epoch`` is the epoch in progress (0-based) while steps are logged and the number of finished
    epochs after each validation, so a running run shows epoch ``epoch + 1`` (at most the planned count)."""
    config = run.config or {}
    epochs = config.get("epochs") if isinstance(config.get("epochs"), int) else None
    total = planned_steps(config, run.steps_per_epoch)
    step = run.step or 0
    epoch = run.epoch or 0
    if run.status == "running":
        epoch_now = epoch + 1 if step else epoch
        if epochs:
            epoch_now = min(epoch_now, epochs)
    else:
        epoch_now = epoch
    percent = None
    if total:
        percent = 100.0 if run.status == "completed" else min(100.0, 100.0 * step / total)
    rate = steps_per_second(recent or []) if run.status == "running" else None
    if rate is None and run.status != "queued" and run.started_at and step:
        end = run.ended_at or (time.time() if now is None else now)
        rate = step / (end - run.started_at) if end > run.started_at else None
    eta = None
    if run.status == "running" and rate and total and total > step:
        eta = (total - step) / rate
    return {
        "epoch_now": epoch_now,
        "epochs": epochs,
        "total_steps": total,
        "percent": percent,
        "steps_per_s": rate,
        "eta_s": eta,
    }


# ---------------------------------------------------------------------------------------- resources
def _proc_cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime + stime of this process
    except (OSError, ValueError, IndexError):
        return None


def _proc_rss(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, ValueError):
                kids += [int(k) for k in (task / "children").read_text().split()]
    return kids


def process_usage(pid: int | None) -> dict[str, float | None]:
    """CPU % (of one core, since the last reading of this pid) and resident memory in bytes of a trainer and
    its worker processes. psutil where installed, else procfs; the first reading of a pid has no CPU % yet.
    """
    if not pid:
        return {"cpu_percent": None, "rss_bytes": None}
    pids = [pid, *_children(pid)]
    try:
        import psutil  # noqa: PLC0415 - optional

        cpu, rss = 0.0, 0
        for p in pids:
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(p)
                times = proc.cpu_times()
                cpu += times.user + times.system
                rss += proc.memory_info().rss
    except ImportError:
        cpu_values = [_proc_cpu_seconds(p) for p in pids]
        rss_values = [_proc_rss(p) for p in pids]
        if cpu_values[0] is None:
            return {"cpu_percent": None, "rss_bytes": None}
        cpu = sum(v for v in cpu_values if v is not None)
        rss = sum(v for v in rss_values if v is not None)
    now = time.monotonic()
    with _cpu_lock:
        before = _cpu_samples.get(pid)
        _cpu_samples[pid] = (cpu, now)
    percent = None
    if before is not None and now > before[1]:
        percent = max(0.0, 100.0 * (cpu - before[0]) / (now - before[1]))
    return {"cpu_percent": percent, "rss_bytes": float(rss)}


def gpu_usage(pids: list[int]) -> dict[int, dict[str, float]]:
    """pid -> {"gpu_memory_bytes", "gpu_util_percent", "gpu_index"} for the pids NVML sees on a GPU; empty
    where pynvml is not installed or no driver answers. Utilisation is the whole GPU's (NVML has no
    per-process figure that every driver gives), so jobs sharing a GPU show the same value."""
    if not pids:
        return {}
    try:
        import pynvml  # noqa: PLC0415 - optional
    except ImportError:
        return {}
    wanted = set(pids)
    found: dict[int, dict[str, float]] = {}
    try:
        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - no driver: no GPU figures
        return {}
    try:
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            util = float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
            for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if proc.pid in wanted:
                    memory = proc.usedGpuMemory
                    found[proc.pid] = {
                        "gpu_index": float(index),
                        "gpu_util_percent": util,
                        "gpu_memory_bytes": float(memory) if isinstance(memory, int) else math.nan,
                    }
    except Exception:  # noqa: BLE001 - a driver hiccup must not break the jobs table
        return found
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()
    return found


def queue_positions(runs: list[Any]) -> dict[str, int]:
    """run id -> place in the queue (1 = next to start) of the queued runs, in the order they start."""
    queued = sorted((r for r in runs if r.status == "queued"), key=lambda r: (r.created_at, r.id))
    return {run.id: i for i, run in enumerate(queued, 1)}
