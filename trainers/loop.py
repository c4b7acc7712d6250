"""The one training loop for every variant: device choice, autocast, clipping, early stopping, checkpoints,
resume, the NaN/inf guard, cancellation by SIGTERM, and DDP when launched under `torchrun`."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import socket
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
from trainers import checkpoints, media
from trainers.config import RunConfig
from trainers.dataspec import DataSpec, parse_data_spec
from trainers.fastpath import FastPath
from trainers.store import RunStore
from trainers.tasks import AudioTask, Task, task_for

log = logging.getLogger(__name__)

# A `last` checkpoint is also written mid-epoch this often, so a killed long epoch loses little work.
CHECKPOINT_EVERY_S = 300.0


class Diverged(RuntimeError):
    """The training loss became NaN or infinite."""


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


class _CancelFlag:
    """Turns SIGTERM/SIGINT into a flag so the loop can finish its step and save `last` before exiting."""

    def __init__(self) -> None:
        self.set = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _CancelFlag:
        for sig in (signal.SIGTERM, signal.SIGINT):
            # Outside the main thread (e.g. a test thread) signals cannot be handled: run without.
            with contextlib.suppress(ValueError):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:  # noqa: ARG002
        self.set = True

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class _Distributed:
    """Rank/world bookkeeping; a no-op outside `torchrun`."""

    def __init__(self, device: torch.device) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.enabled = self.world > 1
        if self.enabled and not dist.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            dist.init_process_group(backend=backend)

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
        t = torch.tensor([1.0 if flag else 0.0])
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def close(self, finished: bool = True) -> None:
        if self.enabled and dist.is_initialized():
            # After a normal finish every rank waits here before any tears the group down: a rank that exits
            # while another is still in a collective makes gloo abort it ("terminate called ..."). After an
            # error the other ranks may never arrive, so no barrier then.
            if finished:
                with contextlib.suppress(RuntimeError):
                    dist.barrier()
            dist.destroy_process_group()


def resume_config(store: RunStore, run_id: str, **overrides: Any) -> RunConfig:
    """The stored config of `run_id` with explicit overrides (e.g. more epochs) applied."""
    record = store.get_run(run_id)
    if record is None:
        raise ValueError(f"no run with id '{run_id}' in {store.runs_dir}")
    data = dict(record.config)
    data.update({k: v for k, v in overrides.items() if v is not None})
    return RunConfig.from_dict(data)


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
    `resume_config`).
    """
    device = resolve_device(cfg.device)
    ddp = _Distributed(device)
    if ddp.enabled and device.type == "cuda":
        device = torch.device("cuda", ddp.local_rank)
        torch.cuda.set_device(device)

    state: dict[str, Any] = {"step": 0, "epoch": 0, "best": None, "bad_epochs": 0}
    resume_folder: Path | None = None
    if resume:
        record = store.get_run(resume) if ddp.main else None
        if ddp.main and record is None:
            raise ValueError(f"no run with id '{resume}' in {store.runs_dir}")
        if ddp.main:
            if record.variant != cfg.variant:
                raise ValueError(f"run '{resume}' trains {record.variant}, not {cfg.variant}")
            resume_folder = checkpoints.checkpoint_path(run_dir(store, resume), "last")
            if resume_folder is None:
                raise ValueError(f"run '{resume}' has no 'last' checkpoint to resume from")
        resume_folder = ddp.broadcast(resume_folder)
        state.update(checkpoints.read_trainer_state(resume_folder))
        run_id = resume

    task = task_for(cfg.variant, kl_weight=cfg.kl_weight)
    fast = FastPath.resolve(device, task.domain, cfg.precision, cfg.compile)
    _seed_everything(cfg.seed + state["step"])
    spec = parse_data_spec(cfg.data) if cfg.data else None
    if spec is not None and spec.domain != task.domain:
        raise ValueError(
            f"data spec '{cfg.data}' is for {spec.domain}, but {cfg.variant} trains on {task.domain}"
        )

    if ddp.main:
        if run_id is None:
            run_id = store.create_run(cfg.variant, task.domain, cfg.to_dict(), status="queued")
        elif store.get_run(run_id) is None:
            store.create_run(cfg.variant, task.domain, cfg.to_dict(), status="queued", run_id=run_id)
        else:
            store.update_run(run_id, config=cfg.to_dict())
    run_id = ddp.broadcast(run_id)
    folder = run_dir(store, run_id)

    try:
        if ddp.main:
            store.update_run(
                run_id,
                device=f"{_describe(device, ddp.world)}, {fast.describe()}",
                pid=os.getpid(),
                host=socket.gethostname(),
            )
            store.set_status(run_id, "running", "resumed" if resume else "")
        result = _train(
            cfg, task, fast, spec, store, run_id, folder, device, ddp, state, resume_folder, progress, on_step
        )
    except Diverged as exc:
        if ddp.main:
            store.set_status(run_id, "diverged", str(exc))
        ddp.close()
        return RunResult(run_id, "diverged", str(exc), state["step"], state["epoch"], math.nan, {})
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


