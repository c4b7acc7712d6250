"""How a training step runs on its device: precision, memory format, compilation, optimiser kernel.

One place decides these, so the training loop and `benchmarks/throughput.py` run exactly the same maths, and
the fp32 reference the fast path is checked against (`benchmarks/fastpath.py`) differs from it only in the
options named here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import nn

PRECISIONS = ("auto", "fp32", "bf16")

# Where bf16 autocast + channels_last is the CUDA default: measured on one H200 (torch 2.11, full batch sizes)
# it made the SAR nets 1.6-2.7x faster than fp32 eager, but both audio VAEs slower (0.87-0.96x) and the
# fragment nets no faster (1.0x), so those stay fp32 unless bf16 is asked for (`--precision bf16`). The 1-D
# fragment nets have no NHWC layout in any case.
BF16_DOMAINS = ("sar",)
CHANNELS_LAST_DOMAINS = ("sar",)


@dataclass(frozen=True)
class FastPath:
    """The options of one set-up. `resolve` gives the training loop's; the benchmarks build others."""

    bf16: bool = False
    channels_last: bool = False
    compile: bool = False
    fused: bool = False

    @classmethod
    def cuda_default(cls, domain: str, compile: bool = False) -> FastPath:
        """What the loop runs on a CUDA GPU with bf16: the fused Adam kernel everywhere, bf16 autocast and
        channels_last where they were measured to win (`BF16_DOMAINS`), and `torch.compile` when asked."""
        return cls(
            bf16=domain in BF16_DOMAINS,
            channels_last=domain in CHANNELS_LAST_DOMAINS,
            compile=compile,
            fused=True,
        )

    @classmethod
    def resolve(
        cls, device: torch.device, domain: str, precision: str = "auto", compile: bool = False
    ) -> FastPath:
        """The loop's set-up on `device`: `cuda_default` on CUDA, plain fp32 on CPU unless bf16 is asked for
        (it is slower there on most CPUs). `compile` is honoured on CUDA only: on CPU it costs more compile
        time than short runs gain."""
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision '{precision}'; choose one of: {', '.join(PRECISIONS)}")
        if device.type != "cuda":
            return cls(bf16=precision == "bf16")
        has_bf16 = torch.cuda.is_bf16_supported()
        if precision == "bf16" and not has_bf16:
            raise ValueError("precision bf16 was requested, but this GPU has no bf16; use fp32 or auto")
        default = cls.cuda_default(domain, compile)
        bf16 = {"fp32": False, "bf16": True, "auto": default.bf16 and has_bf16}[precision]
        return replace(default, bf16=bf16)

    def describe(self) -> str:
        on = [name for name, value in asdict(self).items() if value]
        return "fp32" if not on else " + ".join(on)

    def prepare(self, model: nn.Module) -> nn.Module:
        """Put `model` in this set-up's memory format (in place) and return the module to call in training
        steps: `model` itself, or its compiled wrapper (which shares its parameters)."""
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        return torch.compile(model) if self.compile else model

    def optimizer(
        self, params: Iterable[nn.Parameter], lr: float, weight_decay: float = 0.0
    ) -> torch.optim.Adam:
        # The fused kernel does the whole update in a few launches; same maths as the default (foreach) one.
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=self.fused or None)

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager[Any]:
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def inputs(self, batch: Any) -> Any:
        """Image batches (4-D) in the model's memory format; everything else as it is."""
        if not self.channels_last:
            return batch
        if isinstance(batch, (list, tuple)):
            return [self.inputs(b) for b in batch]
        return batch.contiguous(memory_format=torch.channels_last) if batch.dim() == 4 else batch
