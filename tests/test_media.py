"""Media logged along a run (trainers.runs.media): the same examples at every validation, bounded, never
fatal."""

from __future__ import annotations

import io
import json
import logging
import math
import wave

import numpy as np
import pytest
import torch
from PIL import Image

from models import create_model
from trainers.data.fragments import FragmentDataset
from trainers.data.sar import SyntheticSARDataset
from trainers.runs import media
from trainers.runs.store import RunStore
from trainers.settings import make_config
from trainers.training.loop import train
from trainers.training.tasks import task_for


@pytest.fixture(scope="module")
def sar_setup():
    torch.manual_seed(0)
    task = task_for("sar-baseline")
    data = SyntheticSARDataset(3, image_size=32, seed=5)
    model = create_model("sar-baseline", base_channels=4, image_size=32, preprocessing=data.preprocessing())
    return task, model.eval(), data


def test_thin_keeps_first_last_and_spreads_evenly():
    assert media.thin([5, 10], 2) == [0, 1]
    assert media.thin([1, 2, 3], 5) == [0, 1, 2]
    # The interior entry whose neighbours are closest goes: dropping 10 leaves a gap of 11, 11 one of 20.
    assert media.thin([0, 10, 11, 30], 3) == [0, 2, 3]
    steps: list[int] = []
    for s in range(10, 1010, 10):  # one validation every 10 steps, thinned after each as the trainer does
        steps.append(s)
        steps = [steps[k] for k in media.thin(steps, 16)]
    assert len(steps) == 16 and steps[0] == 10 and steps[-1] == 1000
    gaps = np.diff(steps)
    assert gaps.max() <= 2 * gaps.min(), f"kept steps are not spread evenly: {steps}"
    with pytest.raises(ValueError, match="at least 2"):
        media.thin([1, 2, 3], 1)


def test_hex_diff_marks_repaired_still_wrong_and_broken_bytes():
    clean = np.arange(48)
    corrupted = clean.copy()
    corrupted[[3, 20]] = [0xFF, 0xEE]
    repaired = clean.copy()
    repaired[20] = 0xEE  # not repaired
    repaired[21] = 0x00  # broken by the repair
    text = media.hex_diff(clean, corrupted, repaired)
    lines = text.splitlines()
    assert lines[0].startswith("2 of 48 bytes corrupted; repaired 1, still wrong 1, broken by the repair 1")
    assert f"byte accuracy {46 / 48:.2%}" in lines[0]
    rows = [line for line in lines if line.startswith("0000")]
    assert [r.split()[0] for r in rows] == ["000000", "000010"]  # row 0x20 has no difference: not shown
    marks = [line for line in lines if "marks" in line and line.startswith(" ")]
    assert marks[0].split("marks", 1)[1].strip() == "+"  # byte 3 repaired
    # Row 0x10: byte 20 (col 4) still wrong, byte 21 (col 5) broken; columns are 3 characters wide.
    row1 = marks[1].split("marks     ", 1)[1]
    assert row1[4 * 3] == "x" and row1[5 * 3] == "!"
    assert "repaired  " + " ".join(f"{b:02x}" for b in repaired[16:32]) in text
    assert "no byte differs" in media.hex_diff(clean, clean, clean)


def test_sar_panel_psnr_is_the_masked_reference_formula():
    rng = np.random.default_rng(0)
    x = rng.random((16, 16))
    x_hat = np.clip(x + rng.normal(0, 0.05, x.shape), 0, 1)
    valid = np.ones_like(x)
    valid[:, :4] = 0
    x_hat[:, :4] = 1.0  # no-data pixels are left out of the figure
    image, caption = media.sar_panel(x, x_hat, valid)
    mse = np.mean((x_hat - x)[:, 4:] ** 2)
    assert f"PSNR {10 * math.log10(1 / mse):.2f} dB (↑)" in caption
    assert image.size == (16 + 4 + 16, 16)
    left = np.asarray(image)[:, :16, 0]
    np.testing.assert_array_equal(left, (x * 255).round().astype(np.uint8))
    assert "n/a" in media.sar_panel(x, x_hat, np.zeros_like(x))[1]


