"""The Audio tab's pure functions on tiny real VAE checkpoints (small feature settings keep them fast)."""

from __future__ import annotations

import os
import re

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import librosa
import numpy as np
import pytest
import soundfile as sf
import torch

from models import create_model
from models.audio import compute_kl_divergence
from studio.context import StudioContext
from studio.views import audio as view
from trainers.data.audio import AudioFeatureConfig, make_features, synthesize_clip
from trainers.metrics import sanity
from trainers.metrics.audio import log_spectral_distance, spectral_convergence
from trainers.training.fastpath import prepare_for_inference

# A small STFT so each decode is a few ms; the views must read these from the checkpoint, not the defaults.
CFG = AudioFeatureConfig(sample_rate=8000, n_fft=256, hop_length=64, n_mels=32, clip_seconds=0.5)
BUILTIN = view.SOURCES[0]
UPLOAD = view.SOURCES[1]


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    from trainers.runs.store import RunStore

    root = tmp_path_factory.mktemp("studio")
    return StudioContext(runs_dir=root / "runs", store=RunStore(root / "runs"))


def _save(tmp_path_factory, variant: str, widths: list[int], kind: str) -> str:
    torch.manual_seed(0)
    model = create_model(
        variant,
        widths=widths,
        latent_dim=8,
        n_mels=CFG.n_mels,
        n_frames=CFG.n_frames,
        preprocessing=make_features(kind, CFG).preprocessing(),
    )
    folder = tmp_path_factory.mktemp(variant) / "ckpt"
    model.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def vae(tmp_path_factory):
    return _save(tmp_path_factory, "audio-vae", [4, 8, 8, 8, 8], "mel-if")


@pytest.fixture(scope="module")
def vae_mel(tmp_path_factory):
    return _save(tmp_path_factory, "audio-vae-mel", [4, 8, 8, 8], "log-mel")


@pytest.fixture(scope="module")
def frag_ckpt(tmp_path_factory):
    folder = tmp_path_factory.mktemp("frag") / "ckpt"
    create_model("fragment-dae", channels=[8, 8, 8]).save_pretrained(folder)
    return str(folder)


