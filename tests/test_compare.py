"""`python -m trainers compare` and the studio's Compare tab on tiny checkpoints of every domain: the JSON
schema, figures against reference formulas, codec rates from their actual bytes, per-file-type fragments,
output files, determinism and bad input."""

from __future__ import annotations

import io
import json
import math
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import numpy as np
import pytest
import soundfile as sf
import torch

from models import create_model, load_pretrained
from trainers.cli import main
from trainers.evaluation.codecs import IMAGE_CODECS, opus_roundtrip, to_8bit
from trainers.evaluation.compare import bootstrap_summary, leaderboard, markdown_report, run_compare, to_json
from trainers.runs import checkpoints
from trainers.runs.store import RunStore

ROOT = Path(__file__).resolve().parents[1]
SAR_SPEC = "sar:synthetic,n=6,size=32"


def strict_json(text: str) -> dict:
    def refuse(token: str) -> None:
        raise AssertionError(f"JSON holds a {token} token")

    return json.loads(text, parse_constant=refuse)


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["compare", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def figures(result: dict) -> dict:
    """The result without inference times (the one figure that varies between runs)."""
    rows = [{k: v for k, v in r.items() if k != "inference_ms"} for r in result["rows"]]
    return {**result, "rows": rows}


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """Tiny checkpoints of every domain; the first SAR and fragment ones are also runs in a store."""
    root = tmp_path_factory.mktemp("ckpts")
    torch.manual_seed(0)
    made = {
        "sar_a": create_model("sar-baseline", base_channels=4, image_size=32),
        "sar_b": create_model("sar-resnet", base_channels=4, image_size=32),
        "audio": create_model("audio-vae", widths=[4, 4, 4, 4, 4], latent_dim=16),
        "frag": create_model("fragment-dae", channels=[8, 16, 16]),
    }
    out: dict[str, str] = {}
    for name, model in made.items():
        model.save_pretrained(root / name)
        out[name] = str(root / name)
    runs = root / "runs"
    with RunStore(runs) as store:
        for run_id, name, domain in (("run-sar", "sar_a", "sar"), ("run-frag", "frag", "fragments")):
            store.create_run(made[name].VARIANT, domain, {}, status="completed", run_id=run_id)
            checkpoints.save_checkpoint(runs / run_id, "best", made[name], state={"step": 1})
    out["runs"] = str(runs)
    return out


@pytest.fixture(scope="module")
def sar_folder(tmp_path_factory):
    """Two 4-look intensity scenes (64x64) with a no-data border of zeros, as real products have."""
    folder = tmp_path_factory.mktemp("sar")
    rng = np.random.default_rng(7)
    for k in range(2):
        reflectivity = np.where(np.arange(64)[None, :] < 32, 0.05, 0.4) * (1 + k) * np.ones((64, 64))
        intensity = (reflectivity * rng.gamma(4.0, 0.25, (64, 64))).astype(np.float32)
        intensity[:, :6] = 0.0  # no-data
        np.save(folder / f"scene{k}.npy", intensity)
    return folder


@pytest.fixture(scope="module")
def audio_folder(tmp_path_factory):
    """A 1.4 s 22.05 kHz stereo recording and a 0.6 s mono one."""
    folder = tmp_path_factory.mktemp("audio")
    t = np.arange(int(1.4 * 22050)) / 22050
    stereo = np.stack([0.3 * np.sin(2 * np.pi * 440 * t), 0.2 * np.sin(2 * np.pi * 660 * t)], axis=1)
    sf.write(folder / "speech.wav", stereo.astype(np.float32), 22050)
    t2 = np.arange(int(0.6 * 48000)) / 48000
    sf.write(folder / "short.flac", (0.25 * np.sin(2 * np.pi * 300 * t2)).astype(np.float32), 48000)
    return folder


@pytest.fixture(scope="module")
def fragment_folder(tmp_path_factory):
    """Files of four types: text, an ELF shared object, a zip archive and CPython bytecode."""
    import py_compile

    folder = tmp_path_factory.mktemp("frags")
    text = "".join(f"def function_{i}(x):\n    return x * {i} + 1  # a comment\n" for i in range(120))
    (folder / "notes.txt").write_text(text)
    from trainers.data.fragments import installation_stdlib

    dynload = installation_stdlib()[1] / "lib-dynload"  # the installation's, also inside a venv
    so = min((p for p in dynload.glob("*.so") if p.stat().st_size > 8192), key=lambda p: p.stat().st_size)
    (folder / "library.bin").write_bytes(so.read_bytes()[:16384])  # the name says nothing: content decides
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("data.txt", text * 3)
        zf.writestr("noise.bin", np.random.default_rng(0).integers(0, 256, 8000, np.uint8).tobytes())
    (folder / "archive.dat").write_bytes(buf.getvalue())
    source = folder / "mod.py"
    source.write_text(text)
    py_compile.compile(str(source), cfile=str(folder / "mod.cache"))
    source.unlink()
    return folder


# --------------------------------------------------------------------------------------------- bootstrap
def test_bootstrap_interval_matches_the_normal_theory_and_leaves_out_nan():
    rng = np.random.default_rng(3)
    values = rng.normal(10.0, 2.0, 400)
    with_nan = np.concatenate([values, [np.nan] * 7])
    s = bootstrap_summary(with_nan, seed=1)
    assert s["n"] == 400
    assert s["mean"] == pytest.approx(values.mean())
    lo, hi = s["ci95"]
    # The percentile interval of the mean: about +-1.96 standard errors.
    se = values.std(ddof=1) / math.sqrt(values.size)
    assert hi - lo == pytest.approx(2 * 1.96 * se, rel=0.15)
    assert lo < s["mean"] < hi
    assert bootstrap_summary(with_nan, seed=1) == s
    assert bootstrap_summary(with_nan, seed=2)["ci95"] != s["ci95"]
    assert bootstrap_summary([np.nan, np.nan], seed=0) == {"mean": None, "ci95": None, "n": 0}


# ---------------------------------------------------------------------------------------------------- SAR
def _sar_examples(spec: str):
    """(x, valid, db, units) of the examples compare scores on (here all of one size: stacked)."""
    from trainers.data.spec import parse_data_spec
    from trainers.evaluation.compare import _sar_examples as examples_of
    from trainers.training.tasks import SARTask

    parsed = parse_data_spec(spec)
    dataset = SARTask("sar-baseline").dataset_for_eval(parsed, {}, {"image_size": 32})
    examples, units, _ = examples_of(dataset, parsed)
    return (
        torch.cat([e.x for e in examples]),
        torch.cat([e.valid for e in examples]),
        torch.cat([e.db_range for e in examples]),
        units,
    )


def _masked_psnr(x: np.ndarray, y: np.ndarray, valid: np.ndarray) -> float:
    mse = float(np.mean((x[valid] - y[valid]) ** 2))
    return min(10 * math.log10(1.0 / mse), 100.0) if mse > 0 else 100.0


def test_sar_json_schema_codecs_from_actual_bytes_and_psnr_against_the_formula(ckpts, sar_folder, capsys):
    spec = f"sar:folder={sar_folder},size=32"
    code, out, err = run_cli(
        capsys,
        "run-sar",
        ckpts["sar_b"],
        "--data",
        spec,
        "--baselines",
        "--json",
        "--runs-dir",
        ckpts["runs"],
    )
    assert code == 0, err
    result = strict_json(out)
    assert {"domain", "data", "n", "rows"} <= set(result)
    x, valid, _, units = _sar_examples(spec)
    n = x.shape[0]
    assert result["domain"] == "sar" and result["n"] == n >= 4
    # Tiles of two images: intervals resample the two images, not the tiles.
    assert result["ci_unit"] == "image" and result["n_units"] == 2 and len(set(units.tolist())) == 2
    assert "32×32 tiles of 2 images" in result["eval_size"]
    assert not valid.all()  # the no-data border is masked out of every metric below
    rows = {r["name"]: r for r in result["rows"]}
    for row in result["rows"]:
        assert {"name", "kind", "bpp", "params", "metrics"} <= set(row)
        assert row["kind"] in ("run", "checkpoint", "codec")
        for name, summary in row["metrics"].items():
            assert set(summary) == {"mean", "ci95", "n", "n_units"}
            if summary["mean"] is None:
                assert name in row["missing"]  # a missing value says why
            else:
                lo, hi = summary["ci95"]
                assert lo <= summary["mean"] <= hi
    assert rows["run-sar"]["kind"] == "run" and rows["run-sar"]["variant"] == "sar-baseline"
    assert rows["sar_b"]["kind"] == "checkpoint"
    # The rate is measured: the bytes of each tile's range-coded latent, decoded back for the scores.
    from trainers.evaluation import bitstream
    from trainers.training.fastpath import prepare_for_inference

    # In the precision compare runs the variant in (bf16 on a CPU with native bf16, training.fastpath).
    model = prepare_for_inference(load_pretrained(ckpts["sar_b"]).eval())
    sizes, psnrs = [], []
    with torch.no_grad():
        for i in range(n):
            data = bitstream.encode(model.encode(x[i : i + 1])[0].numpy(), bitstream.DEFAULT_BITS).data
            x_hat = model.decode(torch.from_numpy(bitstream.decode(data)[1])[None]).clamp(0, 1)
            sizes.append(len(data))
            psnrs.append(_masked_psnr(x[i, 0].numpy(), x_hat[0, 0].numpy(), valid[i, 0].numpy()))
    sar_b = rows["sar_b"]
    assert sar_b["rate"] == "measured" and sar_b["bytes"] == sum(sizes)
    assert sar_b["bpp"] == pytest.approx(np.mean([8 * b / 32**2 for b in sizes]))
    assert sar_b["metrics"]["psnr"]["mean"] == pytest.approx(np.mean(psnrs), abs=1e-3)
    assert len(sar_b["rd"]) >= 4 and [p["bpp"] for p in sar_b["rd"]] == sorted(p["bpp"] for p in sar_b["rd"])
    pair = next(p for p in result["pairs"] if p["metric"] == "psnr" and p["b"] == "sar_b")
    assert (
        pair["a"] == "run-sar"
        and pair["n_units"] == 2
        and pair["diff"]
        == pytest.approx(rows["run-sar"]["metrics"]["psnr"]["mean"] - sar_b["metrics"]["psnr"]["mean"])
    )
    assert rows["sar_b"]["params"] == sum(p.numel() for p in model.parameters())

    codec_rows = [r for r in result["rows"] if r["kind"] == "codec"]
    done = {r["codec"] for r in codec_rows}
    skipped = {s["name"] for s in result.get("skipped", [])}
    assert done | skipped == {c.name for c in IMAGE_CODECS}
    images = [to_8bit(xi[0].numpy()) for xi in x]
    for row in codec_rows:
        assert row["params"] is None
        codec = next(c for c in IMAGE_CODECS if row["codec"] == c.name)
        # bpp is the mean of the real file sizes of exactly the 8-bit images the models see, one setting each
        settings = row["codec_setting"]
        coded = [codec.roundtrip(img, st) for img, st in zip(images, settings, strict=True)]
        decoded, bits = [c[0] for c in coded], [c[1] for c in coded]
        assert row["bpp"] == pytest.approx(
            np.mean([8 * b / img.size for b, img in zip(bits, images, strict=True)])
        )
        # ... and the metrics are those of the decoded image / 255.
        psnr = np.mean(
            [_masked_psnr(x[i, 0].numpy(), decoded[i] / 255.0, valid[i, 0].numpy()) for i in range(n)]
        )
        assert row["metrics"]["psnr"]["mean"] == pytest.approx(psnr, abs=1e-3)
        # Matched per image to the model's own bytes on that image.
        (model_name,) = row["matched_to"]
        assert row["target_bpp"] == pytest.approx(rows[model_name]["bpp"])
    assert {s["codec"] for s in result["rd_sweep"]} == done


def test_markdown_table_out_files_and_same_figures_twice(ckpts, capsys, tmp_path):
    from PIL import Image

    code, out, err = run_cli(
        capsys, ckpts["sar_a"], "--data", SAR_SPEC, "--baselines", "--out", str(tmp_path / "o"), "--seed", "5"
    )
    assert code == 0, err
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("| name"))
    assert "psnr (↑)" in header and "ssim (↑)" in header and "enl_ratio (target" in header
    row = next(line for line in lines if line.startswith("| sar_a "))
    assert re.search(r"\| -?\d[\d.]* \[-?\d[\d.]*, -?\d[\d.]*\] \|", row)
    assert "bits per pixel" in out
    files = {p.name for p in (tmp_path / "o").iterdir()}
    assert files == {"compare.md", "compare.json", "rd.html", "rd.png"}
    with Image.open(tmp_path / "o" / "rd.png") as png:
        png.load()
        assert png.format == "PNG" and png.size[0] >= 400
    assert "plotly" in (tmp_path / "o" / "rd.html").read_text()[:20000].lower()
    saved = strict_json((tmp_path / "o" / "compare.json").read_text())

    again = run_compare([ckpts["sar_a"]], SAR_SPEC, baselines=True, seed=5)
    assert figures(again) == figures(saved)
    other = run_compare([ckpts["sar_a"]], SAR_SPEC, baselines=False, seed=6)
    assert other["rows"][0]["metrics"]["psnr"]["mean"] == saved["rows"][0]["metrics"]["psnr"]["mean"]
    assert other["rows"][0]["metrics"]["psnr"]["ci95"] != saved["rows"][0]["metrics"]["psnr"]["ci95"]