def test_wav_bytes_round_trip_and_clipping():
    y = np.sin(np.linspace(0, 20 * np.pi, 4800)) * 0.5
    y[0], y[1], y[2] = 3.0, np.nan, -np.inf
    with wave.open(io.BytesIO(media.wav_bytes(y, 48000))) as f:
        assert (f.getnchannels(), f.getsampwidth(), f.getframerate(), f.getnframes()) == (1, 2, 48000, 4800)
        pcm = np.frombuffer(f.readframes(4800), "<i2")
    assert pcm[0] == 32767 and pcm[1] == 0 and pcm[2] == 0
    np.testing.assert_allclose(pcm[3:] / 32767, y[3:], atol=1 / 32767)


def test_sar_media_same_examples_every_validation_and_bounded(sar_setup, tmp_path):
    task, model, data = sar_setup
    folder = tmp_path / "run"
    for k, step in enumerate(range(10, 110, 10)):
        entry = media.log_validation_media(task, model, data, "cpu", folder, step, k + 1, keep=4)
        assert entry is not None
    index = media.read_index(folder)
    assert [e["step"] for e in index["entries"]] == media.media_steps(folder)
    assert (
        len(index["entries"]) == 4
        and index["entries"][0]["step"] == 10
        and index["entries"][-1]["step"] == 100
    )
    assert index["indices"] == [0, 1]
    # Only the kept validations' folders remain on disk.
    assert sorted(p.name for p in (folder / "media").glob("step-*")) == [
        f"step-{e['step']:08d}" for e in index["entries"]
    ]
    items = media.media_at(folder, 57)  # nearest kept step
    assert {i["step"] for i in items} == {min(media.media_steps(folder), key=lambda s: abs(s - 57))}
    assert [i["key"] for i in items] == ["ex1", "ex2"] and all(i["kind"] == "image" for i in items)
    # The image is exactly input | reconstruction of validation item 0 (same example at every step).
    x, valid, _ = data[0]
    with torch.no_grad():
        x_hat = model(x[None])[0].clamp(0, 1)[0, 0].numpy()
    expected, caption = media.sar_panel(x[0].numpy(), x_hat, valid[0].numpy())
    got = Image.open(items[0]["path"])
    np.testing.assert_array_equal(np.asarray(got.convert("RGB")), np.asarray(expected.convert("RGB")))
    assert items[0]["caption"] == caption
    # Nothing but the kept validations' files and the index is left on disk.
    kept = [folder / "media" / i["file"] for e in index["entries"] for i in e["items"]]
    assert len(kept) == 8
    index_size = (folder / "media" / "index.json").stat().st_size
    assert media.media_bytes(folder) == sum(p.stat().st_size for p in kept) + index_size


def test_fragment_media_pick_corrupted_examples(tmp_path):
    source = tmp_path / "data.bin"
    source.write_bytes(bytes(range(256)) * 40)
    from trainers.data.fragments import NoiseGenerator

    data = FragmentDataset(paths=[source], noise=NoiseGenerator(seed=3), split="all", seed=1)
    task = task_for("fragment-dae")
    model = create_model("fragment-dae").eval()
    entry = media.log_validation_media(task, model, data, "cpu", tmp_path / "run", 7, 1)
    assert entry is not None and [i["kind"] for i in entry["items"]] == ["text", "text"]
    index = media.read_index(tmp_path / "run")
    for i in index["indices"]:
        assert bool(torch.as_tensor(data[i][2]).any()), "an example without corruption shows no repair"
    text = (tmp_path / "run" / "media" / entry["items"][0]["file"]).read_text()
    corrupted, clean, changed = data[index["indices"][0]]
    assert text.startswith(f"{int(torch.as_tensor(changed).sum())} of 512 bytes corrupted")


