"""How a training step runs on its device: precision, memory format, compilation, optimiser kernel.

One place decides these, so the training loop and `benchmarks/throughput.py` run exactly the same maths, and
the fp32 reference the fast path is checked against (`benchmarks/fastpath.py`) differs from it only in the
options named here.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from functools import wraps
from pathlib import Path
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

# The CPU default on a CPU with native bf16 (AVX512-BF16 or AMX), per variant: bf16 autocast + channels_last
# for the SAR nets, whose whole training step (loss with SSIM, backward, Adam) inside the trainer measured
# 2.6x faster than fp32 at full widths on an AMD EPYC with AVX512-BF16 and no AMX, and whose `compare`
# inference 1.6-1.8x. The audio VAEs and fragment nets stay fp32 there: inside the trainer bf16 measured no
# faster for them on the 2-core machine here. Measured by `benchmarks/cpu_bf16.py` (BENCHMARKS.md,
# "CPU bf16"); on a CPU without native bf16 everything is fp32.
CPU_BF16_VARIANTS: frozenset[str] = frozenset({"sar-baseline", "sar-resnet", "sar-residual", "sar-attention"})
CPU_CHANNELS_LAST_VARIANTS: frozenset[str] = frozenset(
    {"sar-baseline", "sar-resnet", "sar-residual", "sar-attention"}
)
# With AMX tiles (Intel Sapphire Rapids and later) bf16 matrix work is several times faster again: issue 21
# measured a bare training step on such a Xeon at 5.1x for sar-residual at reference widths (3.3-10.6x at full
# widths) and 1.9x for audio-vae-mel, against 0.81x for audio-vae and 0.39x for fragment-dae. So with AMX the
# SAR nets train in bf16 whatever their width, and audio-vae-mel in bf16 too.
AMX_BF16_VARIANTS: frozenset[str] = CPU_BF16_VARIANTS | {"audio-vae-mel"}

# Model settings that, set below the variant's default, make a net narrower (the smoke and reference presets
# do). Without AMX, such a narrow net trained slower in bf16 than in fp32 on the 2-core machine here (its
# small kernels gain less than the casts and layout changes around them cost), so it trains in fp32 there;
# inference keeps the variant's bf16 (on 256² images the narrow SAR references ran 1.7-1.8x faster in bf16).
NARROWING_SETTINGS = frozenset({"base_channels", "widths", "channels", "head_channels"})

# "0" makes `cpu_has_native_bf16` say no (to see, or keep, what a CPU without it gets), "1" says yes
# (AVX512-BF16 without AMX), "amx" says yes with AMX tiles.
NATIVE_BF16_ENV = "AE_STUDIO_CPU_BF16"


def cpu_bf16_kind() -> str | None:
    """How this CPU computes bf16, as torch's own CPU report says: "amx" (AMX tiles), "avx512-bf16", or None
    (emulated in fp32, where autocast is slower); `NATIVE_BF16_ENV` overrides the answer."""
    forced = os.environ.get(NATIVE_BF16_ENV, "").strip().lower()
    if forced in ("0", "false", "no", "off"):
        return None
    if forced == "amx":
        return "amx"
    if forced in ("1", "true", "yes", "on"):
        return "avx512-bf16"
    if not torch.backends.cpu.get_cpu_capability().startswith("AVX512"):
        return None  # torch's kernels are built for a lower level here (e.g. ATEN_CPU_CAPABILITY=avx2)
    amx, avx = (
        getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    )
    if callable(amx) and callable(avx):
        return "amx" if amx() else "avx512-bf16" if avx() else None
    flags = _cpu_flags()  # an older torch without the probes
    return "amx" if "amx_bf16" in flags else "avx512-bf16" if "avx512_bf16" in flags else None


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX tiles): `cpu_bf16_kind` is not None."""
    return cpu_bf16_kind() is not None


