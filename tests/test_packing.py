"""Several jobs on one GPU: the memory budget of a job (trainers.training.memory), which queued jobs the
manager
starts together on a GPU of a given size and which wait, and an out-of-memory error that fails one job only.

There is no GPU here: the manager is given a fake GPU list and sizes, and a stand-in trainer (a shell script
that prints its pinning and sleeps) plays each job, as in test_jobs.py.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from models import create_model  # noqa: E402
from studio.jobs import GPU_MEMORY_USABLE, JobManager  # noqa: E402
from tests.helpers import fake_python, wait_for  # noqa: E402
from trainers.runs.store import RunStore  # noqa: E402
from trainers.settings import make_config  # noqa: E402
from trainers.training.memory import (  # noqa: E402
    AUTOCAST_FACTOR,
    GIB,
    MARGIN,
    PROCESS_OVERHEAD_BYTES,
    budget_key,
    estimate_job_memory,
    example_input,
    saved_activation_bytes,
)

SAR = ("sar-baseline", "sar-resnet", "sar-residual", "sar-attention")


@pytest.fixture
def fake_trainer(tmp_path: Path) -> str:
    return fake_python(tmp_path, 'echo "CVD=[$CUDA_VISIBLE_DEVICES]"\nexec sleep 60\n')


@pytest.fixture
def fake_gpus(tmp_path: Path, managers: list[JobManager], fake_trainer: str) -> Callable[..., JobManager]:
    """Makes a job manager over fake GPUs ({index: GiB}) whose jobs the stand-in trainer plays, each job's
    memory need being its seed in GiB."""

    def make(gib: dict[int, float], **options: object) -> JobManager:
        memory = {i: int(g * GIB) for i, g in gib.items()}
        jm = JobManager(
            tmp_path / "runs",
            gpus=list(gib),
            gpu_memory=memory,
            job_memory=fake_gib,
            python=fake_trainer,
            poll_interval=0.05,
            **options,
        )
        managers.append(jm)
        return jm

    return make


def started_on(jm: JobManager, run_id: str) -> str | None:
    """The GPU the stand-in trainer was pinned to, once it has started."""
    tail = jm.log_tail(run_id)
    return tail.split("CVD=[", 1)[1].split("]", 1)[0] if "CVD=[" in tail else None


def fake_gib(config: dict) -> int:
    """Fake budgets: the run's seed is its budget in GiB."""
    return int(config["seed"]) * GIB


# --- the budget -----------------------------------------------------------------------------------------


