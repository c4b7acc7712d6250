"""What every studio tab shares: the runs folder, the run store, the job manager and a checkpoint catalog."""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from models import VARIANTS, load_pretrained
from models.registry import wrong_domain_message
from trainers import checkpoints
from trainers.store import RunStore

log = logging.getLogger(__name__)

# Loaded models kept in memory for the comparison views; a few per domain is plenty on a Space.
MODEL_CACHE_SIZE = 8


def _assets_dir() -> Path:
    """assets/ of a checkout (or an editable install); in an installed wheel it ships as trainers/assets."""
    import trainers

    installed = Path(trainers.__file__).resolve().parent / "assets"
    return installed if installed.is_dir() else Path(__file__).resolve().parents[1] / "assets"


ASSETS_DIR = _assets_dir()
#: Small checkpoints trained reproducibly by `assets/make_reference.py`, one per variant, so that a fresh
#: install and a Space visitor see a real comparison before training anything.
REFERENCE_DIR = ASSETS_DIR / "reference"
#: Where a Hugging Face Space with persistent storage mounts it; anything else on a Space is lost on restart.
SPACE_STORAGE = Path("/data")


def space_runs_dir(environ: Mapping[str, str] | None = None, storage: Path = SPACE_STORAGE) -> Path | None:
    """The runs folder on a Space's persistent storage (``/data/runs``), or None: when not on a Space
    (no ``SPACE_ID``), when ``STUDIO_RUNS_DIR`` already says where runs go, or when the Space has no
    writable persistent storage."""
    env = os.environ if environ is None else environ
    if not env.get("SPACE_ID") or env.get("STUDIO_RUNS_DIR"):
        return None
    if not (storage.is_dir() and os.access(storage, os.W_OK | os.X_OK)):
        return None
    return storage / "runs"


REFERENCE_PREFIX = "reference · "


def reference_checkpoints(folder: Path = REFERENCE_DIR) -> dict[str, str]:
    """label -> folder of the shipped reference checkpoints (none when the folder is absent or empty)."""
    found: dict[str, str] = {}
    if not folder.is_dir():
        return found
    for sub in sorted(folder.iterdir()):
        if (sub / "config.json").is_file() and (sub / "model.safetensors").is_file():
            found[f"{REFERENCE_PREFIX}{sub.name}"] = str(sub)
    return found


@dataclass
class StudioContext:
    runs_dir: Path
    store: RunStore
    jobs: Any = None  # studio.jobs.JobManager; Any keeps this module importable without starting threads
    space: bool = False
    # Checkpoints loaded from the Hub or a local folder: label -> folder, shown beside the runs' own.
    external: dict[str, str] = field(default_factory=dict)
    # The shipped reference checkpoints, listed after the runs' own and selected by default in the tabs.
    reference: dict[str, str] = field(default_factory=reference_checkpoints)
    _models: OrderedDict = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def checkpoint_choices(self, domain: str) -> list[tuple[str, str]]:
        """(label, folder) of every checkpoint of `domain`: each run's `best` then its `last` (labelled, so
        the weights of the best validation epoch and the final ones can be compared), the shipped reference
        checkpoints, then external ones (loaded from the Hub or a folder). A run's name, where it has one,
        leads its labels."""
        choices: list[tuple[str, str]] = []
        for run in self.store.list_runs():
            info = VARIANTS.get(run.variant)
            if info is None or info.domain != domain:
                continue
            run_folder = self.runs_dir / run.id
            name = f"{run.name} · " if run.name else ""
            for kind in ("best", "last"):
                try:
                    path = checkpoints.checkpoint_path(run_folder, kind)
                except (ValueError, OSError) as exc:
                    # One broken or escaping link must not take down the app or a tab: skip that checkpoint.
                    log.warning("skipping %s checkpoint of run %s: %s", kind, run.id, exc)
                    continue
                if path is not None:
                    label = f"{name}{run.id} · {run.variant} · {kind} · {run.status}"
                    choices.append((label, str(run_folder / "checkpoints" / kind)))
        for label, folder in {**self.reference, **self.external}.items():
            try:
                variant = _variant_of(folder)
            except (OSError, ValueError):
                continue
            if VARIANTS.get(variant) is not None and VARIANTS[variant].domain == domain:
                choices.append((label, folder))
        return choices

    def default_checkpoints(self, domain: str) -> list[str]:
        """Folders a comparison tab selects before the user chooses: the domain's reference checkpoints."""
        return [folder for label, folder in self.checkpoint_choices(domain) if label in self.reference]

    def load_model(self, folder: str | Path, domain: str | None = None) -> nn.Module:
        """Load (and cache) the checkpoint in `folder`; a checkpoint of another domain is a clear error."""
        folder = Path(folder)
        key = (str(folder.resolve()), _mtime(folder))
        with self._lock:
            model = self._models.get(key)
            if model is not None:
                self._models.move_to_end(key)
        if model is None:
            model = load_pretrained(folder, expected_domain=domain).eval()
            with self._lock:
                self._models[key] = model
                while len(self._models) > MODEL_CACHE_SIZE:
                    self._models.popitem(last=False)
        elif domain is not None and domain != model.DOMAIN:
            raise ValueError(wrong_domain_message(model.VARIANT, model.DOMAIN, domain))
        return model


def _mtime(folder: Path) -> float:
    weights = folder / "model.safetensors"
    return weights.stat().st_mtime if weights.exists() else 0.0


def _variant_of(folder: str | Path) -> str:
    import json

    return json.loads((Path(folder) / "config.json").read_text())["variant"]
