"""Training throughput per variant, peak memory, and the data pipeline's share of a step.

CPU: the smoke preset's models and batch sizes (the full sizes take seconds per step on a laptop CPU).
The variants of a domain take turns step by step, so their relative cost is measured under the same load;
speeds are reported relative to the domain's reference variant, memory as the peak RSS growth while a
variant builds its data and model and trains on the first pass (read from /proc, reset between variants).

GPU (when CUDA is present): the full preset's models and batch sizes, each variant in the three set-ups of
`GPU_MODES`, built by `trainers.training.fastpath` exactly as the training loop builds them: fp32 eager; the
loop's
CUDA default (bf16 autocast + channels_last + fused Adam for SAR, fp32 + fused Adam for the others); that plus
`torch.compile`. Reported: samples/s,
`torch.cuda.max_memory_allocated`, and the achieved FLOP rate as a fraction of this GPU's measured bf16
matmul peak (model FLOPs per step counted by FlopCounterMode). Every set-up starts from the same weights and
sees the same batches, so their losses are comparable (`benchmarks/fastpath.py` checks they agree).

The data share is the time `DataLoader` takes to hand over a batch (generation/loading, collation) in the
main process over the whole step, on the first pass (SAR and audio features are made and cached then) and
on a later pass (cached; fragments are corrupted afresh every pass). On CUDA the loop loads in worker
processes that overlap the step, so there the figure is an upper bound.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from benchmarks.common import (
    NOT_MEASURED_NO_CUDA,
    Figure,
    build_run,
    median,
    peak_rss_mib,
    reset_peak_rss,
    rss_mib,
    sized_config,
    train_loader,
)
from trainers.training.fastpath import FastPath
from trainers.training.loop import TrainStep

# Speeds within a domain are given relative to its plainest model.
REFERENCE: dict[str, str] = {"sar": "sar-baseline", "audio": "audio-vae-mel", "fragments": "fragment-dae"}
DATA_SHARE_TARGET = 0.10
# The set-ups compared on a GPU, as `trainers.training.fastpath` builds them for a domain. "default" is what
# the
# training loop runs on CUDA; "compiled" adds `torch.compile` (the loop's `--compile`).
GPU_MODES: tuple[str, ...] = ("fp32-eager", "default", "compiled")
GPU_MODE_LABELS: dict[str, str] = {
    "fp32-eager": "fp32 eager",
    "default": "the loop's CUDA default (SAR: bf16 + channels_last + fused Adam; others: fp32 + fused)",
    "compiled": "the loop's CUDA default + compile",
}


def gpu_setup(mode: str, domain: str) -> FastPath:
    """The `FastPath` of one GPU mode for `domain`.

    Fused Adam stands for a fused AdamW: the two are the same maths at weight decay 0, the presets'.
    """
    if mode == "fp32-eager":
        return FastPath()
    if mode in ("default", "compiled"):
        return FastPath.cuda_default(domain, compile=mode == "compiled")
    raise ValueError(f"unknown GPU mode '{mode}'; choose from: {', '.join(GPU_MODES)}")


def _release_memory() -> None:
    """Give freed memory back to the OS so the next variant's RSS growth is its own."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


@dataclass
class _Trainee:
    variant: str
    cfg: Any
    task: Any
    model: nn.Module
    optimizer: torch.optim.Optimizer
    loader: DataLoader

    def step(self, batch: Any) -> torch.Tensor:
        """The training loop's own step (trainers.training.loop.TrainStep), not a copy of it."""
        return TrainStep(self.task, self.model, self.optimizer, self.cfg.grad_clip)(batch)


def _trainee(variant: str, batches: int, batch_size: int | None) -> _Trainee:
    cfg = sized_config(variant, "smoke", batches, device="cpu", batch_size=batch_size)
    task, data, model = build_run(cfg)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loader = train_loader(cfg, data.train)
    return _Trainee(variant, cfg, task, model, optimizer, loader)


