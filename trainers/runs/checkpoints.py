"""Checkpoints written atomically, without pickle.

Layout of a run directory::

    run_dir/checkpoints/
        best -> best-1200/           relative symlink, swapped atomically
        last -> last-1500/
        best-1200/
            model.safetensors        model.save_pretrained (PyTorchModelHubMixin)
            config.json              the model's init kwargs, for from_pretrained
            README.md                the mixin's model card
            optimizer.safetensors    optimizer tensors as "state.<param_index>.<key>"
            optimizer.json           param_groups and non-tensor state
            trainer_state.json       step, epoch, best value, seeds... (the caller's dict)
            preprocessing.json       optional: normalisation parameters inference needs
            manifest.json            written last: every file and its size

A save writes a fresh folder, fsyncs it, writes ``manifest.json`` last, then points ``<kind>`` at it with
``os.replace`` of a temporary symlink (atomic on POSIX) and only then removes the previous folder. A crash
at any moment leaves ``<kind>`` pointing at a complete folder; a half-written folder has no manifest, is
never pointed at, and is removed by the next save of that kind. Everything is safetensors or JSON, so an
untrusted checkpoint cannot run code when loaded.
"""

from __future__ import annotations

import json
import operator
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, load_model, save_file

from trainers.runs.atomic import fsync_dir, point_link, write_synced
from trainers.runs.faults import kill_point

KINDS: tuple[str, ...] = ("best", "last")
CHECKPOINTS_DIR = "checkpoints"
MODEL_FILE = "model.safetensors"
OPTIMIZER_TENSORS = "optimizer.safetensors"
OPTIMIZER_JSON = "optimizer.json"
TRAINER_STATE = "trainer_state.json"
PREPROCESSING = "preprocessing.json"
MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1


def _check_kind(kind: object) -> str:
    if kind not in KINDS:
        raise ValueError(f"checkpoint kind must be one of {', '.join(KINDS)}; got {kind!r}")
    return str(kind)


def _jsonable(value: Any) -> Any:
    # numpy scalars/arrays and 0-d tensors show up in trainer state (seeds, best values); store them plainly.
    if hasattr(value, "tolist") and callable(value.tolist):
        return value.tolist()
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def _dumps(what: str, obj: Any) -> str:
    try:
        return json.dumps(obj, indent=2, sort_keys=True, default=_jsonable)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must be JSON-serialisable (numbers, strings, lists, dicts): {exc}") from exc


def _inner(model: Any) -> Any:
    for attr in ("module", "_orig_mod"):
        inner = getattr(model, attr, None)
        if isinstance(inner, torch.nn.Module):
            return inner
    return None


def _unwrap(model: Any) -> Any:
    # DDP / DataParallel keep the real model in .module, torch.compile in ._orig_mod.
    for _ in range(4):
        if hasattr(model, "save_pretrained"):
            return model
        inner = _inner(model)
        if inner is None:
            break
        model = inner
    raise ValueError(
        "model must provide save_pretrained (a huggingface_hub PyTorchModelHubMixin); "
        f"got {type(model).__name__}"
    )


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _write_text(path: Path, text: str) -> None:
    write_synced(path, text.encode("utf-8"))


