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
from trainers.data.sar import (
    KNOT_X,
    SyntheticSARDataset,
    apply_speckle,
    normalize_db,
    simulate_reflectivity,
)
from trainers.metrics import registry, sanity
from trainers.metrics import sar as sar_metrics
from trainers.runs.checkpoints import save_checkpoint
from trainers.runs.store import RunStore
from trainers.training.fastpath import prepare_for_inference

ROOT = Path(__file__).resolve().parents[1]
PRE = {"kind": "sar-log-intensity", "log_min": -6.0, "log_max": 3.0, "eps": 1e-6, "looks": 4}
# Older checkpoints saved a global normaliser; inputs are now normalised per image whatever they saved.
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
    model = prepare_for_inference(
        ctx.load_model(folder, "sar")
    )  # the tab's precision (trainers.training.fastpath)
    with torch.no_grad():
        return model(torch.from_numpy(x)[None, None])


def test_checkpoint_choices_list_runs_and_external_checkpoints(ctx, run_ckpt, ext_ckpt):
    folders = [f for _, _, f in ctx.checkpoint_folders("sar")]
    assert run_ckpt[1] in folders and ext_ckpt in folders
    values = [v for _, v in ctx.checkpoint_choices("sar")]  # what the dropdowns and the API show
    assert f"{run_ckpt[0]}/best" in values and "hub: someone/sar-baseline" in values
    assert ctx.checkpoint_choices("fragments") == []


def _db_image(x: np.ndarray, valid: np.ndarray, db_range) -> np.ndarray:
    """x in dB through the image's knots: linear between (KNOT_X, knots), written as np.interp."""
    xs = KNOT_X if len(db_range) == len(KNOT_X) else (0.0, 1.0)
    out = np.interp(x.astype(np.float64), xs, np.asarray(db_range, np.float64))
    out[~valid] = np.nan
    return out


def test_compare_validation_sample_against_reference_formulas(ctx, run_ckpt, ext_ckpt):
    run_id, folder = run_ckpt
    r = view.sar_compare(ctx, [folder, ext_ckpt], view.SOURCES[0], seed=2, size=48, looks=3)

    # The input is scene #2 of the synthetic validation set, normalised on its own in dB.
    scene = SyntheticSARDataset(3, 48, looks=3, seed=view.VALIDATION_SEED_OFFSET, cache=False).scene(2)
    x, valid, db_range = normalize_db(scene.intensity, scene.valid)
    np.testing.assert_allclose(r.image, _db_image(x, valid, db_range), atol=1e-5, equal_nan=True)
    assert r.image.shape == (48, 48)
    assert len(r.recons) == len(r.errors) == 2
    valid_t = torch.from_numpy(valid.astype(np.float32))[None, None]
    range_t = torch.tensor([db_range], dtype=torch.float64)
    for k, (ckpt, rec, err) in enumerate(zip([folder, ext_ckpt], r.recons, r.errors, strict=True)):
        assert rec.shape == err.shape == (48, 48)
        np.testing.assert_array_equal(err, np.abs(r.image - rec))
        # Every checkpoint sees the same x; its reconstruction is shown in dB through the input's range.
        x_hat, z = forward(ctx, ckpt, x)
        expected = _db_image(np.clip(x_hat[0, 0].numpy(), 0, 1), valid, db_range)
        np.testing.assert_allclose(rec, expected, atol=1e-4, equal_nan=True)
        ref = sar_metrics.sar_metrics(torch.from_numpy(x)[None, None], x_hat, z, valid_t, range_t)
        metrics, row = r.metrics[k], r.table[k]
        for key in ("psnr", "ssim", "enl_ratio", "epi", "bpp_8bit"):
            assert metrics[key] == pytest.approx(ref[key], rel=1e-5, abs=1e-7, nan_ok=True)
        mse = np.mean((x.astype(np.float64) - x_hat[0, 0].numpy())[valid] ** 2)
        assert metrics["psnr"] == pytest.approx(10 * np.log10(1 / mse), rel=1e-4)
        assert row[2] == registry.format_value("psnr", metrics["psnr"])
        assert row[3] == registry.format_value("ssim", metrics["ssim"])
        assert metrics["inference_ms"] > 0 and row[8] == f"{metrics['inference_ms']:.1f}"
        assert all("inf" not in str(c) and "nan" not in str(c) for c in row)
    # Both checkpoints were saved with the older global normalisation: the notes say so.
    assert any(
        "sar-residual, sar-baseline: this checkpoint was trained with a different" in n for n in r.notes
    )
    knots = ", ".join(f"{v:.1f}" for v in db_range)
    assert any(f"piecewise linear: {knots} dB (its 0.25, 1, 99, 99.75 % percentiles)" in n for n in r.notes)
    # The table shows the run's time and suffix next to the variant column; the full id is in the hover.
    _, time, suffix = re.fullmatch(r"(\d{8})-(\d{6})-sar-residual-([0-9a-z]+)", run_id).groups()
    assert [row[:2] for row in r.table] == [
        ["sar-residual", f"{time}-{suffix} (best)"],
        ["sar-baseline", "hub: someone/sar-baseline"],
    ]
    assert r.labels == [f"sar-residual · {run_id} (best)", "sar-baseline · hub: someone/sar-baseline"]
    assert r.table[0][7] == f"{ctx.load_model(folder, 'sar').count_parameters()['total']:,}"
    assert view.TABLE_HEADERS[2:7] == [
        "PSNR (dB) ↑", "SSIM ↑", "ENL ratio target 0.7–1.3", "EPI ↑", "latent bpp (8-bit) ↓",
    ]  # fmt: skip
    assert view.TABLE_HEADERS[-1].startswith("flag")
    assert [row[-1] for row in r.table] == [sanity.flag_cell([f.short for f in fl]) for fl in r.flags]