def tone(seconds: float, rate: int, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return (amplitude * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


@pytest.mark.parametrize("which, kind, channels", [("vae", "mel-if", 2), ("vae_mel", "log-mel", 1)])
def test_compare_builtin_clip_uses_the_checkpoint_features(request, ctx, which, kind, channels):
    folder = request.getfixturevalue(which)
    r = view.audio_compare(ctx, folder, BUILTIN, "chirp", 3)
    features = make_features(kind, CFG)
    wav = synthesize_clip("chirp", np.random.default_rng(3), CFG)

    assert r.sample_rate == CFG.sample_rate
    for w in (r.input, r.roundtrip, r.reconstruction):
        assert w.dtype == np.float32 and w.shape == (CFG.n_samples,)
    np.testing.assert_array_equal(r.input, wav)
    np.testing.assert_allclose(r.roundtrip, features.decode(features.encode(wav)), atol=1e-6)
    assert r.features.shape == (channels, CFG.n_mels, CFG.n_frames)

    model = prepare_for_inference(
        ctx.load_model(folder, "audio")
    )  # the tab's precision (trainers.training.fastpath)
    with torch.no_grad():
        mu, logvar = model.encode(torch.from_numpy(features.encode(wav))[None])
        recon = model.decode(mu)[0].numpy()
    np.testing.assert_allclose(r.recon_features, recon, atol=1e-6)
    np.testing.assert_allclose(r.reconstruction, features.decode(recon), atol=1e-5)

    table = {row[0]: row[1:] for row in r.table}
    est, rt = r.reconstruction, r.roundtrip
    kw = {"n_fft": CFG.n_fft, "hop_length": CFG.hop_length}
    # Each row says which way is better (registry); the KL term, a regulariser, says it has no better side.
    assert list(table) == [
        "spectral convergence ↓",
        "log-spectral distance (dB) ↓",
        "feature MSE ↓",
        "KL to the prior (nats) · no better side",
        "flag",
    ]
    assert table["spectral convergence ↓"] == pytest.approx(
        [spectral_convergence(wav, est, **kw), spectral_convergence(wav, rt, **kw), 1.0], abs=1e-4
    )  # the baseline column: silence scores exactly 1
    flat = sanity.flat_spectrum_lsd(wav, **kw)
    assert table["log-spectral distance (dB) ↓"] == pytest.approx(
        [log_spectral_distance(wav, est, **kw), log_spectral_distance(wav, rt, **kw), flat], abs=1e-3
    )
    assert table["feature MSE ↓"][0] == pytest.approx(
        float(np.mean((recon - features.encode(wav)) ** 2)), abs=1e-5
    )
    kl = table["KL to the prior (nats) · no better side"]
    assert kl[0] == pytest.approx(compute_kl_divergence(mu, logvar), abs=1e-3)
    assert kl[1:] == ["n/a: no latent (no model involved)"] * 2  # every n/a says why
    assert table["flag"][:2] == [sanity.flag_cell(r.flags), "none"]  # the round trip is not flagged

    traces = r.figure.data
    assert len(traces) == 2 * channels  # input and reconstruction; IF only for the 2-channel model
    np.testing.assert_allclose(np.asarray(traces[0].z), r.features[0], atol=1e-6)
    if channels == 2:
        assert r.figure.layout.coloraxis2.cmin == -1 and r.figure.layout.coloraxis2.cmax == 1
    else:
        assert any("Griffin-Lim" in n for n in r.notes)


def test_upload_at_another_rate_is_resampled_and_said_so(ctx, vae, tmp_path):
    rate = 16000
    y = tone(1.3, rate)
    path = tmp_path / "tone.wav"
    sf.write(path, y, rate, subtype="FLOAT")  # no 16-bit rounding, so the comparison can be tight
    r = view.audio_compare(ctx, vae, UPLOAD, upload=str(path), start=0.2)
    assert any(f"resampled from {rate} Hz to the model's {CFG.sample_rate} Hz" in n for n in r.notes)
    assert any("using 0.2–0.7 s" in n for n in r.notes)
    expected = librosa.resample(y, orig_sr=rate, target_sr=CFG.sample_rate, res_type="soxr_hq")
    i0 = int(0.2 * CFG.sample_rate)
    np.testing.assert_allclose(r.input, expected[i0 : i0 + CFG.n_samples], atol=1e-5)
    assert r.input.shape == r.reconstruction.shape == (CFG.n_samples,)


def test_short_upload_is_zero_padded(ctx, vae, tmp_path):
    path = tmp_path / "short.wav"
    sf.write(path, tone(0.3, CFG.sample_rate), CFG.sample_rate)
    r = view.audio_compare(ctx, vae, UPLOAD, upload=str(path))
    assert r.input.shape == (CFG.n_samples,)
    assert np.all(r.input[int(0.3 * CFG.sample_rate) :] == 0)
    assert any("zero-padded from 0.30 s" in n for n in r.notes)
    assert not any("resampled" in n for n in r.notes)


@pytest.mark.parametrize(
    "make, kwargs, message",
    [
        (None, {"checkpoint": None}, "no checkpoint chosen"),
        (None, {"upload": None}, "no audio file uploaded"),
        ("tiny", {}, "is 0.10 s long; need at least 0.25 s"),
        ("empty", {}, "is empty"),
        ("no-samples", {}, "'no-samples.wav' holds no audio samples (0 s long)"),
        ("garbage", {}, "could not read the audio file 'garbage.wav'"),
        ("silent", {}, "is silent"),
        ("long", {"start": 5.0}, "start must be between 0 and 1.00 s"),
        ("long", {"start": 0.9}, "only 0.10 s are left after 0.9 s"),
        (None, {"source": BUILTIN, "kind": "opera"}, "unknown built-in clip kind"),
        (None, {"source": BUILTIN, "seed": -2}, "clip seed must be a non-negative whole number"),
    ],
)
def test_bad_inputs_give_clear_messages(ctx, vae, tmp_path, make, kwargs, message):
    path = tmp_path / f"{make}.wav"
    if make == "tiny":
        sf.write(path, tone(0.1, 44100), 44100)
    elif make == "empty":
        path.write_bytes(b"")
    elif make == "no-samples":  # a valid WAV header with 0 frames
        sf.write(path, np.zeros(0, np.float32), CFG.sample_rate)
    elif make == "garbage":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 3000, np.uint8).tobytes())
    elif make == "silent":
        sf.write(path, np.zeros(CFG.sample_rate, np.float32), CFG.sample_rate)
    elif make == "long":
        sf.write(path, tone(1.0, CFG.sample_rate), CFG.sample_rate)
    args = {"checkpoint": vae, "source": UPLOAD, "upload": str(path) if make else None}
    args.update(kwargs)
    with pytest.raises(ValueError, match=re.escape(message)):
        view.audio_compare(ctx, **args)


