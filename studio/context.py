"""What every studio tab shares: the runs folder, the run store, the job manager and a checkpoint catalog."""

from __future__ import annotations

import logging
import os
import re
import secrets
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from models import VARIANTS, load_pretrained
from models.registry import wrong_domain_message
from trainers.runs import checkpoints
from trainers.runs.store import RunStore

log = logging.getLogger(__name__)

# Loaded models kept in memory for the comparison views; a few per domain is plenty on a Space.
MODEL_CACHE_SIZE = 8
# Page sessions remembered with their visitor id (a Space's visitors, newest kept), and Hub loads per visitor.
MAX_VISITOR_SESSIONS = 10_000
MAX_LOADS_PER_VISITOR = 16
#: A visitor id kept in the browser: random hex, so that no visitor can guess another's.
VISITOR_ID = re.compile(r"[0-9a-f]{32}")


def new_visitor_id() -> str:
    """A fresh browser visitor id (128 random bits)."""
    return secrets.token_hex(16)


def current_request() -> Any:
    """The ``gr.Request`` of the Gradio event being handled in this thread, or None outside one."""
    try:
        from gradio.context import LocalContext
    except ImportError:  # pragma: no cover - gradio is a runtime dependency of the studio
        return None
    return LocalContext.request.get(None)


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


def reference_checkpoints(folder: Path | None = None) -> dict[str, str]:
    """label -> folder of the shipped reference checkpoints (none when the folder is absent or empty)."""
    folder = REFERENCE_DIR if folder is None else folder  # read at call time, so tests can point it elsewhere
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
    # Checkpoints loaded from the Hub or a local folder: label -> folder, shown beside the runs' own. On a
    # Space each visitor has their own (``externals``), so no visitor sees what another loaded.
    external: dict[str, str] = field(default_factory=dict)
    _visitor_external: dict[str, dict[str, str]] = field(default_factory=dict)
    # Page session -> the visitor id its browser keeps (see ``remember_visitor``), newest last.
    _visitors: OrderedDict = field(default_factory=OrderedDict)
    # The shipped reference checkpoints, listed after the runs' own and selected by default in the tabs.
    reference: dict[str, str] = field(default_factory=reference_checkpoints)
    _models: OrderedDict = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # -- visitors (public Space) ----------------------------------------------------------------------
    def remember_visitor(self, session_hash: str | None, browser_id: Any) -> str:
        """Tie a page session to the visitor id its browser keeps, and return that id (a fresh one when the
        browser sent none or a malformed one), so a visitor's jobs stay theirs after a page reload."""
        visitor = browser_id if isinstance(browser_id, str) and VISITOR_ID.fullmatch(browser_id) else None
        visitor = visitor or new_visitor_id()
        if session_hash:
            with self._lock:
                self._visitors[str(session_hash)] = visitor
                self._visitors.move_to_end(str(session_hash))
                while len(self._visitors) > MAX_VISITOR_SESSIONS:
                    self._visitors.popitem(last=False)
        return visitor

    def visitor(self, request: Any = None) -> str | None:
        """Who is asking, on a public Space (None elsewhere: a local studio has one user).

        The visitor's Hugging Face login where the Space has OAuth, else the id their browser keeps (tied to
        the page session by ``remember_visitor`` when the page loads), else the page session itself (an API
        client). `request` defaults to the Gradio event being handled."""
        if not self.space:
            return None
        request = request if request is not None else current_request()
        if request is None:
            return None
        username = getattr(request, "username", None)
        if username:
            return f"hf:{username}"
        session = getattr(request, "session_hash", None)
        if not session:
            return None
        with self._lock:
            return self._visitors.get(str(session), str(session))

    def externals(self, visitor: str | None = None) -> dict[str, str]:
        """label -> folder of the checkpoints loaded in the Hub tab that `visitor` may see: everyone's when
        not on a Space; on a Space only those the visitor loaded (`visitor` defaults to the current one)."""
        if not self.space:
            return self.external
        visitor = visitor if visitor is not None else self.visitor()
        return dict(self._visitor_external.get(visitor, {})) if visitor else {}

    def add_external(self, label: str, folder: str | Path, visitor: str | None = None) -> None:
        """Register a loaded checkpoint: for everyone, or on a Space for `visitor` (default: the current)."""
        if not self.space:
            self.external[label] = str(folder)
            return
        visitor = visitor if visitor is not None else self.visitor()
        if not visitor:
            raise ValueError("cannot tell who is loading this checkpoint; reload the page and try again")
        with self._lock:
            mine = self._visitor_external.setdefault(visitor, {})
            mine.pop(label, None)
            mine[label] = str(folder)
            while len(mine) > MAX_LOADS_PER_VISITOR:
                mine.pop(next(iter(mine)))

    # -- checkpoints -----------------------------------------------------------------------------------
    def checkpoint_choices(self, domain: str) -> list[tuple[str, str]]:
        """(label, value) of every checkpoint of `domain`: each run's `best` then its `last` (labelled, so
        the weights of the best validation epoch and the final ones can be compared), the shipped reference
        checkpoints, then external ones (loaded from the Hub or a folder; on a Space the current visitor's).
        A run's name, where it has one, leads its labels.

        Values are ``RUN_ID/best``, ``RUN_ID/last`` or the label itself, never a server path;
        ``studio.views.common.resolve_checkpoint`` maps them back to folders."""
        return [(label, value) for label, value, _ in self.checkpoint_folders(domain)]

    def checkpoint_folders(self, domain: str) -> list[tuple[str, str, str]]:
        """(label, value, folder) of every checkpoint of `domain`, in ``checkpoint_choices``'s order."""
        choices: list[tuple[str, str, str]] = []
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
                    choices.append((label, f"{run.id}/{kind}", str(run_folder / "checkpoints" / kind)))
        for label, folder in {**self.reference, **self.externals()}.items():
            try:
                variant = _variant_of(folder)
            except (OSError, ValueError, KeyError):
                continue
            if VARIANTS.get(variant) is not None and VARIANTS[variant].domain == domain:
                choices.append((label, label, folder))
        return choices

    def default_checkpoints(self, domain: str) -> list[str]:
        """Values a comparison tab selects before the user chooses: the domain's reference checkpoints."""
        return [value for label, value in self.checkpoint_choices(domain) if label in self.reference]

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
