"""Real recordings cut into windows: any rate, channel count, length and sample format; silent windows
skipped and counted; `hop=`; a split that keeps a file's windows together; eval over every window."""

from __future__ import annotations

import math
import warnings

import librosa
import numpy as np
import pytest
import soundfile as sf
import torch

from models import create_model
from trainers.cli import evaluate_checkpoint
from trainers.data.audio import AudioFeatureConfig, AudioFolderDataset, make_features, window_starts
from trainers.data.spec import parse_data_spec
from trainers.metrics.audio import log_spectral_distance, spectral_convergence
from trainers.training.tasks import AUDIO_DECODED_CLIPS, AudioTask

SR = 48000
# Small features (0.5 s clips at 8 kHz) keep the model and every decode fast.
SMALL = AudioFeatureConfig(sample_rate=8000, n_fft=256, hop_length=64, n_mels=32, clip_seconds=0.5)


def tone(seconds: float, rate: int, freq: float = 440.0, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def folder_of(tmp_path, **files: tuple[np.ndarray, int]):
    for name, (y, rate) in files.items():
        sf.write(tmp_path / name, y, rate, subtype="FLOAT" if name.endswith(".wav") else None)
    return tmp_path


def quiet_build(*args, **kwargs) -> AudioFolderDataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return AudioFolderDataset(*args, **kwargs)


# ---------------------------------------------------------------------------------------------- windowing
@pytest.mark.parametrize(
    "n, hop, starts",
    [
        (67200, 24000, [0, 24000]),  # 1.4 s: the second window reaches the end (zero-padded)
        (120000, 24000, [0, 24000, 48000, 72000]),  # 2.5 s
        (48000, 24000, [0]),  # exactly one window
        (14400, 24000, [0]),  # 0.3 s: one zero-padded window
        (59000, 48000, [0]),  # hop = window: a tail of 11000 samples ...
        (61000, 48000, [0, 48000]),  # ... shorter than min_tail (12000) is left out, a longer one kept
    ],
)
def test_window_starts_cover_the_signal(n, hop, starts):
    assert window_starts(n, 48000, hop, min_tail=12000) == starts


def test_a_stereo_22k_recording_of_1_4_s_gives_two_windows(tmp_path):
    rate = 22050
    t = np.arange(int(1.4 * rate)) / rate
    stereo = np.stack([0.4 * np.sin(2 * np.pi * 1000 * t), 0.2 * np.sin(2 * np.pi * 1000 * t)], axis=1)
    sf.write(tmp_path / "speech.wav", stereo, rate, subtype="FLOAT")
    ds = AudioFolderDataset(tmp_path)  # default features: 1 s windows at 48 kHz, hop 0.5 s
    assert len(ds) == 2 and ds.silent_windows == 0
    assert [ds.window_info(i) for i in range(2)] == [(tmp_path / "speech.wav", s) for s in (0.0, 0.5)]
    n_out = round(len(t) * SR / rate)  # 1.4 s at 48 kHz
    mono = librosa.resample(stereo.mean(axis=1), orig_sr=rate, target_sr=SR, res_type="soxr_hq")[:n_out]
    np.testing.assert_allclose(ds.waveform(0), mono[:SR], atol=1e-6)
    second = ds.waveform(1)
    assert second.dtype == np.float32 and second.shape == (SR,)
    np.testing.assert_allclose(second[: n_out - 24000], mono[24000:], atol=1e-6)  # 0.5 ... 1.4 s
    assert not second[n_out - 24000 :].any()  # then zero-padded to 1 s
    assert np.abs(second[2000:40000]).max() == pytest.approx(0.3, rel=0.02)  # the mean of the channels
    assert ds[1].shape == (2, 128, 94)


def test_a_short_file_is_one_zero_padded_window_and_a_long_one_every_hop(tmp_path):
    folder_of(tmp_path, **{"a_short.wav": (tone(0.3, SR), SR), "b_long.flac": (tone(2.5, 16000), 16000)})
    ds = AudioFolderDataset(tmp_path, hop_s=0.25)
    assert [round(ds.window_info(i)[1], 2) for i in range(len(ds))] == [0.0] + [0.25 * k for k in range(7)]
    assert ds.window_info(0)[0].name == "a_short.wav"
    w = ds.waveform(0)
    assert np.abs(w[:14400]).max() > 0.25 and not w[14400:].any()
    assert ds.summary() == "8 windows of 1 s every 0.25 s from 2 file(s) at 48000 Hz"


def test_silent_windows_are_skipped_counted_and_said(tmp_path):
    gap = np.concatenate([tone(1.0, SR), np.zeros(2 * SR, np.float32), tone(1.0, SR)])  # 4 s: 7 windows
    hum = tone(1.0, SR, amp=1e-3)  # −63 dBFS: a file, but every window of it is silence
    folder_of(tmp_path, **{"gap.wav": (gap, SR), "hum.wav": (hum, SR), "zero.wav": (np.zeros(SR), SR)})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = AudioFolderDataset(tmp_path)
    messages = [str(w.message) for w in caught]
    # gap.wav: windows at 0, 0.5 and 2.5, 3.0 s hold the tones; 1.0, 1.5, 2.0 s are silence.
    assert [ds.window_info(i)[1] for i in range(len(ds))] == [0.0, 0.5, 2.5, 3.0]
    assert ds.silent_windows == 4  # 3 of gap.wav, 1 of hum.wav (zero.wav is refused as a silent file)
    assert any("hum.wav: every 1 s window of it is silent (below -60 dBFS)" in m for m in messages)
    assert any("zero.wav is silent" in m for m in messages)
    note = next(m for m in messages if "skipped (RMS below" in m)
    assert note.startswith("4 silent 1 s window(s) of gap.wav, hum.wav skipped") and "meaningless" in note
    assert ds.summary().endswith(ds.silence_note())


def test_quiet_recordings_are_kept_as_they_are(tmp_path):
    quiet = tone(1.0, SR, amp=0.004)  # about −51 dBFS RMS: quiet, not silent
    folder_of(tmp_path, **{"quiet.wav": (quiet, SR)})
    ds = AudioFolderDataset(tmp_path)
    np.testing.assert_array_equal(ds.waveform(0), quiet)  # no loudness normalisation


@pytest.mark.parametrize("subtype, lsb", [("PCM_U8", 2**-7), ("PCM_16", 2**-15), ("PCM_24", 2**-23),
                                          ("PCM_32", 2**-31), ("FLOAT", 0), ("DOUBLE", 0)])  # fmt: skip
def test_every_sample_format_reads_the_same_waveform(tmp_path, subtype, lsb):
    y = tone(1.2, SR)
    sf.write(tmp_path / "x.wav", y, SR, subtype=subtype)
    ds = AudioFolderDataset(tmp_path)
    assert len(ds) == 2
    np.testing.assert_allclose(ds.waveform(0), y[:SR], atol=lsb + 1e-7)


def test_a_webm_opus_recording_in_a_folder_is_decoded(tmp_path):
    import av

    with av.open(str(tmp_path / "mic.webm"), "w", format="webm") as container:
        stream = container.add_stream("libopus", rate=SR, layout="mono")
        frame = av.AudioFrame.from_ndarray(tone(1.2, SR)[None], format="flt", layout="mono")
        frame.sample_rate = SR
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    ds = AudioFolderDataset(tmp_path)
    assert len(ds) == 2 and ds.window_info(1)[0].name == "mic.webm"
    spectrum = np.abs(np.fft.rfft(ds.waveform(0)))
    assert abs(np.argmax(spectrum) - 440) < 3  # 1 Hz bins


def test_bad_windows_and_hops_are_named(tmp_path):
    folder_of(tmp_path, **{"a.wav": (tone(1.0, SR), SR)})
    with pytest.raises(ValueError, match=r"hop must be more than 0 and at most the 1 s window"):
        AudioFolderDataset(tmp_path, hop_s=1.5)
    with pytest.raises(ValueError, match=r"window_s=2 s, but the model hears clips of 1 s"):
        AudioFolderDataset(tmp_path, window_s=2.0)
    with pytest.raises(ValueError, match=r"invalid value '0' for data key 'hop'"):
        parse_data_spec(f"audio:folder={tmp_path},hop=0")


def test_max_windows_stops_reading_files(tmp_path):
    folder_of(tmp_path, **{"a.wav": (tone(2.0, SR), SR), "b.wav": (tone(2.0, SR), SR)})
    ds = AudioFolderDataset(tmp_path, max_windows=2)
    assert len(ds) == 2 and len(ds.files) == 1


# --------------------------------------------------------------------------------------- task: split, eval
@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model(
        "audio-vae",
        widths=[4, 8, 8, 8, 8],
        latent_dim=8,
        n_mels=SMALL.n_mels,
        n_frames=SMALL.n_frames,
        preprocessing=make_features("mel-if", SMALL).preprocessing(),
    )
    folder = tmp_path_factory.mktemp("ckpt") / "audio-vae"
    model.save_pretrained(folder)
    return folder


def test_hop_key_and_a_split_that_keeps_files_whole(tmp_path):
    rate = SMALL.sample_rate
    folder_of(tmp_path, **{f"{k}.wav": (tone(1.0 + k * 0.5, rate, 300 + 100 * k), rate) for k in range(4)})
    task = AudioTask("audio-vae")
    task._features = lambda preprocessing=None: make_features("mel-if", SMALL)  # small clips
    spec = parse_data_spec(f"audio:folder={tmp_path},hop=0.25,val=0.3")
    bundle = task.build_data(spec, {}, seed=0, device="cpu")
    ds = bundle.train.dataset
    assert ds.hop_s == 0.25 and len(ds) == 3 + 5 + 7 + 9  # 1, 1.5, 2, 2.5 s of 0.5 s windows every 0.25 s
    train_files = {ds.window_file(i) for i in bundle.train.indices}
    val_files = {ds.window_file(i) for i in bundle.val.indices}
    assert train_files and val_files and not train_files & val_files
    assert len(bundle.train) + len(bundle.val) == len(ds)
    assert bundle.val.metric_clips == AUDIO_DECODED_CLIPS and not hasattr(bundle.train, "metric_clips")
    assert len(ds._cache) == len(ds)  # every window's features made up front (torch path)
    np.testing.assert_allclose(ds[5].numpy(), ds.features.encode(ds.waveform(5)), atol=1e-5)


def test_one_file_splits_into_windows_that_do_not_overlap(tmp_path):
    rate = SMALL.sample_rate
    folder_of(tmp_path, **{"one.wav": (tone(3.0, rate), rate)})
    task = AudioTask("audio-vae")
    task._features = lambda preprocessing=None: make_features("mel-if", SMALL)
    bundle = task.build_data(parse_data_spec(f"audio:folder={tmp_path},val=2"), {}, seed=0, device="cpu")
    ds = bundle.train.dataset
    val_start = min(ds.window_info(i)[1] for i in bundle.val.indices)
    assert len(bundle.val) == 2
    assert all(ds.window_info(i)[1] + SMALL.clip_seconds <= val_start for i in bundle.train.indices)


def test_eval_averages_over_every_window_of_every_file(tmp_path, tiny_ckpt):
    rate = 11025  # resampled to the checkpoint's 8 kHz
    files = {"a.wav": (tone(2.5, rate, 500), rate), "b.wav": (tone(0.3, rate, 900), rate)}
    folder_of(tmp_path, **files)
    result = evaluate_checkpoint(tiny_ckpt, f"audio:folder={tmp_path},hop=0.25", device="cpu")
    features = make_features("mel-if", SMALL)
    ds = AudioFolderDataset(tmp_path, features, hop_s=0.25)
    assert result["n"] == len(ds) == 10 > AUDIO_DECODED_CLIPS  # 9 windows of a.wav + 1 of b.wav

    from models import load_pretrained

    model = load_pretrained(tiny_ckpt).eval()
    sc, lsd, rt_sc = [], [], []
    kw = {"n_fft": SMALL.n_fft, "hop_length": SMALL.hop_length}
    for i in range(len(ds)):
        ref = ds.waveform(i)
        with torch.no_grad():
            est = features.decode(model.reconstruct(ds[i][None]).float()[0].numpy())
        sc.append(spectral_convergence(ref, est, **kw))
        lsd.append(log_spectral_distance(ref, est, **kw))
        rt_sc.append(spectral_convergence(ref, features.decode(ds[i].numpy()), **kw))
    assert result["spectral_convergence"] == pytest.approx(np.mean(sc), rel=1e-4)
    assert result["lsd"] == pytest.approx(np.mean(lsd), rel=1e-4)
    assert result["roundtrip_spectral_convergence"] == pytest.approx(np.mean(rt_sc), rel=1e-4)
    # The fixed few of training-time validation would have missed most windows: not the same figure.
    assert not math.isclose(np.mean(sc[:AUDIO_DECODED_CLIPS]), np.mean(sc), rel_tol=1e-3)