def _timed_step(trainee: _Trainee, batches: Iterator[Any]) -> dict[str, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    batch = next(batches)
    t1, c1 = time.perf_counter(), time.process_time()
    trainee.step(batch)
    t2, c2 = time.perf_counter(), time.process_time()
    return {"data_s": t1 - t0, "step_s": t2 - t0, "data_cpu_s": c1 - c0, "step_cpu_s": c2 - c0}


def _share(steps: list[dict[str, float]]) -> float:
    return sum(s["data_s"] for s in steps) / sum(s["step_s"] for s in steps)


def _by_domain(variants: Iterable[str]) -> dict[str, list[str]]:
    from models import VARIANTS

    groups: dict[str, list[str]] = {}
    for v in variants:
        if v not in VARIANTS:
            raise ValueError(f"unknown variant '{v}'; choose from: {', '.join(VARIANTS)}")
        groups.setdefault(VARIANTS[v].domain, []).append(v)
    return groups


def measure_cpu_domain(variants: list[str], steps: int, batch_size: int | None = None) -> dict[str, Any]:
    """First pass one variant at a time (memory, first-pass data share), then interleaved rounds on the
    cached data (relative speed, later-pass data share)."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    trainees: dict[str, _Trainee] = {}
    result: dict[str, dict[str, Any]] = {}
    can_reset = reset_peak_rss()
    # One untimed step first, so that one-time costs (lazy imports, filter banks, file lists, the
    # allocator's first pools) do not land on the first variant's memory and time.
    warm = _trainee(variants[0], 1, batch_size)
    warm.step(next(iter(warm.loader)))
    del warm
    for v in variants:
        _release_memory()
        before = rss_mib()
        reset_peak_rss()
        trainee = _trainee(v, steps + 1, batch_size)
        cfg = trainee.cfg
        batches = iter(trainee.loader)
        first = [_timed_step(trainee, batches) for _ in range(steps + 1)][1:]  # the first step warms up
        peak = peak_rss_mib()
        trainees[v] = trainee
        result[v] = {
            "batch_size": cfg.batch_size,
            "model": dict(cfg.model),
            "parameters": sum(p.numel() for p in trainee.model.parameters()),
            "peak_rss_growth_mib": peak - before if can_reset and before is not None else None,
            "first_pass": first,
            "first_pass_data_share": _share(first),
        }
    # Later passes: the variants take turns, one step each, in a rotating order.
    iters = {v: iter(t.loader) for v, t in trainees.items()}
    later: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    for r in range(steps):
        order = variants[r % len(variants) :] + variants[: r % len(variants)]
        for v in order:
            later[v].append(_timed_step(trainees[v], iters[v]))
    for v in variants:
        step_s = median(s["step_s"] for s in later[v])
        result[v].update(
            later_pass=later[v],
            later_pass_data_share=_share(later[v]),
            median_step_s=step_s,
            samples_per_s=result[v]["batch_size"] / step_s,
        )
    del trainees, iters
    _release_memory()
    return result


def measure_cpu_throughput(
    variants: Iterable[str] | None = None, steps: int = 6, batch_size: int | None = None
) -> tuple[list[Figure], dict[str, Any]]:
    """CPU figures: speed relative to the domain's reference, peak RSS growth, data share per domain."""
    from models import VARIANTS

    groups = _by_domain(variants if variants is not None else VARIANTS)
    raw: dict[str, Any] = {}
    figures: list[Figure] = []
    threads = torch.get_num_threads()
    for domain, names in groups.items():
        res = measure_cpu_domain(names, steps, batch_size)
        raw[domain] = res
        ref = REFERENCE[domain] if REFERENCE[domain] in res else names[0]
        for v in names:
            r = res[v]
            if v != ref:
                figures.append(
                    Figure(
                        key=f"throughput/cpu/relative/{v}",
                        label=f"CPU training speed {v} / {ref} (smoke size, batch {r['batch_size']})",
                        value=r["samples_per_s"] / res[ref]["samples_per_s"],
                        unit="x",
                        note=f"median of {steps} interleaved steps; {threads} torch threads",
                    )
                )
        for v in names:
            r = res[v]
            growth = r["peak_rss_growth_mib"]
            figures.append(
                Figure(
                    key=f"memory/cpu/{v}",
                    label=f"CPU peak RSS growth {v} (smoke size, batch {r['batch_size']})",
                    value=growth,
                    unit="MiB",
                    note="" if growth is not None else "not measured (needs /proc/self/clear_refs)",
                )
            )
        for when, key in (
            ("first epoch", "first_pass_data_share"),
            ("later epochs", "later_pass_data_share"),
        ):
            figures.append(
                Figure(
                    key=f"data_share/cpu/{domain}/{key.split('_')[0]}",
                    label=f"data pipeline share of a step, {domain}, {when} (CPU, {ref})",
                    value=100 * res[ref][key],
                    unit="%",
                    bound=100 * DATA_SHARE_TARGET,
                    goal="max",
                    note=f"{ref} is the cheapest {domain} model, so its share is the largest",
                )
            )
    return figures, {
        "config": {"steps": steps, "batch_size": batch_size, "torch_threads": threads},
        "domains": raw,
    }


# ------------------------------------------------------------------------------------------------------ GPU
def gpu_matmul_peak_tflops(n: int = 8192, iters: int = 50, device: str = "cuda") -> float:
    """This GPU's achieved dense bf16 matmul rate (TFLOP/s): the peak the MFU fraction is measured against."""
    dev = torch.device(device)
    a = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize(dev)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        a @ b
    end.record()
    torch.cuda.synchronize(dev)
    seconds = start.elapsed_time(end) / 1000
    return 2 * n**3 * iters / seconds / 1e12


def _is_image_model(batch: Any) -> bool:
    first = batch[0] if isinstance(batch, (list, tuple)) else batch
    return first.dim() == 4


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, (list, tuple)):
        return [b.to(device, non_blocking=True) for b in batch]
    return batch.to(device, non_blocking=True)