def test_new_checkpoints_get_no_normalisation_note(ctx, tmp_path):
    folder = _external(ctx, tmp_path, "perimage", SyntheticSARDataset(2, 32).preprocessing())
    r = view.sar_compare(ctx, [folder], size=32)
    assert not any("different normalisation" in n or "older affine" in n for n in r.notes)
    # A checkpoint of the older affine per-image map (today's references before the piecewise map) loads
    # and gets its own note.
    affine = SyntheticSARDataset(2, 32, pcts=(0.5, 99.5)).preprocessing()
    assert affine == {
        "kind": "sar-db-per-image",
        "low_pct": 0.5,
        "high_pct": 99.5,
        "looks": "1-4",
        "scene": "mixed",
    }
    r = view.sar_compare(ctx, [_external(ctx, tmp_path, "affine", affine)], size=32)
    older = "sar-baseline: this checkpoint was trained with the older affine"
    assert any(n.startswith(older) for n in r.notes)


def test_figure_shares_one_scale_for_images_and_one_for_errors(ctx, run_ckpt, ext_ckpt):
    folders = [run_ckpt[1], ext_ckpt]
    r = view.sar_compare(ctx, folders, size=32)
    traces = r.figure.data
    assert len(traces) == 1 + 2 * len(folders)
    images = [t for t in traces if t.coloraxis == "coloraxis"]
    errors = [t for t in traces if t.coloraxis == "coloraxis2"]
    assert len(images) == 3 and len(errors) == 2
    np.testing.assert_allclose(
        np.asarray(errors[1].z, dtype=np.float64), r.errors[1], atol=1e-4, equal_nan=True
    )
    lay = r.figure.layout
    lo, hi = np.nanmin(r.image), np.nanmax(r.image)  # the input spans its own dB range
    assert lay.coloraxis.cmin == pytest.approx(lo, abs=1e-3) and lay.coloraxis.cmax == pytest.approx(
        hi, abs=1e-3
    )
    assert lay.coloraxis2.cmin == 0.0
    assert lay.coloraxis2.cmax == pytest.approx(max(float(np.nanmax(e)) for e in r.errors))
    same = view.sar_compare(ctx, folders, size=0, error_scale=view.ERROR_SCALES[1])
    assert same.image.shape == (32, 32)  # size 0: the first checkpoint's training size (image_size=32)
    lay = same.figure.layout
    assert lay.coloraxis2.cmax == pytest.approx(lay.coloraxis.cmax - lay.coloraxis.cmin)


