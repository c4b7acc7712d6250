"""SAR data: speckle statistics, the log-intensity normaliser, simulated and folder datasets, file loading."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from scipy import stats

from trainers.data.sar import (
    SARFolderDataset,
    SARNormalizer,
    SyntheticSARDataset,
    apply_speckle,
    load_sar_image,
    log_median,
    log_range_centre,
    patchify,
    quicklook_gain,
    read_sar_image,
    simulate_reflectivity,
)

ROOT = Path(__file__).resolve().parents[1]


def _db(x):
    return 10 ** (np.asarray(x) / 10)


# ------------------------------------------------------------------------------------------- simulation
def test_reflectivity_scene_content():
    scenes = [simulate_reflectivity(128, np.random.default_rng(s)) for s in range(6)]
    for r in scenes:
        assert r.shape == (128, 128) and r.dtype == np.float32
        assert np.all(np.isfinite(r)) and r.min() > 0
        assert r.max() >= _db(15)  # point targets
        assert r.min() <= _db(-18)  # roads (always) and rivers
        # Mostly piecewise-constant parcels: the median pixel is a field level between -18 and -4 dB.
        assert _db(-18) < np.median(r) < _db(-4)
    # Urban blocks (double-bounce edges at 8-14 dB) appear in some scenes: many such pixels, not just a
    # handful of point-target sidelobes.
    assert max(int(((r >= _db(8)) & (r <= _db(14.5))).sum()) for r in scenes) > 100


def test_reflectivity_is_reproducible():
    a = simulate_reflectivity(64, np.random.default_rng(3))
    b = simulate_reflectivity(64, np.random.default_rng(3))
    c = simulate_reflectivity(64, np.random.default_rng(4))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    with pytest.raises(ValueError, match="size"):
        simulate_reflectivity(8, np.random.default_rng(0))


@pytest.mark.parametrize("looks", [1, 4])
def test_speckle_is_unit_mean_gamma(looks):
    refl = np.full((512, 512), 0.25, dtype=np.float32)
    intensity = apply_speckle(refl, looks, np.random.default_rng(looks))
    ratio = (intensity / refl).ravel().astype(np.float64)
    assert ratio.mean() == pytest.approx(1.0, rel=0.01)
    assert ratio.mean() ** 2 / ratio.var() == pytest.approx(looks, rel=0.03)  # ENL = L
    assert stats.kstest(ratio[::16], stats.gamma(a=looks, scale=1 / looks).cdf).pvalue > 1e-3
    np.testing.assert_array_equal(intensity, apply_speckle(refl, looks, np.random.default_rng(looks)))


def test_speckle_rejects_bad_input():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="looks"):
        apply_speckle(np.ones((4, 4)), 0, rng)
    with pytest.raises(ValueError, match="looks"):
        apply_speckle(np.ones((4, 4)), 2.5, rng)
    with pytest.raises(ValueError, match="non-negative"):
        apply_speckle(-np.ones((4, 4)), 4, rng)


# ----------------------------------------------------------------------------------------------- normaliser
def test_normalizer_formula_and_round_trip():
    norm = SARNormalizer(log_min=-6.0, log_max=2.0, eps=1e-6)
    intensity = np.array([[0.0, 1e-3, 0.1], [1.0, 5.0, 1e4]])
    x = norm.to_model(intensity)
    expected = np.clip((np.log(intensity + 1e-6) + 6.0) / 8.0, 0, 1)
    assert x.dtype == np.float32
    np.testing.assert_allclose(x, expected, atol=1e-6)
    inside = (expected > 0) & (expected < 1)
    np.testing.assert_allclose(norm.to_intensity(x)[inside], intensity[inside], rtol=1e-5)
    assert norm.to_intensity(np.array([1.0]))[0] == pytest.approx(np.exp(2.0) - 1e-6, rel=1e-6)


def test_normalizer_fit_uses_percentiles():
    rng = np.random.default_rng(0)
    images = [apply_speckle(simulate_reflectivity(64, rng), 4, rng) for _ in range(3)]
    norm = SARNormalizer.fit(images, low_pct=1.0, high_pct=99.0)
    logs = np.log(np.concatenate([im.ravel() for im in images]).astype(np.float64) + 1e-6)
    lo, hi = np.percentile(logs, [1.0, 99.0])
    assert norm.log_min == pytest.approx(lo) and norm.log_max == pytest.approx(hi)
    x = np.concatenate([norm.to_model(im).ravel() for im in images])
    assert (x == 0).mean() == pytest.approx(0.01, abs=0.002)
    assert (x == 1).mean() == pytest.approx(0.01, abs=0.002)


def test_normalizer_dict_round_trip_and_errors():
    norm = SARNormalizer(-5.5, 1.25, 1e-5)
    d = json.loads(json.dumps(norm.to_dict()))
    assert SARNormalizer.from_dict(d) == norm
    assert SARNormalizer.from_dict({**d, "kind": "sar-log-intensity", "looks": 4}) == norm
    with pytest.raises(ValueError, match="missing"):
        SARNormalizer.from_dict({"log_min": 0.0})
    with pytest.raises(ValueError, match="log_max > log_min"):
        SARNormalizer(1.0, 1.0)
    with pytest.raises(ValueError, match="eps"):
        SARNormalizer(0.0, 1.0, 0.0)
    with pytest.raises(ValueError, match="non-negative"):
        norm.to_model(np.array([-1.0]))
    with pytest.raises(ValueError, match="NaN"):
        norm.to_model(np.array([np.nan]))
    with pytest.raises(ValueError, match="constant"):
        SARNormalizer.fit([np.ones((8, 8))])
    with pytest.raises(ValueError, match="percentile|low_pct"):
        SARNormalizer.fit([np.ones((8, 8))], low_pct=50, high_pct=10)


# -------------------------------------------------------------------------------------- synthetic dataset
def test_synthetic_dataset_items():
    ds = SyntheticSARDataset(n_images=6, image_size=64, looks=4, seed=1)
    assert len(ds) == 6
    x = ds[2]
    assert isinstance(x, torch.Tensor) and x.shape == (1, 64, 64) and x.dtype == torch.float32
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    np.testing.assert_array_equal(x[0].numpy(), ds.normalizer.to_model(ds.intensity(2)))
    # The speckled image is the clean one times unit-mean speckle.
    ratio = ds.intensity(2) / ds.clean_intensity(2)
    assert ratio.mean() == pytest.approx(1.0, rel=0.05)
    assert not torch.equal(ds[0], ds[1])
    with pytest.raises(IndexError):
        ds[6]


def test_synthetic_dataset_is_deterministic_per_seed_and_index():
    a = SyntheticSARDataset(n_images=4, image_size=64, seed=7)
    b = SyntheticSARDataset(n_images=4, image_size=64, seed=7, cache=False)
    c = SyntheticSARDataset(n_images=4, image_size=64, seed=8)
    for i in (3, 1, 3):
        torch.testing.assert_close(a[i], b[i], rtol=0, atol=0)
    assert not torch.equal(a[0], c[0])
    # A longer set with the same seed starts with the same images.
    longer = SyntheticSARDataset(n_images=8, image_size=64, seed=7, normalizer=a.normalizer)
    torch.testing.assert_close(longer[2], a[2], rtol=0, atol=0)


def test_synthetic_preprocessing_rebuilds_the_normaliser():
    train = SyntheticSARDataset(n_images=4, image_size=64, looks=2, seed=0)
    val = SyntheticSARDataset(n_images=2, image_size=64, looks=2, seed=99, normalizer=train.normalizer)
    assert val.normalizer == train.normalizer
    prep = json.loads(json.dumps(train.preprocessing()))
    assert prep["kind"] == "sar-log-intensity" and prep["looks"] == 2
    assert SARNormalizer.from_dict(prep) == train.normalizer
    # Calibrated scale, and the median ln(I) of the fitted scenes for reading quick-looks of unknown gain.
    assert prep["scale"] == "calibrated"
    logs = np.concatenate([np.log(train.intensity(i).astype(np.float64)).ravel() for i in range(4)])
    assert prep["log_median"] == pytest.approx(float(np.median(logs)), abs=1e-9)
    assert "log_median" not in val.preprocessing()  # a given normaliser: nothing was fitted here


# ---------------------------------------------------------------------------------------------- patches
def test_patchify_order_and_edges():
    img = np.arange(600 * 520, dtype=np.float32).reshape(600, 520)
    patches = patchify(img, 256)
    assert len(patches) == 4  # 2 rows x 2 columns; the 88- and 8-pixel edges are dropped
    np.testing.assert_array_equal(patches[1], img[0:256, 256:512])
    np.testing.assert_array_equal(patches[2], img[256:512, 0:256])
    assert len(patchify(img[:512, :512], 256, stride=128)) == 9
    with pytest.raises(ValueError, match="at least 256x256"):
        patchify(img[:100], 256)
    with pytest.raises(ValueError, match="2-D"):
        patchify(np.zeros((2, 300, 300)), 256)
    with pytest.raises(ValueError, match="patch size"):
        patchify(img, 0)
    with pytest.raises(ValueError, match="stride"):
        patchify(img, 64, stride=0)


# ---------------------------------------------------------------------------------------------- loading
def test_load_npy_tif_kinds(tmp_path):
    rng = np.random.default_rng(0)
    inten = rng.gamma(4, 0.25, (40, 30)).astype(np.float32)
    np.save(tmp_path / "i.npy", inten)
    np.testing.assert_array_equal(load_sar_image(tmp_path / "i.npy"), inten)
    np.testing.assert_allclose(
        load_sar_image(tmp_path / "i.npy", "amplitude"), inten.astype(np.float64) ** 2, rtol=1e-6
    )
    slc = (rng.standard_normal((40, 30)) + 1j * rng.standard_normal((40, 30))).astype(np.complex64)
    np.save(tmp_path / "slc.npy", slc)
    np.testing.assert_allclose(load_sar_image(tmp_path / "slc.npy"), np.abs(slc) ** 2, rtol=1e-5)
    np.save(tmp_path / "band.npy", inten[None])
    assert load_sar_image(tmp_path / "band.npy").shape == (40, 30)
    tifffile.imwrite(tmp_path / "i.tif", inten[:, :, None])
    np.testing.assert_array_equal(load_sar_image(tmp_path / "i.tif"), inten)
    tifffile.imwrite(tmp_path / "amp.tiff", np.sqrt(inten))
    np.testing.assert_allclose(load_sar_image(tmp_path / "amp.tiff", "amplitude"), inten, rtol=1e-5)


def test_load_png_amplitude_8_and_16_bit_and_rgb(tmp_path):
    amp8 = np.arange(256, dtype=np.uint8).reshape(16, 16)
    Image.fromarray(amp8).save(tmp_path / "a8.png")
    np.testing.assert_array_equal(load_sar_image(tmp_path / "a8.png"), amp8.astype(np.float32) ** 2)
    np.testing.assert_array_equal(load_sar_image(tmp_path / "a8.png", "intensity"), amp8.astype(np.float32))
    amp16 = (np.arange(256, dtype=np.uint16) * 250).reshape(16, 16)
    Image.fromarray(amp16).save(tmp_path / "a16.png")
    np.testing.assert_allclose(load_sar_image(tmp_path / "a16.png"), amp16.astype(np.float64) ** 2, rtol=1e-6)
    rgb = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    with pytest.warns(UserWarning, match="luminance"):
        got = load_sar_image(tmp_path / "rgb.png")
    luma = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114  # ITU-R 601-2, as in Pillow
    np.testing.assert_allclose(np.sqrt(got), luma, atol=1.0)


def test_load_rejects_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_sar_image(tmp_path / "absent.npy")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        load_sar_image(tmp_path / "empty.png")
    (tmp_path / "junk.png").write_bytes(b"this is not a png at all" * 10)
    with pytest.raises(ValueError, match="could not read"):
        load_sar_image(tmp_path / "junk.png")
    (tmp_path / "junk.npy").write_bytes(b"\x93NUMPY garbage" * 10)
    with pytest.raises(ValueError, match="could not read"):
        load_sar_image(tmp_path / "junk.npy")
    (tmp_path / "junk.tif").write_bytes(b"II*\x00garbage" * 10)
    with pytest.raises(ValueError, match="junk.tif: (could not read|the image has no pixels)"):
        load_sar_image(tmp_path / "junk.tif")
    (tmp_path / "img.jpg").write_bytes(b"x" * 100)
    with pytest.raises(ValueError, match=r"unsupported .*\.npy, \.tif, \.tiff, \.png"):
        load_sar_image(tmp_path / "img.jpg")
    np.save(tmp_path / "rgb.npy", np.ones((3, 8, 8)))
    with pytest.raises(ValueError, match="2-D single-band"):
        load_sar_image(tmp_path / "rgb.npy")
    np.save(tmp_path / "neg.npy", -np.ones((8, 8)))
    with pytest.raises(ValueError, match="non-negative"):
        load_sar_image(tmp_path / "neg.npy")
    bad = np.ones((8, 8))
    bad[2, 2] = np.inf
    np.save(tmp_path / "inf.npy", bad)
    with pytest.raises(ValueError, match="NaN or infinite"):
        load_sar_image(tmp_path / "inf.npy")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="could not read"):
        load_sar_image(tmp_path / "obj.npy")  # never unpickles
    np.save(tmp_path / "none.npy", np.zeros((0, 8)))
    with pytest.raises(ValueError, match="no pixels"):
        load_sar_image(tmp_path / "none.npy")
    np.save(tmp_path / "ok.npy", np.ones((8, 8)))
    with pytest.raises(ValueError, match="input_kind"):
        load_sar_image(tmp_path / "ok.npy", "decibels")


def test_read_sar_image_says_how_pixels_were_read(tmp_path):
    rng = np.random.default_rng(1)
    inten = rng.gamma(4, 0.25, (20, 24)).astype(np.float32)
    tifffile.imwrite(tmp_path / "f.tif", inten)
    img = read_sar_image(tmp_path / "f.tif")
    assert (img.kind, img.quicklook, img.dtype) == ("intensity", False, "float32")
    assert img.describe() == "intensity (float32)"
    # Integer PNG/TIFF grey levels are quick-looks; "auto" reads them as amplitude, 8 or 16 bits.
    dn16 = (np.sqrt(inten) * 20000).astype(np.uint16)
    tifffile.imwrite(tmp_path / "q16.tif", dn16)
    img = read_sar_image(tmp_path / "q16.tif")
    assert (img.kind, img.quicklook) == ("amplitude", True)
    np.testing.assert_allclose(img.intensity, dn16.astype(np.float64) ** 2, rtol=1e-6)
    assert img.describe() == "16-bit amplitude quick-look (uncalibrated grey levels)"
    Image.fromarray((np.sqrt(inten) * 100).astype(np.uint8)).save(tmp_path / "q8.png")
    img = read_sar_image(tmp_path / "q8.png", "intensity")
    assert (img.kind, img.quicklook) == ("intensity", True)
    assert img.describe() == "8-bit intensity quick-look (uncalibrated grey levels)"
    # Integer .npy arrays come from processing code, not viewers: read as calibrated intensity.
    np.save(tmp_path / "i.npy", dn16)
    assert read_sar_image(tmp_path / "i.npy").quicklook is False
    slc = (rng.standard_normal((8, 8)) + 1j * rng.standard_normal((8, 8))).astype(np.complex64)
    np.save(tmp_path / "slc.npy", slc)
    assert read_sar_image(tmp_path / "slc.npy", "amplitude").kind == "complex"


def test_quicklook_gain_undoes_an_unknown_display_gain():
    rng = np.random.default_rng(2)
    scene = apply_speckle(simulate_reflectivity(128, rng), 4, rng).astype(np.float64)
    norm = SARNormalizer(-6.0, 2.0)
    ref = float(np.median(np.log(scene)))
    for display_gain in (1e-3, 1.0, 4e4):
        shown = scene * display_gain
        gain = quicklook_gain(shown, norm, ref)
        # The rescaled image is the scene itself, whatever gain the quick-look was made with.
        np.testing.assert_allclose(shown * gain, scene, rtol=1e-9)
        # Without a reference median, the 0.5-99.5 % log range is centred on the normaliser's range.
        centred = shown * quicklook_gain(shown, norm)
        lo, hi = np.percentile(np.log(centred), [0.5, 99.5])
        assert (lo + hi) / 2 == pytest.approx((norm.log_min + norm.log_max) / 2, abs=1e-9)
    # No-data zeros take no part in the statistics; an image of zeros has no level at all.
    with_border = np.pad(scene, 20)
    assert log_median(with_border) == pytest.approx(ref, abs=1e-12)
    assert log_range_centre(with_border) == pytest.approx(log_range_centre(scene), abs=1e-12)
    with pytest.raises(ValueError, match="zero everywhere"):
        quicklook_gain(np.zeros((8, 8)), norm, ref)
    with pytest.raises(ValueError, match="finite"):
        quicklook_gain(scene, norm, float("nan"))


def test_folder_of_quicklooks_and_mixed_folders(tmp_path):
    rng = np.random.default_rng(4)
    scenes = [apply_speckle(simulate_reflectivity(64, rng), 4, rng).astype(np.float64) for _ in range(2)]
    dns = [
        np.clip(np.rint(np.sqrt(s) / np.percentile(np.sqrt(s), 99) * 230), 1, 255).astype(np.uint8)
        for s in scenes
    ]
    display = tmp_path / "display"
    display.mkdir()
    for k, dn in enumerate(dns):
        Image.fromarray(dn).save(display / f"q{k}.png")
    # Only quick-looks: the normaliser is fitted on their grey levels, read as they are (display scale).
    ds = SARFolderDataset(display, image_size=64)
    dn2 = [dn.astype(np.float64) ** 2 for dn in dns]
    assert ds.normalizer == SARNormalizer.fit(dn2)
    np.testing.assert_allclose(ds[1][0].numpy(), ds.normalizer.to_model(dn2[1]), atol=1e-6)
    prep = ds.preprocessing()
    assert prep["scale"] == "display" and prep["log_median"] == pytest.approx(log_median(dn2))

    # Calibrated data and a quick-look together: the normaliser comes from the calibrated data only, and
    # the quick-look is brought onto it with the calibrated data's median.
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    np.save(mixed / "a.npy", scenes[0].astype(np.float32))
    Image.fromarray(dns[0]).save(mixed / "b.png")  # a quick-look of the same scene
    with pytest.warns(UserWarning, match=r"1 integer quick-look\(s\) among calibrated images .*b\.png"):
        ds = SARFolderDataset(mixed, image_size=64)
    calibrated = scenes[0].astype(np.float32)
    assert ds.normalizer == SARNormalizer.fit([calibrated]) and ds.preprocessing()["scale"] == "calibrated"
    gain = np.exp(log_median(calibrated) - np.median(np.log(dn2[0])))
    np.testing.assert_allclose(ds[1][0].numpy(), ds.normalizer.to_model(dn2[0] * gain), atol=1e-5)
    # So the quick-look's patch lands on its calibrated twin, 8-bit rounding and clipping aside.
    assert np.abs(ds[1][0].numpy() - ds[0][0].numpy()).mean() < 0.03
    with pytest.raises(ValueError, match="scale must be one of"):
        SARFolderDataset(mixed, scale="dB")

    # `trainers eval` of that checkpoint on a folder of the quick-look alone feeds the model the same patch.
    from trainers.dataspec import parse_data_spec
    from trainers.tasks import task_for

    alone = tmp_path / "alone"
    alone.mkdir()
    Image.fromarray(dns[0]).save(alone / "b.png")
    spec = parse_data_spec(f"sar:folder={alone}")
    with pytest.warns(UserWarning, match="quick-look"):
        evald = task_for("sar-baseline").dataset_for_eval(spec, ds.preprocessing(), {"image_size": 64})
    np.testing.assert_allclose(evald[0][0].numpy(), ds[1][0].numpy(), atol=1e-6)


# --------------------------------------------------------------------------------------- folder dataset
def test_folder_dataset_patches_and_skips(tmp_path):
    rng = np.random.default_rng(0)
    big = apply_speckle(simulate_reflectivity(256, rng), 4, rng)
    np.save(tmp_path / "big.npy", big)  # 4 patches of 128
    tifffile.imwrite(tmp_path / "mid.tif", big[:150, :140])  # 1 patch
    Image.fromarray(np.full((64, 64), 90, np.uint8)).save(tmp_path / "small.png")
    (tmp_path / "broken.png").write_bytes(b"not an image" * 20)
    (tmp_path / "notes.txt").write_text("ignored")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = SARFolderDataset(tmp_path, image_size=128)
    messages = " ".join(str(w.message) for w in caught)
    assert "small.png" in messages and "64x64" in messages
    assert "broken.png" in messages
    assert "notes.txt" not in messages
    assert len(ds) == 5 and [p.name for p in ds.files] == ["big.npy", "mid.tif"]
    x = ds[1]
    assert x.shape == (1, 128, 128) and x.dtype == torch.float32
    path, y0, x0 = ds.patch_origin(1)
    assert (path.name, y0, x0) == ("big.npy", 0, 128)
    np.testing.assert_array_equal(x[0].numpy(), ds.normalizer.to_model(big[0:128, 128:256]))
    # The normaliser is fitted on the folder; a given one is used as is.
    assert ds.normalizer == SARNormalizer.fit([big, big[:150, :140]])
    fixed = SARNormalizer(-8.0, 3.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds2 = SARFolderDataset(tmp_path, image_size=128, normalizer=fixed, stride=64)
    assert ds2.normalizer is fixed and len(ds2) == 9 + 1
    prep = json.loads(json.dumps(ds2.preprocessing()))
    assert prep["kind"] == "sar-log-intensity" and SARNormalizer.from_dict(prep) == fixed


def test_folder_dataset_bad_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="folder not found: .*nowhere"):
        SARFolderDataset(tmp_path / "nowhere")
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match=r"no usable SAR image in .*\.npy, \.tif, \.tiff, \.png"):
        SARFolderDataset(tmp_path)
    with pytest.raises(ValueError, match="input_kind"):
        SARFolderDataset(tmp_path, input_kind="db")


# -------------------------------------------------------------------------------------------------- assets
def test_example_sar_assets(tmp_path):
    sys.path.insert(0, str(ROOT / "assets"))
    try:
        import make_assets
    finally:
        sys.path.remove(str(ROOT / "assets"))
    shipped = ROOT / "assets" / "sar"
    for p in make_assets.make_sar(tmp_path):
        assert p.stat().st_size <= 600_000
        np.testing.assert_array_equal(load_sar_image(p), load_sar_image(shipped / p.name))
    intensity = load_sar_image(shipped / "scene_512_intensity.npy")
    assert intensity.shape == (512, 512) and intensity.min() >= 0
    with pytest.warns(UserWarning, match="scene_512_amplitude.png"):  # the PNG is a quick-look
        ds = SARFolderDataset(shipped, image_size=256)
    assert len(ds) == 8 and ds.scale == "calibrated"
    # Every patch is on the scale of the calibrated scene, none saturated (the PNG's were all 1 before).
    assert max(float((ds[i] >= 1).float().mean()) for i in range(len(ds))) < 0.05