def count_step_flops(task: Any, model: nn.Module, batch: Any) -> int:
    """FLOPs of one training step (forward + backward) as FlopCounterMode counts them (convs, matmuls)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        loss = task.loss(model, batch)
        loss.backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def run_setup(
    cfg: Any,
    task: Any,
    preprocessing: dict[str, Any],
    cpu_batches: list[Any],
    fast: FastPath,
    steps: int,
    warmup: int,
    device: str = "cuda",
    compile_on_cpu: bool = False,
) -> tuple[dict[str, Any], nn.Module]:
    """Train a fresh copy of the model (same init, same random draws) for ``warmup`` + ``steps`` steps in
    the set-up ``fast``, exactly as `trainers.training.loop` runs a step. Returns the timings and the trained
    model.

    ``device`` may be "cpu" to run the code path without a GPU: there is then no CUDA timing, and
    ``torch.compile`` only with ``compile_on_cpu`` (inductor's C++ back end takes ~20 s per model here).
    """
    from models import create_model

    dev = torch.device(device)
    cuda = dev.type == "cuda"
    if fast.compile and not (cuda or compile_on_cpu):
        fast = replace(fast, compile=False)
    torch.manual_seed(cfg.seed)
    model = create_model(cfg.variant, preprocessing=preprocessing, **cfg.model).to(dev)
    model.train()
    forward = fast.prepare(model)
    optimizer = fast.optimizer(model.parameters(), cfg.lr, cfg.weight_decay)
    batches = [fast.inputs(_to_device(b, dev)) for b in cpu_batches]

    step = TrainStep(task, model, optimizer, cfg.grad_clip, fast, dev, forward=forward)  # the loop's step

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(dev)

    if cuda:
        sync()
        torch.cuda.reset_peak_memory_stats(dev)
    torch.manual_seed(cfg.seed + 1)  # the VAE's sampling draws the same numbers in every set-up
    losses = []
    t0 = time.perf_counter()
    for i in range(warmup):
        losses.append(step(batches[i % len(batches)]))
    sync()
    warmup_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(warmup, warmup + steps):
        losses.append(step(batches[i % len(batches)]))
    sync()
    elapsed = time.perf_counter() - t0
    trajectory = [float(x) for x in torch.stack(losses).float().cpu()] if losses else []
    timed = trajectory[warmup:]
    peak = torch.cuda.max_memory_allocated(dev) / 2**20 if cuda else None
    result = {
        "options": asdict(fast),
        "steps": steps,
        "seconds": elapsed,
        "warmup_s": warmup_s,
        "samples_per_s": len(_first(cpu_batches[0])) * steps / elapsed,
        "peak_allocated_mib": peak,
        "mean_loss": sum(timed) / len(timed) if timed else float("nan"),
        "losses": trajectory,
    }
    return result, model


def _first(batch: Any) -> torch.Tensor:
    return batch[0] if isinstance(batch, (list, tuple)) else batch


def measure_gpu_variant(
    variant: str,
    steps: int = 30,
    warmup: int = 5,
    n_batches: int = 4,
    device: str = "cuda",
    preset: str = "full",
) -> dict[str, Any]:
    """One variant at the preset's batch size in every GPU set-up, plus the data share of its loader."""
    cfg = sized_config(variant, preset, n_batches, device=device)
    task, data, model = build_run(cfg)
    loader = train_loader(cfg, data.train, pin_memory=device.startswith("cuda"))
    data_s: dict[str, float] = {}
    cpu_batches: list[Any] = []
    for name in ("first_pass", "later_pass"):
        it = iter(loader)
        times = []
        for _ in range(n_batches):
            t0 = time.perf_counter()
            batch = next(it)
            times.append(time.perf_counter() - t0)
            if name == "first_pass":
                cpu_batches.append(batch)
        data_s[name] = median(times)
    dev = torch.device(device)
    flops = None
    try:
        model.to(dev).train()
        flops = count_step_flops(task, model, _to_device(cpu_batches[0], dev))
    except Exception as exc:  # noqa: BLE001 - the FLOP count only feeds the MFU figure
        flops_error = f"{type(exc).__name__}: {exc}"
    else:
        flops_error = ""
    del model
    modes: dict[str, Any] = {}
    for mode in GPU_MODES:
        fast = gpu_setup(mode, task.domain)
        try:
            modes[mode], _ = run_setup(
                cfg, task, data.preprocessing, cpu_batches, fast, steps, warmup, device
            )
            modes[mode]["mode"] = mode
        except Exception as exc:  # noqa: BLE001 - one failing set-up (e.g. compile) must not hide the others
            modes[mode] = {"mode": mode, "error": f"{type(exc).__name__}: {exc}"}
        if fast.compile:
            torch._dynamo.reset()  # compiled graphs keep the model alive; the next variant starts clean
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    for m in modes.values():
        if "samples_per_s" in m:
            step_s = cfg.batch_size / m["samples_per_s"]
            m["data_share_first_pass"] = data_s["first_pass"] / (data_s["first_pass"] + step_s)
            m["data_share_later_pass"] = data_s["later_pass"] / (data_s["later_pass"] + step_s)
            m["flops_per_s"] = flops * m["samples_per_s"] / cfg.batch_size if flops else None
    return {
        "variant": variant,
        "batch_size": cfg.batch_size,
        "model": dict(cfg.model),
        "flops_per_step": flops,
        "flops_error": flops_error,
        "data_s_per_batch": data_s,
        "modes": modes,
    }


def measure_gpu_throughput(
    variants: Iterable[str] | None = None, steps: int = 30, warmup: int = 5
) -> tuple[list[Figure], dict[str, Any]]:
    """GPU figures per variant and set-up, or 'not measured (no CUDA)' rows without a GPU."""
    from models import VARIANTS

    names = list(variants if variants is not None else VARIANTS)
    _by_domain(names)  # checks the names
    if not torch.cuda.is_available():
        figures = [
            Figure(key=f"gpu/{what}", label=label, value=None, unit=unit, note=NOT_MEASURED_NO_CUDA)
            for what, label, unit in (
                ("matmul_peak", "GPU bf16 matmul peak (measured)", "TFLOP/s"),
                (
                    "samples_per_s",
                    "GPU training samples/s per variant, fp32 eager vs bf16+channels_last+"
                    "compile+fused AdamW (full-preset batch sizes)",
                    "samples/s",
                ),
                ("speedup", "GPU speed-up of the fast set-up over fp32 eager, per variant", "x"),
                ("peak_memory", "GPU peak memory (max_memory_allocated) per variant", "MiB"),
                ("mfu", "GPU fraction of the measured bf16 matmul peak per variant", "%"),
                ("data_share", "GPU data pipeline share of a step per variant", "%"),
            )
        ]
        return figures, {"cuda": False, "note": NOT_MEASURED_NO_CUDA}
    peak = gpu_matmul_peak_tflops()
    raw = {v: measure_gpu_variant(v, steps, warmup) for v in names}
    return gpu_figures(peak, raw), {"cuda": True, "matmul_peak_tflops": peak, "variants": raw}


def _mfu(mode_result: dict[str, Any], peak_tflops: float) -> float | None:
    rate = mode_result.get("flops_per_s")
    return None if rate is None else 100 * rate / (peak_tflops * 1e12)


def gpu_figures(peak_tflops: float, raw: dict[str, dict[str, Any]]) -> list[Figure]:
    """Six rows per variant from `measure_gpu_variant` results: fp32 samples/s, the speed-up of each bf16
    set-up, and the fast set-up's peak memory, fraction of the matmul peak and data share (the other
    set-ups' values in the notes; everything is in the results JSON)."""
    figures = [
        Figure("gpu/matmul_peak", "GPU bf16 matmul peak (measured, 8192² matmul)", peak_tflops, "TFLOP/s")
    ]

    def fmt(value: float | None, unit: str) -> str:
        return "n/a" if value is None else f"{value:.0f} {unit}" if unit == "MiB" else f"{value:.1f} {unit}"

    for v, r in raw.items():
        modes = r["modes"]
        tag = f"{v}, batch {r['batch_size']}"
        failed = {m: modes[m]["error"] for m in modes if "error" in modes[m]}
        ok = {m: modes[m] for m in modes if m not in failed}
        for mode, error in failed.items():
            figures.append(
                Figure(
                    f"gpu/{v}/{mode}/error",
                    f"GPU {GPU_MODE_LABELS[mode]}, {tag}",
                    None,
                    "",
                    note=f"failed: {error}"[:200],
                )
            )
        base = ok.get("fp32-eager")
        if base is not None:
            figures.append(
                Figure(
                    f"gpu/{v}/fp32-eager/samples_per_s",
                    f"GPU training samples/s, fp32 eager, {tag}",
                    base["samples_per_s"],
                    "samples/s",
                )
            )
            for mode in ("default", "compiled"):
                if mode in ok:
                    figures.append(
                        Figure(
                            f"gpu/{v}/{mode}/speedup",
                            f"GPU speed-up over fp32 eager: {GPU_MODE_LABELS[mode]}, {tag}",
                            ok[mode]["samples_per_s"] / base["samples_per_s"],
                            "x",
                            note=f"{ok[mode]['samples_per_s']:.0f} samples/s; warm-up "
                            f"(compile) {ok[mode]['warmup_s']:.1f} s",
                        )
                    )
        # The fastest set-up that ran leads; the others go in the notes.
        head = next((mode for mode in ("compiled", "default", "fp32-eager") if mode in ok), None)
        if head is None:
            continue
        others = [m for m in ok if m != head]
        m = ok[head]
        figures.append(
            Figure(
                f"gpu/{v}/{head}/peak_memory",
                f"GPU peak memory (max_memory_allocated), {GPU_MODE_LABELS[head]}, {tag}",
                m["peak_allocated_mib"],
                "MiB",
                note="; ".join(
                    f"{GPU_MODE_LABELS[o]} {fmt(ok[o]['peak_allocated_mib'], 'MiB')}" for o in others
                ),
            )
        )
        figures.append(
            Figure(
                f"gpu/{v}/{head}/mfu",
                f"GPU model FLOP rate / bf16 matmul peak, {GPU_MODE_LABELS[head]}, {tag}",
                _mfu(ok[head], peak_tflops),
                "%",
                note="; ".join(f"{GPU_MODE_LABELS[o]} {fmt(_mfu(ok[o], peak_tflops), '%')}" for o in others)
                if r["flops_per_step"]
                else f"no FLOP count: {r['flops_error']}"[:200],
            )
        )
        today = "default" if "default" in ok else head
        figures.append(
            Figure(
                f"gpu/{v}/{today}/data_share",
                f"GPU data pipeline share, first epoch, {GPU_MODE_LABELS[today]}, {tag}",
                100 * ok[today]["data_share_first_pass"],
                "%",
                bound=100 * DATA_SHARE_TARGET,
                goal="max",
                note=f"later epochs {100 * ok[today]['data_share_later_pass']:.1f} %; "
                f"{GPU_MODE_LABELS[head]}: {100 * m['data_share_first_pass']:.1f} % first, "
                f"{100 * m['data_share_later_pass']:.1f} % later",
            )
        )
    return figures


def main(argv: list[str] | None = None) -> int:
    from benchmarks.common import format_table

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variants", nargs="+")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--gpu-steps", type=int, default=30)
    args = parser.parse_args(argv)
    figures, _ = measure_cpu_throughput(args.variants, args.steps)
    gpu_figures, _ = measure_gpu_throughput(args.variants, args.gpu_steps)
    print(format_table(figures + gpu_figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
