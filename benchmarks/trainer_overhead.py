"""Trainer overhead: `trainers.training.loop.train` against a bare PyTorch loop doing the same work.

Both loops get the same config, seed, model weights, data, batch order, loss (the domain's
`Task.loss`), Adam settings and gradient clipping, so the difference is what the loop adds around the
steps: batch transfer, the autocast context, the loss window and its host read-back, metric rows and the
run's step written to SQLite, the cancel and checkpoint-timer checks. Both run in this process, interleaved
A/B/B/A..., and the per-step time is taken between two fixed steps (after a warm-up, before the epoch-end
evaluation) so model build, data set-up, evaluation and checkpoints are outside the window; the loss windows
the two loops log are compared to show they did the same computation.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from benchmarks.common import Figure, build_run, median, sized_config, train_loader
from trainers.runs.store import RunStore
from trainers.training.fastpath import FastPath
from trainers.training.loop import TrainStep

_clock = time.perf_counter

# One variant per domain, at the smoke preset's size (CPU).
OVERHEAD_VARIANTS: tuple[str, ...] = ("sar-baseline", "audio-vae", "fragment-dae")
TARGET_RATIO = 1.05


def overhead_config(variant: str, steps: int, batch_size: int | None = None, seed: int = 0):
    """The smoke config of ``variant`` on CPU, with one epoch of more than ``steps`` batches.

    One long epoch keeps the epoch-end evaluation out of the timed steps; validation is cut to two samples
    because it runs after the timed window anyway.
    """
    cfg = sized_config(variant, "smoke", steps + 1, device="cpu", batch_size=batch_size, seed=seed)
    if steps < 2 * cfg.log_every or steps % cfg.log_every:
        raise ValueError(
            f"steps must be a multiple of the loop's log interval ({cfg.log_every}) and at least "
            f"{2 * cfg.log_every}, got {steps}"
        )
    cfg.max_steps = steps
    cfg.precision = "fp32"  # the bare loop's maths: the loop's CPU bf16 default would differ from it
    return cfg


class _BareLoop:
    """The textbook loop: DataLoader, forward, loss, zero_grad, backward, clip, step. Nothing else."""

    def __init__(self, cfg) -> None:
        self.cfg = cfg
        self.task, data, self.model = build_run(cfg)
        if len(data.train) // cfg.batch_size < cfg.max_steps:
            batches = len(data.train) // cfg.batch_size
            raise ValueError(
                f"{cfg.variant}: one epoch has {batches} batches of {cfg.batch_size}, fewer than the "
                f"{cfg.max_steps} timed steps; use fewer steps or a smaller batch"
            )
        # The loop's own Adam kernel on this device (fused on the CPU too), so the losses match exactly.
        device = torch.device(cfg.device)
        fast = FastPath.resolve(device, self.task.domain, cfg.precision, variant=cfg.variant)
        self.optimizer = fast.optimizer(self.model.parameters(), cfg.lr, cfg.weight_decay)
        self.step = TrainStep(self.task, self.model, self.optimizer, cfg.grad_clip)  # the loop's own step
        self.batches = iter(train_loader(cfg, data.train))
        self.model.train()
        self.rng_state = torch.get_rng_state()

    def steps(self, n: int) -> float:
        """Run ``n`` steps; returns their mean loss (read back once, as the real loop does per window)."""
        losses = []
        for _ in range(n):
            losses.append(self.step(next(self.batches)))
        return float(torch.stack(losses).float().mean())


class _TimedStore(RunStore):
    """A RunStore that clocks the writes our loop makes every log window (the loss row, the run's step)."""

    def __init__(self, runs_dir) -> None:
        super().__init__(runs_dir)
        self._spent = 0.0

    def log_metrics(self, run_id, step, epoch, split, values, time=None) -> None:
        t0 = _clock()
        try:
            super().log_metrics(run_id, step, epoch, split, values, time)
        finally:
            if split == "train":
                self._spent += _clock() - t0

    def update_run(self, run_id, **fields) -> None:
        t0 = _clock()
        try:
            super().update_run(run_id, **fields)
        finally:
            if set(fields) == {"step", "epoch"}:
                self._spent += _clock() - t0

    def take(self) -> float:
        """Seconds spent in those writes since the last call."""
        spent, self._spent = self._spent, 0.0
        return spent


class _Baton:
    """Hands the CPU back and forth between the two loops so that exactly one of them runs at a time."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._turn = "ours"
        self.error: BaseException | None = None

    def wait(self, who: str, timeout: float = 600.0) -> None:
        with self._cv:
            if not self._cv.wait_for(lambda: self._turn == who or self.error is not None, timeout):
                raise RuntimeError(f"benchmark: the {who} loop waited {timeout:.0f} s for its turn")
            if self.error is not None:
                raise RuntimeError("the other loop failed during the benchmark") from self.error

    def give(self, to: str) -> None:
        with self._cv:
            self._turn = to
            self._cv.notify_all()

    def fail(self, error: BaseException) -> None:
        with self._cv:
            self.error = self.error or error  # the first failure is the cause
            self._cv.notify_all()


def _bare_train(cfg, store, on_step: Callable[[int, float], None]) -> Any:
    """A second bare loop behind `train`'s interface (the A/A control): same windows, same callback."""
    loop = _BareLoop(cfg)
    for step in range(cfg.log_every, cfg.max_steps + 1, cfg.log_every):
        on_step(step, loop.steps(cfg.log_every))
    return SimpleNamespace(status="completed", reason="")


def paired_windows(cfg, bare_first: bool = False, control: bool = False) -> list[dict[str, float]]:
    """One lockstep run: our loop and the bare loop take turns, one log window of steps each.

    Our loop calls ``on_step`` after writing each loss window; there it hands over to the bare loop, which
    runs the same steps on its own copy of model and data, and hands back. Each window is timed from when
    its loop got the turn to when it gave it up, so the two windows of a pair are measured seconds apart
    under the same machine load. Both loops run in worker threads (the main thread's malloc arena behaves
    differently), and ``bare_first`` flips which of the two goes first within each pair. The first window
    of each (warm-up: first batches, lazy set-up) is dropped. With ``control`` a second bare loop takes our
    loop's place: the A/A run that shows how far from 1.0 the harness reads when nothing differs.
    """
    from trainers.training.loop import train

    runner = _bare_train if control else train
    every = cfg.log_every
    ends = list(range(every, cfg.max_steps + 1, every))
    baton = _Baton()
    ours: dict[int, tuple[float, float, float, float]] = {}  # window end -> (wall, CPU, store s, mean loss)
    resumed = [0.0, 0.0]
    pairs: list[dict[str, float]] = []
    store_box: list[_TimedStore] = []

    def on_step(step: int, mean_loss: float) -> None:
        wall, cpu = time.perf_counter() - resumed[0], time.process_time() - resumed[1]
        ours[step] = (wall, cpu, store_box[0].take() if store_box else 0.0, mean_loss)
        baton.give("bare")
        baton.wait("ours")
        resumed[:] = [time.perf_counter(), time.process_time()]

    def run_ours() -> None:
        try:
            with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp, _TimedStore(tmp) as store:
                if not control:
                    store_box.append(store)
                result = runner(cfg, store, on_step=on_step)
            if result.status != "completed":
                raise RuntimeError(f"{cfg.variant}: the training loop ended {result.status}: {result.reason}")
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread, which re-raises it
            baton.fail(exc)

    bare: _BareLoop
    pending: dict[int, tuple[float, float, float]] = {}  # bare windows waiting for our window of the pair

    def bare_window() -> tuple[float, float, float]:
        # One global torch RNG serves both loops (dropout, the VAE's sampling): swap in the bare loop's own
        # stream so that both draw the same numbers, as two separate processes would.
        ours_rng = torch.get_rng_state()
        torch.set_rng_state(bare.rng_state)
        start, start_cpu = time.perf_counter(), time.process_time()
        loss = bare.steps(every)
        wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
        bare.rng_state = torch.get_rng_state()
        torch.set_rng_state(ours_rng)
        return wall, cpu, loss

    def add_pair(end: int, bare_s: float, bare_cpu: float, bare_loss: float) -> None:
        if end == every:  # warm-up window
            return
        if end not in ours:
            raise RuntimeError(f"{cfg.variant}: our loop handed over without logging step {end}")
        ours_s, ours_cpu, store_s, ours_loss = ours[end]
        pairs.append(
            {
                "step": end,
                "ours_s": ours_s,
                "bare_s": bare_s,
                "ours_cpu_s": ours_cpu,
                "bare_cpu_s": bare_cpu,
                "ours_store_s": store_s,
                "ours_loss": ours_loss,
                "bare_loss": bare_loss,
            }
        )

    def drive() -> None:
        nonlocal bare
        try:
            # Built in the thread that runs it, as our loop builds its own (malloc arenas are per thread).
            bare = _BareLoop(cfg)
            ours_thread = threading.Thread(target=run_ours, name="bench-our-loop", daemon=True)
            if bare_first:  # the bare loop's first window, then ours; afterwards bare leads every pair
                bare_window()
            ours_thread.start()
            for end in ends[1:] if bare_first else ends:
                baton.wait("bare")
                if bare_first:
                    pending[end] = bare_window()
                else:
                    add_pair(end, *bare_window())
                baton.give("ours")
            if bare_first:  # our last window ends with one more hand-over
                baton.wait("bare")
                for end, values in pending.items():
                    add_pair(end, *values)
                baton.give("ours")
            ours_thread.join(timeout=600)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
            baton.fail(exc)

    driver = threading.Thread(target=drive, name="bench-bare-loop", daemon=True)
    driver.start()
    driver.join(timeout=1800)
    if baton.error is not None:
        raise RuntimeError(f"{cfg.variant}: the overhead benchmark failed: {baton.error}") from baton.error
    if driver.is_alive():
        raise RuntimeError(f"{cfg.variant}: the overhead benchmark did not finish in 30 minutes")
    missing = [end for end in ends[1:] if end not in ours]
    if missing:
        raise RuntimeError(f"{cfg.variant}: our loop did not log steps {missing}")
    return pairs


def _ratios(pairs: list[dict[str, float]], suffix: str) -> dict[str, Any]:
    ratios = [p[f"ours_{suffix}"] / p[f"bare_{suffix}"] for p in pairs]
    return {
        "median": median(ratios),
        "quartiles": [float(q) for q in np.percentile(ratios, [25, 75])],
        "of_totals": sum(p[f"ours_{suffix}"] for p in pairs) / sum(p[f"bare_{suffix}"] for p in pairs),
    }


def measure_variant(
    variant: str, steps: int = 40, repeats: int = 4, batch_size: int | None = None, control: bool = False
) -> dict[str, Any]:
    """Lockstep runs of both loops, alternating which goes first in a pair from one run to the next.

    The headline is the median over all window pairs of ours/bare wall time. CPU time (this process's; one
    loop runs at a time) is kept beside it; on a shared 2-core machine both are noisy (a window waits for a
    core; OpenMP threads spin while waiting, which CPU time counts), hence the quartiles and, with
    ``control``, the same measurement of a bare loop against a bare loop. The run-store writes our loop makes
    are clocked directly, as an upper bound of what bookkeeping can cost.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    cfg = overhead_config(variant, steps, batch_size)
    pairs = [p for r in range(repeats) for p in paired_windows(cfg, bare_first=r % 2 == 1)]
    gaps = [abs(p["ours_loss"] - p["bare_loss"]) / max(abs(p["bare_loss"]), 1e-12) for p in pairs]
    control_pairs = (
        [p for r in range(repeats) for p in paired_windows(cfg, bare_first=r % 2 == 1, control=True)]
        if control
        else []
    )
    return {
        "control_wall": _ratios(control_pairs, "s") if control_pairs else None,
        "control_pairs": control_pairs,
        "variant": variant,
        "batch_size": cfg.batch_size,
        "steps_per_window": cfg.log_every,
        "windows": len(pairs),
        "repeats": repeats,
        "wall": _ratios(pairs, "s"),
        "cpu": _ratios(pairs, "cpu_s"),
        "store_share": sum(p["ours_store_s"] for p in pairs) / sum(p["ours_s"] for p in pairs),
        "store_ms_per_window": 1000 * median(p["ours_store_s"] for p in pairs),
        "bare_wall_s_per_step": median(p["bare_s"] for p in pairs) / cfg.log_every,
        "max_loss_rel_diff": max(gaps),
        "pairs": pairs,
    }


def measure_trainer_overhead(
    variants: tuple[str, ...] = OVERHEAD_VARIANTS,
    steps: int = 40,
    repeats: int = 4,
    batch_size: int | None = None,
    control: bool = False,
) -> tuple[list[Figure], dict[str, Any]]:
    """Figures (ours/bare per variant; the run store's share of our step) and the raw window timings.

    ``control`` adds an A/A run per variant (a bare loop in our loop's place) whose ratio, in the notes,
    shows the harness's noise on this machine.
    """
    raw = {v: measure_variant(v, steps, repeats, batch_size, control) for v in variants}
    figures = []
    for v, r in raw.items():
        q1, q3 = r["wall"]["quartiles"]
        aa = r["control_wall"]
        noise = (
            f"; A/A control (bare/bare, same harness) {aa['median']:.3f}, "
            f"quartiles {aa['quartiles'][0]:.3f}–{aa['quartiles'][1]:.3f}"
            if aa
            else ""
        )
        figures.append(
            Figure(
                key=f"overhead/{v}",
                label=f"trainer overhead {v}: ours/bare time per step (CPU, batch {r['batch_size']})",
                value=r["wall"]["median"],
                unit="x",
                bound=TARGET_RATIO,
                goal="max",
                note=f"median of {r['windows']} lockstep pairs of {r['steps_per_window']}-step windows "
                f"(quartiles {q1:.3f}–{q3:.3f}); CPU time {r['cpu']['median']:.3f}; "
                f"loss windows agree to {r['max_loss_rel_diff']:.0e}{noise}",
            )
        )
        figures.append(
            Figure(
                key=f"overhead/store_share/{v}",
                label=f"run-store writes, share of our step time, {v}",
                value=100 * r["store_share"],
                unit="%",
                bound=100 * (TARGET_RATIO - 1),
                goal="max",
                note=f"{r['store_ms_per_window']:.2f} ms per {r['steps_per_window']}-step window "
                "(the loss row and the run's step)",
            )
        )
    config = {
        "steps": steps,
        "repeats": repeats,
        "control": control,
        "torch_threads": torch.get_num_threads(),
    }
    return figures, {"config": config, "variants": raw}


def profile_ours(variant: str, steps: int = 40, top: int = 25) -> str:
    """cProfile of `trainers.training.loop.train` alone for one variant (set-up and evaluation included):
    where the
    loop's own Python time goes, next to the time spent in torch."""
    import cProfile
    import io
    import pstats

    from trainers.runs.store import RunStore
    from trainers.training.loop import train

    cfg = overhead_config(variant, steps)
    profiler = cProfile.Profile()
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as tmp, RunStore(tmp) as store:
        profiler.enable()
        train(cfg, store)
        profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    out.write("\nour code (trainers/, models/): cumulative time per function\n")
    stats.sort_stats("cumulative").print_stats(r"(trainers|models)/.*\.py", top)
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--variants", nargs="+", default=list(OVERHEAD_VARIANTS))
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--control", action="store_true", help="also run the A/A control (bare vs bare)")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of our loop instead")
    args = parser.parse_args(argv)
    if args.profile:
        for v in args.variants:
            print(profile_ours(v, args.steps))
        return 0
    from benchmarks.common import format_table

    figures, _ = measure_trainer_overhead(
        tuple(args.variants), args.steps, args.repeats, control=args.control
    )
    print(format_table(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
