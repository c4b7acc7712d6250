"""Media logged along a run: at each validation, the same few validation examples as the model sees them then.

Trackers show images and audio logged during training so that a person can watch one example improve. Here
each validation writes, for the first ``EXAMPLES`` validation items (fragments: the first corrupted ones):

- SAR: a PNG, input | reconstruction (normalised dB image, grey), captioned with the example's masked PSNR;
- audio: a PNG of the log-mel spectrograms (input above, reconstruction below) and the decoded WAV of the
  reconstruction; the input's own audio is written once under ``reference/``;
- fragments: a hex diff as text (the rows of 16 bytes where the corruption or the repair changed a byte).

Layout: ``RUN_FOLDER/media/index.json`` lists the kept validations and their files, each validation's files
sit in ``media/step-XXXXXXXX/``. The size is bounded: at most ``MAX_KEPT`` validations are kept; past that the
validation whose neighbours are closest together is dropped (never the first nor the latest), so the kept
steps stay spread evenly over the run. A validation costs at most ~0.3 MB (audio: two 1 s 16-bit WAVs and
two spectrograms), so a run keeps at most ~5 MB of media.

Writing media must never fail a run: :func:`log_validation_media` catches every error, logs a warning and
returns None.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import shutil
import time as _time
import wave
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

log = logging.getLogger(__name__)

MEDIA_DIR = "media"
INDEX_FILE = "index.json"
REFERENCE_DIR = "reference"
EXAMPLES = 2  # validation items shown at every validation
MAX_KEPT = 16  # validations kept per run (thinned evenly beyond that)
PANEL_MAX = 256  # SAR/audio panels are shrunk to at most this many pixels a side
HEX_ROWS = 12  # rows of 16 bytes shown in a fragment's hex diff
_FRAGMENT_SCAN = 256  # validation fragments searched for corrupted ones
_INDEX_VERSION = 1

# Viridis-like anchors (dark purple -> yellow), as in the model card's spectrograms.
_VIRIDIS = np.array([(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)], float)


# ------------------------------------------------------------------------------------------------ index
def media_folder(run_folder: str | Path) -> Path:
    return Path(run_folder) / MEDIA_DIR


def read_index(run_folder: str | Path) -> dict[str, Any]:
    """The media index of a run folder: ``{"domain", "examples": [...], "entries": [...]}``, entries sorted by
    step; an empty index (no entries) when the run logged no media yet or its index cannot be read."""
    path = media_folder(run_folder) / INDEX_FILE
    empty: dict[str, Any] = {"version": _INDEX_VERSION, "domain": None, "examples": [], "entries": []}
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return empty
    if not isinstance(index, dict) or not isinstance(index.get("entries"), list):
        return empty
    index.setdefault("examples", [])
    index.setdefault("references", {})
    index["entries"] = sorted(
        (e for e in index["entries"] if isinstance(e, dict) and isinstance(e.get("step"), int)),
        key=lambda e: e["step"],
    )
    return index


def media_steps(run_folder: str | Path) -> list[int]:
    """The steps at which media of the run are kept, ascending."""
    return [e["step"] for e in read_index(run_folder)["entries"]]


def media_at(run_folder: str | Path, step: int) -> list[dict[str, Any]]:
    """The media items of the kept validation nearest to ``step``: dicts with example, kind ("image",
    "audio", "text"), path (absolute), caption, step and epoch. Empty when the run has no media."""
    entries = read_index(run_folder)["entries"]
    if not entries:
        return []
    entry = min(entries, key=lambda e: (abs(e["step"] - int(step)), e["step"]))
    folder = media_folder(run_folder)
    return [
        {**item, "path": folder / item["file"], "step": entry["step"], "epoch": entry.get("epoch")}
        for item in entry.get("items", [])
    ]


def references(run_folder: str | Path) -> dict[str, dict[str, Any]]:
    """Per example, files that do not change along the run (the audio input), with absolute paths."""
    folder = media_folder(run_folder)
    refs = read_index(run_folder).get("references") or {}
    return {k: {**v, "path": folder / v["file"]} for k, v in refs.items() if isinstance(v, dict)}


def thin(steps: Sequence[int], keep: int) -> list[int]:
    """Positions (into ``steps``, ascending) of the entries to keep when at most ``keep`` may stay: while too
    many, drop the interior entry whose neighbours are closest together (the first and last always stay)."""
    if keep < 2:
        raise ValueError(f"keep must be at least 2 (the first and the latest validation), got {keep}")
    kept = list(range(len(steps)))
    while len(kept) > keep:
        drop = min(range(1, len(kept) - 1), key=lambda k: (steps[kept[k + 1]] - steps[kept[k - 1]], k))
        del kept[drop]
    return kept


def _write_index(folder: Path, index: dict[str, Any]) -> None:
    tmp = folder / f".{INDEX_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(index, indent=1, sort_keys=True), encoding="utf-8")
    os.replace(tmp, folder / INDEX_FILE)  # readers (the studio) never see a half-written index


# ------------------------------------------------------------------------------------------- rendering
def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


def wav_bytes(waveform: np.ndarray, sample_rate: int) -> bytes:
    """16-bit mono PCM WAV of a float waveform (clipped to [-1, 1]; NaN/inf become silence)."""
    y = np.nan_to_num(np.asarray(waveform, dtype=np.float64).reshape(-1), nan=0.0, posinf=0.0, neginf=0.0)
    pcm = (np.clip(y, -1.0, 1.0) * 32767).round().astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(int(sample_rate))
        out.writeframes(pcm.tobytes())
    return buffer.getvalue()


def _fit(image: Image.Image, limit: int = PANEL_MAX) -> Image.Image:
    w, h = image.size
    if max(w, h) <= limit:
        return image
    scale = limit / max(w, h)
    return image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BILINEAR)


def _side_by_side(images: Sequence[Image.Image], vertical: bool = False, gap: int = 4) -> Image.Image:
    if vertical:
        width, height = (
            max(i.size[0] for i in images),
            sum(i.size[1] for i in images) + gap * (len(images) - 1),
        )
    else:
        width, height = (
            sum(i.size[0] for i in images) + gap * (len(images) - 1),
            max(i.size[1] for i in images),
        )
    canvas = Image.new("RGB", (width, height), "white")
    offset = 0
    for image in images:
        canvas.paste(image.convert("RGB"), (0, offset) if vertical else (offset, 0))
        offset += (image.size[1] if vertical else image.size[0]) + gap
    return canvas


def _grey(values: np.ndarray) -> Image.Image:
    v = np.nan_to_num(np.asarray(values, dtype=np.float64), nan=0.0)
    return Image.fromarray((np.clip(v, 0.0, 1.0) * 255).round().astype(np.uint8), "L")


def _colourise(values: np.ndarray, lo: float, hi: float) -> Image.Image:
    v = np.nan_to_num(np.asarray(values, dtype=np.float64), nan=lo)
    t = np.clip((v - lo) / ((hi - lo) or 1.0), 0.0, 1.0)
    anchors = np.linspace(0.0, 1.0, len(_VIRIDIS))
    rgb = np.stack([np.interp(t, anchors, _VIRIDIS[:, c]) for c in range(3)], axis=-1)
    return Image.fromarray(rgb.round().astype(np.uint8), "RGB")


def sar_panel(x: np.ndarray, x_hat: np.ndarray, valid: np.ndarray | None = None) -> tuple[Image.Image, str]:
    """Input | reconstruction of one normalised SAR image (H, W) and a caption with the masked PSNR."""
    mask = np.ones_like(x, dtype=bool) if valid is None else np.asarray(valid) > 0
    err = (np.asarray(x_hat, np.float64) - np.asarray(x, np.float64))[mask]
    mse = float(np.mean(err**2)) if err.size else math.nan
    psnr = 10 * math.log10(1.0 / mse) if mse > 0 else math.inf if mse == 0 else math.nan
    image = _side_by_side([_fit(_grey(x)), _fit(_grey(x_hat))])
    if math.isfinite(psnr):
        caption = f"input | reconstruction · PSNR {psnr:.2f} dB (↑)"
    else:
        caption = (
            "input | reconstruction · PSNR n/a (" + ("identical" if mse == 0 else "no valid pixels") + ")"
        )
    return image, caption


def spectrogram_panel(features: np.ndarray, recon: np.ndarray) -> tuple[Image.Image, str]:
    """Log-mel spectrograms of input (top) and reconstruction (bottom), low frequencies at the bottom."""
    mag_in, mag_out = np.asarray(features[0])[::-1], np.asarray(recon[0])[::-1]
    hi = float(max(np.nanmax(mag_in), 1e-6))
    panels = [_colourise(mag_in, 0.0, hi), _colourise(mag_out, 0.0, hi)]
    w, h = panels[0].size
    factor = max(1, min(4, PANEL_MAX // max(w, h, 1)))
    panels = [
        _fit(p.resize((w * factor, h * factor), Image.Resampling.NEAREST), 2 * PANEL_MAX) for p in panels
    ]
    mse = float(np.mean((np.asarray(recon, np.float64) - np.asarray(features, np.float64)) ** 2))
    return _side_by_side(
        panels, vertical=True
    ), f"log-mel: input (top) | reconstruction (bottom) · MSE {mse:.4g} (↓)"


def hex_diff(clean: np.ndarray, corrupted: np.ndarray, repaired: np.ndarray, rows: int = HEX_ROWS) -> str:
    """A hex diff of one fragment: a summary line, then for each row of 16 bytes where a byte was corrupted
    or changed by the repair, the clean, corrupted and repaired bytes and a marks line
    (``+`` repaired, ``x`` still wrong, ``!`` broken by the repair)."""
    clean, corrupted, repaired = (
        np.asarray(a, dtype=np.int64).reshape(-1) for a in (clean, corrupted, repaired)
    )
    changed = corrupted != clean
    ok = repaired == clean
    fixed = int((changed & ok).sum())
    broken = int((~changed & ~ok).sum())
    lines = [
        f"{int(changed.sum())} of {clean.size} bytes corrupted; repaired {fixed}, still wrong "
        f"{int((changed & ~ok).sum())}, broken by the repair {broken}; byte accuracy {ok.mean():.2%} "
        f"(↑; unrepaired {(~changed).mean():.2%})",
        "marks: + repaired, x still wrong, ! broken by the repair",
        "",
    ]
    shown = 0
    for start in range(0, clean.size, 16):
        sl = slice(start, start + 16)
        if not (changed[sl].any() or (~ok[sl]).any()):
            continue
        if shown == rows:
            lines.append("… (more rows with differences not shown)")
            break
        marks = [
            ("+" if ok[j] else "x") if changed[j] else (" " if ok[j] else "!")
            for j in range(start, min(start + 16, clean.size))
        ]
        lines += [
            f"{start:06x} clean     " + " ".join(f"{b:02x}" for b in clean[sl]),
            "       corrupted " + " ".join(f"{b:02x}" for b in corrupted[sl]),
            "       repaired  " + " ".join(f"{b:02x}" for b in repaired[sl]),
            "       marks     " + " ".join(f"{m} " for m in marks).rstrip(),
            "",
        ]
        shown += 1
    if shown == 0:
        lines.append("(no byte differs: nothing was corrupted and the repair changed nothing)")
    return "\n".join(lines).rstrip() + "\n"


# ----------------------------------------------------------------------------------------- per domain
# Audio feature objects by (variant, preprocessing): building one inverts the mel basis (~1 s on a CPU core),
# which would otherwise be most of a validation's media time.
_FEATURES: dict[tuple[str, str], Any] = {}


def _features(task: Any, preprocessing: dict[str, Any] | None) -> Any:
    key = (task.variant, json.dumps(preprocessing or {}, sort_keys=True, default=str))
    if key not in _FEATURES:
        if len(_FEATURES) > 8:
            _FEATURES.clear()
        _FEATURES[key] = task._features(preprocessing)
    return _FEATURES[key]


def pick_examples(domain: str, dataset: Dataset, count: int = EXAMPLES) -> list[int]:
    """Indices of the validation items to show: the first ``count``; for fragments the first corrupted ones
    (an untouched fragment shows no repair), topped up with the first ones when too few are corrupted."""
    n = len(dataset)  # type: ignore[arg-type]
    if domain != "fragments":
        return list(range(min(count, n)))
    picked = []
    for i in range(min(n, _FRAGMENT_SCAN)):
        if bool(torch.as_tensor(dataset[i][2]).any()):
            picked.append(i)
            if len(picked) == count:
                return picked
    return picked + [i for i in range(n) if i not in picked][: count - len(picked)]


@torch.no_grad()
def render_examples(
    task: Any,
    model: nn.Module,
    dataset: Dataset,
    device: torch.device | str,
    indices: Sequence[int],
    with_references: bool = True,
) -> tuple[list[dict[str, Any]], dict[str, bytes]]:
    """Items (key, example, kind, file, caption) and {file: bytes} of the examples ``indices`` of ``dataset``.

    With ``with_references``, files that do not change along the run (the audio input) are included under
    ``reference/``; the caller writes them once.
    """
    device = torch.device(device)
    items: list[dict[str, Any]] = []
    files: dict[str, bytes] = {}
    if not indices:
        return items, files
    data = [dataset[i] for i in indices]
    if task.domain == "sar":
        x = torch.stack([d[0] if isinstance(d, (tuple, list)) else d for d in data]).float()
        valid = (
            torch.stack([d[1] for d in data]) if isinstance(data[0], (tuple, list)) else torch.ones_like(x)
        )
        out = model(x.to(device))
        x_hat = (out[0] if isinstance(out, tuple) else out).float().clamp(0, 1).cpu()
        for k, i in enumerate(indices):
            image, caption = sar_panel(x[k, 0].numpy(), x_hat[k, 0].numpy(), valid[k, 0].numpy())
            name = f"ex{k + 1}-sar.png"
            items.append(
                {
                    "key": f"ex{k + 1}",
                    "example": f"example {k + 1} (val #{i})",
                    "kind": "image",
                    "file": name,
                    "caption": caption,
                }
            )
            files[name] = png_bytes(image)
    elif task.domain == "audio":
        from trainers.training.tasks import _waveform_getter

        x = torch.stack(list(data)).float()
        recon = model.reconstruct(x.to(device)).float().cpu().numpy()
        features = _features(task, getattr(model, "preprocessing", None))
        rate = features.config.sample_rate
        waveform = _waveform_getter(dataset)
        for k, i in enumerate(indices):
            label = f"example {k + 1} (val #{i})"
            image, caption = spectrogram_panel(x[k].numpy(), recon[k])
            items.append(
                {
                    "key": f"ex{k + 1}",
                    "example": label,
                    "kind": "image",
                    "file": f"ex{k + 1}-spectrogram.png",
                    "caption": caption,
                }
            )
            files[f"ex{k + 1}-spectrogram.png"] = png_bytes(image)
            items.append(
                {
                    "key": f"ex{k + 1}",
                    "example": label,
                    "kind": "audio",
                    "file": f"ex{k + 1}-decoded.wav",
                    "caption": f"decoded reconstruction, {rate} Hz",
                }
            )
            files[f"ex{k + 1}-decoded.wav"] = wav_bytes(features.decode(recon[k]), rate)
            if waveform is not None and with_references:
                files[f"{REFERENCE_DIR}/ex{k + 1}-input.wav"] = wav_bytes(waveform(i), rate)
    elif task.domain == "fragments":
        corrupted = torch.stack([d[0] for d in data]).float()
        clean = torch.stack([d[1] for d in data]).float()
        repaired = model.predict_bytes(corrupted.to(device)).cpu().numpy()
        clean_b = np.rint(clean[:, 0].numpy() * 255).astype(np.int64)
        corrupt_b = np.rint(corrupted[:, 0].numpy() * 255).astype(np.int64)
        for k, i in enumerate(indices):
            text = hex_diff(clean_b[k], corrupt_b[k], repaired[k])
            name = f"ex{k + 1}-hexdiff.txt"
            items.append(
                {
                    "key": f"ex{k + 1}",
                    "example": f"example {k + 1} (val #{i})",
                    "kind": "text",
                    "file": name,
                    "caption": text.splitlines()[0],
                }
            )
            files[name] = text.encode("utf-8")
    else:
        raise ValueError(f"no media for domain {task.domain!r}; expected sar, audio or fragments")
    return items, files


# -------------------------------------------------------------------------------------------- logging
def log_validation_media(
    task: Any,
    model: nn.Module,
    dataset: Dataset,
    device: torch.device | str,
    run_folder: str | Path,
    step: int,
    epoch: int | None,
    examples: int = EXAMPLES,
    keep: int = MAX_KEPT,
) -> dict[str, Any] | None:
    """Write this validation's media into ``run_folder/media`` and return its index entry; on any error log
    a warning and return None (media never fail a run). The model is left in the mode it was in."""
    started = _time.perf_counter()
    was_training = model.training
    try:
        model.eval()
        entry = _log(task, model, dataset, device, Path(run_folder), int(step), epoch, examples, keep)
    except Exception as exc:  # noqa: BLE001 - media are a courtesy; training goes on whatever happens here
        log.warning("media at step %s not written (%s: %s); training goes on", step, type(exc).__name__, exc)
        return None
    finally:
        model.train(was_training)
    log.debug("media at step %d written in %.3f s", step, _time.perf_counter() - started)
    return entry


def _log(task, model, dataset, device, run_folder: Path, step: int, epoch, examples: int, keep: int):
    folder = media_folder(run_folder)
    folder.mkdir(parents=True, exist_ok=True)
    index = read_index(run_folder)
    indices = [i for i in index.get("indices", []) if isinstance(i, int) and 0 <= i < len(dataset)]
    if index.get("domain") != task.domain or not indices:  # first validation (or another data set): pick
        indices = pick_examples(task.domain, dataset, examples)
        index = {
            "version": _INDEX_VERSION,
            "domain": task.domain,
            "indices": indices,
            "entries": [],
            "references": {},
        }
    have_refs = all((folder / r["file"]).is_file() for r in (index.get("references") or {}).values())
    items, files = render_examples(
        task, model, dataset, device, indices, with_references=not index.get("references") or not have_refs
    )
    step_dir = f"step-{step:08d}"
    (folder / step_dir).mkdir(exist_ok=True)
    references = dict(index.get("references") or {})
    for name, data in files.items():
        if name.startswith(f"{REFERENCE_DIR}/"):
            key = name.split("/", 1)[1].split("-", 1)[0]
            if key not in references or not (folder / name).is_file():
                (folder / REFERENCE_DIR).mkdir(exist_ok=True)
                (folder / name).write_bytes(data)
                references[key] = {"kind": "audio", "file": name, "caption": "input audio"}
            continue
        (folder / step_dir / name).write_bytes(data)
    for item in items:
        item["file"] = f"{step_dir}/{item['file']}"
    entry = {"step": step, "epoch": epoch, "time": _time.time(), "items": items}
    # A resumed run may validate again at a step it already has media of: the newer ones replace them.
    entries = [e for e in index["entries"] if e["step"] != step] + [entry]
    entries.sort(key=lambda e: e["step"])
    kept = [entries[k] for k in thin([e["step"] for e in entries], keep)]
    index.update(entries=kept, references=references, examples=sorted({i["example"] for i in items}))
    _write_index(folder, index)
    kept_dirs = {f"step-{e['step']:08d}" for e in kept}
    for old in folder.glob("step-*"):
        if old.is_dir() and old.name not in kept_dirs:
            shutil.rmtree(old, ignore_errors=True)
    return entry


def media_bytes(run_folder: str | Path) -> int:
    """Bytes the run's media take on disk."""
    folder = media_folder(run_folder)
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0
