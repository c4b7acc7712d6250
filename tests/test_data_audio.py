"""Audio data: mel-IF and log-mel features against reference formulas and round trips, synthetic clips,
file loading and the folder dataset."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile as sf
import torch
from scipy import stats

from tests.helpers import write_case
from trainers.data.audio import (
    AudioFeatureConfig,
    AudioFolderDataset,
    LogMelFeatures,
    MelIFFeatures,
    SyntheticAudioDataset,
    features_from_dict,
    load_audio,
    make_features,
    synthesize_clip,
)

ROOT = Path(__file__).resolve().parents[1]
SR, N_FFT, HOP = 48000, 2048, 512


@pytest.fixture(scope="module")
def mel_if() -> MelIFFeatures:
    return MelIFFeatures(AudioFeatureConfig())


@pytest.fixture(scope="module")
def log_mel() -> LogMelFeatures:
    return LogMelFeatures(AudioFeatureConfig())


def tone(freq: float, seconds: float = 1.0, amp: float = 0.5, sr: int = SR) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def spectral_convergence(ref: np.ndarray, est: np.ndarray) -> float:
    s_ref = np.abs(librosa.stft(ref, n_fft=N_FFT, hop_length=HOP))
    s_est = np.abs(librosa.stft(est, n_fft=N_FFT, hop_length=HOP))
    return float(np.linalg.norm(s_ref - s_est) / np.linalg.norm(s_ref))


# --------------------------------------------------------------------------------------------- config
def test_config_defaults_and_dict_round_trip():
    c = AudioFeatureConfig()
    assert (c.sample_rate, c.n_fft, c.hop_length, c.n_mels, c.clip_seconds) == (48000, 2048, 512, 128, 1.0)
    assert c.n_samples == 48000 and c.n_frames == 94
    d = json.loads(json.dumps(c.to_dict()))
    assert AudioFeatureConfig.from_dict(d) == c
    with pytest.raises(ValueError, match="unknown audio feature parameters"):
        AudioFeatureConfig.from_dict({**d, "n_bins": 3})
    with pytest.raises(ValueError, match="n_mels"):
        AudioFeatureConfig(n_mels=0)
    with pytest.raises(ValueError, match="hop_length"):
        AudioFeatureConfig(hop_length=4096)
    with pytest.raises(ValueError, match="fmax"):
        AudioFeatureConfig(fmax=30000.0)
    with pytest.raises(ValueError, match="log_eps"):
        AudioFeatureConfig(log_eps=0.0)


# -------------------------------------------------------------------------------------------- mel-IF
def test_mel_if_shapes_and_ranges(mel_if):
    noise = np.random.default_rng(0).standard_normal(SR).astype(np.float32) * 0.3
    for wav in (tone(440), noise):
        f = mel_if.encode(wav)
        assert f.shape == (2, 128, 94) and f.dtype == np.float32
        assert f[0].min() >= 0.0
        assert f[1].min() >= -1.0 and f[1].max() <= 1.0
    assert mel_if.channels == 2
    np.testing.assert_array_equal(mel_if.encode(np.zeros(SR, np.float32))[0], 0.0)


def test_mel_magnitude_matches_librosa_melspectrogram(mel_if):
    wav = synthesize_clip("note", np.random.default_rng(1))
    mel = librosa.feature.melspectrogram(y=wav, sr=SR, n_fft=N_FFT, hop_length=HOP, n_mels=128, power=1.0)
    c = mel_if.config
    expected = np.log1p(mel / c.log_eps) / np.log1p(c.log_ref / c.log_eps)
    np.testing.assert_allclose(mel_if.encode(wav)[0], expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("freq", [440.0, 1000.0])
def test_instantaneous_frequency_of_a_tone(mel_if, freq):
    f = mel_if.encode(tone(freq))
    band = int(np.argmax(f[0, :, 47]))
    centres = librosa.mel_frequencies(n_mels=130, fmin=0.0, fmax=SR / 2)[1:-1]
    assert abs(centres[band] - freq) < 60  # the loudest band is the tone's own
    advance = 2 * np.pi * freq * HOP / SR
    expected = np.angle(np.exp(1j * advance)) / np.pi  # wrapped to (-1, 1]
    for b in (band - 1, band, band + 1):
        got = f[1, b, 3:-3]  # away from the zero-padded clip edges
        err = np.angle(np.exp(1j * np.pi * (got - expected)))  # circular difference
        assert np.abs(err).max() < 1e-3, (b, got[:4], expected)


@pytest.mark.parametrize("freq", [440.0, 1000.0])
@pytest.mark.parametrize("refine_iters", [0, 4])
def test_tone_round_trip_spectral_convergence(freq, refine_iters):
    # refine_iters=0 is the plain inversion (IF → cumulative phase, iSTFT); 4 is the default decoder.
    feats = MelIFFeatures(AudioFeatureConfig(phase_refine_iters=refine_iters))
    wav = tone(freq)
    out = feats.decode(feats.encode(wav))
    assert out.shape == (SR,) and out.dtype == np.float32
    assert spectral_convergence(wav, out) < 0.1


def test_round_trip_of_a_synthetic_note_is_close(mel_if):
    wav = synthesize_clip("note", np.random.default_rng(0))
    assert spectral_convergence(wav, mel_if.decode(mel_if.encode(wav))) < 0.3


def test_encode_pads_short_clips_and_rejects_bad_waveforms(mel_if):
    wav = tone(440, seconds=0.5)
    np.testing.assert_array_equal(mel_if.encode(wav), mel_if.encode(np.pad(wav, (0, SR - len(wav)))))
    np.testing.assert_array_equal(mel_if.encode(torch.from_numpy(wav)), mel_if.encode(wav))
    with pytest.raises(ValueError, match="at most 48000"):
        mel_if.encode(tone(440, seconds=1.5))
    with pytest.raises(ValueError, match="mono"):
        mel_if.encode(np.zeros((2, 1000), np.float32))
    bad = tone(440)
    bad[10] = np.nan
    with pytest.raises(ValueError, match="finite"):
        mel_if.encode(bad)


def test_decode_accepts_tensors_and_rejects_bad_shapes(mel_if):
    f = mel_if.encode(tone(1000))
    np.testing.assert_array_equal(mel_if.decode(torch.from_numpy(f)), mel_if.decode(f))
    with pytest.raises(ValueError, match=r"shape \(2, 128, 94\)"):
        mel_if.decode(f[:1])
    with pytest.raises(ValueError, match="NaN"):
        mel_if.decode(np.full_like(f, np.nan))


# ------------------------------------------------------------------------------------------- log-mel
def test_log_mel_round_trip(log_mel, mel_if):
    wav = synthesize_clip("note", np.random.default_rng(3))
    f = log_mel.encode(wav)
    assert f.shape == (1, 128, 94) and log_mel.channels == 1
    np.testing.assert_array_equal(f[0], mel_if.encode(wav)[0])
    out = log_mel.decode(f)
    assert out.shape == (SR,) and out.dtype == np.float32
    np.testing.assert_array_equal(out, log_mel.decode(f))  # deterministic Griffin-Lim
    again = log_mel.encode(out)
    assert np.abs(again - f).mean() < 0.05
    assert np.corrcoef(again.ravel(), f.ravel())[0, 1] > 0.95


def test_make_features_and_rebuild_from_dict():
    cfg = AudioFeatureConfig(n_mels=64)
    for kind, cls in (("mel-if", MelIFFeatures), ("log-mel", LogMelFeatures)):
        feats = make_features(kind, cfg)
        assert isinstance(feats, cls)
        prep = json.loads(json.dumps(feats.preprocessing()))
        assert prep["kind"] == kind
        rebuilt = features_from_dict(prep)
        assert type(rebuilt) is cls and rebuilt.config == cfg
        assert cls.from_dict(prep).config == cfg
        assert cls.from_dict(cfg.to_dict()).config == cfg
    with pytest.raises(ValueError, match="unknown audio feature kind"):
        make_features("cqt", cfg)
    with pytest.raises(ValueError, match="not 'mel-if'"):
        MelIFFeatures.from_dict(LogMelFeatures(cfg).preprocessing())


# ----------------------------------------------------------------------------------------- synthesis
@pytest.mark.parametrize("kind", ["note", "chirp", "percussive", "noise"])
def test_synthesized_clips(kind):
    a = synthesize_clip(kind, np.random.default_rng(5))
    b = synthesize_clip(kind, np.random.default_rng(5))
    c = synthesize_clip(kind, np.random.default_rng(6))
    assert a.shape == (48000,) and a.dtype == np.float32 and np.all(np.isfinite(a))
    assert 0.2 <= np.abs(a).max() <= 0.9 + 1e-6
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_chirp_sweeps_monotonically():
    for seed in range(3):
        wav = synthesize_clip("chirp", np.random.default_rng(seed))
        spec = np.abs(librosa.stft(wav, n_fft=N_FFT, hop_length=HOP))
        active = spec.max(axis=0) > 0.1 * spec.max()
        peak_bins = spec.argmax(axis=0)[active]
        assert active.sum() > 20
        assert abs(stats.spearmanr(np.arange(len(peak_bins)), peak_bins).statistic) > 0.9


def test_synthesize_rejects_unknown_kind():
    with pytest.raises(ValueError, match="unknown synthetic clip kind"):
        synthesize_clip("speech", np.random.default_rng(0))


# -------------------------------------------------------------------------------------------- datasets
def test_synthetic_dataset(mel_if, log_mel):
    ds = SyntheticAudioDataset(n_clips=5, features=mel_if, seed=2)
    assert len(ds) == 5
    x = ds[3]
    assert isinstance(x, torch.Tensor) and x.shape == (2, 128, 94) and x.dtype == torch.float32
    np.testing.assert_array_equal(x.numpy(), mel_if.encode(ds.waveform(3)))
    assert [ds.kind(i) for i in range(5)] == ["note", "chirp", "percussive", "noise", "note"]
    same = SyntheticAudioDataset(n_clips=5, features=mel_if, seed=2, cache=False)
    other = SyntheticAudioDataset(n_clips=5, features=mel_if, seed=3)
    torch.testing.assert_close(same[3], x, rtol=0, atol=0)
    assert not torch.equal(other[3], x)
    assert SyntheticAudioDataset(2, features=log_mel)[0].shape == (1, 128, 94)
    assert json.loads(json.dumps(ds.preprocessing()))["kind"] == "mel-if"
    only = SyntheticAudioDataset(n_clips=2, features=mel_if, kinds=["chirp"])
    assert {only.kind(i) for i in range(2)} == {"chirp"}
    with pytest.raises(ValueError, match="kinds"):
        SyntheticAudioDataset(2, features=mel_if, kinds=["speech"])
    with pytest.raises(IndexError):
        ds[5]


# ---------------------------------------------------------------------------------------------- loading
def test_load_audio_resamples_mixes_and_pads(tmp_path):
    t = np.arange(int(0.6 * 44100)) / 44100
    left, right = 0.4 * np.sin(2 * np.pi * 1000 * t), 0.2 * np.sin(2 * np.pi * 1000 * t)
    sf.write(tmp_path / "stereo.wav", np.stack([left, right], axis=1), 44100, subtype="FLOAT")
    y = load_audio(tmp_path / "stereo.wav")
    assert y.shape == (48000,) and y.dtype == np.float32
    n_real = int(round(0.6 * 48000))
    assert np.abs(y[n_real + 50 :]).max() == 0.0  # zero-padded to 1 s
    body = y[2000 : n_real - 2000]
    assert np.abs(body).max() == pytest.approx(0.3, rel=0.02)  # mean of the channels
    spectrum = np.abs(np.fft.rfft(body * np.hanning(len(body))))
    assert np.fft.rfftfreq(len(body), 1 / 48000)[spectrum.argmax()] == pytest.approx(1000, abs=3)
    sf.write(tmp_path / "long.flac", tone(440, 1.5), 48000)
    assert load_audio(tmp_path / "long.flac").shape == (72000,)


def wav(samples: np.ndarray, subtype: str | None = None):
    """A writer of `samples` as a 48 kHz sound file: the content of a bad-file case."""
    return lambda path: sf.write(path, samples, SR, subtype=subtype)


# file, content (None: absent; bytes; a sound-file writer), message
BAD_AUDIO_FILES = [
    ("absent.wav", None, "not found"),
    ("empty.wav", b"", "empty"),
    ("junk.wav", b"RIFF....WAVEjunk" * 20, "could not read audio file"),
    ("short.wav", wav(tone(440, 0.1)), r"short.wav is 0.10 s long; need at least 0.25 s"),
    ("silent.wav", wav(np.zeros(SR, np.float32)), "silent.wav is silent"),
    ("quiet.wav", wav(tone(440, 1.0, amp=1e-5), "FLOAT"), "is silent"),
    ("inf.wav", wav(np.where(np.arange(SR) == 100, np.inf, tone(440)), "FLOAT"), "NaN or infinite"),
]


@pytest.mark.parametrize("name, content, message", BAD_AUDIO_FILES, ids=[c[0] for c in BAD_AUDIO_FILES])
def test_load_audio_bad_files(tmp_path, name, content, message):
    path = write_case(tmp_path / name, content)
    with pytest.raises(FileNotFoundError if content is None else ValueError, match=message):
        load_audio(path)


def test_audio_folder_dataset(tmp_path, mel_if):
    sf.write(tmp_path / "a.wav", tone(440, 2.5), 48000)  # windows at 0, 0.5, 1, 1.5 s
    gap = np.concatenate([tone(1000, 1.0), np.zeros(48000, np.float32)])
    sf.write(tmp_path / "b.flac", gap, 48000)  # windows at 0 and 0.5 s; the silent one at 1 s is skipped
    sf.write(tmp_path / "c.ogg", tone(660, 1.0, sr=22050), 22050)  # exactly one window
    sf.write(tmp_path / "short.wav", tone(440, 0.1), 48000)
    sf.write(tmp_path / "silent.wav", np.zeros(48000, np.float32), 48000)
    (tmp_path / "broken.wav").write_bytes(b"not audio" * 30)
    (tmp_path / "notes.txt").write_text("ignored")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = AudioFolderDataset(tmp_path, features=mel_if)
    messages = " ".join(str(w.message) for w in caught)
    for name in ("short.wav", "silent.wav", "broken.wav"):
        assert name in messages
    assert "notes.txt" not in messages
    assert "1 silent 1 s window(s) of b.flac skipped" in messages
    assert ds.silent_windows == 1 and len(ds) == 7
    assert [ds.window_info(i)[0].name for i in range(7)] == ["a.wav"] * 4 + ["b.flac"] * 2 + ["c.ogg"]
    assert [ds.window_info(i)[1] for i in range(4)] == pytest.approx([0.0, 0.5, 1.0, 1.5])
    assert ds.clip_source(3) == ds.window_info(3)
    np.testing.assert_allclose(ds.waveform(1), tone(440, 2.5)[24000:72000], atol=1 / 32768)  # 16-bit
    assert np.abs(ds.waveform(5)[24000 + 10 :]).max() == 0.0  # b.flac's second half-window is silence
    x = ds[6]
    assert x.shape == (2, 128, 94)
    np.testing.assert_array_equal(x.numpy(), mel_if.encode(ds.waveform(6)))


def test_audio_folder_bad_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="folder not found: .*nowhere"):
        AudioFolderDataset(tmp_path / "nowhere")
    (tmp_path / "readme.txt").write_text("no audio")
    with pytest.raises(ValueError, match=r"no usable audio in .*\.wav, \.flac, \.ogg, \.mp3"):
        AudioFolderDataset(tmp_path)


# ------------------------------------------------------------------------------------------------ assets
def test_example_audio_assets(tmp_path, mel_if, asset_maker):
    shipped = ROOT / "assets" / "audio"
    for p in asset_maker.make_audio(tmp_path):
        assert p.stat().st_size <= 300_000
        fresh, sr = sf.read(p)
        kept, sr_kept = sf.read(shipped / p.name)
        assert sr == sr_kept == 48000
        np.testing.assert_array_equal(fresh, kept)
    ds = AudioFolderDataset(shipped, features=mel_if)
    assert len(ds) == 3  # note (1.5 s): windows at 0 and 0.5 s; percussion (1 s): one window