def _cpu_saved_bytes(model: torch.nn.Module, n: int) -> int:
    """Reference: the same count on real CPU tensors (data pointers, real arithmetic)."""
    params = {p.data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    x = example_input(model, n)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    outs = [o for o in (out if isinstance(out, tuple) else (out,)) if torch.is_tensor(o)]
    return sum(seen.values()) + sum(o.numel() * o.element_size() for o in outs) + x.numel() * 4


@pytest.mark.parametrize(
    ("variant", "overrides"),
    [("sar-attention", {"base_channels": 8, "image_size": 32}), ("fragment-dae", {}), ("audio-vae-mel", {})],
)
def test_the_meta_device_count_equals_a_real_cpu_count(variant, overrides):
    torch.manual_seed(0)
    real = create_model(variant, **overrides)
    with torch.device("meta"):
        meta = create_model(variant, **overrides)
    for n in (1, 3):
        assert saved_activation_bytes(meta, n) == _cpu_saved_bytes(real, n) > 0


def test_budget_adds_training_state_and_activations_with_margin():
    cfg = make_config("sar-baseline", "smoke")
    fp32 = estimate_job_memory(cfg.variant, 8, cfg.model, "fp32", table={})
    params = sum(p.numel() for p in create_model(cfg.variant, **cfg.model).parameters())
    assert fp32.params == params and fp32.state_bytes == 16 * params
    with torch.device("meta"):
        meta = create_model(cfg.variant, **cfg.model)
    one, two = saved_activation_bytes(meta, 1), saved_activation_bytes(meta, 2)
    assert fp32.activation_bytes == one + 7 * (two - one)
    expected = math.ceil((fp32.state_bytes + fp32.activation_bytes) * MARGIN) + PROCESS_OVERHEAD_BYTES
    assert fp32.budget == expected
    # bf16 (the GPU default): half-size activations, scaled for what autocast keeps in fp32
    bf16 = estimate_job_memory(cfg.variant, 8, cfg.model, "auto", table={})
    assert bf16.activation_bytes == pytest.approx(fp32.activation_bytes / 2 * AUTOCAST_FACTOR, rel=0.01)
    # a batch twice as large needs more; a measured GPU peak, where present, replaces the count
    assert estimate_job_memory(cfg.variant, 16, cfg.model, "fp32", table={}).budget > fp32.budget
    table = {budget_key(cfg.variant, 8, cfg.model, "fp32"): {"peak_bytes": 3 * GIB, "device": "H200"}}
    measured = estimate_job_memory(cfg.variant, 8, cfg.model, "fp32", table=table)
    assert measured.budget == math.ceil(3 * GIB * MARGIN) + PROCESS_OVERHEAD_BYTES
    assert "H200" in measured.source
    with pytest.raises(ValueError, match="batch_size"):
        estimate_job_memory(cfg.variant, 0, cfg.model, "fp32", table={})


def test_the_four_sar_variants_at_the_full_preset_fit_on_one_80_gib_gpu():
    budgets = {}
    for variant in SAR:
        cfg = make_config(variant, "full")
        budgets[variant] = estimate_job_memory(
            variant, cfg.batch_size, cfg.model, cfg.precision, table={}
        ).budget
    total = sum(budgets.values())
    assert total <= 80 * GIB * GPU_MEMORY_USABLE, {k: v / GIB for k, v in budgets.items()}
    # ... while the largest ones are real figures: each of the two big nets needs several GiB at batch 32
    assert budgets["sar-attention"] > budgets["sar-baseline"] + 4 * GIB


# --- scheduling with fake GPUs --------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_jobs_that_fit_start_together_and_the_rest_wait_in_order(fake_gpus):
    # one 20 GiB GPU (19 usable): 8 + 8 start; 4 does not fit next to them; 2 would, but waits its turn.
    jm = fake_gpus({0: 20})
    a, b, c, d = (jm.submit("fragment-dae", "smoke", seed=gib) for gib in (8, 8, 4, 2))
    cpu = jm.submit("fragment-dae", "smoke", device="cpu", seed=99)
    wait_for(
        lambda: started_on(jm, a) and started_on(jm, b) and started_on(jm, cpu) is not None, 20, "a, b, cpu"
    )
    time.sleep(0.4)
    assert [jm.store.get_run(i).status for i in (c, d)] == ["queued", "queued"]
    assert started_on(jm, a) == started_on(jm, b) == "0" and started_on(jm, cpu) == ""
    jm.cancel(a)  # 8 + 4 + 2 = 14 GiB: both waiting jobs now fit
    wait_for(lambda: started_on(jm, c) and started_on(jm, d), 20, "c and d to start on the freed memory")
    assert started_on(jm, c) == started_on(jm, d) == "0"


@pytest.mark.timeout(120)
def test_gpu_jobs_caps_jobs_per_gpu_and_jobs_spread_to_the_gpu_with_most_room(fake_gpus):
    jm = fake_gpus({0: 40, 1: 24}, gpu_jobs=2)
    ids = [jm.submit("fragment-dae", "smoke", seed=gib) for gib in (10, 10, 1, 1, 1)]
    wait_for(lambda: all(started_on(jm, i) for i in ids[:4]), 20, "four jobs")
    time.sleep(0.4)
    # 10 -> GPU 0 (38 left vs 22.8), 10 -> GPU 0 (28 vs 22.8), 1 -> GPU 1, 1 -> GPU 1; the fifth: both full.
    assert [started_on(jm, i) for i in ids[:4]] == ["0", "0", "1", "1"]
    assert jm.store.get_run(ids[4]).status == "queued"


@pytest.mark.timeout(120)
def test_a_job_larger_than_the_gpu_runs_alone_once_the_gpu_is_idle(fake_gpus):
    jm = fake_gpus({0: 16})
    small = jm.submit("fragment-dae", "smoke", seed=2)
    wait_for(lambda: started_on(jm, small), 20, "the small job")
    big = jm.submit("fragment-dae", "smoke", seed=30)
    after = jm.submit("fragment-dae", "smoke", seed=1)
    time.sleep(0.5)
    assert [jm.store.get_run(i).status for i in (big, after)] == ["queued", "queued"]
    jm.cancel(small)
    wait_for(lambda: started_on(jm, big), 20, "the big job on the idle GPU")
    time.sleep(0.4)
    assert jm.store.get_run(after).status == "queued"  # nothing fits next to a job over the GPU's size


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"gpu_jobs": 0}, "gpu_jobs must be a positive int"),
        ({"gpus": [0], "gpu_memory": {0: -1}}, "gpu_memory must map GPU indices"),
        ({"gpus": [0, 1], "gpu_memory": {0: GIB}}, r"no size for GPU\(s\) \[1\]"),
        ({"job_memory": 3}, "job_memory must be a function"),
    ],
)
def test_bad_packing_arguments_raise(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        JobManager(tmp_path / "runs", **{"gpus": [], **kwargs})


def test_app_takes_gpu_jobs():
    from studio.app import parse_args

    assert parse_args([]).gpu_jobs is None and parse_args(["--gpu-jobs", "3"]).gpu_jobs == 3
    with pytest.raises(SystemExit):
        parse_args(["--gpu-jobs", "0"])


# --- out of GPU memory ----------------------------------------------------------------------------------


def test_out_of_gpu_memory_fails_that_run_only_with_a_clear_reason(tmp_path, monkeypatch):
    from trainers.training.loop import train
    from trainers.training.tasks import FragmentTask

    original = FragmentTask.loss
    calls = {"n": 0}

    def loss_that_runs_out_at_step_3(self, model, batch):
        calls["n"] += 1
        if calls["n"] == 3:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0)")
        return original(self, model, batch)

    monkeypatch.setattr(FragmentTask, "loss", loss_that_runs_out_at_step_3)
    with RunStore(tmp_path / "runs") as store:
        cfg = make_config(
            "fragment-dae", "smoke", data="fragments:python,max_files=24", device="cpu", epochs=1, max_steps=4
        )
        result = train(cfg, store)
        run = store.get_run(result.run_id)
        assert result.status == run.status == "failed" and result.step == 2
        assert run.reason.startswith(
            "out of GPU memory at step 3 (during a training step): CUDA out of memory"
        )
        assert "--gpu-jobs" in run.reason
        # the next run in the same process trains normally
        monkeypatch.setattr(FragmentTask, "loss", original)
        assert train(cfg, store).status == "completed"