def test_panel_titles_fit_their_column_and_use_run_names(ctx, run_ckpt, ext_ckpt):
    run_id, folder = run_ckpt
    r = view.sar_compare(ctx, [folder, ext_ckpt, folder], size=32)
    titles = [a.text for a in r.figure.layout.annotations]
    time_suffix = "-".join(re.fullmatch(r"\d{8}-(\d{6})-sar-residual-(\w+)", run_id).groups())
    # Four columns: each title is wrapped between words to its column's share of the narrowest plot.
    width = view.title_chars(4)
    # (joined back: a line broken after "-" keeps its "-", one broken between words loses the space)
    assert [t.replace("-<br>", "-").replace("<br>", " ") for t in titles[:4]] == [
        "input",
        f"sar-residual {time_suffix} (best)",  # the variant on its line, the checkpoint's name below
        "sar-baseline hub: someone/sar-baseline",
        f"sar-residual {time_suffix} (best)",
    ]
    assert titles[4:] == ["|error|"] * 3
    for title in titles:
        lines = title.split("<br>")
        assert len(lines) <= view.TITLE_LINES and max(map(len, lines)) <= width, title
    assert {a.font.size for a in r.figure.layout.annotations} == {view.TITLE_FONT_SIZE}
    hover = [t.hovertemplate for t in r.figure.data]
    assert f"<extra>sar-residual · {run_id} (best)</extra>" in hover[1]  # the hover keeps the full id
    lay = r.figure.layout
    assert lay.coloraxis.colorbar.title.text == "dB (input's units)"
    assert lay.coloraxis2.colorbar.title.text == "|input − reconstruction| dB"
    assert lay.margin.t >= 15 * view.TITLE_LINES + 20  # room for the title lines
    # No axis both matches another and is scale-anchored (plotly ignores it with a warning per render).
    assert lay.xaxis.matches is None and lay.yaxis.matches is None
    assert all(lay[f"yaxis{k}"].scaleanchor is None for k in range(2, 9))

    # A named run is called by its name, in the titles and the table; seven columns still fit.
    ctx.store.set_labels(run_id, name="speckle run with a long descriptive name")
    try:
        r = view.sar_compare(ctx, [folder] * 6, size=32)
    finally:
        ctx.store.set_labels(run_id, name="")
    titles = [a.text for a in r.figure.layout.annotations]
    assert titles[1].startswith("sar-residual<br>speckle run") and time_suffix not in titles[1]
    assert all(max(map(len, t.split("<br>"))) <= view.title_chars(7) for t in titles)
    assert all(len(t.split("<br>")) <= view.TITLE_LINES for t in titles)
    assert r.table[0][1].startswith("speckle run")


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
    big[:, :10] = 0.0  # a no-data edge, left out of the statistics
    np.save(tmp_path / "big.npy", big)
    x, valid, db_range = normalize_db(big)  # the range of the whole image, not of the crop
    assert db_range == normalize_db(big[:, 10:])[2]

    r = view.sar_compare(ctx, [folder], UPLOAD, upload=str(tmp_path / "big.npy"))
    np.testing.assert_allclose(r.image, _db_image(x, valid, db_range)[22:278, 72:328], atol=1e-4)
    assert any("cropped to its 256x256 patch at (22, 72)" in n for n in r.notes)
    r = view.sar_compare(ctx, [folder], UPLOAD, upload=str(tmp_path / "big.npy"), patch=view.PATCHES[1])
    np.testing.assert_allclose(r.image, _db_image(x, valid, db_range)[:256, :256], atol=1e-4, equal_nan=True)
    assert np.isnan(r.image[:, :10]).all() and np.isnan(r.recons[0][:, :10]).all()
    assert any("3.9 % of the patch is no-data: masked, not scored" in n for n in r.notes)
    assert "read as intensity (float32, detected), 2.5 % no-data" in r.notes[0]
    assert all(np.isfinite(v) for v in (r.metrics[0]["psnr"], r.metrics[0]["ssim"]))

    small = rng.gamma(4.0, 0.25, (20, 40)).astype(np.float32)
    tifffile.imwrite(tmp_path / "small.tif", small)
    r = view.sar_compare(ctx, [folder], UPLOAD, upload=str(tmp_path / "small.tif"))
    assert r.image.shape == r.recons[0].shape == (16, 32)
    xs, vs, rs = normalize_db(small)
    np.testing.assert_allclose(r.image, _db_image(xs, vs, rs)[2:18, 4:36], atol=1e-4)

    # An 8-bit quick-look: read as amplitude (dB of grey levels), never saturated.
    amp = (rng.random((64, 64)) * 200 + 20).astype(np.uint8)
    Image.fromarray(amp).save(tmp_path / "amp.png")
    r = view.sar_compare(ctx, [folder], UPLOAD, upload=str(tmp_path / "amp.png"))
    xa, va, ra = normalize_db(amp.astype(np.float64) ** 2)
    np.testing.assert_allclose(r.image, _db_image(xa, va, ra), atol=1e-4)
    assert "64x64 pixels, read as amplitude, squared to intensity (uint8, detected)" in r.notes[0]
    Image.fromarray(np.stack([amp] * 3, axis=-1)).save(tmp_path / "rgb.png")  # a colour quick-look
    r2 = view.sar_compare(ctx, [folder], UPLOAD, upload=str(tmp_path / "rgb.png"))
    np.testing.assert_allclose(r2.image, r.image, atol=1e-4)
    assert any("rgb.png: RGB image converted to luminance" in n for n in r2.notes)
    # A patch of no-data only cannot be compared.
    hole = big.copy()
    hole[:256, :256] = np.nan
    np.save(tmp_path / "hole.npy", hole)
    with pytest.raises(ValueError, match="first \\(top-left\\) patch of hole.npy is all no-data"):
        view.sar_compare(ctx, [folder], UPLOAD, upload=str(tmp_path / "hole.npy"), patch=view.PATCHES[1])


