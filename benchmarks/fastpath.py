"""Does the fast path train like fp32? The evidence behind the training loop's CUDA defaults.

Each variant trains twice from the same weights on the same batches, with the same random draws: once in
fp32 eager, once in the fast set-up (`trainers.training.fastpath.FastPath.cuda_default`: bf16 autocast +
channels_last + fused Adam, plus `torch.compile` where asked). Compared: the validation loss both models
reach on held-out batches (evaluated in fp32, as the loop evaluates), and the training loss over the last
steps. A figure meets its target when the fast path's value is within `TOLERANCE` of fp32's.

On CUDA this runs at the full sizes; without CUDA it runs the same maths on the CPU at the smoke preset's
sizes (autocast, channels_last and the fused kernel all exist there; bf16 rounds the same way), which checks
the set-up's numerics but not the GPU kernels themselves.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable
from typing import Any

import torch

from benchmarks.common import Figure, build_run, sized_config, train_loader
from benchmarks.throughput import run_setup
from trainers.training.fastpath import FastPath

# How far the fast path's losses may stray from fp32's, relative. bf16 keeps 8 bits of mantissa (0.4 %
# per rounding); after tens of steps two runs that differ only in rounding drift apart by about a percent.
TOLERANCE = 0.05
LAST_STEPS = 5


def _relative(value: float, reference: float) -> float:
    return abs(value - reference) / max(abs(reference), 1e-12)


@contextlib.contextmanager
def _eager_random_numbers(enabled: bool):
    """Compiled graphs draw random numbers with their own generator; this makes them draw eager's, so the
    VAE's sampling noise is the same in both runs and only the arithmetic differs."""
    if not enabled:
        yield
        return
    import torch._inductor.config as inductor_config

    with inductor_config.patch(fallback_random=True):
        yield


def compare_variant(
    variant: str,
    steps: int = 20,
    n_batches: int = 4,
    compile: bool = False,
    device: str | None = None,
) -> dict[str, Any]:
    """fp32 eager against the fast set-up for one variant: both trajectories and held-out losses."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    preset = "full" if device.startswith("cuda") else "smoke"
    held = 2
    cfg = sized_config(variant, preset, n_batches + held, device=device)
    task, data, _ = build_run(cfg)
    batches = list(train_loader(cfg, data.train))
    train_batches, held_batches = batches[:n_batches], batches[n_batches : n_batches + held]
    dev = torch.device(device)
    setups = {"fp32": FastPath(), "fast": FastPath.cuda_default(task.domain, compile=compile)}
    out: dict[str, Any] = {"variant": variant, "batch_size": cfg.batch_size, "steps": steps, "device": device}
    for name, fast in setups.items():
        with _eager_random_numbers(fast.compile):
            result, model = run_setup(
                cfg, task, data.preprocessing, train_batches, fast, steps, 0, device, compile_on_cpu=True
            )
        model.eval()
        torch.manual_seed(cfg.seed + 2)
        held_out = task.evaluate(model, held_batches, dev)["loss"]
        out[name] = {
            "setup": fast.describe(),
            "losses": result["losses"],
            "held_out_loss": held_out,
            "last_steps_loss": sum(result["losses"][-LAST_STEPS:]) / min(LAST_STEPS, steps),
        }
        if fast.compile:
            torch._dynamo.reset()
    ref, fast_r = out["fp32"], out["fast"]
    out["held_out_relative_difference"] = _relative(fast_r["held_out_loss"], ref["held_out_loss"])
    out["train_relative_difference"] = _relative(fast_r["last_steps_loss"], ref["last_steps_loss"])
    # How much fp32 training itself moved the loss: the scale the differences are read against.
    out["fp32_loss_change"] = _relative(ref["last_steps_loss"], ref["losses"][0])
    return out


def measure_fastpath_agreement(
    variants: Iterable[str] | None = None, steps: int = 20, n_batches: int = 4, compile: bool = False
) -> tuple[list[Figure], dict[str, Any]]:
    """One figure per variant: the fast path's held-out loss against fp32's (relative difference)."""
    from models import VARIANTS

    names = list(variants if variants is not None else VARIANTS)
    for v in names:
        if v not in VARIANTS:
            raise ValueError(f"unknown variant '{v}'; choose from: {', '.join(VARIANTS)}")
    where = "GPU" if torch.cuda.is_available() else "CPU"
    raw = {v: compare_variant(v, steps, n_batches, compile) for v in names}
    figures = []
    for v, r in raw.items():
        values = (r["held_out_relative_difference"], r["train_relative_difference"], r["fp32_loss_change"])
        finite = all(math.isfinite(x) for x in values)
        figures.append(
            Figure(
                key=f"fastpath/{where.lower()}/{v}",
                label=f"{where}: fast path vs fp32, held-out loss after {steps} steps, {v} "
                f"(batch {r['batch_size']}; {r['fast']['setup']})",
                value=100 * values[0] if finite else None,
                unit="%",
                bound=100 * TOLERANCE,
                goal="max",
                note=f"training loss over the last {LAST_STEPS} steps differs by {100 * values[1]:.2f} %; "
                f"fp32 training moved it by {100 * values[2]:.0f} %"
                if finite
                else "a loss was not finite",
            )
        )
    return figures, {"tolerance": TOLERANCE, "variants": raw}


def main(argv: list[str] | None = None) -> int:
    import argparse

    from benchmarks.common import format_table

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variants", nargs="+")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--compile", action="store_true", help="include torch.compile in the fast set-up")
    args = parser.parse_args(argv)
    figures, _ = measure_fastpath_agreement(args.variants, args.steps, compile=args.compile)
    print(format_table(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
