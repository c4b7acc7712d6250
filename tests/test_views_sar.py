"""The SAR tab's pure functions on tiny real checkpoints, one of them a run in a real RunStore."""

from __future__ import annotations

import os
import re
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from models import create_model
from studio.context import StudioContext
from studio.views import sar as view
from trainers.checkpoints import save_checkpoint
from trainers.data.sar import SARNormalizer, SyntheticSARDataset, apply_speckle, simulate_reflectivity
from trainers.metrics import sar as sar_metrics
from trainers.store import RunStore

ROOT = Path(__file__).resolve().parents[1]
PRE = {"kind": "sar-log-intensity", "log_min": -6.0, "log_max": 3.0, "eps": 1e-6, "looks": 4}
# A checkpoint trained on data of another dynamic range reads the same intensity differently.
PRE_OTHER = {**PRE, "log_min": -4.0, "log_max": 4.0}
UPLOAD = view.SOURCES[1]


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    root = tmp_path_factory.mktemp("studio") / "runs"
    return StudioContext(runs_dir=root, store=RunStore(root))


@pytest.fixture(scope="module")
def run_ckpt(ctx):
    """A sar-residual checkpoint saved by the trainers' checkpoint code inside a run of the store."""
    torch.manual_seed(0)
    model = create_model("sar-residual", base_channels=4, image_size=32, preprocessing=PRE)
    run_id = ctx.store.create_run("sar-residual", "sar", {"variant": "sar-residual"}, status="completed")
    save_checkpoint(ctx.runs_dir / run_id, "best", model, state={"step": 3}, preprocessing=PRE)
    return run_id, str(ctx.runs_dir / run_id / "checkpoints" / "best")


@pytest.fixture(scope="module")
def ext_ckpt(ctx, tmp_path_factory):
    """A sar-baseline loaded 'from the Hub' (an external folder) with another normalisation."""
    torch.manual_seed(1)
    folder = tmp_path_factory.mktemp("ext") / "baseline"
    create_model("sar-baseline", base_channels=4, image_size=32, preprocessing=PRE_OTHER).save_pretrained(
        folder
    )
    ctx.external["hub: someone/sar-baseline"] = str(folder)
    return str(folder)


@pytest.fixture(scope="module")
def frag_ckpt(tmp_path_factory):
    folder = tmp_path_factory.mktemp("frag") / "ckpt"
    create_model("fragment-dae", channels=[8, 8, 8]).save_pretrained(folder)
    return str(folder)