def _webm_opus(path, wave: np.ndarray, rate: int = 48_000) -> None:
    """Encode `wave` the way a browser's MediaRecorder does: Opus in a WebM container."""
    import av

    with av.open(str(path), "w", format="webm") as container:
        stream = container.add_stream("libopus", rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(wave[None].astype(np.float32), format="flt", layout="mono")
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)


def test_a_browser_microphone_recording_is_decoded(ctx, vae, tmp_path):
    recording = tmp_path / "audio.wav"  # browsers name it .wav whatever it holds
    _webm_opus(recording, tone(0.8, 48_000))
    assert recording.read_bytes()[:4] == b"\x1a\x45\xdf\xa3"  # EBML: really WebM, not WAV
    r = view.audio_compare(ctx, vae, UPLOAD, upload=str(recording))
    assert any("decoded from" in n and "PyAV" in n for n in r.notes)
    heard = r.input[: int(0.7 * CFG.sample_rate)]  # resampled to the model's rate, then zero-padded
    spectrum = np.abs(np.fft.rfft(heard))
    peak_hz = np.argmax(spectrum) * CFG.sample_rate / heard.size
    assert abs(peak_hz - 440) < 5 and 0.2 < np.abs(heard).max() < 0.4


def test_other_containers_are_decoded_or_named(ctx, vae, tmp_path, monkeypatch):
    # A stereo WAV that soundfile is told it cannot read goes through the PyAV fallback, mixed to mono.
    path = tmp_path / "stereo.wav"
    y = tone(0.5, CFG.sample_rate)
    sf.write(path, np.stack([y, y], axis=1), CFG.sample_rate, subtype="PCM_16")
    real_info = sf.info

    def refuse(file, *args, **kwargs):
        if str(file) == str(path):
            raise sf.LibsndfileError(0, "pretend this container is unknown")
        return real_info(file, *args, **kwargs)

    monkeypatch.setattr(sf, "info", refuse)
    r = view.audio_compare(ctx, vae, UPLOAD, upload=str(path))
    assert any("decoded from wav with PyAV" in n for n in r.notes)
    np.testing.assert_allclose(r.input[: y.size], y, atol=2 / 32767)

    broken = tmp_path / "audio.webm"  # a recording cut off inside its header
    broken.write_bytes(b"\x1a\x45\xdf\xa3" + bytes(range(256)) * 8)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(ValueError, match="could not read the audio file 'audio.webm'"):
        view.audio_compare(ctx, vae, UPLOAD, upload=str(broken))
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_checkpoint_of_another_domain_is_refused(ctx, frag_ckpt):
    with pytest.raises(ValueError, match="this view needs an audio model"):
        view.audio_compare(ctx, frag_ckpt)


def test_samples_from_the_prior_are_seeded_and_leave_the_global_rng_alone(ctx, vae):
    state = torch.get_rng_state()
    r = view.audio_sample(ctx, vae, 3, seed=11)
    assert torch.equal(torch.get_rng_state(), state)
    gap = int(round(view.GAP_SECONDS * CFG.sample_rate))
    assert r.sample_rate == CFG.sample_rate
    assert len(r.clips) == 3 and all(c.shape == (CFG.n_samples,) for c in r.clips)
    assert r.audio.shape == (3 * CFG.n_samples + 2 * gap,)
    np.testing.assert_array_equal(r.audio[CFG.n_samples : CFG.n_samples + gap], 0)
    np.testing.assert_array_equal(r.audio[CFG.n_samples + gap : 2 * CFG.n_samples + gap], r.clips[1])

    model = ctx.load_model(vae, "audio")
    with torch.random.fork_rng():
        torch.manual_seed(11)
        expected = model.sample(3, "cpu").numpy()
    np.testing.assert_allclose(r.features, expected, atol=1e-6)
    features = make_features("mel-if", CFG)
    np.testing.assert_allclose(r.clips[2], features.decode(expected[2]), atol=1e-5)
    assert len(r.figure.data) == 3  # magnitude strip
    again = view.audio_sample(ctx, vae, 3, seed=11)
    np.testing.assert_array_equal(again.audio, r.audio)
    assert not np.array_equal(view.audio_sample(ctx, vae, 3, seed=12).features, r.features)
    for n, message in ((0, "between 1 and"), (99, "between 1 and"), (2.5, "whole number")):
        with pytest.raises(ValueError, match=message):
            view.audio_sample(ctx, vae, n)


