"""Where a run's wall time goes, and a whole comparison at once on one GPU.

`measure_run_phases` runs `python -m trainers train VARIANT ...` per variant as its own process (imports
and all, as the studio starts it) and reads the phase timings the trainer writes into its run folder
(`trainers.training.loop.read_phases`): time to the first step, data build, steps, waits for batches,
validation,
checkpoints, and the share of wall time in steps. On CUDA it also records each run's peak GPU memory
into `benchmarks/results/gpu-memory.json`, which the job manager then uses as the measured budget
(`trainers.training.memory`).

`measure_packing` (CUDA only) trains the four SAR variants at once on one GPU and each alone, and reports
the together/slowest-alone wall-time ratio (target <= 1.3).

    python -m benchmarks.phases                                   # CPU, smoke preset, every domain
    python -m benchmarks.phases --preset full --device cuda --epochs 2
    python -m benchmarks.phases --packing --device cuda --max-steps 300
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import REPO_ROOT, Figure  # noqa: E402

SAR_VARIANTS = ("sar-baseline", "sar-resnet", "sar-residual", "sar-attention")
ONE_PER_DOMAIN = ("sar-baseline", "audio-vae", "fragment-dae")
NOT_MEASURED = "not measured: no GPU in this session"
GPU_MEMORY_TABLE = REPO_ROOT / "benchmarks" / "results" / "gpu-memory.json"


def _train_cmd(variant: str, runs: Path, preset: str, device: str, epochs: int | None, max_steps: int | None):
    cmd = [sys.executable, "-m", "trainers", "train", variant, "--preset", preset, "--device", device]
    cmd += ["--runs-dir", str(runs), "--no-progress"]
    if epochs is not None:
        cmd += ["--epochs", str(epochs)]
    if max_steps is not None:
        cmd += ["--max-steps", str(max_steps)]
    return cmd


def _only_run(runs: Path) -> tuple[str, dict[str, Any]]:
    from trainers.runs.store import RunStore
    from trainers.training.loop import read_phases

    with RunStore(runs) as store:
        (run,) = store.list_runs()
        config, status = run.config, run.status
    phases = read_phases(runs / run.id) or {}
    return status, {**phases, "config": config}


def run_phases(
    variant: str,
    preset: str = "smoke",
    device: str = "cpu",
    epochs: int | None = 2,
    max_steps: int | None = None,
) -> dict[str, Any]:
    """One trainer process; its phase timings (seconds), its status and wall time."""
    with tempfile.TemporaryDirectory(prefix="phases-") as tmp:
        runs = Path(tmp) / "runs"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        started = time.perf_counter()
        out = subprocess.run(
            _train_cmd(variant, runs, preset, device, epochs, max_steps),
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=3600,
        )
        wall = time.perf_counter() - started
        if out.returncode != 0:
            raise RuntimeError(f"{variant} trainer exited {out.returncode}: {out.stderr[-500:]}")
        status, phases = _only_run(runs)
    return {"variant": variant, "status": status, "process_wall_s": round(wall, 3), **phases}


def measure_run_phases(
    variants: Sequence[str] = ONE_PER_DOMAIN,
    preset: str = "smoke",
    device: str = "cpu",
    epochs: int | None = 2,
    max_steps: int | None = None,
) -> tuple[list[Figure], dict[str, Any]]:
    """Time to the first step (target <= 5 s) and the share of wall time in steps (target >= 85 % after
    the first 10 s, on a GPU) per variant; the raw phase table in the second value. `preset="auto"`: the
    full preset on CUDA where there is a GPU, else the smoke preset on the CPU."""
    import torch

    if preset == "auto":
        cuda = torch.cuda.is_available()
        preset, device = ("full", "cuda") if cuda else ("smoke", "cpu")

    if device.startswith("cuda") and not torch.cuda.is_available():
        figures = [
            Figure(f"phases/{v}/{what}", f"{v} {label}", None, unit, note=NOT_MEASURED)
            for v in variants
            for what, label, unit in (
                ("first_step", "time to first step", "s"),
                ("steps_share", "share of wall time in steps", "%"),
            )
        ]
        return figures, {"error": NOT_MEASURED}
    rows = [run_phases(v, preset, device, epochs, max_steps) for v in variants]
    figures = []
    for row in rows:
        v = row["variant"]
        first = row.get("first_step_since_process_s") or row.get("first_step_s")
        figures.append(
            Figure(
                f"phases/{v}/first_step",
                f"{v} ({preset}, {device}): time from process start to the first step",
                first,
                "s",
                5.0,
                "max",
                note=f"data build {row['data_s']:.2f} s, model set-up {row['model_s']:.2f} s",
            )
        )
        late = row.get("steps_share_after_10s")
        share = late if late is not None else row.get("steps_share")
        figures.append(
            Figure(
                f"phases/{v}/steps_share",
                f"{v} ({preset}, {device}): share of wall time in training steps"
                + (" after the first 10 s" if late is not None else " (run shorter than 10 s: whole run)"),
                None if share is None else 100 * share,
                "%",
                85.0 if device.startswith("cuda") else None,
                "min" if device.startswith("cuda") else None,
                note=", ".join(f"{k[:-2]} {row[k]:.2f} s" for k in _PHASE_KEYS if row.get(k) is not None),
            )
        )
    if device.startswith("cuda"):
        write_gpu_memory_table(rows)
    return figures, {"rows": rows}


_PHASE_KEYS = ("total_s", "data_s", "model_s", "steps_s", "data_wait_s", "validation_s", "checkpoints_s")


def write_gpu_memory_table(rows: Sequence[dict[str, Any]], path: Path = GPU_MEMORY_TABLE) -> None:
    """Merge the runs' measured peak GPU memory into the table the job manager budgets with."""
    import torch

    from trainers.training.memory import budget_key

    table: dict[str, Any] = {}
    if path.exists():
        table = json.loads(path.read_text()).get("rows", {})
    name = torch.cuda.get_device_name(0)
    for row in rows:
        cfg, peak = row.get("config") or {}, row.get("peak_gpu_bytes")
        if not cfg or not isinstance(peak, int):
            continue
        key = budget_key(
            cfg["variant"], cfg["batch_size"], cfg.get("model") or {}, cfg.get("precision", "auto")
        )
        table[key] = {"peak_bytes": peak, "device": name, "date": time.strftime("%Y-%m-%d")}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"rows": table}, indent=1, sort_keys=True) + "\n")


