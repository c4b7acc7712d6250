"""The trainer's own resource use as ``sys/…`` metrics (CPU %, resident memory, and on CUDA the GPU's
utilisation and this process's GPU memory), so the studio draws them as history curves beside the losses,
like W&B's system charts. Read with psutil (and torch.cuda / NVML on a GPU), at most once per interval.
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any

import psutil
import torch

SPLIT = "sys"
# Rows per minute stay small however short the steps: a long run logs ~6 sys points a minute.
INTERVAL_S = 10.0


class SystemSampler:
    """``sample()`` returns the metrics when ``interval`` has passed since the last sample, else None."""

    def __init__(self, device: torch.device | str, interval: float = INTERVAL_S) -> None:
        self.device = torch.device(device)
        self.interval = interval
        self.process = psutil.Process()
        self.process.cpu_percent(None)  # starts the CPU clock: the first sample covers the time since now
        self.last = -math.inf  # the first call samples, so even a short run has a point

    def sample(self, force: bool = False) -> dict[str, float] | None:
        now = time.monotonic()
        if not force and now - self.last < self.interval:
            return None
        self.last = now
        with self.process.oneshot():
            values: dict[str, float] = {
                # Percent of one core, as top shows it (200 = two cores busy).
                "cpu_percent": float(self.process.cpu_percent(None)),
                "memory_mb": self.process.memory_info().rss / 2**20,
            }
        values.update(_gpu(self.device))
        return {k: v for k, v in values.items() if math.isfinite(v)}


def _gpu(device: torch.device) -> dict[str, float]:
    if device.type != "cuda" or not torch.cuda.is_available():
        return {}
    out: dict[str, Any] = {"gpu_memory_mb": torch.cuda.memory_reserved(device) / 2**20}
    # Needs NVML (the nvidia-ml-py package); any failure there only means no utilisation figure.
    with contextlib.suppress(Exception):
        out["gpu_util_percent"] = float(torch.cuda.utilization(device))
    return out