# -------------------------------------------------------------------------------------------------- audio
def test_audio_every_window_codecs_and_units(ckpts, audio_folder, capsys):
    from trainers.data.audio import AudioFolderDataset

    code, out, err = run_cli(capsys, ckpts["audio"], "--data", f"audio:folder={audio_folder}", "--json")
    assert code == 0, err
    plain = strict_json(out)
    assert [r["kind"] for r in plain["rows"]] == ["checkpoint"]

    result = run_compare([ckpts["audio"]], f"audio:folder={audio_folder}", baselines=True)
    windows = len(AudioFolderDataset(audio_folder))
    assert result["n"] == windows >= 3  # every window of both files, not one second per file
    rows = {r["name"]: r for r in result["rows"]}
    # Measured: the range-coded latent's bytes of every 1 s window (48,000 samples each).
    assert rows["audio"]["rate"] == "measured"
    assert rows["audio"]["bpp"] == pytest.approx(8 * rows["audio"]["bytes"] / (windows * 48000))
    assert result["ci_unit"] == "recording" and result["n_units"] == 2
    assert "audio sample" in result["bpp_unit"]
    ceiling = rows["feature round trip (mel-if)"]
    assert ceiling["bpp"] is None and "bpp" in ceiling["missing"]
    assert ceiling["metrics"]["lsd"]["mean"] < rows["audio"]["metrics"]["lsd"]["mean"]
    for bitrate in (6, 8):
        row = rows[f"Opus {bitrate} kb/s"]
        assert row["kind"] == "codec" and row["params"] is None
        # Packet bytes of a 1 s window at the nominal rate, within the encoder's rate control.
        assert row["bpp"] == pytest.approx(bitrate * 1000 / 48000, rel=0.35)
        assert row["metrics"]["spectral_convergence"]["n"] == windows
    assert rows["Opus 6 kb/s"]["bpp"] < rows["Opus 8 kb/s"]["bpp"]


