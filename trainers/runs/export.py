"""Export every logged point of runs to take elsewhere: CSV (Trackio's import layout), JSONL, TensorBoard.

One file (or folder) per run, named by the run id, in the output folder:

- ``RUN_ID.csv``: the layout ``trackio.import_csv`` reads: a header row, a ``step`` column, a ``timestamp``
  column (ISO 8601, UTC, as Trackio writes its own) and one numeric column per metric (``train/loss``,
  ``val/psnr``, ...) plus ``epoch``. One row per logged call (a train window or a validation), so a row fills
  only the columns logged then; the others are empty. A NaN (missing) value is an empty cell too, +/-inf are
  written ``inf``/``-inf``. Trackio shortens column names to their first 10 letters, digits and ``/``.
  Its settings go beside it in ``RUN_ID.config.json`` (:func:`run_settings`): in the CSV, Trackio would
  import every numeric setting column as a metric.
- ``RUN_ID.jsonl``: one point per line: ``{"run_id", "split", "name", "key", "step", "epoch", "value",
  "time", "timestamp", "config"}``; ``value`` is null for NaN and +/-inf (then ``"nonfinite":
  "nan"|"inf"|"-inf"``), so every line is strict JSON, and ``config`` is the run's settings, so any line
  filtered out of the file still says which run and settings it came from.
- ``RUN_ID/``: TensorBoard event files: each metric as a scalar tagged ``split/name`` at its step and wall
  time, ``epoch`` as a scalar, the run's settings as text and as HParams (TensorBoard's HParams dashboard
  then tabulates a study's runs by setting), and the media logged along the run
  (``trainers.runs.media``) as images, audio and text at their steps. The event file is named
  ``events.out.tfevents.RUN_ID`` (no host name or process id, since it may be pushed to a public repo).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import tempfile
import wave
import zipfile
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from trainers.runs.store import DB_NAME, MetricRow, RunRecord, RunStore

FORMATS: tuple[str, ...] = ("csv", "jsonl", "tensorboard")
EVENTS_PREFIX = "events.out.tfevents."
CONFIG_SUFFIX = ".config.json"


def open_store(runs_dir: str | Path) -> RunStore:
    """The run store of ``runs_dir``; a folder without a run database is an error (not a new empty one)."""
    folder = Path(runs_dir).expanduser()
    if not (folder / DB_NAME).is_file():
        raise FileNotFoundError(
            f"no runs database in {str(folder)!r} (expected {DB_NAME}; is --runs-dir right?)"
        )
    return RunStore(folder)


def check_format(fmt: Any) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"export format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    return str(fmt)


def run_points(store: RunStore, run_id: str) -> tuple[RunRecord, list[MetricRow]]:
    """The run and every point it logged, in the order they were logged; a ValueError names a run id that
    does not exist or a run that logged nothing yet."""
    if not isinstance(run_id, str) or not run_id.strip():
        raise ValueError("no run chosen: expected a run id, e.g. 20260101-120000-sar-residual-3fa2")
    run = store.get_run(run_id.strip())
    if run is None:
        raise ValueError(
            f"no run with id {run_id!r} in {str(store.runs_dir)!r} (`python -m trainers runs` lists them)"
        )
    rows, _ = store.metrics_after(0, run_ids=[run.id])
    if not rows:
        raise ValueError(f"run {run.id} ({run.status}) has logged no metrics yet: nothing to export")
    return run, rows


def _timestamp(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).isoformat()


def _groups(rows: Sequence[MetricRow]) -> list[list[MetricRow]]:
    """Rows of one logged call (same step, epoch, split and time, consecutive) together; a name repeating
    within a group starts a new one."""
    groups: list[list[MetricRow]] = []
    for row in rows:
        last = groups[-1] if groups else None
        if (
            last is not None
            and (last[0].step, last[0].epoch, last[0].split, last[0].time)
            == (row.step, row.epoch, row.split, row.time)
            and row.key not in {r.key for r in last}
        ):
            last.append(row)
        else:
            groups.append([row])
    return groups


def _csv_cell(value: float) -> str:
    if math.isnan(value):
        return ""
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return repr(float(value))


def csv_text(rows: Sequence[MetricRow]) -> str:
    """The Trackio-layout CSV of one run's points (see the module docstring)."""
    keys = sorted({r.key for r in rows})
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["step", "timestamp", "epoch", *keys])
    for group in _groups(rows):
        first = group[0]
        values = {r.key: _csv_cell(r.value) for r in group}
        epoch = "" if first.epoch is None else str(first.epoch)
        writer.writerow([first.step, _timestamp(first.time), epoch, *(values.get(k, "") for k in keys)])
    return out.getvalue()