def optimizer_to_files(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into flat safetensors tensors and a JSON-able rest.

    Tensors: ``state.<param_index>.<key>`` (and ``param_groups.<group_index>.<key>`` for tensor-valued
    hyperparameters such as a tensor lr). JSON: ``param_groups`` and the scalar per-parameter state.
    """
    state_dict = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalar_state: dict[str, dict[str, Any]] = {}
    for index, per_param in state_dict["state"].items():
        for key, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalar_state.setdefault(str(index), {})[key] = value
    groups: list[dict[str, Any]] = []
    for g, group in enumerate(state_dict["param_groups"]):
        plain: dict[str, Any] = {}
        for key, value in group.items():
            if isinstance(value, torch.Tensor):
                tensors[f"param_groups.{g}.{key}"] = value.detach().cpu().contiguous()
            else:
                plain[key] = value
        groups.append(plain)
    meta = {
        "format": MANIFEST_FORMAT,
        "optimizer": type(optimizer).__name__,
        "param_groups": groups,
        "scalar_state": scalar_state,
        "state_indices": sorted(int(i) for i in state_dict["state"]),
    }
    return tensors, meta


def optimizer_from_files(
    tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any], optimizer: torch.optim.Optimizer
) -> dict[str, Any]:
    """Rebuild a state dict that ``optimizer.load_state_dict`` accepts (inverse of ``optimizer_to_files``).

    JSON turns tuples into lists; hyperparameters that are tuples in the live optimizer (Adam's betas)
    become tuples again so that the loaded state equals the saved one.
    """
    state: dict[int, dict[str, Any]] = {int(i): {} for i in meta.get("state_indices", [])}
    for index, values in meta.get("scalar_state", {}).items():
        state.setdefault(int(index), {}).update(values)
    groups = [dict(group) for group in meta["param_groups"]]
    for name, tensor in tensors.items():
        parts = name.split(".", 2)
        if len(parts) != 3 or parts[0] not in ("state", "param_groups") or not parts[1].isdigit():
            raise ValueError(f"unexpected tensor {name!r} in {OPTIMIZER_TENSORS}")
        if parts[0] == "state":
            state.setdefault(int(parts[1]), {})[parts[2]] = tensor
        else:
            if int(parts[1]) >= len(groups):
                raise ValueError(f"tensor {name!r} refers to a param group that {OPTIMIZER_JSON} lacks")
            groups[int(parts[1])][parts[2]] = tensor
    live = optimizer.param_groups
    for group, template in zip(groups, live, strict=False):
        for key, value in group.items():
            if isinstance(template.get(key), tuple) and isinstance(value, list):
                group[key] = tuple(value)
    return {"state": state, "param_groups": groups}


def _step_of(state: Mapping[str, Any] | None) -> int | None:
    step = (state or {}).get("step")
    if isinstance(step, bool):
        return None
    try:
        value = operator.index(step)  # int, numpy or 0-d tensor integers; not floats
    except TypeError:
        return None
    return value if value >= 0 else None


def _folder_name(ckpt_dir: Path, kind: str, step: int | None) -> str:
    if step is not None:
        base = f"{kind}-{step}"
    else:
        pattern = re.compile(rf"^{kind}-(\d+)$")
        numbers = [int(m.group(1)) for p in ckpt_dir.iterdir() if (m := pattern.match(p.name))]
        base = f"{kind}-{max(numbers, default=0) + 1}"
    name, n = base, 1
    while (ckpt_dir / name).exists() or (ckpt_dir / name).is_symlink():
        name = f"{base}-{n}"
        n += 1
    return name


def save_checkpoint(
    run_dir: str | Path,
    kind: str,
    model: Any,
    optimizer: torch.optim.Optimizer | None = None,
    state: dict[str, Any] | None = None,
    preprocessing: dict[str, Any] | None = None,
) -> Path:
    """Write a complete checkpoint folder and atomically make ``run_dir/checkpoints/<kind>`` point at it.

    The folder is ``<kind>-<state["step"]>`` when the state has an int step, else ``<kind>-<counter>``.
    ``preprocessing`` (e.g. SAR normalisation parameters) goes to ``preprocessing.json`` so that the folder
    alone suffices for inference. Returns the new folder. Bad arguments raise ValueError before anything
    is written.
    """
    kind = _check_kind(kind)
    mixin = _unwrap(model)
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise ValueError(f"optimizer must be a torch.optim.Optimizer or None; got {type(optimizer).__name__}")
    if state is not None and not isinstance(state, Mapping):
        raise ValueError(f"trainer state must be a dict or None; got {type(state).__name__}")
    if preprocessing is not None and not isinstance(preprocessing, Mapping):
        raise ValueError(f"preprocessing must be a dict or None; got {type(preprocessing).__name__}")
    state_text = _dumps("trainer state", dict(state or {}))
    pre_text = None if preprocessing is None else _dumps("preprocessing parameters", dict(preprocessing))
    opt_tensors, opt_meta = optimizer_to_files(optimizer) if optimizer is not None else ({}, None)
    opt_text = None if opt_meta is None else _dumps("optimizer param_groups", opt_meta)

    run_dir = Path(run_dir)
    ckpt_dir = run_dir / CHECKPOINTS_DIR
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    folder = ckpt_dir / _folder_name(ckpt_dir, kind, _step_of(state))
    folder.mkdir()
    try:
        mixin.save_pretrained(folder)
        if opt_text is not None:
            save_file(opt_tensors, str(folder / OPTIMIZER_TENSORS), metadata={"format": "pt"})
            _write_text(folder / OPTIMIZER_JSON, opt_text)
        _write_text(folder / TRAINER_STATE, state_text)
        if pre_text is not None:
            _write_text(folder / PREPROCESSING, pre_text)
        files = sorted(p.name for p in folder.iterdir() if p.is_file())
        for name in files:
            _fsync_file(folder / name)
        kill_point(f"{kind}-files")
        manifest = {
            "format": MANIFEST_FORMAT,
            "kind": kind,
            "files": {name: (folder / name).stat().st_size for name in files},
        }
        _write_text(folder / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True))
        fsync_dir(folder)
        kill_point(f"{kind}-manifest")
    except BaseException as exc:
        shutil.rmtree(folder, ignore_errors=True)  # never pointed at; do not leave it for the next save
        code = _os_error_code(exc)
        if code is not None and not isinstance(
            exc, OSError
        ):  # safetensors wraps a full disk in its own error
            raise OSError(code, os.strerror(code), str(folder)) from exc
        raise

    _point(ckpt_dir, kind, folder.name)
    kill_point(f"{kind}-linked")
    _remove_stale(ckpt_dir, kind, keep=folder.name)
    return folder


def _os_error_code(exc: BaseException) -> int | None:
    """The errno inside a library's error text ("I/O error: File too large (os error 27)"), if any."""
    found = re.search(r"\(os error (\d+)\)", str(exc))
    return int(found.group(1)) if found else None


def _point(ckpt_dir: Path, kind: str, target_name: str) -> None:
    # A real folder found at `kind` is moved aside by point_link; _remove_stale deletes it afterwards.
    point_link(ckpt_dir, kind, target_name)


def _remove_stale(ckpt_dir: Path, kind: str, keep: str) -> None:
    # Previous targets and leftovers of crashed saves; only this kind's folders, never the other kind's.
    for path in ckpt_dir.iterdir():
        if path.name == keep or path.is_symlink():
            if path.name.startswith(f".{kind}.tmp-"):
                path.unlink(missing_ok=True)
            continue
        if path.is_dir() and path.name.startswith(f"{kind}-"):
            shutil.rmtree(path, ignore_errors=True)


def is_complete(folder: str | Path) -> bool:
    """True when ``folder`` holds a finished checkpoint: a manifest whose files all exist at their sizes."""
    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        files = manifest["files"]
        if MODEL_FILE not in files or TRAINER_STATE not in files:
            return False
        return all(
            (folder / name).is_file() and (folder / name).stat().st_size == size
            for name, size in files.items()
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def checkpoint_path(run_dir: str | Path, kind: str) -> Path | None:
    """The resolved folder of the run's ``best``/``last`` checkpoint, or None when there is none yet.

    Raises ValueError when ``<kind>`` exists but does not lead to a complete checkpoint (someone deleted
    or edited files), so a resume never silently starts over.
    """
    kind = _check_kind(kind)
    link = Path(run_dir) / CHECKPOINTS_DIR / kind
    if not link.exists() and not link.is_symlink():
        return None
    target = link.resolve()
    if target.parent != link.parent.resolve():
        # Every save points the link at a sibling folder; anything else was edited by hand (or is hostile).
        raise ValueError(f"checkpoint {link} points outside its run's checkpoints folder")
    if not is_complete(target):
        raise ValueError(f"checkpoint {link} -> {target} is missing or incomplete (no valid {MANIFEST})")
    return target


def _require_folder(folder: str | Path) -> Path:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"checkpoint folder {str(folder)!r} does not exist")
    return folder


def read_trainer_state(folder: str | Path) -> dict[str, Any]:
    """The ``state`` dict saved with the checkpoint (step, epoch, best value, seeds...)."""
    path = _require_folder(folder) / TRAINER_STATE
    if not path.is_file():
        raise FileNotFoundError(f"{TRAINER_STATE} is missing from checkpoint folder {str(folder)!r}")
    return _read_json_object(path)


def _read_json_object(path: Path) -> dict[str, Any]:
    """A checkpoint's JSON file that must hold an object; an error names the file and what is wrong."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(value).__name__}")
    return value


def resume_state(last_folder: str | Path) -> dict[str, Any]:
    """The state to resume from the ``last`` checkpoint in ``last_folder``, with the best value made
    consistent with the run's ``best`` checkpoint.

    A trainer killed after saving ``best-N`` but before ``last-N`` leaves ``last`` with the best value of an
    earlier epoch; resuming from it would let a re-done epoch that scores between the two overwrite a
    better ``best``. So when ``best`` was saved at a later step than ``last``, its best value wins.
    """
    last_folder = Path(last_folder)
    state = read_trainer_state(last_folder)
    try:
        best_folder = checkpoint_path(last_folder.parent.parent, "best")
        best_state = read_trainer_state(best_folder) if best_folder is not None else None
    except (OSError, ValueError):  # a broken best link: the last checkpoint's own value is all there is
        return state
    last_step, best_step = _step_of(state), _step_of(best_state)
    if best_state is not None and best_step is not None and (last_step is None or best_step > last_step):
        state["best"] = best_state.get("best", state.get("best"))
    return state


def read_preprocessing(folder: str | Path) -> dict[str, Any] | None:
    """The preprocessing parameters saved with the checkpoint, or None when it has none."""
    path = _require_folder(folder) / PREPROCESSING
    return _read_json_object(path) if path.is_file() else None


def load_model_weights(folder: str | Path, model: torch.nn.Module, strict: bool = True) -> None:
    """Load ``model.safetensors`` into an existing model (the resume path; from_pretrained builds a new one).

    A checkpoint of another architecture raises ValueError naming the mismatched keys.
    """
    path = _require_folder(folder) / MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{MODEL_FILE} is missing from checkpoint folder {str(folder)!r}")
    target = model
    while (inner := _inner(target)) is not None:
        target = inner
    device = next((p.device for p in target.parameters()), torch.device("cpu"))
    try:
        missing, unexpected = load_model(target, str(path), strict=strict, device=str(device))
    except RuntimeError as exc:  # shape mismatch or strict key mismatch
        raise ValueError(f"checkpoint {str(folder)!r} does not fit {type(target).__name__}: {exc}") from exc
    if strict and (missing or unexpected):
        raise ValueError(
            f"checkpoint {str(folder)!r} does not fit {type(target).__name__}: "
            f"missing {missing}, unexpected {unexpected}"
        )


def load_optimizer_state(folder: str | Path, optimizer: torch.optim.Optimizer) -> None:
    """Load the optimizer state saved by ``save_checkpoint`` into ``optimizer`` (over the same params)."""
    folder = _require_folder(folder)
    meta_path, tensor_path = folder / OPTIMIZER_JSON, folder / OPTIMIZER_TENSORS
    if not meta_path.is_file() or not tensor_path.is_file():
        raise FileNotFoundError(
            f"checkpoint folder {str(folder)!r} has no optimizer state (saved without one)"
        )
    meta = _read_json_object(meta_path)
    saved_type = meta.get("optimizer")
    if saved_type and saved_type != type(optimizer).__name__:
        raise ValueError(
            f"checkpoint holds {saved_type} state, cannot load it into {type(optimizer).__name__}"
        )
    tensors = load_file(str(tensor_path))
    state_dict = optimizer_from_files(tensors, meta, optimizer)
    if len(state_dict["param_groups"]) != len(optimizer.param_groups):
        raise ValueError(
            f"checkpoint has {len(state_dict['param_groups'])} optimizer param groups, "
            f"the optimizer has {len(optimizer.param_groups)}"
        )
    optimizer.load_state_dict(state_dict)