def _external(ctx, tmp_path, name: str, preprocessing: dict, image_size: int = 32) -> str:
    folder = tmp_path / name
    torch.manual_seed(2)
    model = create_model("sar-baseline", base_channels=4, image_size=image_size, preprocessing=preprocessing)
    model.save_pretrained(folder)
    ctx.external[f"hub: test/{name}"] = str(folder)
    return str(folder)


def test_example_quicklook_png_reads_like_its_calibrated_scene(ctx, tmp_path):
    """assets/sar/scene_512_amplitude.png against the float intensity of the same simulated scene: per
    image in dB, the quick-look's unknown display gain does not matter (it only shifts the dB range)."""
    folder = _external(
        ctx, tmp_path, "synthetic64", SyntheticSARDataset(2, 64).preprocessing(), image_size=64
    )
    rng = np.random.default_rng(2025)  # the scene of assets/make_assets.py
    np.save(tmp_path / "scene.npy", apply_speckle(simulate_reflectivity(512, rng), looks=4, rng=rng))
    png = view.sar_compare(
        ctx, [folder], UPLOAD, upload=str(ROOT / "assets" / "sar" / "scene_512_amplitude.png")
    )
    npy = view.sar_compare(ctx, [folder], UPLOAD, upload=str(tmp_path / "scene.npy"))

    def normalised(r):
        lo, hi = r.figure.layout.coloraxis.cmin, r.figure.layout.coloraxis.cmax
        return (r.image - lo) / (hi - lo)

    xp, xn = normalised(png), normalised(npy)
    # Before, the grey levels were read on the checkpoint's stored scale and every pixel saturated at 1.
    assert np.nanmean((xp <= 0) | (xp >= 1)) < 0.01
    assert np.nanmean(np.abs(xp - xn)) < 0.04
    assert png.metrics[0]["psnr"] == pytest.approx(npy.metrics[0]["psnr"], abs=1.0)
    assert "512x512 pixels, read as amplitude, squared to intensity (uint8, detected)" in png.notes[0]
    assert "read as intensity (float32, detected)" in npy.notes[0]


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
        ("negative.npy", {}, ValueError, "not a plausible dB range: state what the pixels are"),
        ("nodata.npy", {}, ValueError, "every pixel is no-data"),
        ("cube.npy", {}, ValueError, "expected a 2-D image or a stack of bands"),
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
        np.save(path, -150 * np.ones((32, 32), np.float32))
    elif make == "nodata.npy":
        np.save(path, np.zeros((32, 32), np.float32))
    elif make == "cube.npy":
        np.save(path, np.ones((3, 32, 32, 2), np.float32))
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
    value = f"{run_ckpt[0]}/best"  # the dropdown's value: the run, not its server folder
    update = fns["sar_checkpoints"].fn([value, "gone/best"])
    assert value in [v for _, v in update["choices"]] and update["value"] == [value]
    assert not any(str(ctx.runs_dir) in v for _, v in update["choices"])
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