def run_settings(run: RunRecord) -> dict[str, Any]:
    """What a run was: id, variant, domain, its labels and study, and every setting it ran with."""
    return {
        "run_id": run.id,
        "variant": run.variant,
        "domain": run.domain,
        "name": run.name,
        "tags": list(run.tags),
        "note": run.note,
        "study": (run.config or {}).get("study") or None,
        "config": run.config or {},
    }


def hparams(run: RunRecord) -> dict[str, bool | int | float | str]:
    """The run's settings as TensorBoard HParams: nested model keys flattened (``model.base_channels``),
    values that are no bool, number or text written as JSON text."""
    flat: dict[str, Any] = {"variant": run.variant, "domain": run.domain}

    def add(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                add(f"{prefix}.{key}" if prefix else str(key), inner)
        elif isinstance(value, (bool, int, float, str)) and not (
            isinstance(value, float) and not math.isfinite(value)
        ):
            flat[prefix] = value
        else:
            flat[prefix] = json.dumps(value, sort_keys=True)

    add("", run.config or {})
    return flat


def jsonl_text(rows: Sequence[MetricRow], settings: dict[str, Any] | None = None) -> str:
    """One JSON object per point and line (see the module docstring); ``settings`` goes in each as
    ``config``."""
    lines = []
    for r in rows:
        point: dict[str, Any] = {
            "run_id": r.run_id,
            "split": r.split,
            "name": r.name,
            "key": r.key,
            "step": r.step,
            "epoch": r.epoch,
            "value": r.value if math.isfinite(r.value) else None,
            "time": r.time,
            "timestamp": _timestamp(r.time),
        }
        if settings is not None:
            point["config"] = settings
        if not math.isfinite(r.value):
            point["nonfinite"] = "nan" if math.isnan(r.value) else ("inf" if r.value > 0 else "-inf")
        lines.append(json.dumps(point, allow_nan=False))
    return "\n".join(lines) + "\n"


def _read_wav(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path), "rb") as f:
        rate, width, channels = f.getframerate(), f.getsampwidth(), f.getnchannels()
        frames = f.readframes(f.getnframes())
    if width != 2:
        raise ValueError(f"{path.name}: expected 16-bit PCM, got {8 * width}-bit")
    pcm = np.frombuffer(frames, dtype="<i2").astype(np.float32) / 32767.0
    return pcm.reshape(-1, channels).mean(axis=1), rate


def write_tensorboard(store: RunStore, run_id: str, folder: str | Path, with_media: bool = True) -> Path:
    """Write the run's TensorBoard event file into ``folder`` (created; earlier event files there are
    replaced) and return its path."""
    from PIL import Image
    from torch.utils.tensorboard import SummaryWriter

    run, rows = run_points(store, run_id)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob(f"{EVENTS_PREFIX}*"):  # TensorBoard would show the points of both files
        old.unlink()
    # The writer names its file after the host and process; it is written in a private temp folder, then
    # renamed, so an export (maybe pushed to a public repo) carries neither.
    with tempfile.TemporaryDirectory(prefix="tb-", dir=folder) as tmp:
        writer = SummaryWriter(log_dir=tmp, max_queue=1000, flush_secs=3600)
        try:
            settings = {"run_id": run.id, "variant": run.variant, "domain": run.domain, **run.config}
            writer.add_text(
                "run/settings",
                "    " + json.dumps(settings, indent=2, sort_keys=True, default=str).replace("\n", "\n    "),
                global_step=0,
                walltime=run.created_at,
            )
            epochs: dict[int, tuple[int, float]] = {}
            for r in rows:
                writer.add_scalar(r.key, r.value, global_step=r.step, walltime=r.time, new_style=False)
                if r.epoch is not None and r.split == "val":
                    epochs[r.step] = (r.epoch, r.time)
            for step, (epoch, t) in sorted(epochs.items()):
                writer.add_scalar("epoch", float(epoch), global_step=step, walltime=t, new_style=False)
            _write_hparams(writer, run, sorted({r.key for r in rows if r.split == "val"}))
            if with_media:
                _write_media(writer, store.run_dir(run.id), Image)
        finally:
            writer.close()
        written = sorted(Path(tmp).glob(f"{EVENTS_PREFIX}*"))
        target = folder / f"{EVENTS_PREFIX}{run.id}"
        if len(written) != 1:
            raise RuntimeError(f"expected one TensorBoard event file, found {len(written)} in {tmp}")
        os.replace(written[0], target)
    return target


