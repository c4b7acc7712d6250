"""The one training loop for every variant: device choice, autocast, clipping, early stopping, checkpoints,
resume, the NaN/inf guard, cancellation by SIGTERM, phase timings, and DDP when launched under `torchrun`.

Cancel (SIGTERM/SIGINT, usually sent to the trainer's whole process group by the studio's Cancel or by
`timeout`) ends a run `cancelled` in every phase. While the run only prepares or reads -- data build, model
set-up, waiting for a batch, validation -- the signal handler raises `Cancelled` at once; while it changes
state -- an optimiser step, a checkpoint write -- the handler only sets a flag, which the loop reads after
that step or save. `last` is saved whenever a step was made. Worker processes (DataLoader workers, the
prefill pool) ignore the signals and are shut down by this process.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from models import create_model, load_pretrained
from trainers.config import RunConfig
from trainers.data.prefill import ignore_cancel_signals, signals_blocked
from trainers.data.spec import DataSpec, parse_data_spec
from trainers.metrics import registry
from trainers.metrics.collapse import check_collapse
from trainers.runs import checkpoints, media
from trainers.runs.faults import kill_point
from trainers.runs.store import RunStore
from trainers.settings import check_config
from trainers.training import system
from trainers.training.fastpath import FastPath, cpu_has_native_bf16
from trainers.training.hooks import pause_point
from trainers.training.tasks import AudioTask, Task, task_for

log = logging.getLogger(__name__)

# A `last` checkpoint is also written mid-epoch this often, so a killed long epoch loses little work.
CHECKPOINT_EVERY_S = 300.0
# A trained weight this large means the updates ran away (lr=1e9 put Adam's steps at ~1e9): no healthy net
# of these variants comes near it (the references' largest weight is 4.0; BatchNorm's running
# variances, buffers and not weights, reach ~7e3), yet the outputs may stay finite behind bounded heads, so
# a non-finite check alone let such a run end `completed` with a collapsed model.
WEIGHT_LIMIT = 1e6
PHASES_NAME = "phases.json"


class Diverged(RuntimeError):
    """The training loss or the weights became NaN or infinite, or the weights ran away (WEIGHT_LIMIT)."""


@dataclass
class RunResult:
    run_id: str
    status: str
    reason: str
    step: int
    epoch: int
    best: float
    val_metrics: dict[str, float]


def data_workers(requested: int | None, device: torch.device) -> int:
    """DataLoader workers: as asked, else none on CPU and up to 4 (half the cores) on CUDA."""
    if requested is not None:
        if requested < 0:
            raise ValueError(f"num_workers must be >= 0, got {requested}")
        return requested
    return min(4, (os.cpu_count() or 2) // 2) if device.type == "cuda" else 0


def cpu_threads(world: int = 1) -> int:
    """Intra-op threads for a CPU trainer: OMP_NUM_THREADS when set (the studio sets it to its share of the
    CPU slots, torchrun to 1 a rank), else the CPUs it is pinned to, capped by a cgroup CPU quota (a
    container's limit), shared among the `world` ranks of this host."""
    with contextlib.suppress(ValueError):
        given = int(os.environ.get("OMP_NUM_THREADS", ""))
        if given > 0:
            return given
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    with contextlib.suppress(OSError, ValueError, ZeroDivisionError):
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(float(quota) / float(period))))
    return max(1, cores // max(1, world))


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` picks CUDA when present; asking for CUDA on a machine without it is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda was requested but no CUDA GPU is available; use --device cpu or auto")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise ValueError(f"unknown device '{name}'; use auto, cpu or cuda")
    return torch.device(name)


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


class Cancelled(BaseException):
    """Raised by the signal handler inside an interruptible phase. A BaseException, so that no
    `except Exception` in data or metric code swallows it."""


# How the reasons name the phase a cancel arrived in.
PHASE_WORDS = {
    "setup": "start-up",
    "data": "the data build",
    "model": "the model set-up",
    "data_wait": "the wait for a batch",
    "steps": "a training step",
    "validation": "validation",
    "checkpoints": "a checkpoint save",
}


class PhaseTimes:
    """Wall seconds of a run's phases, to see where its time goes (GPU runs measured before the fast path
    spent 70-94 % of their wall time away from the GPU). On CUDA, steps are timed on the host; the loss
    read-back every `log_every` steps synchronises, so over a run the step time includes the GPU's."""

    NAMES = ("setup", "data", "model", "steps", "data_wait", "validation", "checkpoints")
    # `steps_share_after_10s`: the share of wall time in steps after a run's first 10 s (start-up excluded).
    WARM_S = 10.0

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.seconds = dict.fromkeys(self.NAMES, 0.0)
        self.after_warm = dict.fromkeys(self.NAMES, 0.0)  # the part of each phase after the first WARM_S
        self.peak_gpu_bytes: int | None = None
        self.setup: dict[str, Any] = {}  # what the steps ran in (precision, layout, threads, workers)
        self.first_step_s: float | None = None
        self.first_step_since_process_s: float | None = None
        self.process_start_s = _process_age()
        self.current = "setup"
        self.error_phase: str | None = None  # the innermost phase an exception left

    @contextlib.contextmanager
    def phase(self, name: str):
        previous, self.current = self.current, name
        start = time.monotonic()
        try:
            yield
        except BaseException:
            self.error_phase = self.error_phase or name
            raise
        finally:
            end = time.monotonic()
            self.seconds[name] += end - start
            self.after_warm[name] += max(0.0, end - max(start, self.t0 + self.WARM_S))
            self.current = previous

    def first_step(self) -> None:
        if self.first_step_s is None:
            self.first_step_s = time.monotonic() - self.t0
            age = _process_age()
            self.first_step_since_process_s = age

    def as_dict(self) -> dict[str, float | None]:
        """Seconds per phase; `first_step_s` counts from `train()`'s start, `first_step_since_process_s`
        from the process start (imports included; None where the process start is unknown)."""
        out: dict[str, float | None] = {f"{k}_s": round(v, 3) for k, v in self.seconds.items()}
        out["total_s"] = round(time.monotonic() - self.t0, 3)
        out["first_step_s"] = None if self.first_step_s is None else round(self.first_step_s, 3)
        since = self.first_step_since_process_s
        out["first_step_since_process_s"] = None if since is None else round(since, 3)
        out["imports_s"] = None if self.process_start_s is None else round(self.process_start_s, 3)
        total = out["total_s"] or 0.0
        out["steps_share"] = round(self.seconds["steps"] / total, 4) if total > 0 else None
        late = total - self.WARM_S
        out["steps_share_after_10s"] = round(self.after_warm["steps"] / late, 4) if late > 0 else None
        out["peak_gpu_bytes"] = self.peak_gpu_bytes
        out.update(self.setup)
        return out

    def summary(self) -> str:
        d = self.as_dict()
        total = d["total_s"] or 0.0
        parts = []
        for name in self.NAMES:
            value = d[f"{name}_s"] or 0.0
            share = f" ({100 * value / total:.0f}%)" if total > 0 else ""
            parts.append(f"{name.replace('_', ' ')} {value:.2f} s{share}")
        first = "never" if d["first_step_s"] is None else f"{d['first_step_s']:.2f} s"
        return f"phases: total {total:.2f} s; " + ", ".join(parts) + f"; first step at {first}"


def _process_age() -> float | None:
    """Seconds since this process started (procfs), or None where that is unknown."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        ticks = int(fields[19])  # field 22 of stat: start time in clock ticks after boot
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


def read_phases(folder: str | Path) -> dict[str, Any] | None:
    """The phase timings a run wrote into its folder (None for runs from before they were recorded)."""
    path = Path(folder) / PHASES_NAME
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


class _CancelFlag:
    """Turns SIGTERM/SIGINT into a flag so the loop can finish its step and save `last` before exiting.

    Inside `interruptible()` the handler raises `Cancelled` instead (once), for phases that change no state
    worth keeping and can take long: the data build, model set-up, waiting for a batch, validation.
    """

    def __init__(self, phases: PhaseTimes | None = None) -> None:
        self.set = False
        self.signal_phase = ""  # the phase the first signal arrived in, for the reason
        self._interrupt = False
        self._phases = phases
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _CancelFlag:
        for sig in (signal.SIGTERM, signal.SIGINT):
            # Outside the main thread (e.g. a test thread) signals cannot be handled: run without.
            with contextlib.suppress(ValueError):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:  # noqa: ARG002
        if not self.set:
            phase = self._phases.current if self._phases is not None else ""
            self.signal_phase = PHASE_WORDS.get(phase, phase)
        self.set = True
        if self._interrupt:
            self._interrupt = False
            raise Cancelled()

    @contextlib.contextmanager
    def interruptible(self, enabled: bool = True):
        """Within this block a signal raises `Cancelled` at once (a signal that came before raises here)."""
        if not enabled:
            yield
            return
        if self.set:
            raise Cancelled()
        self._interrupt = True
        try:
            yield
        finally:
            self._interrupt = False

    def __exit__(self, *exc) -> None:
        self._interrupt = False
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class _Distributed:
    """Rank/world bookkeeping; a no-op outside `torchrun`.

    Collectives run on `self.device`: NCCL refuses CPU tensors ("No backend type associated with device type
    cpu"), so a CUDA run all-reduces CUDA tensors, and the CPU gloo run goes through the same code with CPU
    tensors. The CUDA group also gets gloo for CPU tensors (`cpu:gloo,cuda:nccl`), for object broadcasts.
    """

    def __init__(self, device: torch.device) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.enabled = self.world > 1
        cuda = device.type == "cuda"
        self.device = torch.device("cuda", self.local_rank) if self.enabled and cuda else device
        self.backend = "cpu:gloo,cuda:nccl" if cuda else "gloo"
        if self.enabled and not dist.is_initialized():
            if cuda:
                torch.cuda.set_device(self.device)
            dist.init_process_group(backend=self.backend)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def broadcast(self, obj: Any) -> Any:
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def any(self, flag: bool) -> bool:
        """True on every rank if it is true on any rank (cancellation, divergence)."""
        if not self.enabled:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """The element-wise mean over ranks of `values` (moved to this rank's device for the collective)."""
        if not self.enabled:
            return values
        values = values.to(self.device)
        dist.all_reduce(values)
        return values / self.world

    def close(self, finished: bool = True) -> None:
        if self.enabled and dist.is_initialized():
            # After a normal finish every rank waits here before any tears the group down: a rank that exits
            # while another is still in a collective makes gloo abort it ("terminate called ..."). After an
            # error the other ranks may never arrive, so no barrier then.
            if finished:
                with contextlib.suppress(RuntimeError):
                    if self.device.type == "cuda":
                        dist.barrier(device_ids=[self.device.index])
                    else:
                        dist.barrier()
            dist.destroy_process_group()


@dataclass
class TrainStep:
    """One optimisation step of a run: forward under the fast path's autocast, backward, clip, update.

    The loop and the benchmarks (`benchmarks/throughput.py`, `benchmarks/trainer_overhead.py`) call this one
    step, so what they time is what training runs. `model` holds the parameters (clipped); `forward` is what
    runs the batch (the compiled or DDP-wrapped model; default `model`).
    """

    task: Task
    model: nn.Module
    optimizer: torch.optim.Optimizer
    grad_clip: float = 0.0
    fast: FastPath | None = None
    device: torch.device | None = None  # where the batches are; with `fast`, the autocast's device type
    forward: nn.Module | None = None

    def __call__(self, batch: Any, after_forward: Callable[[], None] | None = None) -> torch.Tensor:
        """The step's loss on a batch already on the device and in the fast path's layout (detached, not read
        back: that is the caller's choice). `after_forward` runs between the forward and the backward pass
        (the loop's cancel/pause point)."""
        use_fast = self.fast is not None and self.device is not None
        with self.fast.autocast(self.device) if use_fast else contextlib.nullcontext():
            # `is not None`, not `or`: a compiled module's truth value asks the model for a len() it lacks.
            loss = self.task.loss(self.forward if self.forward is not None else self.model, batch)
        if after_forward is not None:
            after_forward()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        return loss.detach()


@dataclass
class LoopState:
    """What a run carries from step to step. `step`, `epoch`, `best` and `bad_epochs` are saved with every
    checkpoint and come back on resume; the rest belongs to this process."""

    step: int = 0
    epoch: int = 0
    best: float | None = None
    bad_epochs: int = 0
    # False when a cancel cut the validation of the epoch that ended at `step`: the resume validates it first.
    validated: bool = True
    steps_here: int = 0  # steps made by this process: 0 means a cancel came before the first one
    loss_sum: float = 0.0  # the current epoch's training loss, for its log line
    loss_n: int = 0

    def resume_from(self, saved: dict[str, Any]) -> None:
        """Take over the saved fields of a checkpoint's trainer state."""
        for name in ("step", "epoch", "best", "bad_epochs", "validated"):
            if name in saved:
                setattr(self, name, saved[name])

    def saved(self, epoch: int) -> dict[str, Any]:
        """The trainer state a checkpoint taken at `epoch` stores."""
        saved = {"step": self.step, "epoch": epoch, "best": self.best, "bad_epochs": self.bad_epochs}
        if not self.validated:  # only a cancel in validation writes it, so older checkpoints read the same
            saved["validated"] = False
        return saved


def _mean_parts(parts: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    """The mean of each loss part over the steps of a logging window ({} when the task gives none)."""
    return {k: float(torch.stack([p[k] for p in parts]).float().mean()) for k in parts[-1]} if parts else {}


class Trainer:
    """The epochs of one run whose record exists: `setup` builds data, model, optimiser and loaders; `fit`
    runs `train_epoch` (each batch a `train_step`), `validate` and `should_stop` until the run ends.

    Every rank runs it; rank 0 alone validates and writes the store and the checkpoints. A cancel sets
    `cancel.set`; `fit` checks it (on every rank at once) after each phase that may not be cut short.
    """

    def __init__(
        self,
        cfg: RunConfig,
        task: Task,
        fast: FastPath,
        store: RunStore,
        run_id: str,
        ddp: _Distributed,
        state: LoopState,
        phases: PhaseTimes,
        cancel: _CancelFlag,
    ) -> None:
        self.cfg, self.task, self.fast, self.store, self.run_id = cfg, task, fast, store, run_id
        self.ddp, self.state, self.phases, self.cancel = ddp, state, phases, cancel
        self.device = ddp.device
        self.folder = run_dir(store, run_id)
        self.last_val: dict[str, float] = {}
        self.bar: Any = None
        self.on_step: Callable[[int, float], None] | None = None
        self.window: list[torch.Tensor] = []  # losses not yet read back
        self.parts: list[dict[str, torch.Tensor]] = []  # the task's loss parts of those steps (rate, ...)
        self.system = system.SystemSampler(self.device)  # sys/ metrics: CPU, memory, GPU history
        self.batches: Any = None  # the current epoch's batch iterator
        self.last_save = time.monotonic()
        self.epoch_started = time.monotonic()
        # With DDP every rank must make the same steps, so a rank may not leave a batch wait on its own.
        self.fetch_interruptible = not ddp.enabled

    # ------------------------------------------------------------------------------------------ set-up
    def setup(self, spec: DataSpec | None, resume_folder: Path | None, warm: threading.Thread) -> None:
        """Data, model, optimiser and loaders, each phase interruptible by a cancel."""
        cfg, device = self.cfg, self.device
        with self.phases.phase("data"), self.cancel.interruptible():
            self.data = self.task.build_data(spec, cfg.model, cfg.seed)
        with self.phases.phase("model"), self.cancel.interruptible():
            warm.join()
            if resume_folder is not None:
                self.model = load_pretrained(resume_folder, expected_variant=cfg.variant)
            else:
                self.model = create_model(cfg.variant, preprocessing=self.data.preprocessing, **cfg.model)
            self.model.to(device)
            train_model = self.fast.prepare(self.model)
            self.optimizer = self.fast.optimizer(self.model.parameters(), cfg.lr, cfg.weight_decay)
            if resume_folder is not None:
                checkpoints.load_optimizer_state(resume_folder, self.optimizer)
            self.sampler: DistributedSampler | None = None
            if self.ddp.enabled:
                train_model = nn.parallel.DistributedDataParallel(
                    train_model, device_ids=[device.index] if device.type == "cuda" else None
                )
                self.sampler = DistributedSampler(
                    self.data.train, num_replicas=self.ddp.world, rank=self.ddp.rank, seed=cfg.seed
                )
            self._make_loaders()
        if self.ddp.main:  # the studio's progress, percent done and ETA count from this
            self.store.update_run(self.run_id, steps_per_epoch=len(self.train_loader))
        self.one_step = TrainStep(
            self.task, self.model, self.optimizer, cfg.grad_clip, self.fast, device, forward=train_model
        )
        self.last_save = time.monotonic()

    def _make_loaders(self) -> None:
        cfg, pin = self.cfg, self.device.type == "cuda"
        workers = data_workers(cfg.num_workers, self.device)
        self.phases.setup["data_workers"] = workers
        self.train_loader = DataLoader(
            self.data.train,
            batch_size=cfg.batch_size,
            shuffle=self.sampler is None,
            sampler=self.sampler,
            num_workers=workers,
            pin_memory=pin,
            drop_last=len(self.data.train) > cfg.batch_size,
            generator=torch.Generator().manual_seed(cfg.seed + self.state.epoch),
            persistent_workers=workers > 0,
            worker_init_fn=_worker_init if workers > 0 else None,
        )
        self.val_loader = DataLoader(
            self.data.val, batch_size=cfg.batch_size, shuffle=False, num_workers=0, pin_memory=pin
        )

    # ------------------------------------------------------------------------------------------ the loop
    def fit(self) -> tuple[str, str]:
        """Epochs until the configured number, a stop rule or a cancel: the run's (status, reason)."""
        ddp, state = self.ddp, self.state
        if not state.validated:  # resumed after a cancel cut this epoch's validation: do it now
            outcome = self.validate_epoch()
            if outcome:
                return outcome
        while state.epoch < self.cfg.epochs:
            if ddp.any(self.cancel.set):  # e.g. signalled while the previous epoch's checkpoints were written
                return "cancelled", self.cancelled_reason()
            epoch = state.epoch
            self.train_epoch(epoch)
            if ddp.any(self.cancel.set):
                reason = self.cancelled_reason()
                if ddp.main and state.steps_here > 0:
                    self.save_last(epoch, step=state.step)
                return "cancelled", reason
            state.epoch = epoch + 1
            outcome = self.validate_epoch()
            if outcome:
                return outcome
        if ddp.any(self.cancel.set):  # signalled during the last epoch's checkpoint writes
            return "cancelled", self.cancelled_reason()
        return "completed", ""

    def validate_epoch(self) -> tuple[str, str] | None:
        """Validate and record the epoch that just ended; the run's (status, reason) when it ends here."""
        ddp, state = self.ddp, self.state
        self.check_weights()
        if ddp.main:
            self.validate()
            loss = self.last_val.get("loss")
            if loss is not None and not math.isfinite(loss) and not self.cancel.set:
                # finite weights can still overflow on the validation data: stop before the media and
                # metrics try to show what cannot be shown
                raise Diverged(f"validation loss became {loss} at step {state.step} (epoch {state.epoch})")
        if ddp.any(self.cancel.set):
            # SIGTERM during validation: the epoch's training is done, so keep its weights as `last`
            # (now, within the job manager's grace period) and drop the partial metrics; a resume
            # validates this epoch before it trains the next.
            reason = self.cancelled_reason()
            self.last_val = {}
            state.validated = False
            if ddp.main:
                self.save_last(state.epoch, epoch=state.epoch, step=state.step)
            return "cancelled", reason
        state.validated = True
        if ddp.main:
            self.record_epoch()
        reason = self.should_stop()
        return ("completed", reason) if reason else None

    def check_weights(self) -> None:
        """Diverged when a weight is no longer finite, or beyond WEIGHT_LIMIT: the last steps' updates can
        overflow after their loss was read back finite, and the validation, its media and its metrics would
        then fail in their own ways (e.g. a repaired byte that is NaN)."""
        when = f"at step {self.state.step} (epoch {self.state.epoch}); try a lower learning rate"
        with torch.no_grad():  # one pass: a NaN or inf weight makes its tensor's largest |value| non-finite
            sizes = [(float(p.abs().max()), name) for name, p in self.model.named_parameters() if p.numel()]
        bad = [name for size, name in sizes if not math.isfinite(size)]
        if bad:
            others = " and others" if len(bad) > 1 else ""
            raise Diverged(f"weights became non-finite ({bad[0]}{others}) {when}")
        largest = max(sizes, default=(0.0, ""))
        if largest[0] > WEIGHT_LIMIT:
            raise Diverged(f"weights exploded (|{largest[1]}| reached {largest[0]:.3g}) {when}")

    def train_epoch(self, epoch: int) -> None:
        """One pass over the training batches; it ends early at max_steps or a cancel (the flag stays set)."""
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
        if hasattr(self.data.train, "set_epoch"):  # fresh corruption noise each epoch (fragments)
            self.data.train.set_epoch(epoch)
        self.model.train()
        self.epoch_started = time.monotonic()
        self.state.loss_sum, self.state.loss_n = 0.0, 0
        self.window, self.parts = [], []
        self.batches = _start_batches(self.train_loader)  # persistent workers: the same workers, reset
        while (batch := self._next_batch()) is not _END:
            with self.phases.phase("steps"):
                self.train_step(batch, epoch)
            if self.ddp.any(self.cancel.set) or self.reached_max_steps():
                break
            if self.ddp.main and time.monotonic() - self.last_save > CHECKPOINT_EVERY_S:
                self.save_last(epoch)
                self.last_save = time.monotonic()
        if self.window:
            with self.phases.phase("steps"):
                self._flush(epoch)

    def _next_batch(self) -> Any:
        """The next training batch; `_END` at the epoch's end or after a cancel during the wait."""
        try:
            with self.phases.phase("data_wait"), self.cancel.interruptible(self.fetch_interruptible):
                batch = next(self.batches)
                if self.state.steps_here == 0:
                    pause_point("first-batch")
        except StopIteration:
            return _END
        except Cancelled:
            return _END  # the flag is set: handled like a cancel after a step
        return batch

    def train_step(self, batch: Any, epoch: int) -> None:
        """One optimisation step (`TrainStep`) on a loader batch. Loss values are read back in windows so a
        GPU step does not wait on a host sync each time; the window still names the exact step that first
        went non-finite."""
        batch = self.fast.inputs(self.task.batch_to(batch, self.device))
        self.task.step = self.state.step  # the KL warm-up's clock (it goes on from a resumed step)
        loss = self.one_step(batch, lambda: pause_point("step", until=lambda: self.cancel.set))
        self.state.step += 1
        self.state.steps_here += 1
        self.phases.first_step()
        self.window.append(loss)
        if self.task.last_parts:
            self.parts.append(self.task.last_parts)
        if len(self.window) >= self.cfg.log_every:
            self._flush(epoch)

    def validate(self) -> dict[str, float]:
        """Rank 0: the validation metrics, kept in `last_val`; a cancel during them leaves `last_val` as it
        was (the caller sees the flag)."""
        self.model.eval()
        try:
            with self.phases.phase("validation"), self.cancel.interruptible():
                pause_point("validation")
                val_batches = _until(self.val_loader, self.cancel)
                if isinstance(self.task, AudioTask):
                    self.last_val = self.task.evaluate(
                        self.model, val_batches, self.device, dataset=self.data.val
                    )
                else:
                    self.last_val = self.task.validate(self.model, val_batches, self.device)
        except Cancelled:
            pass  # the flag is set
        return self.last_val

    def record_epoch(self) -> None:
        """Rank 0 after validation: log metrics, media and the epoch line; save `best` when the monitored
        metric improved, and `last`."""
        state, epoch, monitor = self.state, self.state.epoch, self.task.monitor
        self.last_val.update(
            check_collapse(self.task.domain, self.last_val, self.store, self.run_id, self.folder, epoch)
        )
        self.store.log_metrics(self.run_id, state.step, epoch, "val", self.last_val)
        kill_point("val-row")
        media.log_validation_media(
            self.task, self.model, self.data.val, self.device, self.folder, state.step, epoch
        )
        kill_point("media")
        seconds = time.monotonic() - self.epoch_started
        log.info("%s", epoch_line(epoch, self.cfg.epochs, state, self.last_val, seconds))
        value = self.last_val.get(monitor, math.nan)
        if improved(monitor, value, state.best):
            state.best = value
            state.bad_epochs = 0
            with self.phases.phase("checkpoints"):
                pause_point("checkpoint", until=lambda: self.cancel.set)
                self._save("best", epoch)
            self.store.update_run(self.run_id, best_checkpoint=str(self.folder / "checkpoints" / "best"))
        else:
            state.bad_epochs += 1
        self.save_last(epoch, epoch=epoch, step=state.step)
        self.last_save = time.monotonic()

    def reached_max_steps(self) -> bool:
        return self.cfg.max_steps is not None and self.state.step >= self.cfg.max_steps

    def should_stop(self) -> str:
        """Why the run ends after this epoch ("" when it goes on): early stopping or max_steps. Every rank
        calls it (rank 0's count of flat epochs decides)."""
        if self.ddp.broadcast(self.state.bad_epochs >= self.cfg.patience):
            return (
                f"early stopping after {self.state.epoch} epochs: "
                f"val {self.task.monitor} flat for {self.cfg.patience}"
            )
        if self.reached_max_steps():
            return f"stopped at max_steps={self.cfg.max_steps}"
        return ""

    def cancelled_reason(self) -> str:
        return _cancel_reason(self.cancel, self.phases, self.state)

    # ------------------------------------------------------------------------------------------ records
    def save_last(self, at_epoch: int, **fields: Any) -> None:
        with self.phases.phase("checkpoints"):
            self._save("last", at_epoch)
        self.store.update_run(
            self.run_id, last_checkpoint=str(self.folder / "checkpoints" / "last"), **fields
        )

    def _save(self, kind: str, epoch: int) -> None:
        checkpoints.save_checkpoint(self.folder, kind, self.model, self.optimizer, self.state.saved(epoch))

    def _flush(self, epoch: int) -> None:
        """Read the window's losses back, stop on a non-finite one, log their mean."""
        # The mean over ranks is taken on the device (NCCL has no CPU tensors), then read back once.
        values = self.ddp.mean(torch.stack(self.window).float()).cpu()
        self.window.clear()
        finite = torch.isfinite(values)
        state = self.state
        if not bool(finite.all()):
            first = int((~finite).nonzero()[0, 0])
            bad_step = state.step - len(values) + first + 1
            raise Diverged(f"loss became {values[first].item()} at step {bad_step} (epoch {epoch + 1})")
        mean = float(values.mean())
        parts = (
            {k: float(torch.stack([p[k] for p in self.parts]).float().mean()) for k in self.parts[0]}
            if self.parts
            else {}
        )
        self.parts.clear()
        state.loss_sum += mean * len(values)
        state.loss_n += len(values)
        if self.ddp.main:
            # Rows carry the epoch's number counted from 1, as the validation rows at its end do.
            self.store.log_metrics(self.run_id, state.step, epoch + 1, "train", {"loss": mean, **parts})
            kill_point("train-row")
            self.store.update_run(self.run_id, step=state.step, epoch=epoch)
            usage = self.system.sample()
            if usage:
                self.store.log_metrics(self.run_id, state.step, epoch, system.SPLIT, usage)
        if self.bar is not None:
            self.bar.update(len(values))
            self.bar.set_postfix(loss=f"{mean:.4g}", epoch=epoch + 1)
        if self.on_step is not None:
            self.on_step(state.step, mean)

    def close(self) -> None:
        """End the batch workers and the progress bar."""
        _shutdown_workers(self.batches)
        if self.bar is not None:
            self.bar.close()


_END = object()  # the end of an epoch's batches


def improved(monitor: str, value: float, best: float | None) -> bool:
    """Whether `value` of the monitored validation metric beats `best`, in the metric registry's direction
    (a metric the registry does not know falls back to lower is better, as a loss)."""
    if not math.isfinite(value):
        return False
    if best is None or not math.isfinite(best):
        return True
    info = registry.metric_info(monitor)
    if info is None or info.direction not in ("max", "min"):
        return value < best
    return registry.is_better(monitor, value, best)


def resume_config(store: RunStore, run_id: str, **overrides: Any) -> RunConfig:
    """The stored config of `run_id` with explicit overrides (e.g. more epochs) applied."""
    record = store.get_run(run_id)
    if record is None:
        raise ValueError(f"no run with id '{run_id}' in {store.runs_dir}")
    data = dict(record.config)
    data.update({k: v for k, v in overrides.items() if v is not None})
    return check_config(RunConfig.from_dict(data))


def run_dir(store: RunStore, run_id: str) -> Path:
    return Path(store.runs_dir) / run_id


def train(
    cfg: RunConfig,
    store: RunStore,
    run_id: str | None = None,
    resume: str | None = None,
    progress: bool = False,
    on_step: Callable[[int, float], None] | None = None,
) -> RunResult:
    """Train `cfg` and record everything in `store`.

    `run_id` attaches to a run the studio created as `queued`; `resume` continues an earlier run from its
    `last` checkpoint with the same id, step count and curve (`cfg` is then that run's config, see
    `resume_config`). The phase timings are written to the run folder (`read_phases`) and logged at the end.
    """
    phases = PhaseTimes()
    warm = _warm_up(resolve_device(cfg.device))
    # The cancel handling is in place before anything slow, so a signal during set-up or the data build
    # still ends the run `cancelled` instead of killing it half-recorded.
    with _CancelFlag(phases) as cancel:
        return _train_recorded(cfg, store, run_id, resume, progress, on_step, phases, cancel, warm)


def _train_recorded(
    cfg: RunConfig,
    store: RunStore,
    run_id: str | None,
    resume: str | None,
    progress: bool,
    on_step: Callable[[int, float], None] | None,
    phases: PhaseTimes,
    cancel: _CancelFlag,
    warm: threading.Thread,
) -> RunResult:
    ddp = _Distributed(resolve_device(cfg.device))
    state = LoopState()
    resume_folder: Path | None = None
    if resume:
        resume_folder = ddp.broadcast(_resume_folder(store, resume, cfg.variant) if ddp.main else None)
        state.resume_from(checkpoints.resume_state(resume_folder))  # best value as the best checkpoint's
        run_id = resume

    task = task_for(cfg.variant, cfg.kl_weight, cfg.kl_warmup, cfg.free_bits)
    fast = FastPath.resolve(
        ddp.device, task.domain, cfg.precision, cfg.compile, variant=cfg.variant, model=cfg.model
    )
    phases.setup = {
        "precision": fast.precision,
        "fast_path": fast.describe(),
        "cpu_native_bf16": cpu_has_native_bf16() if ddp.device.type == "cpu" else None,
        "threads": torch.get_num_threads(),
    }
    _seed_everything(cfg.seed + state.step)
    spec = parse_data_spec(cfg.data) if cfg.data else None
    if spec is not None and spec.domain != task.domain:
        raise ValueError(
            f"data spec '{cfg.data}' is for {spec.domain}, but {cfg.variant} trains on {task.domain}"
        )
    run_id = ddp.broadcast(_attach_run(store, run_id, cfg, task.domain) if ddp.main else run_id)
    if resume and ddp.main:
        _rewind(store, run_id, state)
    trainer = Trainer(cfg, task, fast, store, run_id, ddp, state, phases, cancel)

    def finish(status: str, reason: str, finished: bool) -> RunResult:
        if ddp.main:
            store.set_status(run_id, status, reason)
        ddp.close(finished=finished)
        return RunResult(run_id, status, reason, state.step, state.epoch, math.nan, {})

    try:
        try:
            if ddp.main:
                store.update_run(
                    run_id,
                    device=f"{_describe(ddp.device, ddp.world)}, {fast.describe()}",
                    pid=os.getpid(),
                    host=socket.gethostname(),
                )
                store.set_status(run_id, "running", "resumed" if resume else "")
            result = _train(trainer, spec, resume_folder, warm, progress, on_step)
        finally:
            _record_phases(phases, trainer.folder, ddp)
    except Diverged as exc:
        return finish("diverged", str(exc), True)
    except Cancelled:
        # Signalled in a phase that keeps nothing (the data build, model set-up, the wait for a batch):
        # no step was made since the process started, or `last` already holds the weights.
        return finish("cancelled", _cancel_reason(cancel, phases, state), False)
    except torch.cuda.OutOfMemoryError as exc:
        reason = _out_of_memory_reason(exc, phases, state)
        log.error("run %s: %s", run_id, reason)
        with contextlib.suppress(Exception):
            torch.cuda.empty_cache()
        return finish("failed", reason, False)
    except BaseException as exc:
        if ddp.main:
            reason = (
                f"{type(exc).__name__}: {exc}" if not isinstance(exc, KeyboardInterrupt) else "interrupted"
            )
            store.set_status(run_id, "failed", reason)
        ddp.close(finished=False)
        raise
    ddp.close()
    return result


def _resume_folder(store: RunStore, resume: str, variant: str) -> Path:
    """The `last` checkpoint of run `resume`, which must exist and train `variant` (rank 0 asks the store)."""
    record = store.get_run(resume)
    if record is None:
        raise ValueError(f"no run with id '{resume}' in {store.runs_dir}")
    if record.variant != variant:
        raise ValueError(f"run '{resume}' trains {record.variant}, not {variant}")
    folder = checkpoints.checkpoint_path(run_dir(store, resume), "last")
    if folder is None:
        raise ValueError(f"run '{resume}' has no 'last' checkpoint to resume from")
    return folder


def _rewind(store: RunStore, run_id: str, state: LoopState) -> None:
    """A resume continues from its checkpoint's step: the rows the killed attempt logged past it are
    superseded (the resumed attempt logs those steps again), and the record's step and epoch go back."""
    dropped = store.supersede_after(run_id, state.step)
    store.update_run(run_id, step=state.step, epoch=state.epoch)
    if dropped:
        log.info("run %s: resumed at step %d; %d later rows superseded", run_id, state.step, dropped)


def _attach_run(store: RunStore, run_id: str | None, cfg: RunConfig, domain: str) -> str:
    """The run id in the store (rank 0): a new `queued` run, the one the studio made, or a resumed one."""
    if run_id is None:
        return store.create_run(cfg.variant, domain, cfg.to_dict(), status="queued")
    if store.get_run(run_id) is None:
        store.create_run(cfg.variant, domain, cfg.to_dict(), status="queued", run_id=run_id)
    else:
        store.update_run(run_id, config=cfg.to_dict())
    return run_id


def _out_of_memory_reason(exc: BaseException, phases: PhaseTimes, state: LoopState) -> str:
    """Jobs share a GPU: an out-of-memory error ends this run only, with a reason that says so."""
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else "no details"
    where = PHASE_WORDS[phases.error_phase or phases.current]
    return (
        f"out of GPU memory at step {state.step + 1} (during {where}): "
        f"{detail[:300]}. "
        f"Other jobs on the same GPU use memory too: try a smaller batch size or fewer jobs per GPU "
        f"(--gpu-jobs)"
    )


def _cancel_reason(cancel: _CancelFlag, phases: PhaseTimes, state: LoopState) -> str:
    phase = phases.error_phase or phases.current
    where = cancel.signal_phase or PHASE_WORDS.get(phase, phase)
    if state.steps_here == 0:
        return f"cancelled before the first step (signal during {where})"
    return f"cancelled at step {state.step} (signal during {where})"


def _record_phases(phases: PhaseTimes, folder: Path, ddp: _Distributed) -> None:
    """Write the phase timings next to the run's checkpoints and log them (rank 0 only)."""
    if not ddp.main:
        return
    if ddp.device.type == "cuda":
        with contextlib.suppress(Exception):
            phases.peak_gpu_bytes = int(torch.cuda.max_memory_allocated(ddp.device))
    log.info("%s", phases.summary())
    with contextlib.suppress(OSError):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / PHASES_NAME).write_text(json.dumps(phases.as_dict(), indent=1) + "\n")


def _describe(device: torch.device, world: int) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return f"{name} x{world}" if world > 1 else name


def _warm_up(device: torch.device) -> threading.Thread:
    """Start, in the background while the data is built, the set-up the first step would otherwise wait
    for: the optimiser's first construction imports torch._dynamo (0.8-1.8 s of CPU here), and the first
    CUDA call creates the GPU context. Joined before the model is built; a failure here is left for the
    main thread to meet (and report) itself."""

    def work() -> None:
        with contextlib.suppress(Exception):
            import torch._dynamo  # noqa: F401
        if device.type == "cuda":
            with contextlib.suppress(Exception):
                torch.empty(1, device=device)

    thread = threading.Thread(target=work, name="trainer-warm-up", daemon=True)
    thread.start()
    return thread


def _worker_init(worker_id: int) -> None:  # noqa: ARG001
    """DataLoader workers leave SIGTERM/SIGINT to the main process, which shuts them down itself: a worker
    killed by the group-wide signal would fail the run ("DataLoader worker ... killed by signal")."""
    ignore_cancel_signals()


def _start_batches(loader: DataLoader) -> Any:
    """`iter(loader)`, with the cancel signals blocked while its workers are forked (see signals_blocked)."""
    with signals_blocked():
        return iter(loader)


def _shutdown_workers(iterator: Any) -> None:
    """End a DataLoader iterator's worker processes now rather than whenever it is collected."""
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if shutdown is not None:
        with contextlib.suppress(Exception):
            shutdown()


def _train(
    trainer: Trainer,
    spec: DataSpec | None,
    resume_folder: Path | None,
    warm: threading.Thread,
    progress: bool,
    on_step: Callable[[int, float], None] | None,
) -> RunResult:
    """Set the trainer up, run its epochs and record how the run ended."""
    trainer.setup(spec, resume_folder, warm)
    state, run_id = trainer.state, trainer.run_id
    total_steps = trainer.cfg.epochs * len(trainer.train_loader)
    trainer.bar = _progress_bar(progress and trainer.ddp.main, total_steps, state.step, run_id)
    trainer.on_step = on_step
    try:
        status, reason = trainer.fit()
    finally:
        trainer.close()
    if trainer.ddp.main:
        trainer.store.set_status(run_id, status, reason)
    return RunResult(run_id, status, reason, state.step, state.epoch, state.best, trainer.last_val)


def epoch_line(epoch: int, epochs: int, state: LoopState, val: dict[str, float], seconds: float) -> str:
    """One line per epoch for the run's log, which the studio shows while the run trains (jobs run with
    --no-progress): "epoch 3/20 · step 96 · train loss 0.0123 · val psnr ↑ 23.41, ... · 4.2 s/epoch"."""
    from trainers.metrics import registry

    n = state.loss_n
    loss = registry.format_value("loss", state.loss_sum / n) if n else "n/a"
    metrics = ", ".join(
        f"{name} {registry.arrow(name)} {registry.format_value(name, value)}".replace("  ", " ")
        for name, value in val.items()
    )
    return (
        f"epoch {epoch}/{epochs} · step {state.step} · train loss {loss} · "
        f"val {metrics or '(no metrics)'} · {seconds:.1f} s/epoch"
    )


def _until(batches: Any, cancel: _CancelFlag) -> Any:
    """The batches, stopping early once a cancel has been asked for."""
    for batch in batches:
        if cancel.set:
            return
        yield batch


def _progress_bar(enabled: bool, total: int, initial: int, run_id: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=run_id, unit="step", dynamic_ncols=True)
