"""GPU packing: several jobs share a GPU while their memory budgets (`trainers.training.memory`: weights,
gradients, Adam state and saved activations counted for the run's variant, batch size, model overrides and
precision, with a margin) fit in its memory, optionally capped at `gpu_jobs` per GPU. A job that does not
fit even alone still gets a GPU of its own once one is idle."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from studio.backends.base import Job

log = logging.getLogger(__name__)

# Share of a GPU's memory that packed jobs may budget for: the rest is for the driver and other processes.
GPU_MEMORY_USABLE = 0.95

# Counted GPU memory budgets by configuration (trainers.training.memory.budget_key), shared by all managers.
_BUDGETS: dict[str, int] = {}


class GpuPacking:
    """Which GPU a job of a given memory budget starts on, and each configuration's counted budget.

    `gpu_memory` {gpu: bytes or None (unknown: one job at a time there)}; `job_memory` (run config -> bytes)
    replaces the counted budgets (tests, machines where the count is wrong)."""

    def __init__(
        self,
        gpus: list[int],
        gpu_jobs: int | None,
        gpu_memory: Mapping[int, int | None],
        job_memory: Callable[[dict[str, Any]], int] | None = None,
    ) -> None:
        self.gpus = list(gpus)
        self.gpu_jobs = gpu_jobs
        self.gpu_memory: dict[int, int | None] = {g: gpu_memory.get(g) for g in gpus}
        self._job_memory = job_memory

    def gpu_for(self, budget: int, jobs: list[Job]) -> int | None:
        """The GPU to start a job of `budget` bytes on now, next to `jobs`: an idle GPU, or the one with the
        most memory left among those where the job fits next to the jobs already there (and below
        `gpu_jobs`); else None."""
        best: tuple[int, int] | None = None
        for g in self.gpus:
            there = [job for job in jobs if job.slot == f"cuda:{g}"]
            if self.gpu_jobs is not None and len(there) >= self.gpu_jobs:
                continue
            size = self.gpu_memory[g]
            if size is None and there:
                continue
            left = int((size or 0) * GPU_MEMORY_USABLE) - sum(job.budget for job in there)
            if there and budget > left:
                continue
            if best is None or left > best[1]:
                best = (g, left)
        return None if best is None else best[0]

    def budget(self, config: Mapping[str, Any]) -> int:
        """A run's GPU memory budget from its stored config, counted once per configuration."""
        config = dict(config)
        if self._job_memory is not None:
            return int(self._job_memory(config))
        from trainers.training.memory import budget_key, estimate_job_memory

        variant = str(config.get("variant", ""))
        batch = config.get("batch_size", 1)
        model = config.get("model") or {}
        precision = str(config.get("precision", "auto"))
        key = budget_key(variant, batch, model, precision)
        if key not in _BUDGETS:
            try:
                estimate = estimate_job_memory(variant, batch, model, precision)
                _BUDGETS[key] = estimate.budget
                log.info("GPU memory budget of %s: %s", key, estimate.describe())
            except Exception:  # an unbuildable config fails in its trainer, with the trainer's message
                log.warning(
                    "could not count the GPU memory of %s; it gets a GPU of its own", key, exc_info=True
                )
                return max((m for m in self.gpu_memory.values() if m), default=1)
        return _BUDGETS[key]