def _narrowed(variant: str | None, model: dict[str, Any] | None) -> bool:
    """Whether `model` sets a width (`NARROWING_SETTINGS`) below the variant's default."""
    from models import VARIANTS

    info = VARIANTS.get(variant or "")
    if info is None:
        return False
    for name in NARROWING_SETTINGS & set(model or {}):
        given, default = model[name], info.default_config.get(name)
        if default is None:
            continue
        given_t = given if isinstance(given, (list, tuple)) else [given]
        default_t = default if isinstance(default, (list, tuple)) else [default]
        if sum(given_t) < sum(default_t):
            return True
    return False


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


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
    def cpu_default(
        cls, variant: str | None, bf16: bool | None = None, model: dict[str, Any] | None = None
    ) -> FastPath:
        """What the loop runs for `variant` on a CPU: bf16 autocast (and channels_last) where measured faster
        on this kind of CPU (`cpu_bf16_kind`): with AMX `AMX_BF16_VARIANTS`; with AVX512-BF16 alone
        `CPU_BF16_VARIANTS` unless `model` (the run's model settings) narrows the net (`NARROWING_SETTINGS`);
        else fp32. `bf16` forces autocast on or off. Adam is the fused kernel, in either precision: on the CPU
        it measured 2-7x faster than the foreach one (36-46 ms against 190-320 ms a step for sar-residual's
        24 M parameters), with the same maths."""
        if bf16 is None:
            kind = cpu_bf16_kind()
            if kind == "amx":
                bf16 = variant in AMX_BF16_VARIANTS
            else:
                bf16 = kind is not None and variant in CPU_BF16_VARIANTS and not _narrowed(variant, model)
        return cls(bf16=bf16, channels_last=bf16 and variant in CPU_CHANNELS_LAST_VARIANTS, fused=True)

    @classmethod
    def resolve(
        cls,
        device: torch.device,
        domain: str,
        precision: str = "auto",
        compile: bool = False,
        variant: str | None = None,
        model: dict[str, Any] | None = None,
    ) -> FastPath:
        """The loop's set-up on `device`: `cuda_default` on CUDA; on a CPU `cpu_default` for `variant` and its
        `model` settings (fp32 when no variant is named). `compile` is honoured on CUDA only: on CPU it costs
        more compile time than short runs gain."""
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision '{precision}'; choose one of: {', '.join(PRECISIONS)}")
        if device.type != "cuda":
            return cls.cpu_default(variant, {"auto": None, "fp32": False, "bf16": True}[precision], model)
        has_bf16 = torch.cuda.is_bf16_supported()
        if precision == "bf16" and not has_bf16:
            raise ValueError("precision bf16 was requested, but this GPU has no bf16; use fp32 or auto")
        default = cls.cuda_default(domain, compile)
        bf16 = {"fp32": False, "bf16": True, "auto": default.bf16 and has_bf16}[precision]
        return replace(default, bf16=bf16)

    @property
    def precision(self) -> str:
        """The precision the step computes in: "bf16" (autocast, fp32 master weights) or "fp32"."""
        return "bf16" if self.bf16 else "fp32"

    def describe(self) -> str:
        """What ran, precision first: "fp32", "fp32 + fused", "bf16 + channels_last + fused"."""
        on = [name for name, value in asdict(self).items() if value and name != "bf16"]
        return " + ".join([self.precision, *on])

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


class InferenceModel(nn.Module):
    """`model` as its variant runs at inference in the set-up `fast`: inputs in its memory format, the
    forward under its autocast, floating outputs back in contiguous fp32, so the scoring after it stays fp32.
    `METHODS` run the same way; other attributes (VARIANT, DOMAIN, preprocessing ...) are the model's own."""

    def __init__(self, model: nn.Module, fast: FastPath, device: torch.device) -> None:
        super().__init__()
        self.model, self.fast, self.device = model, fast, device
        self.warmed: set[tuple[Any, ...]] = set()  # the input shapes already run once

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self._run(self.model, *args, **kwargs)

    # The models' inference entry points besides forward, run in the same set-up as forward.
    METHODS = ("reconstruct", "predict_bytes", "encode", "decode")

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            value = getattr(self._modules["model"], name)
        if name not in self.METHODS or not callable(value):
            return value

        @wraps(value)  # callers may read the method's signature (compare's fragment decoder does)
        def run(*args: Any, **kwargs: Any) -> Any:
            return self._run(value, *args, **kwargs)

        return run

    def _run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        args = tuple(self.fast.inputs(a) if isinstance(a, torch.Tensor) else a for a in args)
        with self.fast.autocast(self.device):
            return _in_fp32(fn(*args, **kwargs))

    @torch.no_grad()
    def warm_up(self, example: torch.Tensor) -> None:
        """Run `example` once if its shape is new: the first call of a shape sets up its kernels (oneDNN
        primitives; sar-attention took 2059 ms on its first call in the studio, 247 ms after it)."""
        key = (tuple(example.shape), example.dtype, example.device)
        if key not in self.warmed:
            self(example)
            self.warmed.add(key)


def _in_fp32(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return out.float().contiguous() if out.is_floating_point() else out
    if isinstance(out, (list, tuple)):
        return type(out)(_in_fp32(o) for o in out)
    if isinstance(out, dict):
        return {k: _in_fp32(v) for k, v in out.items()}
    return out


_PREPARED_ATTR = "_fastpath_inference_forms"
_prepare_lock = threading.Lock()


def prepare_for_inference(
    model: nn.Module,
    device: torch.device | str | None = None,
    example: torch.Tensor | None = None,
    precision: str = "auto",
) -> InferenceModel:
    """`model` (in eval mode) prepared to run in its variant's training precision on `device` (default: where
    its weights are), from a cache kept on the model, so every call after the first reuses the prepared form.
    `example` (an input batch) is run once per new shape, so that set-up is not timed as inference."""
    if isinstance(model, InferenceModel):
        model = model.model
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    device = torch.device(device)
    variant = getattr(model, "VARIANT", None)
    fast = FastPath.resolve(device, str(getattr(model, "DOMAIN", "")), precision, variant=variant)
    fast = replace(fast, compile=False, fused=False)
    with _prepare_lock:
        forms = model.__dict__.get(_PREPARED_ATTR)
        if forms is None:
            forms = {}
            object.__setattr__(model, _PREPARED_ATTR, forms)  # not a submodule: no change to state_dict
        prepared = forms.get((device, fast))
        if prepared is None:
            fast.prepare(model)  # channels_last weights (in place; fp32 calls give the same results)
            prepared = forms[(device, fast)] = InferenceModel(model, fast, device)
    if example is not None:
        prepared.warm_up(example)
    return prepared