def forward(ctx, folder: str, x: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    model = ctx.load_model(folder, "sar")
    with torch.no_grad():
        return model(torch.from_numpy(x)[None, None])


def test_checkpoint_choices_list_runs_and_external_checkpoints(ctx, run_ckpt, ext_ckpt):
    folders = [f for _, f in ctx.checkpoint_choices("sar")]
    assert run_ckpt[1] in folders and ext_ckpt in folders
    assert ctx.checkpoint_choices("fragments") == []


def test_compare_validation_sample_against_reference_formulas(ctx, run_ckpt, ext_ckpt):
    run_id, folder = run_ckpt
    r = view.sar_compare(ctx, [folder, ext_ckpt], view.SOURCES[0], seed=2, size=48, looks=3)

    # The input is scene #2 of the synthetic validation set, read through the first checkpoint's normaliser.
    intensity = SyntheticSARDataset(
        1, 48, looks=3, seed=view.VALIDATION_SEED_OFFSET + 2, normalizer=SARNormalizer(0.0, 1.0), cache=False
    ).intensity(0)
    norm = SARNormalizer.from_dict(PRE)
    other = SARNormalizer.from_dict(PRE_OTHER)
    x = norm.to_model(intensity)
    np.testing.assert_array_equal(r.image, x)
    assert r.image.shape == (48, 48)
    assert len(r.recons) == len(r.errors) == 2
    for rec, err in zip(r.recons, r.errors, strict=True):
        assert rec.shape == err.shape == (48, 48)
        np.testing.assert_array_equal(err, np.abs(r.image - rec))

    # Checkpoint 1 sees x; its reconstruction is shown as is.
    x_hat, z = forward(ctx, folder, x)
    np.testing.assert_allclose(r.recons[0], x_hat[0, 0].numpy(), atol=1e-6)
    # Checkpoint 2 sees the same intensity through its own normaliser; shown on checkpoint 1's scale.
    x2 = other.to_model(intensity)
    x2_hat, z2 = forward(ctx, ext_ckpt, x2)
    np.testing.assert_allclose(
        r.recons[1], norm.to_model(other.to_intensity(x2_hat[0, 0].numpy())), atol=1e-5
    )
    assert any("different normalisations" in n for n in r.notes)

    # Metrics in each model's own domain, against trainers.metrics and a plain numpy PSNR.
    for row, metrics, (xi, xh, zi) in zip(r.table, r.metrics, [(x, x_hat, z), (x2, x2_hat, z2)], strict=True):
        ref = sar_metrics.sar_metrics(torch.from_numpy(xi)[None, None].double(), xh.double(), zi)
        for key in ("psnr", "ssim", "enl_ratio", "epi", "bpp_8bit"):
            assert metrics[key] == pytest.approx(ref[key], rel=1e-5, abs=1e-7, nan_ok=True)
        mse = np.mean((xi.astype(np.float64) - xh[0, 0].numpy()) ** 2)
        assert metrics["psnr"] == pytest.approx(10 * np.log10(1 / mse), rel=1e-4)
        assert row[2] == round(metrics["psnr"], 2) and row[3] == round(metrics["ssim"], 4)
        assert metrics["inference_ms"] > 0 and row[8] == round(metrics["inference_ms"], 1)
    # The table shows the run's time and suffix next to the variant column; the full id is in the hover.
    _, time, suffix = re.fullmatch(r"(\d{8})-(\d{6})-sar-residual-([0-9a-z]+)", run_id).groups()
    assert [row[:2] for row in r.table] == [
        ["sar-residual", f"{time}-{suffix} (best)"],
        ["sar-baseline", "hub: someone/sar-baseline"],
    ]
    assert r.labels == [f"sar-residual · {run_id} (best)", "sar-baseline · hub: someone/sar-baseline"]
    assert r.table[0][7] == ctx.load_model(folder, "sar").count_parameters()["total"]
    assert view.TABLE_HEADERS[:6] == ["variant", "run", "PSNR (dB)", "SSIM", "ENL ratio", "EPI"]


def test_figure_shares_one_scale_for_images_and_one_for_errors(ctx, run_ckpt, ext_ckpt):
    folders = [run_ckpt[1], ext_ckpt]
    r = view.sar_compare(ctx, folders, size=32)
    traces = r.figure.data
    assert len(traces) == 1 + 2 * len(folders)
    images = [t for t in traces if t.coloraxis == "coloraxis"]
    errors = [t for t in traces if t.coloraxis == "coloraxis2"]
    assert len(images) == 3 and len(errors) == 2
    np.testing.assert_allclose(np.asarray(errors[1].z), r.errors[1], atol=1e-7)
    lay = r.figure.layout
    assert (lay.coloraxis.cmin, lay.coloraxis.cmax) == (0.0, 1.0)
    assert lay.coloraxis2.cmin == 0.0
    assert lay.coloraxis2.cmax == pytest.approx(max(float(e.max()) for e in r.errors))
    same = view.sar_compare(ctx, folders, size=0, error_scale=view.ERROR_SCALES[1])
    assert same.image.shape == (32, 32)  # size 0: the first checkpoint's training size (image_size=32)
    same = same.figure.layout
    assert (same.coloraxis2.cmin, same.coloraxis2.cmax) == (0.0, 1.0)


def test_panel_titles_are_short_and_full_names_in_the_hover(ctx, run_ckpt, ext_ckpt):
    run_id, folder = run_ckpt
    r = view.sar_compare(ctx, [folder, ext_ckpt, folder], size=32)
    titles = [a.text for a in r.figure.layout.annotations]
    time_suffix = "-".join(re.fullmatch(r"\d{8}-(\d{6})-sar-residual-(\w+)", run_id).groups())
    assert titles[:4] == [
        "input<br> ",
        f"sar-residual<br>{time_suffix} (best)",
        "sar-baseline<br>hub: someone/sar-baseline",
        f"sar-residual<br>{time_suffix} (best)",
    ]
    assert titles[4:] == ["|error|<br>" + t.split("<br>")[1] for t in titles[1:4]]
    # Seven columns of ~140 px at 1400 px: every title line must stay short.
    assert max(len(line) for t in titles for line in t.split("<br>")) <= view.SHORT_LABEL
    assert {a.font.size for a in r.figure.layout.annotations} == {12}
    hover = [t.hovertemplate for t in r.figure.data]
    assert f"<extra>sar-residual · {run_id} (best)</extra>" in hover[1]
    lay = r.figure.layout
    assert lay.coloraxis.colorbar.title.text == "normalised log-intensity"
    assert lay.coloraxis2.colorbar.title.text == "|input − reconstruction|"
    assert lay.margin.t >= 50  # room for two-line titles


@pytest.mark.parametrize(
    "run, variant, short",
    [
        ("20261121-063459-sar-baseline-b035 (best)", "sar-baseline", "063459-b035 (best)"),
        ("20261121-063459-sar-baseline-b035", "sar-baseline", "063459-b035"),
        (
            "20261121-063459-sar-baseline-b035 (last)",
            "sar-resnet",
            "…59-sar-baseline-b035 (last)",  # another variant's run: kept, cut to 28 characters
        ),
        ("hub: someone/sar-baseline", "sar-baseline", "hub: someone/sar-baseline"),
        (
            "hub: a-very-long-organisation/a-very-long-model-name",
            "sar-baseline",
            "…tion/a-very-long-model-name",
        ),
    ],
)
def test_short_run_labels(run, variant, short):
    got = view.short_run(run, variant)
    assert got == short and len(got) <= view.SHORT_LABEL


def test_uploads_are_cropped_to_a_model_sized_patch(ctx, run_ckpt, tmp_path):
    folder = run_ckpt[1]
    rng = np.random.default_rng(0)
    big = rng.gamma(4.0, 0.25, (300, 400)).astype(np.float32)
    np.save(tmp_path / "big.npy", big)
    norm = SARNormalizer.from_dict(PRE)

    r = view.sar_compare(ctx, [folder], UPLOAD, upload=str(tmp_path / "big.npy"))
    np.testing.assert_allclose(r.image, norm.to_model(big[22:278, 72:328]))
    assert any("cropped to its 256x256 patch at (22, 72)" in n for n in r.notes)
    r = view.sar_compare(ctx, [folder], UPLOAD, upload=str(tmp_path / "big.npy"), patch=view.PATCHES[1])
    np.testing.assert_allclose(r.image, norm.to_model(big[:256, :256]))

    small = rng.gamma(4.0, 0.25, (20, 40)).astype(np.float32)
    tifffile.imwrite(tmp_path / "small.tif", small)
    r = view.sar_compare(ctx, [folder], UPLOAD, upload=str(tmp_path / "small.tif"))
    assert r.image.shape == r.recons[0].shape == (16, 32)
    np.testing.assert_allclose(r.image, norm.to_model(small[2:18, 4:36]))

    # A quick-look's grey levels are uncalibrated: for this checkpoint (built-in simulator, saved before
    # log_median was) they are scaled to the median log-intensity of its simulated training scenes.
    sim_median = SyntheticSARDataset(8, image_size=32, looks=4, seed=0, cache=False).log_median
    amp = (rng.random((64, 64)) * 200 + 20).astype(np.uint8)
    Image.fromarray(amp).save(tmp_path / "amp.png")
    dn2 = amp.astype(np.float64) ** 2
    r = view.sar_compare(ctx, [folder], UPLOAD, upload=str(tmp_path / "amp.png"))
    gain = np.exp(sim_median - np.median(np.log(dn2)))
    np.testing.assert_allclose(r.image, norm.to_model(dn2 * gain), atol=1e-5)
    assert "64x64 pixels, read as 8-bit amplitude quick-look" in r.notes[0]
    assert any(f"scaled by {10 * np.log10(gain):+.1f} dB" in n for n in r.notes)
    r = view.sar_compare(ctx, [folder], UPLOAD, upload=str(tmp_path / "amp.png"), input_kind="intensity")
    gain = np.exp(sim_median - np.median(np.log(amp.astype(np.float64))))
    np.testing.assert_allclose(r.image, norm.to_model(amp * gain), atol=1e-5)
    assert "read as 8-bit intensity quick-look" in r.notes[0]

    Image.fromarray(np.stack([amp] * 3, axis=-1)).save(tmp_path / "rgb.png")  # a colour quick-look
    r2 = view.sar_compare(ctx, [folder], UPLOAD, upload=str(tmp_path / "rgb.png"))
    r1 = view.sar_compare(ctx, [folder], UPLOAD, upload=str(tmp_path / "amp.png"))
    np.testing.assert_allclose(r2.image, r1.image, atol=1e-5)
    assert any("rgb.png: RGB image converted to luminance" in n for n in r2.notes)


def _external(ctx, tmp_path, name: str, preprocessing: dict, image_size: int = 32) -> str:
    folder = tmp_path / name
    torch.manual_seed(2)
    model = create_model("sar-baseline", base_channels=4, image_size=image_size, preprocessing=preprocessing)
    model.save_pretrained(folder)
    ctx.external[f"hub: test/{name}"] = str(folder)
    return str(folder)


def test_quicklook_scaling_follows_the_checkpoint_preprocessing(ctx, tmp_path):
    rng = np.random.default_rng(3)
    dn = np.clip(rng.gamma(4.0, 15.0, (48, 48)) + 1, 1, 255).astype(np.uint8)
    tifffile.imwrite(tmp_path / "ql.tif", dn)  # 8-bit TIFF quick-looks are handled like PNGs
    dn2 = dn.astype(np.float64) ** 2
    norm = SARNormalizer(-6.0, 3.0)

    def image_through(pre: dict, name: str) -> view.SARComparison:
        folder = _external(ctx, tmp_path, name, {"kind": "sar-log-intensity", **norm.to_dict(), **pre})
        return view.sar_compare(ctx, [folder], UPLOAD, upload=str(tmp_path / "ql.tif"))

    # Trained on calibrated data with its median saved: the median log-intensity moves there.
    r = image_through({"scale": "calibrated", "log_median": -2.5}, "median")
    np.testing.assert_allclose(r.image, norm.to_model(dn2 * np.exp(-2.5 - np.median(np.log(dn2)))), atol=1e-5)
    assert float(np.median(np.log(norm.to_intensity(r.image) + 0.0))) == pytest.approx(-2.5, abs=0.05)
    # Trained on quick-looks (a folder of PNGs): the grey levels are read as in training, unscaled.
    r = image_through({"scale": "display", "input_kind": "auto"}, "display")
    np.testing.assert_allclose(r.image, norm.to_model(dn2), atol=1e-6)
    assert not any("scaled by" in n for n in r.notes)
    # Only the normaliser known: the 0.5-99.5 % log range is centred on [log_min, log_max].
    r = image_through({"input_kind": "auto"}, "legacy")
    lo, hi = np.percentile(np.log(dn2), [0.5, 99.5])
    gain = np.exp((norm.log_min + norm.log_max) / 2 - (lo + hi) / 2)
    np.testing.assert_allclose(r.image, norm.to_model(dn2 * gain), atol=1e-5)
    assert any("centre their 0.5-99.5 % log-intensity range" in n for n in r.notes)

    # Two checkpoints with different gains: each reads its own, and the panels share the first's scale.
    a, b = (
        _external(ctx, tmp_path, n, {**norm.to_dict(), "log_median": m})
        for n, m in (("m1", -3.0), ("m2", -1.0))
    )
    r = view.sar_compare(ctx, [a, b], UPLOAD, upload=str(tmp_path / "ql.tif"))
    ga, gb = (np.exp(m - np.median(np.log(dn2))) for m in (-3.0, -1.0))
    assert sum("for sar-baseline" in n for n in r.notes) == 2
    x_b = norm.to_model(dn2 * gb)
    xb_hat, _ = forward(ctx, b, x_b)
    shown = norm.to_model(norm.to_intensity(xb_hat[0, 0].numpy()) / gb * ga)
    np.testing.assert_allclose(r.recons[1], shown, atol=1e-5)


def test_example_quicklook_png_reads_like_its_calibrated_scene(ctx, tmp_path):
    """assets/sar/scene_512_amplitude.png against the float intensity of the same simulated scene."""
    train = SyntheticSARDataset(8, image_size=64, looks=4, seed=0)
    folder = _external(ctx, tmp_path, "synthetic64", train.preprocessing(), image_size=64)
    rng = np.random.default_rng(2025)  # the scene of assets/make_assets.py
    np.save(tmp_path / "scene.npy", apply_speckle(simulate_reflectivity(512, rng), looks=4, rng=rng))
    png = view.sar_compare(
        ctx, [folder], UPLOAD, upload=str(ROOT / "assets" / "sar" / "scene_512_amplitude.png")
    )
    npy = view.sar_compare(ctx, [folder], UPLOAD, upload=str(tmp_path / "scene.npy"))

    # Before, the grey levels were read as calibrated amplitude and every pixel saturated at 1.
    assert np.mean((png.image <= 0) | (png.image >= 1)) < 0.01
    assert np.abs(png.image - npy.image).mean() < 0.03
    assert png.metrics[0]["psnr"] == pytest.approx(npy.metrics[0]["psnr"], abs=1.0)
    assert png.metrics[0]["psnr"] > 8.0
    assert "512x512 pixels, read as 8-bit amplitude quick-look" in png.notes[0]
    assert "read as intensity (float32)" in npy.notes[0]


@pytest.mark.parametrize(
    "make, kwargs, exc, message",
    [
        (None, {"checkpoints": None}, ValueError, "no checkpoint chosen: pick one or more SAR checkpoints"),
        (None, {"checkpoints": []}, ValueError, "no checkpoint chosen"),
        (None, {"checkpoints": ["/no/such/run/checkpoints/best"]}, FileNotFoundError, "does not exist"),
        (None, {"upload": None}, ValueError, "no SAR image uploaded"),
        ("empty.npy", {}, ValueError, "'empty.npy' is empty"),
        ("corrupt.png", {}, ValueError, "corrupt.png: could not read the file as .png"),
        ("notes.txt", {}, ValueError, "unsupported SAR image type '.txt'"),
        ("tiny.npy", {}, ValueError, "the image is 10x12 pixels; SAR models need at least 16x16"),
        ("negative.npy", {}, ValueError, "must be non-negative"),
        ("cube.npy", {}, ValueError, "expected a 2-D single-band image"),
        (None, {"source": view.SOURCES[0], "size": 40}, ValueError, "image size must be a multiple of 16"),
        (None, {"source": view.SOURCES[0], "seed": -1}, ValueError, "sample seed must be a whole number"),
        (None, {"source": "radar"}, ValueError, "unknown input source"),
        (None, {"error_scale": "log"}, ValueError, "unknown error scale"),
        (None, {"checkpoints": ["a"] * 7}, ValueError, "choose at most 6 checkpoints"),
    ],
)
def test_bad_inputs_give_clear_messages(ctx, run_ckpt, tmp_path, make, kwargs, exc, message):
    path = tmp_path / (make or "unused")
    if make == "empty.npy":
        path.write_bytes(b"")
    elif make == "corrupt.png":
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(200)))
    elif make == "notes.txt":
        path.write_text("not an image")
    elif make == "tiny.npy":
        np.save(path, np.ones((10, 12), np.float32))
    elif make == "negative.npy":
        np.save(path, -np.ones((32, 32), np.float32))
    elif make == "cube.npy":
        np.save(path, np.ones((3, 32, 32), np.float32))
    args = {"checkpoints": [run_ckpt[1]], "source": UPLOAD, "upload": str(path) if make else None}
    args.update(kwargs)
    with pytest.raises(exc, match=re.escape(message)) as err:
        view.sar_compare(ctx, **args)
    assert str(tmp_path) not in str(err.value)  # the temporary upload path is replaced by the file name