def measure_packing(
    variants: Sequence[str] = SAR_VARIANTS, max_steps: int = 300, epochs: int = 1
) -> tuple[list[Figure], dict[str, Any]]:
    """The SAR variants at the full preset trained at once on GPU 0 against the slowest of them alone
    (wall seconds of the whole processes, `max_steps` steps each; target ratio <= 1.3)."""
    import torch

    label = (
        f"{len(variants)} SAR variants at once on one GPU / slowest alone (full preset, {max_steps} steps)"
    )
    if not torch.cuda.is_available():
        return [Figure("packing/together_vs_slowest", label, None, "x", 1.3, "max", note=NOT_MEASURED)], {}
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "0"),
    }
    alone: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="packing-") as tmp:
        for v in variants:
            t0 = time.perf_counter()
            cmd = _train_cmd(v, Path(tmp) / f"alone-{v}", "full", "cuda", epochs, max_steps)
            subprocess.run(cmd, cwd=REPO_ROOT, env=env, check=True, capture_output=True, timeout=3600)
            alone[v] = time.perf_counter() - t0
        t0 = time.perf_counter()
        procs = [
            subprocess.Popen(
                _train_cmd(v, Path(tmp) / f"together-{v}", "full", "cuda", epochs, max_steps),
                cwd=REPO_ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            for v in variants
        ]
        codes = [p.wait(timeout=3600) for p in procs]
        together = time.perf_counter() - t0
    if any(codes):
        raise RuntimeError(f"a packed trainer failed: exit codes {codes}")
    slowest = max(alone.values())
    note = f"together {together:.1f} s; alone: " + ", ".join(f"{k} {v:.1f} s" for k, v in alone.items())
    figure = Figure("packing/together_vs_slowest", label, together / slowest, "x", 1.3, "max", note=note)
    return [figure], {"alone_s": alone, "together_s": together}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.phases", description=__doc__.split("\n")[0])
    parser.add_argument("variants", nargs="*", help=f"default: {' '.join(ONE_PER_DOMAIN)}")
    parser.add_argument("--preset", choices=["smoke", "full"], default="smoke")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--max-steps", type=int)
    parser.add_argument(
        "--packing", action="store_true", help="the four SAR variants at once vs alone (CUDA)"
    )
    args = parser.parse_args(argv)
    if args.packing:
        figures, raw = measure_packing(args.variants or SAR_VARIANTS, args.max_steps or 300, args.epochs)
    else:
        figures, raw = measure_run_phases(
            args.variants or ONE_PER_DOMAIN, args.preset, args.device, args.epochs, args.max_steps
        )
    for row in raw.get("rows", []):
        cells = ", ".join(f"{k[:-2]} {row[k]:.2f}" for k in _PHASE_KEYS if row.get(k) is not None)
        first = row.get("first_step_since_process_s")
        print(
            f"{row['variant']}: {row['status']}; seconds: {cells}; first step {first} s after process start"
        )
    from benchmarks.common import format_table

    print(format_table(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
