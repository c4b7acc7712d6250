"""Train the shipped reference checkpoints: one small checkpoint per variant, reproducibly.

Each variant trains with the `reference` preset (trainers/config.py: the full topology at narrow widths, on
the most realistic data the project has) and seed 0 on the CPU, in a temporary runs folder; the `best`
checkpoint's weights and config are copied to ``assets/reference/<variant>/`` and
``assets/reference/manifest.json`` records how each was made (preset, seed, steps, wall time, its validation
metrics, the code commit). The studio offers these checkpoints by default (studio/context.py). Every
checkpoint must stay under 5 MB.

    python assets/make_reference.py [VARIANT ...] [--seed 0]

Each variant's time is bounded by its preset's epochs (reference: each ≤ 20 minutes on a 2-core CPU).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# As `python -m trainers` does (trainers/__main__.py), before torch loads OpenMP: spinning waits made a
# 2-thread reference step 8-15x slower on the shared 2-core machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "assets" / "reference"
MAX_BYTES = 5 * 2**20
KEEP = ("model.safetensors", "config.json")


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def train_reference(variant: str, runs_dir: Path, seed: int = 0) -> dict:
    """Train `variant` with the reference preset, copy its best checkpoint into OUT, return its manifest."""
    from trainers.runs import checkpoints
    from trainers.runs.store import RunStore
    from trainers.settings import make_config
    from trainers.training.loop import train

    cfg = make_config(variant, "reference", seed=seed, device="cpu", num_workers=0)
    start = time.monotonic()
    with RunStore(runs_dir) as store:
        result = train(cfg, store, progress=True)
    minutes = (time.monotonic() - start) / 60.0
    best = checkpoints.checkpoint_path(runs_dir / result.run_id, "best")
    if result.status != "completed" or best is None:
        raise SystemExit(f"{variant}: training ended {result.status} ({result.reason}); no reference written")
    target = OUT / variant
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    for name in KEEP:
        shutil.copy2(best / name, target / name)
    size = sum((target / n).stat().st_size for n in KEEP)
    if size > MAX_BYTES:
        raise SystemExit(f"{variant}: reference checkpoint is {size / 2**20:.1f} MB, over the 5 MB limit")
    metrics = {k: v for k, v in result.val_metrics.items() if isinstance(v, float) and math.isfinite(v)}
    return {
        "variant": variant,
        "preset": "reference",
        "seed": seed,
        "data": cfg.data,
        "recipe": {
            k: v
            for k, v in cfg.to_dict().items()
            if k in ("epochs", "batch_size", "lr", "patience", "kl_weight", "kl_warmup", "free_bits", "model")
        },
        "epochs": result.epoch,
        "steps": result.step,
        "train_minutes": round(minutes, 2),
        "bytes": size,
        "val_metrics_last_epoch": metrics,
        "commit": _commit(),
        "command": f"python assets/make_reference.py {variant}",
    }


def main(argv: list[str] | None = None) -> int:
    from models import VARIANTS

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("variants", nargs="*", default=list(VARIANTS), help="default: every variant")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    os.chdir(ROOT)  # the preset's data specs name shipped folders relative to the repository
    OUT.mkdir(parents=True, exist_ok=True)
    manifest_path = OUT / "manifest.json"
    with tempfile.TemporaryDirectory(prefix="reference-runs-") as tmp:
        for variant in args.variants:
            entry = train_reference(variant, Path(tmp), args.seed)
            # Read just before writing: variants trained by concurrent invocations keep their entries.
            manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
            manifest[variant] = entry
            manifest_path.write_text(json.dumps(dict(sorted(manifest.items())), indent=2) + "\n")
            print(
                f"{variant}: {entry['steps']} steps in {entry['train_minutes']} min, {entry['bytes']} bytes"
            )
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