def test_checkpoint_of_another_domain_is_refused(ctx, run_ckpt, frag_ckpt):
    with pytest.raises(ValueError, match="'fragment-dae' .* this view needs a SAR model"):
        view.sar_compare(ctx, [run_ckpt[1], frag_ckpt], size=32)


def test_build_tab_endpoints_refresh_and_errors_in_page(ctx, run_ckpt, ext_ckpt):
    import gradio as gr

    with gr.Blocks() as demo:
        view.build_tab(ctx)
    fns = {f.api_name: f for f in demo.fns.values() if f.api_name}
    assert {"sar_compare", "sar_checkpoints"} <= set(fns)
    update = fns["sar_checkpoints"].fn([run_ckpt[1], "/gone"])
    assert run_ckpt[1] in [v for _, v in update["choices"]] and update["value"] == [run_ckpt[1]]
    args = [view.SOURCES[0], 0, 32, 4, None, "auto", view.PATCHES[0], view.ERROR_SCALES[0]]
    status, figure, table = fns["sar_compare"].fn([run_ckpt[1], ext_ckpt], *args)
    assert len(table) == 2 and len(figure.data) == 5
    assert "synthetic 32x32 scene" in status and "4-look speckle" in status
    # Spinners and error badges go on the status line only, so a bad input leaves the last figure and table.
    compare_fn = fns["sar_compare"]
    status_block = compare_fn.outputs[0]
    assert isinstance(status_block, gr.Markdown)
    assert list(compare_fn.show_progress_on) == [status_block]
    plot = compare_fn.outputs[1]
    assert isinstance(plot, gr.Plot) and plot.show_label is False  # its badge covered the first title
    size = next(b for b in compare_fn.inputs if isinstance(b, gr.Slider) and "Image size" in (b.label or ""))
    assert size.step == view.MULTIPLE
    with pytest.raises(gr.Error) as err:
        fns["sar_compare"].fn([], *args)
    assert "no checkpoint chosen" in err.value.message
