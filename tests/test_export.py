"""Exports of logged points (trainers.runs.export, `python -m trainers export`): CSV in Trackio's import
layout,
strict JSONL, TensorBoard event files read back with TensorBoard's own reader."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import subprocess
import sys
import zipfile
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models import create_model
from trainers.cli import main as cli_main
from trainers.data.sar import SyntheticSARDataset
from trainers.runs import export, media
from trainers.runs.store import RunStore
from trainers.training.tasks import task_for

ROOT = Path(__file__).resolve().parents[1]
T0 = 1_800_000_000.0


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A runs folder with one SAR run (train + val points, a NaN and an inf, media at two validations, an
    audio and a text item added by hand), one audio run without media and one run that logged nothing."""
    runs_dir = tmp_path_factory.mktemp("runs")
    with RunStore(runs_dir) as store:
        sar = store.create_run("sar-baseline", "sar", {"variant": "sar-baseline", "lr": 0.001}, "running")
        for step in range(1, 9):
            store.log_metrics(sar, step, (step - 1) // 4, "train", {"loss": 1.0 / step}, time=T0 + step)
        store.log_metrics(sar, 4, 1, "val", {"loss": 0.3, "psnr": 12.5, "enl_ratio": math.nan}, time=T0 + 4.5)
        store.log_metrics(
            sar, 8, 2, "val", {"loss": 0.2, "psnr": 14.25, "enl_ratio": math.inf}, time=T0 + 8.5
        )
        other = store.create_run("audio-vae", "audio", {"variant": "audio-vae"}, "completed")
        store.log_metrics(other, 3, 0, "train", {"loss": 2.0}, time=T0 + 20)
        empty = store.create_run("fragment-dae", "fragments", {}, "queued")
    task = task_for("sar-baseline")
    data = SyntheticSARDataset(2, image_size=32, seed=1)
    torch.manual_seed(0)
    model = create_model("sar-baseline", base_channels=4, image_size=32, preprocessing=data.preprocessing())
    for step, epoch in ((4, 1), (8, 2)):
        assert media.log_validation_media(task, model.eval(), data, "cpu", runs_dir / sar, step, epoch)
    # An audio item and a text item (other domains' media) in the same index, written as the trainer would.
    folder = runs_dir / sar / "media"
    tone = 0.25 * np.sin(2 * np.pi * 440 * np.arange(4800) / 48000)
    (folder / "step-00000008" / "ex9-decoded.wav").write_bytes(media.wav_bytes(tone, 48000))
    (folder / "step-00000008" / "ex9-hexdiff.txt").write_text("1 of 16 bytes corrupted\n000000 clean ff\n")
    index = media.read_index(runs_dir / sar)
    index["entries"][-1]["items"] += [
        {
            "key": "ex9",
            "example": "e9",
            "kind": "audio",
            "file": "step-00000008/ex9-decoded.wav",
            "caption": "",
        },
        {
            "key": "ex9",
            "example": "e9",
            "kind": "text",
            "file": "step-00000008/ex9-hexdiff.txt",
            "caption": "",
        },
    ]
    (folder / "index.json").write_text(json.dumps(index))
    return runs_dir, sar, other, empty, tone


def _rows(runs_dir: Path, run_id: str):
    with RunStore(runs_dir) as store:
        return store.metrics_after(0, run_ids=[run_id])[0]


def test_csv_is_trackio_layout_with_every_point(runs, tmp_path):
    runs_dir, sar, _, _, _ = runs
    [path] = export.export_runs([sar], "csv", tmp_path / "out", runs_dir)
    assert path == tmp_path / "out" / f"{sar}.csv"
    table = list(csv.DictReader(io.StringIO(path.read_text())))
    header = path.read_text().splitlines()[0].split(",")
    assert header[:3] == ["step", "timestamp", "epoch"]
    assert sorted(header[3:]) == ["train/loss", "val/enl_ratio", "val/loss", "val/psnr"]
    assert len(table) == 8 + 2  # one row per logged call
    points = {}
    for row in table:
        stamp = datetime.fromisoformat(row["timestamp"])
        assert stamp.utcoffset().total_seconds() == 0
        for key in header[3:]:
            if row[key] != "":
                points[(key, int(row["step"]))] = (float(row[key]), int(row["epoch"]), stamp.timestamp())
    for r in _rows(runs_dir, sar):
        if math.isnan(r.value):  # NaN is an empty cell
            assert (r.key, r.step) not in points
            continue
        value, epoch, stamp = points[(r.key, r.step)]
        assert value == r.value and epoch == r.epoch and stamp == pytest.approx(r.time, abs=1e-6)
    assert points[("val/enl_ratio", 8)][0] == math.inf


def test_csv_imports_into_trackio(runs, tmp_path):
    """trackio.import_csv reads the file: every row with its step and timestamp (Trackio shortens names)."""
    pytest.importorskip("trackio")
    runs_dir, sar, _, _, _ = runs
    [path] = export.export_runs([sar], "csv", tmp_path / "out", runs_dir)
    code = (
        "import json, sqlite3, sys, trackio\n"
        "trackio.import_csv(sys.argv[1], project='studio-export')\n"
        "db = sqlite3.connect(sys.argv[2])\n"
        "rows = db.execute('SELECT run_name, step, timestamp, metrics FROM metrics ORDER BY id').fetchall()\n"
        "print(json.dumps([[r[0], r[1], r[2], json.loads(r[3])] for r in rows]))\n"
    )
    env = {**os.environ, "TRACKIO_DIR": str(tmp_path / "trackio"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", code, str(path), str(tmp_path / "trackio" / "studio-export.db")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    imported = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(imported) == 10 and {r[0] for r in imported} == {sar}  # the run is named after the file
    train = [(r[1], r[3]["train/loss"]) for r in imported if "train/loss" in r[3]]
    assert train == [(s, 1.0 / s) for s in range(1, 9)]
    val = [r for r in imported if "val/psnr" in r[3]]
    assert [(r[1], r[3]["val/psnr"], r[3]["epoch"]) for r in val] == [(4, 12.5, 1.0), (8, 14.25, 2.0)]
    assert datetime.fromisoformat(val[0][2]).timestamp() == pytest.approx(T0 + 4.5, abs=1e-6)


def test_jsonl_one_strict_point_per_line(runs, tmp_path):
    runs_dir, sar, other, _, _ = runs
    paths = export.export_runs([sar, other, sar], "jsonl", tmp_path / "out", runs_dir)
    assert [p.name for p in paths] == [f"{sar}.jsonl", f"{other}.jsonl"]  # repeated ids exported once

    def strict(text):
        raise AssertionError(f"non-standard JSON constant {text}")

    lines = paths[0].read_text().splitlines()
    points = [json.loads(line, parse_constant=strict) for line in lines]
    rows = _rows(runs_dir, sar)
    assert len(points) == len(rows) == 8 + 6
    for p, r in zip(points, rows, strict=True):
        assert (p["run_id"], p["split"], p["name"], p["key"], p["step"], p["epoch"], p["time"]) == (
            r.run_id,
            r.split,
            r.name,
            r.key,
            r.step,
            r.epoch,
            r.time,
        )
        if math.isfinite(r.value):
            assert p["value"] == r.value and "nonfinite" not in p
        else:
            assert p["value"] is None and p["nonfinite"] == ("nan" if math.isnan(r.value) else "inf")


def test_tensorboard_read_back_with_tensorboards_reader(runs, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs_dir, sar, _, _, tone = runs
    [folder] = export.export_runs([sar], "tensorboard", tmp_path / "tb", runs_dir)
    assert [p.name for p in folder.iterdir()] == [f"events.out.tfevents.{sar}"]  # no host name, no pid
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "audio": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    assert {"train/loss", "val/loss", "val/psnr", "val/enl_ratio", "epoch"} <= set(tags["scalars"])
    for r in _rows(runs_dir, sar):
        [event] = [e for e in acc.Scalars(r.key) if e.step == r.step]
        assert event.wall_time == pytest.approx(r.time, abs=1e-3)
        if math.isnan(r.value):
            assert math.isnan(event.value)
        else:
            assert event.value == pytest.approx(r.value, rel=1e-6)  # float32 in the event file
    assert [(e.step, e.value) for e in acc.Scalars("epoch")] == [(4, 1.0), (8, 2.0)]

    # The media: each example's image at each validation step, the very pixels of the media file.
    assert {"media/ex1/image", "media/ex2/image"} <= set(tags["images"])
    images = acc.Images("media/ex1/image")
    assert [e.step for e in images] == [4, 8]
    for event in images:
        [item] = [i for i in media.media_at(runs_dir / sar, event.step) if i["key"] == "ex1"]
        decoded = np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB"))
        np.testing.assert_array_equal(decoded, np.asarray(Image.open(item["path"]).convert("RGB")))
        assert (event.width, event.height) == Image.open(item["path"]).size
    [audio] = acc.Audio("media/ex9/audio")
    assert audio.step == 8 and audio.sample_rate == 48000
    with __import__("wave").open(io.BytesIO(audio.encoded_audio_string)) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2") / 32767
    np.testing.assert_allclose(pcm, tone, atol=2e-4)
    text_tags = set(tags["tensors"])
    assert {"media/ex9/text/text_summary", "run/settings/text_summary"} <= text_tags
    [text] = acc.Tensors("media/ex9/text/text_summary")
    assert text.step == 8 and b"1 of 16 bytes corrupted" in text.tensor_proto.string_val[0]

    # A second export into the same folder replaces the event file rather than adding a second one.
    export.export_runs([sar], "tensorboard", tmp_path / "tb", runs_dir, with_media=False)
    assert len(list(folder.iterdir())) == 1
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    assert acc.Tags()["images"] == [] and len(acc.Scalars("train/loss")) == 8


def test_download_is_one_file_or_a_zip(runs, tmp_path):
    runs_dir, sar, other, _, _ = runs
    single = export.export_download([sar], "jsonl", runs_dir, tmp_path)
    assert single.name == f"{sar}.jsonl" and json.loads(single.read_text().splitlines()[0])["run_id"] == sar
    with zipfile.ZipFile(export.export_download([sar], "csv", runs_dir, tmp_path)) as zf:  # with its settings
        assert sorted(zf.namelist()) == [f"runs-csv/{sar}.config.json", f"runs-csv/{sar}.csv"]
        assert zf.read(f"runs-csv/{sar}.csv").decode().startswith("step,timestamp,epoch,")
    both = export.export_download([sar, other], "jsonl", runs_dir, tmp_path)
    with zipfile.ZipFile(both) as zf:
        assert sorted(zf.namelist()) == sorted(f"runs-jsonl/{r}.jsonl" for r in (sar, other))
    tb = export.export_download([sar], "tensorboard", runs_dir, tmp_path)
    with zipfile.ZipFile(tb) as zf:
        assert zf.namelist() == [f"runs-tensorboard/{sar}/events.out.tfevents.{sar}"]


def test_cli_export_and_its_errors(runs, tmp_path, capsys):
    runs_dir, sar, other, empty, _ = runs
    out = tmp_path / "cli"
    assert (
        cli_main(["export", sar, other, "--format", "csv", "--out", str(out), "--runs-dir", str(runs_dir)])
        == 0
    )
    expected = [f"{r}{suffix}" for r in (sar, other) for suffix in (".csv", ".config.json")]
    assert sorted(p.name for p in out.iterdir()) == sorted(expected)
    assert capsys.readouterr().out.split() == [str(out / f"{sar}.csv"), str(out / f"{other}.csv")]

    def fails(argv, message):
        assert cli_main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("error: ") and message in err, err

    bad_out = tmp_path / "untouched"
    fails(
        [
            "export",
            sar,
            "20200101-000000-nope-0000",
            "--format",
            "jsonl",
            "--out",
            str(bad_out),
            "--runs-dir",
            str(runs_dir),
        ],
        "no run with id '20200101-000000-nope-0000'",
    )
    assert not bad_out.exists(), "nothing is written when any run id is wrong"
    fails(["export", empty, "--format", "csv", "--runs-dir", str(runs_dir)], "has logged no metrics yet")
    fails(["export", sar, "--format", "csv", "--runs-dir", str(tmp_path / "no-runs")], "no runs database")
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    fails(
        ["export", sar, "--format", "csv", "--out", str(a_file), "--runs-dir", str(runs_dir)], "not a folder"
    )
    with pytest.raises(SystemExit):  # argparse names the allowed formats
        cli_main(["export", sar, "--format", "xlsx", "--runs-dir", str(runs_dir)])
    assert "invalid choice: 'xlsx'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="export format must be one of csv, jsonl, tensorboard"):
        export.export_runs([sar], "xlsx", tmp_path, runs_dir)


def test_cli_in_a_fresh_process(runs, tmp_path):
    runs_dir, sar, _, _, _ = runs
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "trainers",
            "export",
            sar,
            "--format",
            "tensorboard",
            "--out",
            str(tmp_path),
            "--runs-dir",
            str(runs_dir),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(tmp_path / sar)
    assert f"tensorboard --logdir {tmp_path}" in proc.stderr


def test_hub_tab_metric_export(runs):
    """The Hub tab's export: one download per click, what `export_runs` writes, errors in the user's terms."""
    import types

    from studio.views import hub as hub_view

    runs_dir, sar, other, empty, _ = runs
    with RunStore(runs_dir) as store:
        ctx = types.SimpleNamespace(runs_dir=runs_dir, store=store, space=False)
        assert {r for _, r in hub_view.metric_runs(ctx)} == {sar, other, empty}
        status, path = hub_view.export_metrics(ctx, [sar], "jsonl")
        assert Path(path).name == f"{sar}.jsonl" and sar in status
        settings = export.run_settings(store.get_run(sar))
        assert Path(path).read_text() == export.jsonl_text(store.metrics_after(0, run_ids=[sar])[0], settings)
        status, path = hub_view.export_metrics(ctx, [sar, other], "tensorboard")
        with zipfile.ZipFile(path) as zf:
            assert sorted(zf.namelist()) == sorted(
                f"runs-tensorboard/{r}/events.out.tfevents.{r}" for r in (sar, other)
            )
        with pytest.raises(ValueError, match="no run chosen"):
            hub_view.export_metrics(ctx, [], "csv")
        with pytest.raises(ValueError, match="has logged no metrics yet"):
            hub_view.export_metrics(ctx, [sar, empty], "jsonl")
        with pytest.raises(ValueError, match="export format must be one of"):
            hub_view.export_metrics(ctx, [sar], "parquet")


def test_settings_travel_with_the_metrics(runs, tmp_path):
    """CSV: a settings file beside it; JSONL: the settings in every line; both hold the stored config."""
    runs_dir, sar, _, _, _ = runs
    with RunStore(runs_dir) as store:
        store.set_labels(sar, name="lr check", tags=["study-x"], note="first")
        config = store.get_run(sar).config
    [csv_path] = export.export_runs([sar], "csv", tmp_path / "csv", runs_dir)
    sidecar = json.loads((tmp_path / "csv" / f"{sar}.config.json").read_text())
    assert sidecar["config"] == config and sidecar["run_id"] == sar and sidecar["variant"] == "sar-baseline"
    assert (sidecar["name"], sidecar["tags"], sidecar["note"]) == ("lr check", ["study-x"], "first")
    assert "config" not in csv_path.read_text().splitlines()[0]  # Trackio would import it as a metric
    [jsonl] = export.export_runs([sar], "jsonl", tmp_path / "jsonl", runs_dir)
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert all(line["config"] == sidecar for line in lines)


def test_tensorboard_hparams_read_back_with_the_hparams_plugin(runs, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata, plugin_data_pb2

    runs_dir, sar, _, _, _ = runs
    with RunStore(runs_dir) as store:  # a real run's config: nested model keys, a list, None
        config = {"variant": "sar-baseline", "lr": 0.001, "seed": 3, "max_steps": None}
        config["model"] = {"base_channels": 8, "widths": [8, 16]}
        store.update_run(sar, config=config)
    [folder] = export.export_runs([sar], "tensorboard", tmp_path / "tb", runs_dir, with_media=False)
    acc = EventAccumulator(str(folder))
    acc.Reload()
    content = acc.PluginTagToContent(metadata.PLUGIN_NAME)
    start = plugin_data_pb2.HParamsPluginData.FromString(content[metadata.SESSION_START_INFO_TAG])
    values = {
        k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind"))
        for k, v in start.session_start_info.hparams.items()
    }
    assert (
        values["variant"] == "sar-baseline" and values["lr"] == pytest.approx(0.001) and values["seed"] == 3
    )
    assert values["model.base_channels"] == 8 and values["model.widths"] == "[8, 16]"
    assert values["max_steps"] == "null"
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content[metadata.EXPERIMENT_TAG]).experiment
    metric_tags = {m.name.tag for m in experiment.metric_infos}
    assert metric_tags and metric_tags <= set(acc.Tags()["scalars"])  # the dashboard reads existing scalars