def test_interpolation_runs_from_a_to_b(ctx, vae_mel):
    a = {"source": BUILTIN, "kind": "note", "seed": 1}
    b = {"source": BUILTIN, "kind": "percussive", "seed": 2}
    r = view.audio_interpolate(ctx, vae_mel, a, b, steps=4)
    assert len(r.clips) == 4 and r.features.shape == (4, 1, CFG.n_mels, CFG.n_frames)
    gap = int(round(view.GAP_SECONDS * CFG.sample_rate))
    assert r.audio.shape == (4 * CFG.n_samples + 3 * gap,)
    # The ends are the two clips' deterministic reconstructions decode(mu); the middle is their midpoint.
    features = make_features("log-mel", CFG)
    model = ctx.load_model(vae_mel, "audio")
    clips = [synthesize_clip(c["kind"], np.random.default_rng(c["seed"]), CFG) for c in (a, b)]
    with torch.no_grad():
        mu, _ = model.encode(torch.from_numpy(np.stack([features.encode(w) for w in clips])))
        ends = model.decode(mu).numpy()
        third = model.decode((2 * mu[0] + mu[1])[None] / 3)[0].numpy()
    np.testing.assert_allclose(r.features[0], ends[0], atol=1e-5)
    np.testing.assert_allclose(r.features[-1], ends[1], atol=1e-5)
    np.testing.assert_allclose(r.features[1], third, atol=1e-5)
    np.testing.assert_allclose(r.clips[1], features.decode(r.features[1]), atol=1e-5)
    assert [t.name for t in r.figure.data] == ["t=0.00", "t=0.33", "t=0.67", "t=1.00"]
    for steps in (1, 50):
        with pytest.raises(ValueError, match="number of steps must be between 2 and"):
            view.audio_interpolate(ctx, vae_mel, a, b, steps)


def test_player_is_int16_without_peak_normalisation():
    rate, data = view.player(8000, np.array([0.0, 0.25, -0.5, 2.0], np.float32))
    assert rate == 8000 and data.dtype == np.int16
    assert data.tolist() == [0, int(0.25 * 32767), int(-0.5 * 32767), 32767]


def test_build_tab_endpoints_and_errors_in_page(ctx, vae):
    import gradio as gr

    with gr.Blocks() as demo:
        view.build_tab(ctx)
    fns = {f.api_name: f for f in demo.fns.values() if f.api_name}
    expected = {"audio_compare", "audio_sample", "audio_interpolate", "audio_windows", "audio_checkpoints"}
    assert expected <= set(fns)
    out = fns["audio_compare"].fn(vae, BUILTIN, "noise", 0, None, 0.0)
    for rate, data in out[2:5]:
        assert rate == CFG.sample_rate and data.dtype == np.int16 and data.shape == (CFG.n_samples,)
    assert view.ROUNDTRIP_NOTE in out[0]  # the short player label is explained in the status
    status, _, table = fns["audio_windows"].fn(vae, [], BUILTIN, "noise", 0, None)
    assert "1 window(s) of 0.5 s" in status and table["headers"][0] == "window" and len(table["data"]) == 3
    with pytest.raises(gr.Error) as err:
        fns["audio_sample"].fn(None, 2, 0)
    assert "no checkpoint chosen" in err.value.message


