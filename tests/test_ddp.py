"""The same training command under `torchrun --nproc_per_node 2` trains with DDP (gloo on CPU)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from trainers import checkpoints
from trainers.store import RunStore

ROOT = Path(__file__).resolve().parents[1]


def test_torchrun_two_processes_train_one_run(tmp_path):
    runs = tmp_path / "runs"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "trainers",
        "train",
        "fragment-dae",
        "--preset",
        "smoke",
        "--epochs",
        "2",
        "--data",
        "fragments:python,max_files=24",
        "--runs-dir",
        str(runs),
        "--device",
        "cpu",
        "--no-progress",
    ]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    with RunStore(runs) as store:
        runs_list = store.list_runs()
        assert len(runs_list) == 1, "only rank 0 records the run"
        run = runs_list[0]
        assert run.status == "completed" and run.device == "cpu x2, fp32"
        losses = [v for _, v in store.metric_series(run.id, "loss", split="train")]
        assert losses and losses[-1] < losses[0]
        assert checkpoints.checkpoint_path(runs / run.id, "best") is not None
