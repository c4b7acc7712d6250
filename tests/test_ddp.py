"""The same training command under `torchrun --nproc_per_node 2` trains with DDP: gloo on the CPU, and
NCCL on two GPUs where they exist. Both go through the same collectives (`_Distributed.any` and the loss
window's mean run on the rank's device: NCCL refuses CPU tensors)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import smoke_train
from trainers.runs import checkpoints
from trainers.runs.store import RunStore

ROOT = Path(__file__).resolve().parents[1]


def _torchrun_two_processes(tmp_path: Path, device: str):
    runs = tmp_path / "runs"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd = [*torchrun, "-m", "trainers"]
    cmd += smoke_train("fragment-dae", runs, "--epochs", "2", "--data", "fragments:python,max_files=24")
    cmd += ["--device", device]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    with RunStore(runs) as store:
        runs_list = store.list_runs()
        assert len(runs_list) == 1, "only rank 0 records the run"
        run = runs_list[0]
        losses = [v for _, v in store.metric_series(run.id, "loss", split="train")]
        assert losses and losses[-1] < losses[0]
        assert checkpoints.checkpoint_path(runs / run.id, "best") is not None
    return run, out


def test_torchrun_two_processes_train_one_run(tmp_path):
    run, _ = _torchrun_two_processes(tmp_path, "cpu")
    assert run.status == "completed" and run.device == "cpu x2, fp32"


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_torchrun_two_gpus_train_one_run_with_nccl(tmp_path):
    run, out = _torchrun_two_processes(tmp_path, "cuda")
    assert run.status == "completed" and " x2, " in run.device, run.device
    assert "No backend type associated" not in out.stderr
