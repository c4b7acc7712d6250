"""SAR data: speckle statistics, per-image dB normalisation, simulated and folder datasets, file loading."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from scipy import stats

from tests.helpers import write_case
from trainers.data.sar import (
    KNOT_PCTS,
    KNOT_X,
    PREPROCESSING_KIND,
    SARFolderDataset,
    SyntheticSARDataset,
    apply_speckle,
    denormalize_db,
    legacy_preprocessing_note,
    load_sar_image,
    natural_images,
    normalize_db,
    normalize_patches,
    patchify,
    read_sar_image,
    simulate_reflectivity,
    simulate_scene,
    x_to_db,
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
        apply_speckle(np.ones((4, 4)), float("nan"), rng)
    with pytest.raises(ValueError, match="non-negative"):
        apply_speckle(-np.ones((4, 4)), 4, rng)
    # Real multi-looked products have non-integer ENL (e.g. 4.4): Gamma speckle takes it as it is.
    ratio = apply_speckle(np.ones((256, 256)), 4.4, rng).astype(np.float64)
    assert ratio.mean() ** 2 / ratio.var() == pytest.approx(4.4, rel=0.05)


# -------------------------------------------------------------------------------------------- scenes
def test_natural_images_load_offline_from_scikit_image():
    images = natural_images()
    assert len(images) >= 10
    for a in images:
        assert a.ndim == 2 and a.dtype == np.float32 and a.min() >= 0.0 and a.max() <= 1.0 and a.std() > 0.02


def test_simulated_scenes_are_speckled_heavy_tailed_and_reproducible():
    kinds, looks, textured = set(), set(), 0
    for s in range(24):
        scene = simulate_scene(64, np.random.default_rng([5, s]))
        again = simulate_scene(64, np.random.default_rng([5, s]))
        np.testing.assert_array_equal(scene.intensity, again.intensity)
        assert scene.intensity.dtype == np.float32 and scene.intensity.shape == (64, 64)
        assert np.all(scene.intensity[scene.valid] > 0) and np.all(scene.intensity[~scene.valid] == 0)
        assert scene.reflectivity.max() >= 10**2.0  # bright point targets (>= 20 dB) in every scene
        kinds.add(scene.kind)
        looks.add(scene.looks)
        textured += scene.texture_shape is not None
    assert kinds == {"geometric", "natural", "blend"} and looks == {1.0, 2.0, 3.0, 4.0}
    assert 4 <= textured <= 20
    # A fixed L is respected; the K texture makes intensity over a flat reflectivity heavier-tailed than
    # Gamma speckle alone (kurtosis above the Gamma's 3 + 6/L).
    assert simulate_scene(32, np.random.default_rng(1), looks=2.5).looks == 2.5
    rng = np.random.default_rng(0)
    nu = 2.0
    k = np.ones((256, 256)) * rng.gamma(nu, 1 / nu, (256, 256)) * rng.gamma(4, 0.25, (256, 256))
    assert stats.kurtosis(k.ravel(), fisher=False) > 3 + 6 / 4


def test_uncached_full_size_scenes_are_recomputed_identically():
    """The uncached path (what a set too large to keep takes every epoch) gives full-size items in [0, 1]
    and the same item on every call. What a scene costs is a figure of benchmarks/data.py, not a test."""
    ds = SyntheticSARDataset(3, 256, seed=3, cache=False)
    for i in (1, 2):
        x, valid, db_range = ds[i]
        assert x.shape == valid.shape == (1, 256, 256) and 0.0 <= float(x.min()) <= float(x.max()) <= 1.0
        torch.testing.assert_close(ds[i], (x, valid, db_range), rtol=0, atol=0)
    assert not torch.equal(ds[1][0], ds[2][0])


# -------------------------------------------------------------------------------------- normalisation
def test_normalize_db_formula_mask_and_round_trip():
    rng = np.random.default_rng(0)
    intensity = rng.gamma(2.0, 0.5, (64, 64)) * 10 ** rng.uniform(-3, 1, (64, 64))
    intensity[:4] = 0.0
    intensity[10, 10] = np.nan
    intensity[11, 11] = np.inf
    x, valid, knots = normalize_db(intensity)
    db = 10 * np.log10(intensity[valid])
    n = db.size
    assert valid.sum() == 64 * 60 - 2 and not valid[:4].any() and not valid[10, 10] and not valid[11, 11]
    assert len(knots) == len(KNOT_X) == len(KNOT_PCTS) == 4 and np.all(np.diff(knots) > 0)
    # The outer knots sit in the gap at 0.25 % / 99.75 % of the sorted dB values: exactly that many clip.
    assert (db <= knots[0]).sum() == int(0.0025 * n) and (db >= knots[3]).sum() == int(0.0025 * n)
    # The inner knots are the 1st / 99th percentile values themselves.
    s = np.sort(db)
    assert knots[1] == pytest.approx(s[int(0.01 * n)], abs=1e-5)
    assert knots[2] == pytest.approx(s[n - 1 - int(0.01 * n)], abs=1e-5)
    # x is linear in dB between the knots (reference: the segment formula written out), clipped outside.
    seg = np.clip(np.searchsorted(knots, db, "right") - 1, 0, 2)
    k, xs = np.asarray(knots), np.asarray(KNOT_X)
    want = xs[seg] + (db - k[seg]) * (xs[seg + 1] - xs[seg]) / (k[seg + 1] - k[seg])
    np.testing.assert_allclose(x[valid], np.clip(want, 0, 1), atol=2e-6)
    assert x.dtype == np.float32 and np.all(x[~valid] == 0)
    assert ((x[valid] == 0) | (x[valid] == 1)).mean() <= 0.005
    p1, p99 = np.percentile(x[valid], [1, 99], method="lower")
    assert p1 == pytest.approx(0.04, abs=1e-6) and p99 >= 0.96 - 1e-3
    inside = valid & (x > 0) & (x < 1)
    np.testing.assert_allclose(denormalize_db(x, knots)[inside], intensity[inside], rtol=1e-4)
    # Scaling the image (another calibration or display gain) only shifts the knots: x is unchanged.
    x2, _, knots2 = normalize_db(intensity * 1e4)
    np.testing.assert_allclose(x2, x, atol=1e-5)
    np.testing.assert_allclose(np.subtract(knots2, knots), 40.0, atol=1e-3)
    # A mask given by the caller is honoured too.
    mask = np.ones_like(valid)
    mask[:, :32] = False
    assert not normalize_db(intensity, mask)[1][:, :32].any()
    # Two percentiles give the older affine map of the 0.5/99.5 % percentiles (old checkpoints).
    xa, _, (lo, hi) = normalize_db(intensity, pcts=(0.5, 99.5))
    assert (db <= lo).sum() == int(0.005 * n) and (db >= hi).sum() == int(0.005 * n)
    np.testing.assert_allclose(xa[valid], np.clip((db - lo) / (hi - lo), 0, 1), atol=1e-5)


def test_piecewise_map_inverts_exactly():
    """x -> dB -> x is the identity on [0, 1] (numpy and torch, one knot vector or a batch)."""
    knots = (-31.5, -24.0, 3.2, 9.9)
    x = np.linspace(0.0, 1.0, 1001)
    db = x_to_db(x, knots)
    assert np.all(np.diff(db) > 0)
    np.testing.assert_allclose(db[[0, 40, 960, 1000]], knots, atol=1e-9)  # the knots sit at KNOT_X
    np.testing.assert_allclose(np.interp(db, knots, KNOT_X), x, atol=1e-12)  # the forward map of the dB
    # A normalised image -> intensity in its own units -> the same map again gives x back, every valid
    # pixel (clipped ones included: they invert to the outer knots).
    rng = np.random.default_rng(3)
    image = rng.exponential(1.0, (96, 96)) * 10 ** rng.uniform(-2, 2, (96, 96))  # 1-look, 40 dB of texture
    xi, valid, ki = normalize_db(image)
    again = np.interp(10 * np.log10(denormalize_db(xi, ki).astype(np.float64)), ki, KNOT_X)
    np.testing.assert_allclose(again[valid], xi[valid], atol=2e-6)
    # torch agrees with numpy, for one vector and for a (B, K) batch.
    torch.testing.assert_close(x_to_db(torch.from_numpy(x), knots), torch.from_numpy(db))
    batch = torch.tensor([knots, (0.0, 10.0, 20.0, 30.0)], dtype=torch.float64)
    xt = torch.from_numpy(np.stack([x, x]))
    got = x_to_db(xt, batch)
    torch.testing.assert_close(got[0], torch.from_numpy(db))
    np.testing.assert_allclose(got[1].numpy(), np.interp(x, KNOT_X, (0.0, 10.0, 20.0, 30.0)), atol=1e-9)
    np.testing.assert_allclose(denormalize_db(x, knots), 10 ** (db / 10), rtol=1e-6)
    with pytest.raises(ValueError, match="2 dB values"):
        x_to_db(x, (0.0, 1.0, 2.0))


def test_denormalize_db_on_torch_batches():
    x = torch.rand(3, 1, 8, 8)
    ranges = torch.tensor([[-20.0, 5.0], [0.0, 40.0], [10.0, 11.0]])  # old affine [db_lo, db_hi]
    i = denormalize_db(x, ranges)
    for b in range(3):
        lo, hi = ranges[b]
        torch.testing.assert_close(i[b], 10 ** ((x[b] * (hi - lo) + lo) / 10))
        np.testing.assert_allclose(denormalize_db(x[b].numpy(), ranges[b].numpy()), i[b].numpy(), rtol=1e-5)
    with pytest.raises(ValueError, match="2 dB ranges for a batch"):
        denormalize_db(x, ranges[:2])
    knots = torch.tensor([[-30.0, -25.0, 0.0, 8.0], [1.0, 2.0, 3.0, 4.0], [0.0, 0.5, 60.0, 61.0]])
    i = denormalize_db(x, knots)
    for b in range(3):
        want = np.interp(x[b].numpy().astype(np.float64), KNOT_X, knots[b].numpy().astype(np.float64))
        np.testing.assert_allclose(i[b].numpy(), 10 ** (want / 10), rtol=1e-5)
        np.testing.assert_allclose(denormalize_db(x[b].numpy(), knots[b].numpy()), i[b].numpy(), rtol=1e-5)


def test_normalize_db_quantised_levels_and_edge_cases():
    # 8-bit grey levels: whole levels sit at the percentiles; they must not all clip.
    rng = np.random.default_rng(1)
    dn = np.clip(np.rint(np.sqrt(rng.gamma(1.0, 1.0, (128, 128))) * 40), 1, 255).astype(np.float64)
    x, valid, _ = normalize_db(dn**2)
    assert ((x == 0) | (x == 1)).mean() <= 0.005
    p1, p99 = np.percentile(x, [1, 99])
    assert p99 - p1 >= 0.90
    # A constant image is mid-grey (the map falls back to affine between the outer knots), not an error;
    # an image of no-data is an error.
    x, _, knots = normalize_db(np.full((8, 8), 2.0))
    assert np.all(x == 0.5) and knots[-1] - knots[0] == pytest.approx(1.0) and np.all(np.diff(knots) > 0)
    with pytest.raises(ValueError, match="no valid pixel"):
        normalize_db(np.zeros((8, 8)))
    with pytest.raises(ValueError, match="percentiles"):
        normalize_db(np.ones((8, 8)), pcts=(1.0, 0.5, 99.0, 99.5))
    with pytest.raises(ValueError, match="2 dB values"):
        normalize_db(np.ones((8, 8)), pcts=(1.0, 50.0, 99.0))
    with pytest.raises(ValueError, match="real-valued"):
        normalize_db(np.ones((8, 8), np.complex64))


def test_legacy_preprocessing_note():
    affine = legacy_preprocessing_note({"kind": "sar-db-per-image", "low_pct": 0.5, "high_pct": 99.5})
    assert "older affine" in affine and "0.5-99.5 %" in affine and "piecewise-linear" in affine
    assert "different normalisation" in legacy_preprocessing_note({"kind": "sar-log-intensity", "log_min": 0})
    assert "different normalisation" in legacy_preprocessing_note({"log_min": -3.2, "log_max": 4.1})
    assert legacy_preprocessing_note({"kind": PREPROCESSING_KIND}) == ""
    assert legacy_preprocessing_note(None) == ""


# -------------------------------------------------------------------------------------- synthetic dataset
def test_synthetic_dataset_items():
    ds = SyntheticSARDataset(n_images=6, image_size=64, looks=4, seed=1)
    assert len(ds) == 6
    x, valid, db_range = ds[2]
    assert x.shape == valid.shape == (1, 64, 64) and x.dtype == valid.dtype == torch.float32
    assert db_range.shape == (4,) and db_range.dtype == torch.float32
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    scene = ds.scene(2)
    ref_x, ref_valid, ref_range = normalize_db(scene.intensity, scene.valid)
    np.testing.assert_array_equal(x[0].numpy(), ref_x)
    np.testing.assert_array_equal(valid[0].numpy(), ref_valid.astype(np.float32))
    np.testing.assert_allclose(db_range.numpy(), ref_range, rtol=1e-6)
    assert scene.looks == 4.0
    # The speckled image is the clean one times unit-mean speckle.
    ratio = ds.intensity(2)[ref_valid] / ds.clean_intensity(2)[ref_valid]
    assert ratio.mean() == pytest.approx(1.0, rel=0.05)
    assert not torch.equal(ds[0][0], ds[1][0])
    with pytest.raises(IndexError):
        ds[6]
    with pytest.raises(ValueError, match="looks"):
        SyntheticSARDataset(2, 32, looks=0.5)


def test_synthetic_dataset_is_deterministic_per_seed_and_index():
    a = SyntheticSARDataset(n_images=4, image_size=64, seed=7)
    b = SyntheticSARDataset(n_images=4, image_size=64, seed=7, cache=False)
    c = SyntheticSARDataset(n_images=4, image_size=64, seed=8)
    for i in (3, 1, 3):
        torch.testing.assert_close(a[i], b[i], rtol=0, atol=0)
    assert not torch.equal(a[0][0], c[0][0])
    # A longer set with the same seed starts with the same images.
    longer = SyntheticSARDataset(n_images=8, image_size=64, seed=7)
    torch.testing.assert_close(longer[2], a[2], rtol=0, atol=0)
    # Default L is drawn from 1-4 per scene.
    assert {SyntheticSARDataset(40, 16, seed=0).scene(i).looks for i in range(40)} == {1.0, 2.0, 3.0, 4.0}


def test_synthetic_preprocessing():
    prep = json.loads(
        json.dumps(SyntheticSARDataset(n_images=4, image_size=64, looks=2, seed=0).preprocessing())
    )
    assert prep == {
        "kind": "sar-db-piecewise",
        "knot_pcts": [0.25, 1.0, 99.0, 99.75],
        "knot_x": [0.0, 0.04, 0.96, 1.0],
        "looks": 2.0,
        "scene": "mixed",
    }
    old = SyntheticSARDataset(n_images=2, image_size=32, looks=2, pcts=(0.5, 99.5))
    assert old.preprocessing()["kind"] == "sar-db-per-image" and old[0][2].shape == (2,)
    assert SyntheticSARDataset(2, 32).preprocessing()["looks"] == "1-4"
    single = SyntheticSARDataset(2, 32, scene="single-look").preprocessing()
    assert single["looks"] == 1.0 and single["scene"] == "single-look"


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


def test_normalize_patches_carry_the_whole_image_range():
    rng = np.random.default_rng(0)
    img = rng.gamma(4, 0.25, (64, 96)) * np.linspace(0.01, 10, 96)
    x, valid, ranges = normalize_patches(img, size=32)
    assert x.shape == valid.shape == (6, 1, 32, 32) and ranges.shape == (6, 4)
    full_x, _, full_range = normalize_db(img)
    np.testing.assert_array_equal(x[4, 0].numpy(), full_x[32:64, 32:64])
    np.testing.assert_allclose(ranges.numpy(), np.tile(full_range, (6, 1)), rtol=1e-6)


# ---------------------------------------------------------------------------------------------- loading
def test_load_npy_tif_kinds(tmp_path):
    rng = np.random.default_rng(0)
    inten = rng.gamma(4, 0.25, (40, 30)).astype(np.float32)
    np.save(tmp_path / "i.npy", inten)
    np.testing.assert_array_equal(load_sar_image(tmp_path / "i.npy"), inten)
    np.testing.assert_allclose(
        load_sar_image(tmp_path / "i.npy", "amplitude"), inten.astype(np.float64) ** 2, rtol=1e-6
    )
    np.save(tmp_path / "db.npy", 10 * np.log10(inten) - 12.0)  # mostly negative floats: dB
    img = read_sar_image(tmp_path / "db.npy")
    assert img.kind == "db" and img.detected
    np.testing.assert_allclose(img.intensity, inten * 10**-1.2, rtol=1e-4)
    slc = (rng.standard_normal((40, 30)) + 1j * rng.standard_normal((40, 30))).astype(np.complex64)
    np.save(tmp_path / "slc.npy", slc)
    np.testing.assert_allclose(load_sar_image(tmp_path / "slc.npy"), np.abs(slc) ** 2, rtol=1e-5)
    np.save(tmp_path / "slc128.npy", slc.astype(np.complex128))
    np.testing.assert_allclose(load_sar_image(tmp_path / "slc128.npy"), np.abs(slc) ** 2, rtol=1e-5)
    np.save(tmp_path / "band.npy", inten[None])
    assert load_sar_image(tmp_path / "band.npy").shape == (40, 30)
    tifffile.imwrite(tmp_path / "i.tif", inten[:, :, None])
    np.testing.assert_array_equal(load_sar_image(tmp_path / "i.tif"), inten)
    tifffile.imwrite(tmp_path / "amp.tiff", np.sqrt(inten))
    np.testing.assert_allclose(load_sar_image(tmp_path / "amp.tiff", "amplitude"), inten, rtol=1e-5)


def test_iq_pairs_and_bands(tmp_path):
    rng = np.random.default_rng(2)
    iq = rng.integers(-300, 300, (24, 20, 2)).astype(np.int16)
    power = iq[..., 0].astype(np.float64) ** 2 + iq[..., 1].astype(np.float64) ** 2
    tifffile.imwrite(tmp_path / "iq.tif", iq, photometric="minisblack", planarconfig="contig")
    np.save(tmp_path / "iq_first.npy", np.ascontiguousarray(np.moveaxis(iq, -1, 0)))
    for name in ("iq.tif", "iq_first.npy"):
        img = read_sar_image(tmp_path / name)
        assert img.kind == "complex" and img.dtype == "complex int16 I/Q" and img.band is None
        np.testing.assert_allclose(img.intensity[img.valid], power[power > 0], rtol=1e-6)
    # Two float bands are bands unless "complex" is stated; a band choice reads one band.
    pair = rng.gamma(4, 0.25, (2, 16, 16)).astype(np.float32)
    np.save(tmp_path / "two.npy", pair)
    assert read_sar_image(tmp_path / "two.npy").kind == "intensity"
    np.testing.assert_allclose(
        read_sar_image(tmp_path / "two.npy", "complex").intensity, (pair**2).sum(0), rtol=1e-5
    )
    img = read_sar_image(tmp_path / "two.npy", band=1)
    np.testing.assert_array_equal(img.intensity, pair[1])
    assert img.band == 1 and img.n_bands == 2 and "band 2 of 2" in img.describe()
    # A multi-band GeoTIFF with its GDAL no-data value, bands first or last.
    stack = rng.gamma(4, 0.25, (3, 16, 18)).astype(np.float32)
    stack[:, :, :3] = -9999.0
    tifffile.imwrite(tmp_path / "planar.tif", stack, photometric="minisblack", planarconfig="separate",
                     extratags=[(42113, "s", 0, "-9999", True)])  # fmt: skip
    tifffile.imwrite(tmp_path / "contig.tif", np.moveaxis(stack, 0, -1), photometric="minisblack",
                     planarconfig="contig", extratags=[(42113, "s", 0, "-9999", True)])  # fmt: skip
    for name in ("planar.tif", "contig.tif"):
        img = read_sar_image(tmp_path / name, band=2)
        assert img.kind == "intensity" and img.n_bands == 3 and not img.valid[:, :3].any()
        np.testing.assert_array_equal(img.intensity[:, 3:], stack[2, :, 3:])
        assert img.nodata_fraction == pytest.approx(3 / 18)
        with pytest.raises(ValueError, match="band 3 asked for, but the file has 3 bands"):
            read_sar_image(tmp_path / name, band=3)
    with pytest.raises(ValueError, match="needs complex samples or I/Q pairs"):
        read_sar_image(tmp_path / "planar.tif", "complex")


def test_no_data_is_masked_not_refused(tmp_path):
    rng = np.random.default_rng(3)
    a = rng.gamma(4, 0.25, (32, 32)).astype(np.float32)
    a[:4] = 0.0
    a[5, 5], a[6, 6], a[7, 7] = np.nan, np.inf, -np.inf
    a[8, 8] = -0.01  # thermal-noise removal leaves a few negative σ⁰
    np.save(tmp_path / "a.npy", a)
    img = read_sar_image(tmp_path / "a.npy")
    assert img.kind == "intensity" and int((~img.valid).sum()) == 4 * 32 + 4
    assert np.all(img.intensity[~img.valid] == 0) and img.negative_fraction == pytest.approx(1 / 1024)
    db = 10 * np.log10(np.where(a > 0, a, 1.0))
    db[:4] = np.nan
    db[9, 9] = -9999.0  # a dB fill value
    np.save(tmp_path / "db.npy", db.astype(np.float32) - 15)
    img = read_sar_image(tmp_path / "db.npy", "db")
    assert not img.valid[:4].any() and not img.valid[9, 9] and img.valid[10:].all()


def test_load_png_amplitude_8_and_16_bit_and_rgb(tmp_path):
    amp8 = np.arange(256, dtype=np.uint8).reshape(16, 16)
    Image.fromarray(amp8).save(tmp_path / "a8.png")
    img = read_sar_image(tmp_path / "a8.png")
    assert img.kind == "amplitude" and img.detected and not img.valid[0, 0]  # grey level 0: no-data
    np.testing.assert_array_equal(img.intensity, amp8.astype(np.float32) ** 2)
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


# file, content (None: absent; bytes; an array saved with np.save), load_sar_image options, message
BAD_SAR_FILES = [
    ("absent.npy", None, {}, "not found"),
    ("empty.png", b"", {}, "empty"),
    ("junk.png", b"this is not a png at all" * 10, {}, "could not read"),
    ("junk.npy", b"\x93NUMPY garbage" * 10, {}, "could not read"),
    ("junk.tif", b"II*\x00garbage" * 10, {}, "junk.tif: (could not read|the image has no pixels)"),
    ("img.jpg", b"x" * 100, {}, r"unsupported .*\.npy, \.tif, \.tiff, \.png"),
    ("cube.npy", np.ones((3, 8, 8, 2)), {}, "2-D image or a stack of bands"),
    (
        "neg.npy",
        -np.ones((8, 8)),
        {"input_kind": "intensity"},
        "100 % of the values are negative, which intensity cannot be",
    ),
    ("far.npy", np.linspace(-190, 150, 64).reshape(8, 8), {}, "not a plausible dB range"),
    ("nan.npy", np.full((8, 8), np.nan), {}, "every pixel is no-data"),
    ("obj.npy", np.array([{"a": 1}], dtype=object), {}, "could not read"),  # never unpickles
    ("none.npy", np.zeros((0, 8)), {}, "no pixels"),
    ("ok.npy", np.ones((8, 8)), {"input_kind": "decibels"}, "input_kind"),
    ("ok.npy", np.ones((8, 8)), {"band": 1}, "single band"),
    ("ok.npy", np.ones((8, 8)), {"band": -1}, "band must be"),
]


@pytest.mark.parametrize(
    "name, content, options, message",
    BAD_SAR_FILES,
    ids=[f"{case[0]}{case[2] or ''}" for case in BAD_SAR_FILES],
)
def test_load_rejects_bad_files(tmp_path, name, content, options, message):
    path = write_case(tmp_path / name, content)
    with pytest.raises(FileNotFoundError if content is None else ValueError, match=message):
        load_sar_image(path, **options)


# --------------------------------------------------------------------------------------- folder dataset
def test_folder_dataset_patches_ranges_and_skips(tmp_path):
    rng = np.random.default_rng(0)
    big = apply_speckle(simulate_reflectivity(256, rng), 4, rng)
    big[:, :100] = 0.0  # no-data: patches at x=0 are 100/128 no-data and skipped
    np.save(tmp_path / "big.npy", big)
    mid = big[:150, 100:240] * 1e5  # another calibration: its own range
    tifffile.imwrite(tmp_path / "mid.tif", mid)  # 1 patch
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
    assert len(ds) == 3 and [p.name for p in ds.files] == ["big.npy", "mid.tif"]
    assert [ds.patch_origin(i)[1:] for i in range(3)] == [(0, 128), (128, 128), (0, 0)]
    x, valid, db_range = ds[1]
    assert x.shape == valid.shape == (1, 128, 128) and x.dtype == torch.float32
    ref_x, ref_valid, ref_range = normalize_db(big)  # the whole image's range
    np.testing.assert_array_equal(x[0].numpy(), ref_x[128:256, 128:256])
    np.testing.assert_allclose(db_range.numpy(), ref_range, rtol=1e-6)
    mid_range = ds[2][2].numpy()
    np.testing.assert_allclose(mid_range, normalize_db(mid)[2], rtol=1e-6)
    prep = json.loads(json.dumps(ds.preprocessing()))
    assert prep["kind"] == PREPROCESSING_KIND == "sar-db-piecewise" and prep["input_kind"] == "auto"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert len(SARFolderDataset(tmp_path, image_size=128, stride=64)) == 3 * 2 + 1


def test_folder_dataset_bad_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="folder not found: .*nowhere"):
        SARFolderDataset(tmp_path / "nowhere")
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match=r"no usable SAR image in .*\.npy, \.tif, \.tiff, \.png"):
        SARFolderDataset(tmp_path)
    with pytest.raises(ValueError, match="input_kind"):
        SARFolderDataset(tmp_path, input_kind="decibel")


# -------------------------------------------------------------------------------------------------- assets
def test_example_sar_assets(tmp_path, asset_maker):
    shipped = ROOT / "assets" / "sar"
    for p in asset_maker.make_sar(tmp_path):
        assert p.stat().st_size <= 600_000
        np.testing.assert_array_equal(load_sar_image(p), load_sar_image(shipped / p.name))
    intensity = load_sar_image(shipped / "scene_512_intensity.npy")
    assert intensity.shape == (512, 512) and intensity.min() >= 0
    ds = SARFolderDataset(shipped, image_size=256)
    assert len(ds) == 8
    # Every patch, quick-look or float, fills [0, 1] without saturating (the PNG's were all 1 once).
    for i in range(len(ds)):
        x = ds[i][0]
        assert float(((x == 0) | (x == 1)).float().mean()) < 0.03 and float(x.std()) > 0.08


# ------------------------------------------------------------------------------- single-look scenes, splits
def test_single_look_scenes_have_exponential_speckle_texture_and_bright_targets() -> None:
    """Speckle of ENL 1 (intensity / reflectivity ~ Exp(1)), a Gamma texture on every scene (the intensity
    over a flat region is K-distributed, its ENL below 1), point targets 25+ dB above the median."""
    from trainers.data.sar import simulate_single_look_scene

    ratios, spans, medians = [], [], []
    for seed in range(6):
        scene = simulate_single_look_scene(128, np.random.default_rng(seed))
        assert scene.looks == 1.0 and scene.texture_shape is not None
        assert 0.8 <= scene.texture_shape <= 12.0
        ok = scene.valid
        ratios.append(scene.intensity[ok] / scene.reflectivity[ok])
        db = 10 * np.log10(scene.reflectivity[ok])
        spans.append(db.max() - np.median(db))
        medians.append(np.median(10 * np.log10(np.maximum(scene.intensity[ok], 1e-12))))
    speckle = np.concatenate(ratios)
    assert abs(speckle.mean() - 1) < 0.02 and abs(speckle.mean() ** 2 / speckle.var() - 1) < 0.05
    assert stats.kstest(speckle[:20000], "expon").statistic < 0.02
    assert min(spans) > 25.0
    assert all(-30 < m < 0 for m in medians)  # sigma0 of land and sea, in dB
    # K-distributed: a constant reflectivity under texture and speckle has ENL < 1.
    rng = np.random.default_rng(0)
    k = rng.gamma(2.0, 0.5, 200_000) * rng.exponential(1.0, 200_000)
    assert k.mean() ** 2 / k.var() < 0.7


def test_synthetic_sets_draw_natural_images_from_disjoint_pools(monkeypatch) -> None:
    """Training and validation draw from the 'train' source images, the built-in test set from the held-out
    ones, so its figures are on photographs no model saw."""
    import trainers.data.sar as sar
    from trainers.data.spec import parse_data_spec
    from trainers.training.tasks import SARTask

    assert set(sar.IMAGE_POOLS["train"]).isdisjoint(sar.IMAGE_POOLS["test"])
    assert sorted(sar.IMAGE_POOLS["train"] + sar.IMAGE_POOLS["test"]) == list(range(len(sar.NATURAL_IMAGES)))
    seen: dict[str, set[int]] = {"train": set(), "test": set()}
    real = sar.natural_images

    def recording() -> tuple[np.ndarray, ...]:
        images = real()

        class Spy(tuple):
            def __getitem__(self, i):
                seen[current].add(int(i))
                return tuple.__getitem__(self, i)

        return Spy(images)

    monkeypatch.setattr(sar, "natural_images", recording)
    task = SARTask("sar-baseline")
    spec = parse_data_spec("sar:synthetic,n=24,size=32,val=8,scene=single-look")
    current = "train"
    bundle = task.build_data(spec, {"image_size": 32}, 0)
    for i in range(len(bundle.val)):
        bundle.val[i]
    current = "test"
    test = task.dataset_for_eval(spec, {}, {"image_size": 32})
    for i in range(len(test)):
        test[i]
    assert bundle.train.pool == "train" and test.pool == "test"
    assert seen["train"] and seen["test"]
    assert seen["train"] <= set(sar.IMAGE_POOLS["train"]) and seen["test"] <= set(sar.IMAGE_POOLS["test"])
    with pytest.raises(ValueError, match="contradicts scene=single-look"):
        SyntheticSARDataset(4, image_size=32, looks=4, scene="single-look")


def test_folder_training_splits_by_image_and_a_single_image_cannot_be_split(tmp_path: Path) -> None:
    from trainers.data.spec import parse_data_spec
    from trainers.training.tasks import SARTask

    rng = np.random.default_rng(0)
    for k in range(4):
        np.save(tmp_path / f"scene{k}.npy", rng.gamma(1.0, 0.05 * (k + 1), (64, 96)).astype(np.float32))
    task = SARTask("sar-baseline")
    bundle = task.build_data(parse_data_spec(f"sar:folder={tmp_path},size=32,val=0.25"), {}, 0)
    ds = bundle.train.dataset
    train_images = {ds.patch_image(i) for i in bundle.train.indices}
    val_images = {ds.patch_image(i) for i in bundle.val.indices}
    assert train_images and val_images and train_images.isdisjoint(val_images)
    assert len(bundle.train) + len(bundle.val) == len(ds) == 4 * 6
    one = tmp_path / "one"
    one.mkdir()
    np.save(one / "only.npy", rng.gamma(1.0, 0.05, (64, 96)).astype(np.float32))
    with pytest.raises(ValueError, match="holds one usable image, so it cannot be split"):
        task.build_data(parse_data_spec(f"sar:folder={one},size=32"), {}, 0)


def test_a_12000_pixel_square_png_reads_without_pillows_bomb_warning_and_a_real_bomb_is_refused(tmp_path):
    """The studio showed Pillow's "possible decompression bomb" warning for a legitimate 12k PNG scene."""
    from PIL.Image import DecompressionBombWarning

    from tests.test_memory_bombs import png_bomb

    with warnings.catch_warnings():
        warnings.simplefilter("error", DecompressionBombWarning)
        image = read_sar_image(png_bomb(tmp_path / "scene.png", 12000, 90))
    assert image.intensity.shape == (12000, 12000) and image.valid.all()
    with pytest.raises(ValueError, match="too many pixels to decode safely"):
        read_sar_image(png_bomb(tmp_path / "bomb.png", 30000))