class _Passthrough(torch.nn.Module):
    """A stub with the SAR variants' interface whose reconstruction is its input: the ideal model."""

    DOMAIN, VARIANT, image_size = "sar", "sar-passthrough", 32
    preprocessing = SyntheticSARDataset(2, 32).preprocessing()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.clone(), torch.zeros(x.shape[0], 16, x.shape[2] // 16, x.shape[3] // 16)

    def count_parameters(self) -> dict[str, int]:
        return {"encoder": 0, "decoder": 0, "total": 0}


def test_a_constant_output_is_flagged_and_its_enl_ratio_carries_the_flag(ctx, tmp_path, monkeypatch):
    good = _external(ctx, tmp_path, "good", _Passthrough.preprocessing)
    flat = _external(ctx, tmp_path, "flat", _Passthrough.preprocessing)
    zeroed = ctx.load_model(flat, "sar")
    with torch.no_grad():
        for p in zeroed.parameters():  # every weight and bias 0: the same grey for any input
            p.zero_()
    stubs = {good: _Passthrough(), flat: zeroed}
    monkeypatch.setattr(ctx, "load_model", lambda folder, domain=None: stubs[str(folder)])
    r = view.sar_compare(ctx, [good, flat], view.SOURCES[0], seed=1, size=64, looks=4)

    # The trivial baseline is the mean-value image: its MSE is the variance of the valid pixels.
    scene = SyntheticSARDataset(2, 64, looks=4, seed=view.VALIDATION_SEED_OFFSET, cache=False).scene(1)
    x, valid, _ = normalize_db(scene.intensity, scene.valid)
    variance = float(np.var(x[valid].astype(np.float64)))
    assert r.baseline["psnr"] == pytest.approx(10 * np.log10(1 / variance), rel=1e-4)
    assert 0 < r.baseline["ssim"] < 0.5
    assert any(n.startswith("trivial baseline: the mean-value image") for n in r.notes)

    passthrough, constant = r.table
    assert r.flags[0] == [] and passthrough[-1] == "none"
    assert r.metrics[0]["psnr"] > r.baseline["psnr"] and r.metrics[0]["ssim"] > r.baseline["ssim"]
    assert passthrough[4] == registry.format_value("enl_ratio", r.metrics[0]["enl_ratio"])  # a plain number

    assert np.nanstd(r.recons[1]) == 0.0  # the zeroed model paints one grey
    shorts = [f.short for f in r.flags[1]]
    assert shorts == ["constant output", "no better than the mean-value image"]
    assert "its spread over the valid pixels is 0.0% of the input's (under 5%)" in str(r.flags[1][0])
    # The mean image is the best constant, so a constant output cannot beat its PSNR.
    assert r.metrics[1]["psnr"] <= r.baseline["psnr"]
    assert f"PSNR {r.metrics[1]['psnr']:.2f} dB ≤ {r.baseline['psnr']:.2f} dB" in r.flags[1][1].detail
    assert constant[-1] == "; ".join(f.short for f in r.flags[1])  # the figures are in the notes
    enl = registry.format_value("enl_ratio", r.metrics[1]["enl_ratio"])
    assert enl != "n/a" and constant[4] == f"{enl} ⚠ constant output"  # not a plain number
    assert sum("flat flagged: constant output" in n for n in r.notes) == 1


def test_the_timed_inference_is_never_the_models_first_call():
    """Issue 19: the first inference of a checkpoint showed its warm-up (sar-attention 2059 ms, then 247 ms).
    A model whose first forward call is slow (1.5 s here, as a first call's allocations and kernel choices
    are) gets that call outside the timed one, once per input shape; the same shape later runs it once."""
    import time

    torch.manual_seed(0)
    model = create_model("sar-baseline", base_channels=8, image_size=64).eval()
    calls: list[tuple[int, ...]] = []

    def first_is_slow(module, args):  # noqa: ARG001
        calls.append(tuple(args[0].shape))
        if len(calls) == 1:
            time.sleep(1.5)

    model.register_forward_pre_hook(first_is_slow)
    x = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    _, _, ms = view.reconstruct(model, x)
    assert len(calls) == 2 and ms < 1500, (calls, ms)  # warmed up, then timed
    view.reconstruct(model, x)
    assert len(calls) == 3  # no second warm-up for a shape already seen
