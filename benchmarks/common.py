"""What every benchmark shares: the `Figure` it reports, the table, the machine description, and memory
readings from /proc (no psutil)."""

from __future__ import annotations

import json
import math
import os
import platform
import resource
import signal
import statistics
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
NOT_MEASURED_NO_CUDA = "not measured (no CUDA)"

# How a figure's value compares with its target: "max" = at most the bound, "min" = at least the bound.
_COMPARE = {"max": lambda v, b: v <= b, "min": lambda v, b: v >= b}
_UNIT_FORMAT = {
    "x": "{:.3f}×",
    "ms": "{:.2f} ms",
    "s": "{:.2f} s",
    "%": "{:.1f} %",
    "MiB": "{:.0f} MiB",
    "samples/s": "{:.0f} samples/s",
    "TFLOP/s": "{:.0f} TFLOP/s",
}


@dataclass
class Figure:
    """One measured figure: the row of the summary table and an entry of the results JSON.

    ``value`` is None when the figure could not be measured here (e.g. a GPU figure on a CPU machine);
    ``note`` then says why. ``bound``/``goal`` describe the target ("max": value <= bound).
    """

    key: str
    label: str
    value: float | None
    unit: str
    bound: float | None = None
    goal: str | None = None
    note: str = ""

    def __post_init__(self) -> None:
        if self.goal not in (None, "max", "min"):
            raise ValueError(f"goal must be 'max', 'min' or None, got {self.goal!r}")
        if (self.bound is None) != (self.goal is None):
            raise ValueError(f"figure {self.key}: give both bound and goal, or neither")
        if self.value is not None and not math.isfinite(self.value):
            raise ValueError(f"figure {self.key}: value must be finite or None, got {self.value!r}")

    @property
    def target(self) -> str:
        if self.goal is None or self.bound is None:
            return "—"
        return ("≤ " if self.goal == "max" else "≥ ") + format_value(self.bound, self.unit)

    @property
    def met(self) -> bool | None:
        """Whether the target is met; None without a target or without a value."""
        if self.goal is None or self.bound is None or self.value is None:
            return None
        return _COMPARE[self.goal](self.value, self.bound)

    def shown_value(self) -> str:
        if self.value is None:
            return self.note or "not measured"
        return format_value(self.value, self.unit)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "target": self.target, "met": self.met}


def format_value(value: float, unit: str) -> str:
    return _UNIT_FORMAT.get(unit, "{:.4g} " + unit).format(value)