@pytest.mark.parametrize(
    ("name", "content", "says"),
    [
        ("notes.txt", b"shopping list: milk, eggs\n" * 40, "it holds text"),
        ("photo.png", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8, "it is an archive, an image"),
        ("noise.bin", bytes(np.random.default_rng(1).integers(0, 256, 4000, np.uint8)), "no sound format"),
    ],
    ids=["text", "png", "noise"],
)
def test_a_file_of_another_type_gets_a_short_message_naming_it(ctx, vae, tmp_path, name, content, says):
    """Any file reaches the handler (the upload field accepts every type), which says in a sentence what
    the file seems to be and what to upload instead: no list of MIME types, no server path."""
    import gradio as gr

    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ValueError) as err:
        view.audio_compare(ctx, vae, UPLOAD, upload=str(path))
    message = str(err.value)
    assert message.startswith(f"could not read the audio file {name!r}: {says}")
    assert message.endswith("Upload a WAV, FLAC, OGG, MP3 or M4A file, or record one")
    assert str(tmp_path) not in message and "audio/" not in message and len(message) < 300
    with gr.Blocks() as demo:
        view.build_tab(ctx)
    compare = next(f for f in demo.fns.values() if f.api_name == "audio_compare")
    upload = compare.inputs[4]
    assert isinstance(upload, gr.File) and not upload.file_types  # the browser refuses no type itself


def test_a_new_upload_clears_the_previous_results(ctx, vae, tmp_path):
    """After a new (possibly bad) upload, no figure, player or table of the previous clip stays on screen
    under the new file's name: the upload's change empties them and says so."""
    import gradio as gr

    with gr.Blocks() as demo:
        view.build_tab(ctx)
    compare = next(f for f in demo.fns.values() if f.api_name == "audio_compare")
    upload, status = compare.inputs[4], compare.outputs[0]
    clears = [
        f for f in demo.fns.values() if list(f.inputs) == [upload] and f.outputs and f.outputs[0] is status
    ]
    assert len(clears) == 1
    results = [o for o in compare.outputs[1:]]
    assert set(map(id, results)) <= set(map(id, clears[0].outputs))  # figure, three players, table
    note, *values = clears[0].fn(str(tmp_path / "next_clip.wav"))
    assert "next\\_clip.wav" in note and "cleared" in note and values == [None] * len(values)
    note, *_ = clears[0].fn(None)
    assert note.startswith("Input removed")


@pytest.mark.parametrize("api_name", ["audio_compare", "audio_sample", "audio_interpolate"])
def test_a_bad_input_marks_only_the_status_line(ctx, api_name):
    """The spinner and the "Error" badge go on the section's status Markdown alone, so a failed run leaves
    the previous figure and players visible instead of covering each of them with an error."""
    import gradio as gr

    with gr.Blocks() as demo:
        view.build_tab(ctx)
    fn = next(f for f in demo.fns.values() if f.api_name == api_name)
    status = fn.outputs[0]
    assert isinstance(status, gr.Markdown) and status.value  # a hint, so the badge has a place to sit
    assert list(fn.show_progress_on) == [status]
    assert any(isinstance(o, gr.Plot) for o in fn.outputs)


def test_plots_have_no_label_badge_over_the_titles_and_players_have_short_labels(ctx):
    import gradio as gr

    with gr.Blocks() as demo:
        view.build_tab(ctx)
    plots = [b for b in demo.blocks.values() if isinstance(b, gr.Plot)]
    assert len(plots) == 4 and not any(p.show_label for p in plots)
    compare = next(f for f in demo.fns.values() if f.api_name == "audio_compare")
    labels = [o.label for o in compare.outputs if isinstance(o, gr.Audio)]
    assert labels == ["Input", "Round trip (ceiling)", "Reconstruction"]


@pytest.mark.parametrize("which", ["compare", "samples", "interpolation"])
def test_subplot_titles_fit_their_columns(ctx, vae, vae_mel, which):
    """With the most panels each figure can have, every title is narrower than its panel when the figure
    gets the ~900 px the tab gives it in a 1400 px window, and the top margin holds the first row's titles."""
    if which == "compare":
        fig = view.audio_compare(ctx, vae, BUILTIN).figure  # 2 channels: a second row of "IF · ..." titles
    elif which == "samples":
        fig = view.audio_sample(ctx, vae_mel, view.MAX_SAMPLES).figure
    else:
        clip = {"source": BUILTIN}
        fig = view.audio_interpolate(ctx, vae_mel, clip, clip, view.MAX_STEPS).figure
    cols = {"compare": 2, "samples": view.MAX_SAMPLES, "interpolation": view.MAX_STEPS}[which]
    width_px = 900 - 80  # minus the colour bar and the mel-band axis
    column_px = width_px * (1 - 0.02 * (cols - 1)) / cols
    assert len(fig.layout.annotations) == len(fig.data) >= cols
    for ann in fig.layout.annotations:
        assert ann.font.size <= view.TITLE_FONT_SIZE
        assert 0.6 * ann.font.size * len(ann.text) < column_px, ann.text  # 0.6 em: a wide character
    assert fig.layout.margin.t >= 2 * view.TITLE_FONT_SIZE