def test_opus_roundtrip_keeps_the_length_and_the_timing():
    sr = 48000
    t = np.arange(sr) / sr
    wav = (0.4 * np.sin(2 * np.pi * 500 * t) * (t > 0.5)).astype(np.float32)  # a tone that starts at 0.5 s
    dec, nbytes = opus_roundtrip(wav, sr, 16000)
    assert dec.shape == wav.shape and dec.dtype == np.float32
    assert 16000 / 8 * 0.6 < nbytes < 16000 / 8 * 1.4
    # No pre-skip delay left: the first half stays (almost) silent, the second carries the tone.
    assert np.sqrt(np.mean(dec[: sr // 2 - 2000] ** 2)) < 0.01
    assert np.sqrt(np.mean(dec[sr // 2 + 2000 :] ** 2)) == pytest.approx(0.4 / math.sqrt(2), rel=0.2)


# ---------------------------------------------------------------------------------------------- fragments
def test_fragments_per_file_type_and_identity_against_the_bytes(ckpts, fragment_folder, capsys):
    from trainers.data.fragments import FragmentDataset, NoiseGenerator

    spec = f"fragments:folder={fragment_folder}"
    code, out, err = run_cli(
        capsys, "run-frag", "--data", spec, "--baselines", "--json", "--runs-dir", ckpts["runs"]
    )
    assert code == 0, err
    result = strict_json(out)
    assert set(result["types"]) == {"text", "elf", "compressed", "bytecode"}
    rows = {r["name"]: r for r in result["rows"]}
    identity = rows["identity (corrupted input unchanged)"]
    assert identity["kind"] == "codec" and identity["bpp"] == 8.0
    frag = rows["run-frag"]
    assert frag["rate"] == "measured" and result["ci_unit"] == "file" and result["n_units"] == 4
    assert frag["bpp"] == pytest.approx(8 * frag["bytes"] / (result["n"] * 512))  # the latent's real bytes

    # Reference: the same fragments and noise, identity accuracy per file type straight from the bytes.
    from trainers.data.fragments import file_type

    noise = NoiseGenerator(**result["noise"])
    paths = sorted(p for p in fragment_folder.rglob("*") if p.is_file())
    ds = FragmentDataset(paths=paths, noise=noise, split="all", seed=2_000_003)
    assert len(ds) == result["n"]
    per_type: dict[str, list[float]] = {}
    for i in range(len(ds)):
        clean, corrupted, _ = ds.corrupt(i)
        per_type.setdefault(file_type(ds.fragment_info(i)[0]), []).append(float(np.mean(clean == corrupted)))
    for t, values in per_type.items():
        assert identity["by_type"][t]["n"] == len(values) == result["types"][t]
        assert identity["by_type"][t]["metrics"]["accuracy"]["mean"] == pytest.approx(np.mean(values))
    report = markdown_report(result)
    assert "By file type" in report and "compressed (n=" in report and "elf (n=" in report


# ------------------------------------------------------------------------------------------ useless models
def _zeroed(folder: str, part: str | None = None) -> torch.nn.Module:
    """The checkpoint with every weight of ``part`` (or of the whole model) set to zero."""
    model = load_pretrained(folder).eval()
    with torch.no_grad():
        for p in (getattr(model, part) if part else model).parameters():
            p.zero_()
    return model


def _sources(folder: str, **models: torch.nn.Module) -> list:
    from trainers.evaluation.compare import ModelSource

    config = json.loads((Path(folder) / "config.json").read_text())
    return [ModelSource(name, "checkpoint", Path(folder), m, config) for name, m in models.items()]


class _SARPassthrough(torch.nn.Module):
    DOMAIN, VARIANT = "sar", "sar-baseline"

    def forward(self, x):
        return x.clone(), x.clone()

    def encode(self, x):  # the image is its own latent: decoded from 6-bit codes, within 1/126 of x
        return x.clone()

    def decode(self, z):
        return z.clone()


class _AudioPassthrough(torch.nn.Module):
    """decode(encode(x)) == x: the model's output is the feature round trip itself."""

    DOMAIN, VARIANT = "audio", "audio-vae"

    def __init__(self, like):
        super().__init__()
        self.input_shape, self.preprocessing = tuple(like.input_shape), like.preprocessing
        self.latent_dim = int(np.prod(self.input_shape))

    def reconstruct(self, x):
        return x.clone()

    def encode(self, x):
        return x.flatten(1), torch.zeros(x.shape[0], 1)

    def decode(self, z):
        return z.view(z.shape[0], *self.input_shape)


class _FragmentRepair(torch.nn.Module):
    DOMAIN, VARIANT = "fragments", "fragment-dae"

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def predict_bytes(self, x):
        return torch.stack([self.fn(row) for row in np.rint(x[:, 0].numpy() * 255).astype(np.uint8)])

    def encode(self, x):
        return x.clone()

    def decode(self, z, x):  # per-byte logits of the repair of the corrupted input the receiver holds
        out = self.predict_bytes(x)
        return torch.nn.functional.one_hot(out, 256).permute(0, 2, 1).float()


def _md_row(report: str, name: str) -> list[str]:
    line = next(line for line in report.splitlines() if line.startswith(f"| {name} |"))
    return [c.strip() for c in line.strip("|").split(" | ")]


def test_useless_sar_models_are_flagged_in_the_json_and_the_markdown(ckpts):
    models = _sources(ckpts["sar_a"], zeroed=_zeroed(ckpts["sar_a"]), passthrough=_SARPassthrough())
    result = strict_json(to_json(run_compare([], SAR_SPEC, models=models)))
    rows = {r["name"]: r for r in result["rows"]}
    assert rows["passthrough"]["flags"] == []
    constant, below = rows["zeroed"]["flags"]
    assert constant.startswith(
        "constant output: on 6 of 6 images its spread over the valid pixels is under 5%"
    )
    # The trivial baseline, the mean-value image: its MSE is each patch's variance over the valid pixels.
    x, valid, _, _ = _sar_examples(SAR_SPEC)
    reference = np.mean([10 * np.log10(1 / np.var(x[i, 0][valid[i, 0]].double().numpy())) for i in range(6)])
    baseline = result["trivial_baseline"]["metrics"]
    assert baseline["psnr"] == pytest.approx(reference, rel=1e-4)
    psnr = rows["zeroed"]["metrics"]["psnr"]["mean"]
    assert psnr <= baseline["psnr"]  # the mean image is the best constant: a flat output cannot beat it
    assert below.startswith(
        f"no better than the mean-value image: PSNR {psnr:.2f} dB ≤ {baseline['psnr']:.2f} dB"
    )

    report = markdown_report(result)
    header = _md_row(report, "name")
    assert header[2] == "bpp (↓)" and header[4] == "ms / example (↓)" and header[-1] == "flags"
    zeroed, passthrough = _md_row(report, "zeroed"), _md_row(report, "passthrough")
    enl = header.index("enl_ratio (target 0.7–1.3)")
    # A flat image has no speckle: its ENL ratio is shown with the flag, not as a plain number.
    assert zeroed[enl].endswith("⚠ constant output")
    assert zeroed[-1] == f"{constant}; {below}" and passthrough[-1] == "none"
    assert "⚠" not in passthrough[enl]
    assert f"- zeroed flagged: {constant}." in report and "- trivial baseline: mean-value image" in report


def test_useless_audio_and_fragment_models_are_flagged(ckpts, audio_folder, fragment_folder):
    from trainers.data.audio import AudioFolderDataset
    from trainers.data.spec import parse_data_spec
    from trainers.metrics.sanity import flat_spectrum_lsd
    from trainers.training.tasks import FragmentTask

    buzz = _zeroed(ckpts["audio"], "decoder")  # every clip decodes to the same sound
    models = _sources(ckpts["audio"], buzz=buzz, passthrough=_AudioPassthrough(buzz))
    result = run_compare([], f"audio:folder={audio_folder}", models=models)
    rows = {r["name"]: r for r in result["rows"]}
    assert [f.split(":")[0] for f in rows["buzz"]["flags"]] == [
        "constant output", "no better than silence", "no better than a flat spectrum",
    ]  # fmt: skip
    assert rows["passthrough"]["flags"] == []
    data = AudioFolderDataset(audio_folder)
    flat = np.mean([flat_spectrum_lsd(data.waveform(i)) for i in range(len(data))])
    assert result["trivial_baseline"]["metrics"] == pytest.approx({"lsd": flat, "spectral_convergence": 1.0})
    assert rows["buzz"]["metrics"]["lsd"]["mean"] >= flat > rows["passthrough"]["metrics"]["lsd"]["mean"]

    spec = f"fragments:folder={fragment_folder}"
    frag = load_pretrained(ckpts["frag"])
    dataset = FragmentTask("fragment-dae").dataset_for_eval(
        parse_data_spec(spec), dict(frag.preprocessing), {}
    )
    clean_of = {}
    for i in range(len(dataset)):
        corrupted, clean, _ = dataset[i]
        key = np.rint(corrupted[0].numpy() * 255).astype(np.uint8).tobytes()
        clean_of[key] = torch.from_numpy(np.rint(clean[0].numpy() * 255).astype(np.int64))
    from models.fragments import FragmentAutoencoder

    whole = load_pretrained(ckpts["frag"])
    # A zeroed whole-fragment regressor (the first design) writes sigmoid(0) = byte 128 whatever it reads; a
    # zeroed gated correction keeps its gate at 0.5 (closed) and passes its input through.
    constant = FragmentAutoencoder(channels=whole.channels, correction=False).eval()
    with torch.no_grad():
        for p in constant.parameters():
            p.zero_()
    models = _sources(
        ckpts["frag"],
        zeroed=constant,
        gated_zeroed=_zeroed(ckpts["frag"]),
        identity=_FragmentRepair(lambda b: torch.from_numpy(b.astype(np.int64))),
        oracle=_FragmentRepair(lambda b: clean_of[b.tobytes()]),
    )
    result = run_compare([], spec, baselines=True, models=models)
    rows = {r["name"]: r for r in result["rows"]}
    base = result["trivial_baseline"]["metrics"]["accuracy"]
    assert base == pytest.approx(rows["identity (corrupted input unchanged)"]["metrics"]["accuracy"]["mean"])
    assert rows["oracle"]["metrics"]["accuracy"]["mean"] == 1.0 > base and rows["oracle"]["flags"] == []
    assert rows["gated_zeroed"]["metrics"]["accuracy"]["mean"] == pytest.approx(base)
    for name in ("zeroed", "identity", "gated_zeroed"):
        acc = rows[name]["metrics"]["accuracy"]["mean"]
        assert acc <= base
        assert rows[name]["flags"][-1].startswith(
            f"does not beat the identity baseline: byte accuracy {acc:.2%} ≤ {base:.2%} (gain "
        )
    # The zeroed net writes the same bytes whatever it reads: its byte distribution does not move.
    assert rows["zeroed"]["flags"][0].startswith("constant output: its byte distribution varies")
    assert len(rows["identity"]["flags"]) == 1 and len(rows["gated_zeroed"]["flags"]) == 1
    assert rows["identity (corrupted input unchanged)"]["flags"] == []  # a baseline row is not judged
    _, table = leaderboard(result)
    assert [r[-1] for r in table][-1] == "–" and table[3][-1] == "none"  # the oracle


# ------------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "case, needle",
    [
        ("empty folder", "is empty"),
        ("no readable file", "no usable SAR image"),
        ("unknown run", "neither a checkpoint folder nor a run id"),
        ("other domain", "needs a SAR model"),
        ("missing folder", "does not exist"),
    ],
)
def test_bad_input_is_one_clear_line_and_exit_code_2(case, needle, ckpts, capsys, tmp_path):
    source, data = ckpts["sar_a"], SAR_SPEC
    if case == "empty folder":
        (tmp_path / "empty").mkdir()
        data = f"sar:folder={tmp_path / 'empty'}"
    elif case == "no readable file":
        (tmp_path / "bad").mkdir()
        (tmp_path / "bad" / "scene.npy").write_bytes(b"this is not a numpy file")
        data = f"sar:folder={tmp_path / 'bad'}"
    elif case == "unknown run":
        source = "20990101-000000-nope"
    elif case == "other domain":
        source = ckpts["frag"]
    elif case == "missing folder":
        data = f"sar:folder={tmp_path / 'nowhere'}"
    code, out, err = run_cli(capsys, source, "--data", data, "--runs-dir", ckpts["runs"])
    assert code == 2 and out == ""
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert needle in lines[0]
    if case == "no readable file":
        assert "scene.npy" in lines[0]  # the unreadable file is named
    if case == "unknown run":
        assert lines[0].startswith("error: '20990101-000000-nope' is neither")


def test_cli_process_prints_no_traceback(ckpts):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "trainers", "compare", ckpts["audio"], "--data", SAR_SPEC],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: ") and "Traceback" not in proc.stderr
    assert "needs a SAR model" in proc.stderr


# -------------------------------------------------------------------------------------------------- studio
@pytest.fixture(scope="module")
def ctx(tmp_path_factory, ckpts):
    from studio.context import StudioContext

    return StudioContext(runs_dir=Path(ckpts["runs"]), store=RunStore(ckpts["runs"]))


def test_compare_tab_handler_on_uploads_and_its_errors(ctx, ckpts, fragment_folder, tmp_path):
    from studio.views import compare as view

    uploads = [str(p) for p in sorted(fragment_folder.iterdir())]
    calls = []
    result = view.compare_checkpoints(
        ctx,
        "fragments",
        ["run-frag", ckpts["frag"]],
        "uploaded files",
        uploads=uploads,
        baselines=True,
        progress=lambda f, desc: calls.append((f, desc)),
    )
    assert result.headers[:5] == ["name", "kind", "bpp (↓)", "params", "ms / example (↓)"]
    assert result.headers[-1] == "flags" and [r[-1] for r in result.rows][-1] == "–"  # baselines: unchecked
    assert "accuracy (↑)" in result.headers and "ber (↓)" in result.headers
    names = [r[0] for r in result.rows]
    assert names[0].startswith("run-frag") and names[-1].startswith("identity")
    assert result.result["data"] == "4 uploaded files"  # no temporary server path
    assert "studio-compare-" not in to_json(result.result)
    assert "By file type" in result.details
    # The tab's own R-D figure: one legend group per model, named by its row.
    metas = {t.meta for t in result.figure.data}
    assert {r["name"] for r in result.result["rows"] if r["kind"] != "codec"} <= metas
    assert calls and calls[-1][0] == 1.0
    # Not a bare spinner (issue 19: 207 s of one): the fraction only rises, and the words name each model
    # and the fragment it is on, then the baseline.
    fractions = [f for f, _ in calls]
    assert fractions == sorted(fractions) and len(set(fractions)) > 3
    model_words = [d for _, d in calls if d.startswith(names[0].split(" ")[0]) and "fragment" in d]
    assert model_words and any("identity" in d for _, d in calls)

    with pytest.raises(ValueError, match="no checkpoint chosen"):
        view.compare_checkpoints(ctx, "fragments", [], "built-in")
    with pytest.raises(ValueError, match="needs a fragment model"):
        view.compare_checkpoints(ctx, "fragments", [ckpts["sar_a"]], "built-in", n=2)
    with pytest.raises(ValueError, match="no files uploaded"):
        view.compare_checkpoints(ctx, "fragments", ["run-frag"], "uploaded files", uploads=[])
    ctx.space = True
    try:
        with pytest.raises(ValueError, match="public Space"):
            view.compare_checkpoints(ctx, "fragments", ["run-frag"], "server folder", folder=str(tmp_path))
    finally:
        ctx.space = False


def test_compare_tab_wiring_has_a_named_api_endpoint(ctx):
    import gradio as gr

    from studio.views import compare as view

    with gr.Blocks() as demo:
        refresh, components = view.build_tab(ctx)
    api = {fn.api_name for fn in demo.fns.values()}
    assert {"compare", "compare_checkpoints"} <= api
    _, update, studies = refresh("fragments", None, None)
    assert [label for label, _ in update["choices"]][0].startswith("run-frag")
    assert studies["choices"] == [] and studies["value"] is None, "no study in this store"