def _write_hparams(writer: Any, run: RunRecord, metric_tags: list[str]) -> None:
    """HParams of the run in its own event file (``SummaryWriter.add_hparams`` would write them into a
    sub-run of their own); the metrics are the validation scalars, whose last values the dashboard shows."""
    from torch.utils.tensorboard.summary import hparams as hparams_summaries

    metrics = dict.fromkeys(metric_tags, 0.0)  # only the tags count: values come from the scalars
    for summary in hparams_summaries(hparams(run), metrics):
        writer.file_writer.add_summary(summary, walltime=run.created_at)


def _write_media(writer: Any, run_folder: Path, image_module: Any) -> None:
    from trainers.runs import media  # imports torch: only TensorBoard needs it, CSV and JSONL stay light

    index = media.read_index(run_folder)
    folder = media.media_folder(run_folder)
    for entry in index["entries"]:
        step, walltime = entry["step"], entry.get("time")
        for item in entry.get("items", []):
            path = folder / item["file"]
            if not path.is_file():  # thinned away between reading the index and now
                continue
            tag = f"media/{item.get('key', item['example'])}/{item['kind']}"
            if item["kind"] == "image":
                with image_module.open(path) as im:
                    pixels = np.asarray(im.convert("RGB"))
                writer.add_image(tag, pixels, global_step=step, walltime=walltime, dataformats="HWC")
            elif item["kind"] == "audio":
                samples, rate = _read_wav(path)
                writer.add_audio(tag, samples[None], global_step=step, sample_rate=rate, walltime=walltime)
            elif item["kind"] == "text":
                text = path.read_text(encoding="utf-8")
                # TensorBoard renders text as Markdown: indented lines keep the hex columns aligned.
                writer.add_text(tag, "    " + text.rstrip("\n").replace("\n", "\n    "), step, walltime)


def export_runs(
    run_ids: Iterable[str], fmt: str, out: str | Path, runs_dir: str | Path, with_media: bool = True
) -> list[Path]:
    """Export each run in ``fmt`` into the folder ``out`` (created); returns the written files/folders (a
    CSV's settings file beside it is not listed).

    Every run id is checked before anything is written, so a typo exports nothing.
    """
    fmt = check_format(fmt)
    ids = list(dict.fromkeys(r.strip() for r in run_ids if isinstance(r, str) and r.strip()))
    if not ids:
        raise ValueError("no run chosen: give one or more run ids (`python -m trainers runs` lists them)")
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise ValueError(f"export target {str(out)!r} exists and is not a folder")
    written: list[Path] = []
    with open_store(runs_dir) as store:
        points = {run_id: run_points(store, run_id) for run_id in ids}
        out.mkdir(parents=True, exist_ok=True)
        for run_id, (run, rows) in points.items():
            if fmt == "csv":
                path = out / f"{run.id}.csv"
                path.write_text(csv_text(rows), encoding="utf-8")
                settings = json.dumps(run_settings(run), indent=2, sort_keys=True, default=str)
                (out / f"{run.id}{CONFIG_SUFFIX}").write_text(settings + "\n", encoding="utf-8")
            elif fmt == "jsonl":
                path = out / f"{run.id}.jsonl"
                path.write_text(jsonl_text(rows, run_settings(run)), encoding="utf-8")
            else:
                write_tensorboard(store, run_id, out / run.id, with_media=with_media)
                path = out / run.id
            written.append(path)
    return written


def zip_folder(folder: str | Path, target: str | Path) -> Path:
    """``folder`` zipped into ``target`` (paths inside relative to the folder's parent)."""
    folder, target = Path(folder), Path(target)
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(folder.parent))
    return target


def export_download(run_ids: Iterable[str], fmt: str, runs_dir: str | Path, workdir: str | Path) -> Path:
    """One file to download: the JSONL of a single run as it is; several runs, a CSV with its settings file,
    or TensorBoard folders zipped. Written under ``workdir`` (a fresh temporary folder per call is the
    caller's choice)."""
    fmt = check_format(fmt)
    workdir = Path(workdir)
    staging = Path(tempfile.mkdtemp(prefix=f"export-{fmt}-", dir=workdir))
    folder = staging / f"runs-{fmt}"
    paths = export_runs(run_ids, fmt, folder, runs_dir)
    if fmt == "jsonl" and len(paths) == 1:
        return paths[0]
    # One run's archive is named after it (a CSV with its settings file), several runs' after the format.
    name = f"{paths[0].name.removesuffix('.csv')}-{fmt}" if len(paths) == 1 else f"runs-{fmt}"
    archive = zip_folder(folder, staging / f"{name}.zip")
    shutil.rmtree(folder, ignore_errors=True)
    return archive