def _describe(device: torch.device, world: int) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return f"{name} x{world}" if world > 1 else name


def _train(
    cfg: RunConfig,
    task: Task,
    fast: FastPath,
    spec: DataSpec | None,
    store: RunStore,
    run_id: str,
    folder: Path,
    device: torch.device,
    ddp: _Distributed,
    state: dict[str, Any],
    resume_folder: Path | None,
    progress: bool,
    on_step: Callable[[int, float], None] | None,
) -> RunResult:
    data = task.build_data(spec, cfg.model, cfg.seed)
    if resume_folder is not None:
        model = load_pretrained(resume_folder, expected_variant=cfg.variant)
    else:
        model = create_model(cfg.variant, preprocessing=data.preprocessing, **cfg.model)
    cuda = device.type == "cuda"
    model.to(device)
    train_model = fast.prepare(model)
    optimizer = fast.optimizer(model.parameters(), cfg.lr, cfg.weight_decay)
    if resume_folder is not None:
        checkpoints.load_optimizer_state(resume_folder, optimizer)
    sampler = None
    if ddp.enabled:
        train_model = nn.parallel.DistributedDataParallel(
            train_model, device_ids=[device.index] if cuda else None
        )
        sampler = DistributedSampler(data.train, num_replicas=ddp.world, rank=ddp.rank, seed=cfg.seed)
    pin = device.type == "cuda"
    workers = data_workers(cfg.num_workers, device)
    train_loader = DataLoader(
        data.train,
        batch_size=cfg.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        num_workers=workers,
        pin_memory=pin,
        drop_last=len(data.train) > cfg.batch_size,
        generator=torch.Generator().manual_seed(cfg.seed + state["epoch"]),
        persistent_workers=workers > 0,
    )
    val_loader = DataLoader(data.val, batch_size=cfg.batch_size, shuffle=False, num_workers=0, pin_memory=pin)

    best = state["best"]
    sign = 1.0 if task.monitor_mode == "min" else -1.0
    last_val: dict[str, float] = {}
    last_save = time.monotonic()
    reason = ""
    status = "completed"
    total_steps = cfg.epochs * len(train_loader)
    bar = _progress_bar(progress and ddp.main, total_steps, state["step"], run_id)

    with _CancelFlag() as cancel:
        epoch = state["epoch"]
        while epoch < cfg.epochs:
            if sampler is not None:
                sampler.set_epoch(epoch)
            if hasattr(data.train, "set_epoch"):  # fresh corruption noise each epoch (fragments)
                data.train.set_epoch(epoch)
            model.train()
            window: list[torch.Tensor] = []
            for batch in train_loader:
                batch = fast.inputs(task.batch_to(batch, device))
                with fast.autocast(device):
                    loss = task.loss(train_model, batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip:
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
                state["step"] += 1
                window.append(loss.detach())
                # Loss values are read back in windows so a GPU step does not wait on a host sync each time;
                # the window still names the exact step that first went non-finite.
                if len(window) >= cfg.log_every:
                    _flush(window, state, epoch, store, run_id, ddp, bar, on_step)
                stop = cfg.max_steps is not None and state["step"] >= cfg.max_steps
                if ddp.any(cancel.set) or stop:
                    break
                if ddp.main and time.monotonic() - last_save > CHECKPOINT_EVERY_S:
                    _save(folder, "last", model, optimizer, state, epoch, best)
                    store.update_run(run_id, last_checkpoint=str(folder / "checkpoints" / "last"))
                    last_save = time.monotonic()
            if window:
                _flush(window, state, epoch, store, run_id, ddp, bar, on_step)
            if cancel.set:
                status, reason = "cancelled", f"cancelled at step {state['step']}"
                if ddp.main:
                    _save(folder, "last", model, optimizer, state, epoch, best)
                    store.update_run(run_id, last_checkpoint=str(folder / "checkpoints" / "last"))
                break
            epoch += 1
            state["epoch"] = epoch
            improved = False
            if ddp.main:
                model.eval()
                val_batches = _until(val_loader, cancel)
                if isinstance(task, AudioTask):
                    last_val = task.evaluate(model, val_batches, device, dataset=data.val)
                else:
                    last_val = task.evaluate(model, val_batches, device)
            if ddp.any(cancel.set):
                # SIGTERM during validation: the epoch's training is done, so keep its weights as `last`
                # (now, within the job manager's grace period) and drop the partial metrics.
                status, reason = "cancelled", f"cancelled at step {state['step']} (during validation)"
                last_val = {}
                if ddp.main:
                    _save(folder, "last", model, optimizer, state, epoch, best)
                    last = str(folder / "checkpoints" / "last")
                    store.update_run(run_id, last_checkpoint=last, epoch=epoch)
                break
            if ddp.main:
                store.log_metrics(run_id, state["step"], epoch, "val", last_val)
                media.log_validation_media(task, model, data.val, device, folder, state["step"], epoch)
                value = last_val.get(task.monitor, math.nan)
                improved = math.isfinite(value) and (best is None or sign * value < sign * best)
                if improved:
                    best = value
                    state["bad_epochs"] = 0
                    _save(folder, "best", model, optimizer, state, epoch, best)
                    store.update_run(run_id, best_checkpoint=str(folder / "checkpoints" / "best"))
                else:
                    state["bad_epochs"] += 1
                state["best"] = best
                _save(folder, "last", model, optimizer, state, epoch, best)
                store.update_run(
                    run_id,
                    last_checkpoint=str(folder / "checkpoints" / "last"),
                    epoch=epoch,
                    step=state["step"],
                )
                last_save = time.monotonic()
            early = ddp.broadcast(state["bad_epochs"] >= cfg.patience)
            if early:
                reason = f"early stopping after {epoch} epochs: val {task.monitor} flat for {cfg.patience}"
                break
            if cfg.max_steps is not None and state["step"] >= cfg.max_steps:
                reason = f"stopped at max_steps={cfg.max_steps}"
                break
    if bar is not None:
        bar.close()
    if ddp.main:
        store.set_status(run_id, status, reason)
    return RunResult(run_id, status, reason, state["step"], state["epoch"], best, last_val)


def _until(batches: Any, cancel: _CancelFlag) -> Any:
    """The batches, stopping early once a cancel has been asked for."""
    for batch in batches:
        if cancel.set:
            return
        yield batch


def _flush(window, state, epoch, store, run_id, ddp, bar, on_step) -> None:
    values = torch.stack(window).float().cpu()
    window.clear()
    if ddp.enabled:
        dist.all_reduce(values)
        values /= ddp.world
    finite = torch.isfinite(values)
    if not bool(finite.all()):
        first = int((~finite).nonzero()[0, 0])
        bad_step = state["step"] - len(values) + first + 1
        raise Diverged(f"loss became {values[first].item()} at step {bad_step} (epoch {epoch + 1})")
    mean = float(values.mean())
    if ddp.main:
        store.log_metrics(run_id, state["step"], epoch, "train", {"loss": mean})
        store.update_run(run_id, step=state["step"], epoch=epoch)
    if bar is not None:
        bar.update(len(values))
        bar.set_postfix(loss=f"{mean:.4g}", epoch=epoch + 1)
    if on_step is not None:
        on_step(state["step"], mean)


def _save(folder: Path, kind: str, model, optimizer, state: dict[str, Any], epoch: int, best) -> None:
    checkpoints.save_checkpoint(
        folder,
        kind,
        model,
        optimizer,
        {"step": state["step"], "epoch": epoch, "best": best, "bad_epochs": state["bad_epochs"]},
    )


def _progress_bar(enabled: bool, total: int, initial: int, run_id: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=run_id, unit="step", dynamic_ncols=True)
