"""The torch.stft features (``encode_batch``) against the numpy/librosa reference (``encode``), and the
batched fill of the data sets that uses them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainers.data.audio import (
    SYNTH_KINDS,
    AudioFeatureConfig,
    SyntheticAudioDataset,
    make_features,
    synthesize_clip,
)
from trainers.data.spec import parse_data_spec
from trainers.training.tasks import AudioTask

CFG = AudioFeatureConfig()


@pytest.fixture(scope="module")
def clips() -> np.ndarray:
    """Two clips of every synthetic kind plus a pure tone and a clip with silence in it."""
    wavs = [synthesize_clip(k, np.random.default_rng(s), CFG) for k in SYNTH_KINDS for s in range(2)]
    t = np.arange(CFG.n_samples) / CFG.sample_rate
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    gap = tone.copy()
    gap[10000:30000] = 0
    return np.stack([*wavs, tone, gap])


def circular_gap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a − b| of two IF values (angles / π) on the circle, in units of π."""
    return np.abs(np.angle(np.exp(1j * np.pi * (a - b)))) / np.pi


@pytest.mark.parametrize("kind", ["mel-if", "log-mel"])
def test_float64_torch_features_match_the_reference(clips, kind):
    features = make_features(kind, CFG)
    ref = np.stack([features.encode(w) for w in clips])
    got = features.encode_batch(torch.from_numpy(clips))
    assert got.dtype == torch.float32 and tuple(got.shape) == ref.shape
    got = got.numpy()
    np.testing.assert_allclose(got[:, 0], ref[:, 0], atol=1e-6, rtol=0)
    if kind == "mel-if":
        assert circular_gap(got[:, 1], ref[:, 1]).max() < 1e-5  # every cell, silent ones too


def test_float32_torch_features_within_the_stated_tolerance(clips):
    features = make_features("mel-if", CFG)
    ref = np.stack([features.encode(w) for w in clips])
    got = features.encode_batch(clips, dtype=torch.float32).numpy()
    assert np.abs(got[:, 0] - ref[:, 0]).max() < 1e-3
    audible = ref[:, 0] > 0.2  # about 60 dB below a full-scale tone
    gaps = circular_gap(got[:, 1], ref[:, 1])[audible]
    assert np.median(gaps) < 1e-5 and np.quantile(gaps, 0.99) < 1e-3


def test_batches_are_padded_checked_and_run_where_asked(clips):
    features = make_features("log-mel", CFG)
    short = clips[0][: CFG.n_samples // 3]
    got = features.encode_batch(short)  # one 1-D waveform: a batch of one, zero-padded
    np.testing.assert_allclose(got[0].numpy(), features.encode(short), atol=1e-6)
    assert features.encode_batch(torch.from_numpy(clips[:2]), device="cpu").device.type == "cpu"
    with pytest.raises(ValueError, match="a clip holds at most 48000"):
        features.encode_batch(np.zeros((1, CFG.n_samples + 1), np.float32))
    bad = clips[:1].copy()
    bad[0, 7] = np.nan
    with pytest.raises(ValueError, match="finite"):
        features.encode_batch(bad)
    with pytest.raises(ValueError, match="shape"):
        features.encode_batch(np.zeros((2, 2, 10), np.float32))


def test_fill_makes_every_item_with_the_torch_path():
    features = make_features("mel-if", CFG)
    ds = SyntheticAudioDataset(6, features=features, seed=3)
    assert ds.fill(batch_size=4) == 6 and ds.fill() == 0
    for i in (0, 5):
        np.testing.assert_allclose(ds[i].numpy(), features.encode(ds.waveform(i)), atol=1e-5)
    assert SyntheticAudioDataset(2, features=features, cache=False).fill() == 0


def test_the_built_in_set_is_built_by_the_torch_path():
    task = AudioTask("audio-vae-mel")
    bundle = task.build_data(parse_data_spec("audio:n=6,val=2"), {}, seed=0, device="cpu")
    assert len(bundle.train._cache) == 6 and len(bundle.val._cache) == 2
    features = bundle.train.features
    np.testing.assert_allclose(bundle.train[4].numpy(), features.encode(bundle.train.waveform(4)), atol=1e-5)