def test_every_window_of_a_2_5_s_upload_is_scored_per_checkpoint(ctx, vae, vae_mel, tmp_path):
    rate = CFG.sample_rate
    y = tone(2.5, rate)
    y[int(1.0 * rate) : int(1.5 * rate)] = 0  # the window at 1.0 s is silence
    path = tmp_path / "speech.wav"
    sf.write(path, y, rate, subtype="FLOAT")
    r = view.audio_windows(ctx, [vae, vae_mel], UPLOAD, upload=str(path))
    assert r.starts == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0])  # 0.5 s windows of the small CFG
    labels = list(r.scores)
    assert len(labels) == 3 and labels[-1] == "round trip"
    assert r.headers[0] == "window" and len(r.headers) == 1 + 2 * 3
    assert all(h.endswith("↓") for h in r.headers[1:])  # both figures: lower is better (registry)
    assert [row[0] for row in r.table] == ["0.0–0.5 s", "0.5–1.0 s", "1.0–1.5 s", "1.5–2.0 s", "2.0–2.5 s",
                                           "mean of 4 scored", "flag (of the mean)"]  # fmt: skip
    assert r.table[2][1:] == ["silent: not scored"] * 6
    assert any("1 silent window(s)" in n for n in r.notes)

    # Window 3 (1.5–2.0 s) of the first checkpoint against a manual decode, and the mean row.
    features = make_features("mel-if", CFG)
    wav = y[int(1.5 * rate) : int(2.0 * rate)]
    model = ctx.load_model(vae, "audio")
    with torch.no_grad():
        est = features.decode(model.reconstruct(torch.from_numpy(features.encode(wav))[None])[0].numpy())
    kw = {"n_fft": CFG.n_fft, "hop_length": CFG.hop_length}
    assert r.table[3][1] == pytest.approx(spectral_convergence(wav, est, **kw), abs=2e-4)
    assert r.table[3][2] == pytest.approx(log_spectral_distance(wav, est, **kw), abs=2e-3)
    sc = r.scores[labels[0]]["spectral_convergence"]
    assert np.isnan(sc[2]) and r.table[-2][1] == pytest.approx(np.nanmean(sc), abs=1e-4)
    rt = r.scores["round trip"]["spectral_convergence"]
    assert np.all(rt[np.isfinite(rt)] < sc[np.isfinite(sc)])  # the ceiling beats an untrained model
    assert len(r.figure.data) == 2 * 3  # SC and LSD lines for each checkpoint and the round trip


def test_a_short_built_in_clip_is_one_window_and_bad_choices_are_named(ctx, vae, tmp_path):
    r = view.audio_windows(ctx, vae, BUILTIN, "note", 1)
    assert r.starts == [0.0] and len(r.table) == 3
    with pytest.raises(ValueError, match="no checkpoint chosen"):
        view.audio_windows(ctx, [], BUILTIN)


class _Passthrough(torch.nn.Module):
    """A stub with the VAE interface whose latent is the features themselves: decode(encode(x)) == x."""

    DOMAIN, VARIANT = "audio", "audio-passthrough"

    def __init__(self, like: torch.nn.Module):
        super().__init__()
        self.input_shape, self.preprocessing = tuple(like.input_shape), like.preprocessing

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu = x.flatten(1)
        return mu, torch.zeros_like(mu)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z.view(z.shape[0], *self.input_shape)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x)[0])


