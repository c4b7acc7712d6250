"""The SAR tab's pure functions on tiny real checkpoints, one of them a run in a real RunStore."""

from __future__ import annotations

import os
import re

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
from trainers.data.sar import SARNormalizer, SyntheticSARDataset
from trainers.metrics import sar as sar_metrics
from trainers.store import RunStore

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
    assert [row[:2] for row in r.table] == [
        ["sar-residual", f"{run_id} (best)"],
        ["sar-baseline", "hub: someone/sar-baseline"],
    ]
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

    amp = (rng.random((64, 64)) * 200 + 20).astype(np.uint8)  # PNG quick-looks are amplitude
    Image.fromarray(amp).save(tmp_path / "amp.png")
    r = view.sar_compare(ctx, [folder], UPLOAD, upload=str(tmp_path / "amp.png"))
    np.testing.assert_allclose(r.image, norm.to_model(amp.astype(np.float32) ** 2), atol=1e-6)
    r = view.sar_compare(ctx, [folder], UPLOAD, upload=str(tmp_path / "amp.png"), input_kind="intensity")
    np.testing.assert_allclose(r.image, norm.to_model(amp.astype(np.float32)), atol=1e-6)

    Image.fromarray(np.stack([amp] * 3, axis=-1)).save(tmp_path / "rgb.png")  # a colour quick-look
    r = view.sar_compare(ctx, [folder], UPLOAD, upload=str(tmp_path / "rgb.png"))
    np.testing.assert_allclose(r.image, norm.to_model(amp.astype(np.float32) ** 2), atol=1e-6)
    assert any("rgb.png: RGB image converted to luminance" in n for n in r.notes)


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
    with pytest.raises(ValueError, match="'fragment-dae' .* this view needs an sar model"):
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
    assert len(table) == 2 and len(figure.data) == 5 and "synthetic 32x32 scene #0" in status
    with pytest.raises(gr.Error) as err:
        fns["sar_compare"].fn([], *args)
    assert "no checkpoint chosen" in err.value.message