def test_a_media_failure_only_warns(sar_setup, tmp_path, caplog, monkeypatch):
    task, model, data = sar_setup
    folder = tmp_path / "run"
    assert media.log_validation_media(task, model, data, "cpu", folder, 5, 1) is not None
    before = (folder / "media" / "index.json").read_text()

    def boom(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(media, "render_examples", boom)
    model.train()
    with caplog.at_level(logging.WARNING, logger="trainers.runs.media"):
        assert media.log_validation_media(task, model, data, "cpu", folder, 10, 2) is None
    assert "media at step 10 not written (RuntimeError: disk on fire); training goes on" in caplog.text
    assert model.training, "the model's mode is restored"
    model.eval()
    assert (folder / "media" / "index.json").read_text() == before  # the earlier media are untouched
    (folder / "media" / "index.json").write_text("{not json")
    assert media.read_index(folder)["entries"] == [] and media.media_at(folder, 5) == []


def test_training_logs_media_at_each_validation(tmp_path):
    data = "fragments:python,max_files=8,n=64"
    cfg = make_config("fragment-dae", "smoke", data=data, epochs=2, batch_size=16)
    with RunStore(tmp_path / "runs") as store:
        result = train(cfg, store)
        assert result.status == "completed", result.reason
        val_steps = sorted(
            {r.step for r in store.metrics_after(0, run_ids=[result.run_id])[0] if r.split == "val"}
        )
    folder = tmp_path / "runs" / result.run_id
    assert media.media_steps(folder) == val_steps and len(val_steps) == 2
    index = json.loads((folder / "media" / "index.json").read_text())
    files = [i["file"] for e in index["entries"] for i in e["items"]]
    assert len(files) == 4 and all((folder / "media" / f).is_file() for f in files)


@pytest.mark.parametrize(("height", "zoom"), [(64, 5), (32, 8), (320, 1), (500, 1), (100, 3)])
def test_media_images_are_enlarged_by_a_whole_factor(height, zoom):
    from studio.views.media import enlarge

    image = np.random.default_rng(0).integers(0, 255, (height, 2 * height, 3), dtype=np.uint8)
    big = enlarge(image)
    assert big.shape == (height * zoom, 2 * height * zoom, 3)
    np.testing.assert_array_equal(big[::zoom, ::zoom], image)  # every pixel a zoom x zoom square
    np.testing.assert_array_equal(big[zoom - 1 :: zoom, zoom - 1 :: zoom], image)


def test_media_viewer_functions(sar_setup, tmp_path):
    """The Train tab's viewer: runs with media, their steps and examples, one example at a chosen step."""
    import types

    from studio.views import media as media_view

    task, model, data = sar_setup
    with RunStore(tmp_path) as store:
        with_media = store.create_run("sar-baseline", "sar", {}, "running")
        without = store.create_run("sar-baseline", "sar", {}, "queued")
        for step in (4, 8, 12):
            media.log_validation_media(task, model, data, "cpu", tmp_path / with_media, step, step // 4)
        ctx = types.SimpleNamespace(runs_dir=tmp_path, store=store)
        assert media_view.media_runs(ctx) == [
            (f"{with_media} · sar-baseline · running · 3 validations", with_media)
        ]
        store.set_labels(with_media, name="speckle test")  # the list leads with a run's name where it has one
        assert media_view.media_runs(ctx) == [
            ("speckle test · sar-baseline · running · 3 validations", with_media)
        ]
        choices = media_view.media_choices(ctx, with_media)
        assert choices["steps"] == [4, 8, 12] and [k for k, _ in choices["examples"]] == ["ex1", "ex2"]
        view = media_view.media_view(ctx, with_media, 7, "ex2")
        assert view["step"] == 8 and "nearest to step 7" in view["caption"] and view["text"] is None
        [item] = [i for i in media.media_at(tmp_path / with_media, 8) if i["key"] == "ex2"]
        # Shown enlarged by a whole factor, nearest-neighbour: each pixel of the file becomes a k x k square.
        raw = np.asarray(Image.open(item["path"]).convert("RGB"))
        k = view["image"].shape[0] // raw.shape[0]
        assert k >= 2 and view["image"].shape[0] >= media_view.DISPLAY_HEIGHT * 0.8
        np.testing.assert_array_equal(view["image"], raw.repeat(k, axis=0).repeat(k, axis=1))
        assert "PSNR" in view["caption"] and "↑" in view["caption"]
        with pytest.raises(ValueError, match="has no media yet"):
            media_view.media_choices(ctx, without)
        with pytest.raises(ValueError, match="no example 'ex7'"):
            media_view.media_view(ctx, with_media, 8, "ex7")
        with pytest.raises(
            ValueError, match="no run matches '20200101-000000-x-0000': pick a run with media"
        ):
            media_view.media_view(ctx, "20200101-000000-x-0000", 8, "ex1")
        # Part of a run's id (or name) typed into the list, as Gradio sends it on blur, picks that run.
        assert media_view.media_choices(ctx, with_media[-4:])["steps"] == [4, 8, 12]
        with pytest.raises(ValueError, match="step must be a whole number"):
            media_view.media_view(ctx, with_media, "soon", "ex1")
