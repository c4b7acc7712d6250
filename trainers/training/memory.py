"""GPU memory a training job needs, so the studio's job manager can pack several jobs onto one GPU.

A job's budget is a count, not a guess per variant: the bytes of its parameters, gradients and Adam state
(16 per fp32 parameter), plus the activation bytes autograd saves for one training step -- counted with
`torch.autograd.graph.saved_tensors_hooks` on a forward pass of 1 and 2 examples and extended linearly to
the batch size -- times a margin, plus a fixed per-process overhead (CUDA context, cuDNN/cuBLAS workspaces,
the allocator's cached blocks).

The forward pass runs on the `meta` device (shapes and dtypes only, no arithmetic), so counting the full
sar-attention takes about a second instead of 10-20 s of CPU convolutions; the saved tensors are the same
(checked: 0.6526 GiB per example both ways in fp32). Meta tensors have no autocast, so a bf16 run is
counted with the model in bf16 and scaled by `AUTOCAST_FACTOR`: autocast keeps some saved tensors in fp32
(a CPU autocast count of sar-attention saved 0.371 GiB per example against 0.326 GiB all-bf16, x1.14).

Where the GPU benchmark has measured a configuration's peak (`torch.cuda.max_memory_allocated`), that
figure from `MEASURED_TABLE` replaces the count (with the same margin and overhead).
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

GIB = 2**30
# Saved activations and the optimiser state are not all a step holds: the backward pass's gradient buffers
# and the allocator's rounding come on top. 1.3x covers them in the measured runs' ratio of
# max_memory_allocated to this count; the GPU table, where present, is the measured peak itself.
MARGIN = 1.3
# Per process, outside PyTorch's allocator: the CUDA context (~0.5 GiB on recent GPUs) and library
# workspaces, plus cached-but-free blocks the allocator keeps.
PROCESS_OVERHEAD_BYTES = int(1.5 * GIB)
MEASURED_TABLE = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "gpu-memory.json"
AUTOCAST_FACTOR = 1.15
# Bytes of fp32 weight + gradient + Adam's exp_avg and exp_avg_sq per parameter.
TRAIN_STATE_BYTES_PER_PARAM = 16


@dataclass(frozen=True)
class MemoryEstimate:
    """A job's GPU memory budget and what it is made of (bytes)."""

    budget: int
    params: int
    state_bytes: int
    activation_bytes: int
    source: str

    def describe(self) -> str:
        return (
            f"{self.budget / GIB:.1f} GiB ({self.source}: {self.params / 1e6:.2f} M parameters, "
            f"{self.state_bytes / GIB:.2f} GiB weights+grads+Adam, {self.activation_bytes / GIB:.2f} GiB "
            f"activations, x{MARGIN:g} + {PROCESS_OVERHEAD_BYTES / GIB:g} GiB per process)"
        )


def budget_key(variant: str, batch_size: int, model: dict[str, Any] | None, precision: str) -> str:
    """The identity of a configuration in the measured table and the caches."""
    overrides = json.dumps(model or {}, sort_keys=True)
    return f"{variant}|batch={int(batch_size)}|precision={precision}|model={overrides}"


def _uses_bf16(precision: str) -> bool:
    # On a GPU "auto" means bf16 (trainers.training.fastpath); only an explicit fp32 turns it off.
    return precision != "fp32"


def example_input(model: Any, n: int) -> Any:
    """A batch of `n` inputs of the shape `model` trains on (values do not matter for memory)."""
    import torch

    domain = getattr(model, "DOMAIN", "")
    if domain == "sar":
        return torch.rand(n, model.in_channels, model.image_size, model.image_size)
    if domain == "audio":
        return torch.randn(n, *model.input_shape)
    if domain == "fragments":
        return torch.rand(n, 1, model.fragment_size)
    raise ValueError(f"cannot make an example input for a model of domain {domain!r}")


def saved_activation_bytes(model: Any, n: int) -> int:
    """Bytes of the tensors autograd saves for backward in one forward pass of `n` examples, in the model's
    dtype and on its device (parameters excluded: they are training state), plus the input and outputs."""
    import torch

    dtype = next(model.parameters()).dtype
    params = {p.untyped_storage()._cdata for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        # Storages are told apart by their C object, which meta tensors (data pointer 0) have too.
        storage = t.untyped_storage()
        key = storage._cdata
        if key not in params:
            seen[key] = max(seen.get(key, 0), storage.nbytes())
        return t

    device = next(model.parameters()).device
    x = example_input(model, n).to(device, dtype)
    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    outputs = [o for o in (out if isinstance(out, (tuple, list)) else [out]) if torch.is_tensor(o)]
    return (
        sum(seen.values()) + sum(o.numel() * o.element_size() for o in outputs) + x.numel() * x.element_size()
    )


def count_memory(
    variant: str, batch_size: int, model: dict[str, Any] | None, precision: str
) -> MemoryEstimate:
    """The budget of a configuration from a count on the meta device (see the module docstring)."""
    import torch

    from models import create_model

    with torch.device("meta"):
        net = create_model(variant, **(model or {}))
    params = sum(p.numel() for p in net.parameters())
    bf16 = _uses_bf16(precision)
    if bf16:
        net = net.to(torch.bfloat16)
    one = saved_activation_bytes(net, 1)
    two = saved_activation_bytes(net, 2)
    per_example = max(0, two - one)
    activations = max(one, one + per_example * (int(batch_size) - 1))
    if bf16:
        activations = int(activations * AUTOCAST_FACTOR)
    # Under autocast the bf16 copies of the weights live for the step as well.
    state = params * TRAIN_STATE_BYTES_PER_PARAM + (params * 2 if bf16 else 0)
    budget = int(math.ceil((state + activations) * MARGIN)) + PROCESS_OVERHEAD_BYTES
    dtype = "bf16" if bf16 else "fp32"
    return MemoryEstimate(budget, params, state, activations, f"counted on the meta device in {dtype}")


def read_measured_table(path: str | Path = MEASURED_TABLE) -> dict[str, dict[str, Any]]:
    """The GPU benchmark's measured peaks, by `budget_key` ({} when there is no table or it is unreadable)."""
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(Path(path).read_text())
        rows = data.get("rows", {}) if isinstance(data, dict) else {}
        return {k: v for k, v in rows.items() if isinstance(v, dict) and isinstance(v.get("peak_bytes"), int)}
    return {}


def estimate_job_memory(
    variant: str,
    batch_size: int,
    model: dict[str, Any] | None = None,
    precision: str = "auto",
    table: dict[str, dict[str, Any]] | None = None,
) -> MemoryEstimate:
    """The GPU memory budget of one training job: the measured GPU peak where the table has this
    configuration, else the CPU count. Raises ValueError for a configuration that cannot be built."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
    table = read_measured_table() if table is None else table
    row = table.get(budget_key(variant, batch_size, model, precision))
    if row is not None:
        peak = int(row["peak_bytes"])
        budget = int(math.ceil(peak * MARGIN)) + PROCESS_OVERHEAD_BYTES
        where = row.get("device", "a GPU")
        return MemoryEstimate(budget, int(row.get("params", 0)), 0, peak, f"peak measured on {where}")
    return count_memory(variant, batch_size, model, precision)


def as_dict(estimate: MemoryEstimate) -> dict[str, Any]:
    return asdict(estimate)