def test_a_useless_decoder_is_flagged_and_a_passthrough_is_not(ctx, vae, tmp_path, monkeypatch):
    """A VAE whose decoder weights are all zero decodes every clip to the same loud buzz: it is flagged in
    the reconstruction table and the per-window table; a model that passes the features through is not."""
    from models import load_pretrained

    zeroed = load_pretrained(vae).eval()
    with torch.no_grad():
        for p in zeroed.decoder.parameters():
            p.zero_()
    good = str(tmp_path / "good")
    load_pretrained(vae).save_pretrained(good)
    stubs = {vae: zeroed, good: _Passthrough(zeroed)}
    monkeypatch.setattr(ctx, "load_model", lambda folder, domain=None: stubs[str(folder)])
    kw = {"n_fft": CFG.n_fft, "hop_length": CFG.hop_length}

    bad = view.audio_compare(ctx, vae, BUILTIN, "chirp", 2)
    wav = synthesize_clip("chirp", np.random.default_rng(2), CFG)
    sc = spectral_convergence(wav, bad.reconstruction, **kw)
    lsd = log_spectral_distance(wav, bad.reconstruction, **kw)
    flat = sanity.flat_spectrum_lsd(wav, **kw)
    assert sc >= 1 and lsd >= flat  # measured: SC ~4.4, LSD ~100 dB against ~23 dB for a flat spectrum
    assert [f.short for f in bad.flags] == ["no better than silence", "no better than a flat spectrum"]
    assert f"spectral convergence {sc:.4f} ≥ 1" in bad.flags[0].detail
    assert f"log-spectral distance {lsd:.3f} dB ≥ {flat:.3f} dB" in bad.flags[1].detail
    assert bad.table[-1][1] == "; ".join(f.text for f in bad.flags)
    assert sum(n.startswith("flagged: no better than silence") for n in bad.notes) == 1

    ok = view.audio_compare(ctx, good, BUILTIN, "chirp", 2)
    np.testing.assert_allclose(ok.reconstruction, ok.roundtrip, atol=1e-5)  # the features passed through
    assert ok.flags == [] and ok.table[-1][1] == "none"

    windows = view.audio_windows(ctx, [vae, good], BUILTIN, "chirp", 2)
    bad_label, good_label, _ = windows.scores
    assert [f.short for f in windows.flags[bad_label]] == [f.short for f in bad.flags]
    assert windows.flags[good_label] == [] and windows.flags["round trip"] == []
    assert windows.table[-1] == ["flag (of the mean)", sanity.flag_cell(windows.flags[bad_label]), "",
                                 "none", "", "none", ""]  # fmt: skip


def test_every_window_subplots_use_the_colours_of_their_legend():
    """Each checkpoint has one colour in both subplots (the legend lists the first subplot's lines), and the
    legend sits above the plots, clear of the x-axis titles."""
    starts = [0.0, 0.5, 1.0]
    scores = {
        name: {m: np.array([0.5, np.nan, 0.7]) for m, _ in view.WINDOW_METRICS}
        for name in ("reference · audio-vae", "round trip", "run-b (best)")
    }
    fig = view._windows_figure(starts, scores)
    by_name: dict[str, set[str]] = {}
    for trace in fig.data:
        by_name.setdefault(trace.name, set()).update({trace.line.color, trace.marker.color})
    assert all(len(colours) == 1 for colours in by_name.values()), by_name
    assert len({next(iter(c)) for c in by_name.values()}) == 3  # and the checkpoints differ
    assert [t.name for t in fig.data if t.showlegend] == list(scores)
    assert fig.layout.legend.y >= 1 and fig.layout.legend.yanchor == "bottom"
    assert not fig.layout.annotations  # no subplot title in the legend's row: the y axes name the metrics
    assert fig.layout.yaxis.title.text.startswith("SC") and fig.layout.yaxis2.title.text.startswith("LSD")
    assert [t.y[1] for t in fig.data] == [None] * len(fig.data)  # a silent window is a gap


@pytest.mark.parametrize("channels", [1, 2])
def test_spectrogram_axes_stay_linked_and_none_matches_itself(channels):
    """Every panel zooms together, but through the first axes: an axis that matches itself (the first one,
    from update_yaxes(matches="y")) made plotly print 'ignored yaxis.matches: "y" to avoid an infinite
    loop' in the browser console on every render (issue 19's console findings)."""
    feats = np.random.default_rng(0).random((channels, 16, 12)).astype(np.float32)
    fig = view.spectrogram_figure([("input", feats), ("reconstruction", feats)], AudioFeatureConfig())
    axes = {name: fig.layout[name] for name in fig.layout if name.startswith(("xaxis", "yaxis"))}
    assert len(axes) == 4 * channels
    for name, axis in axes.items():
        own = name[0] + name[5:]  # "yaxis3" -> "y3", "xaxis" -> "x"
        assert axis.matches != own, name
        assert axis.matches == (None if own in ("x", "y") else own[0]), name  # linked to the first axes