def format_table(figures: Sequence[Figure]) -> str:
    """A Markdown table (figure, value, target, met?) that reads well in a terminal too."""
    rows = [("figure", "value", "target", "met?")]
    for f in figures:
        met = {True: "yes", False: "NO", None: "—"}[f.met]
        rows.append((f.label, f.shown_value(), f.target, met))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [
        "| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) + " |" for row in rows
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def write_result(
    path: Path, settings: dict[str, Any], started: float, figures: Sequence[Figure], detail: Any
) -> None:
    """Write a benchmark's result file: its settings, wall seconds since `started` (time.monotonic), the
    machine, the figures and the detail, and say where on stderr."""
    out = {
        "settings": settings,
        "seconds": round(time.monotonic() - started, 1),
        "machine": machine_info(),
        "figures": [f.to_dict() for f in figures],
        "detail": detail,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}", file=sys.stderr)


def median(values: Iterable[float]) -> float:
    data = [float(v) for v in values]
    if not data:
        raise ValueError("median of no values")
    return statistics.median(data)


def quantile(values: Iterable[float], q: float) -> float:
    """The `q` quantile of `values` as the nearest observed value: no interpolation, so a p95 latency is one
    that happened."""
    ordered = sorted(float(v) for v in values)
    if not ordered:
        raise ValueError("quantile of no values")
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


# ------------------------------------------------------------------------------------------------ configs
def sized_config(
    variant: str,
    preset: str,
    batches: int,
    device: str = "cpu",
    batch_size: int | None = None,
    seed: int = 0,
):
    """The preset's run config with a data set of one epoch of at least ``batches`` training batches.

    Benchmarks time steps inside one epoch (no epoch-end evaluation in the window), so synthetic data is
    sized to the steps, validation is cut to two samples, and fragments read enough files.
    """
    from trainers.data.spec import DataSpec, format_data_spec, parse_data_spec
    from trainers.settings import make_config

    if batches < 1:
        raise ValueError(f"batches must be at least 1, got {batches}")
    cfg = make_config(variant, preset, device=device, epochs=1, batch_size=batch_size, seed=seed)
    spec = parse_data_spec(cfg.data)
    options = dict(spec.options)
    if spec.source == "synthetic":
        options.update(n=batches * cfg.batch_size, val=2)
    elif spec.domain == "fragments":  # at most 64 fragments per file, 80 % of the files for training
        options["max_files"] = max(int(options.get("max_files", 0)), 40 + batches * cfg.batch_size // 32)
    cfg.data = format_data_spec(DataSpec(spec.domain, spec.source, options))
    return cfg


def build_run(cfg):
    """(task, data, model) as `trainers.training.loop.Trainer.setup` builds them: same seeding order, same
    weights."""
    import numpy as np
    import torch

    from models import create_model
    from trainers.data.spec import parse_data_spec
    from trainers.training.tasks import task_for

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    task = task_for(cfg.variant, kl_weight=cfg.kl_weight)
    data = task.build_data(parse_data_spec(cfg.data), cfg.model, cfg.seed)
    model = create_model(cfg.variant, preprocessing=data.preprocessing, **cfg.model)
    return task, data, model


def train_loader(cfg, dataset, pin_memory: bool = False):
    """The training batches a benchmark times: shuffled with the run's seed, whole batches only."""
    import torch
    from torch.utils.data import DataLoader

    return DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        shuffle=True,
        drop_last=True,
        generator=torch.Generator().manual_seed(cfg.seed),
        pin_memory=pin_memory,
    )


# ------------------------------------------------------------------------------------------------ memory
def _status_kib(field: str, pid: int | str = "self") -> int | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return None


def rss_mib(pid: int | str = "self") -> float | None:
    """Resident set size of a process (MiB), or None where /proc is not available or the process is gone."""
    kib = _status_kib("VmRSS", pid)
    return None if kib is None else kib / 1024


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (VmHWM) so the next reading is the peak of what follows (Linux >= 4.0).

    Returns False where that is not possible; `peak_rss_mib` then reads the peak of the whole process life.
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_rss_mib() -> float:
    """Peak RSS of this process (MiB) since the last `reset_peak_rss`."""
    kib = _status_kib("VmHWM")
    if kib is None:  # not Linux: getrusage gives the peak of the process life (KiB on Linux, bytes on macOS)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024
    return kib / 1024


# ------------------------------------------------------------------------------------------------ machine
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """What the figures were measured on; GPU fields only when CUDA is present."""
    import torch

    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": _memory_gib(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "load_average": _load_average(),
        "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu=props.name,
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            gpu_count=torch.cuda.device_count(),
            cuda_version=torch.version.cuda,
        )
    return info


def _memory_gib() -> float | None:
    kib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                kib = int(line.split()[1])
    except OSError:
        return None
    return None if kib is None else round(kib / 2**20, 1)


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _terminate(signum: int, frame: Any) -> None:  # noqa: ARG001
    raise SystemExit(128 + signum)


def exit_cleanly_on_signals() -> None:
    """SIGTERM/SIGHUP (``timeout``, a closed terminal) end the benchmark through its ``finally`` blocks, as
    Ctrl-C does, so the jobs and apps it started are cancelled instead of left training in a temporary
    folder nothing will read again."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _terminate)


def die_with_parent() -> None:
    """``preexec_fn`` of a child process: Linux sends it SIGTERM when the benchmark dies, even by SIGKILL."""
    import contextlib
    import ctypes

    with contextlib.suppress(OSError, AttributeError):  # not Linux: the finally blocks still cancel
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
