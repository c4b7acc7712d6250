"""Regenerate the small example inputs under assets/ (byte-for-byte reproducible).

    python assets/make_assets.py            # writes assets/sar, assets/audio, assets/fragments

sar/scene_512_intensity.npy   512×512 simulated 4-look intensity (float16 to stay small)
sar/scene_512_amplitude.png   another 512×512 scene as an 8-bit amplitude quick-look
audio/note_a4.wav             1.5 s harmonic A4 note with an ADSR envelope, 48 kHz 16-bit
audio/percussion.wav          1.0 s of synthetic percussive hits, 48 kHz 16-bit
fragments/sample.txt          a few kB of text (eight 512-byte fragments)
fragments/sample.txt.gz       the same text gzip-compressed (a binary, high-entropy file)
"""

from __future__ import annotations

import gzip
import io
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from trainers.data.audio import AudioFeatureConfig, synthesize_clip  # noqa: E402
from trainers.data.sar import apply_speckle, simulate_reflectivity  # noqa: E402

ASSETS = Path(__file__).resolve().parent


def make_sar(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2024)
    intensity = apply_speckle(simulate_reflectivity(512, rng), looks=4, rng=rng)
    npy = out / "scene_512_intensity.npy"
    np.save(npy, intensity.astype(np.float16))

    rng = np.random.default_rng(2025)
    amplitude = np.sqrt(apply_speckle(simulate_reflectivity(512, rng), looks=4, rng=rng))
    # A typical quick-look: amplitude scaled so the 99th percentile is near white.
    dn = np.clip(np.rint(amplitude / np.percentile(amplitude, 99) * 230), 0, 255).astype(np.uint8)
    png = out / "scene_512_amplitude.png"
    Image.fromarray(dn).save(png, optimize=True)
    return [npy, png]


def make_audio(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    sr = 48000
    t = np.arange(int(1.5 * sr)) / sr
    note = sum(
        (0.5 / k**1.2) * np.exp(-t * 0.8 * k) * np.sin(2 * np.pi * 440.0 * k * t + 0.3 * k)
        for k in range(1, 13)
    )
    env = np.interp(t, [0.0, 0.01, 0.2, 1.2, 1.45, 1.5], [0.0, 1.0, 0.6, 0.5, 0.0, 0.0])
    note = 0.8 * note * env / np.abs(note * env).max()
    note_path = out / "note_a4.wav"
    sf.write(note_path, note.astype(np.float32), sr, subtype="PCM_16")

    drums = synthesize_clip("percussive", np.random.default_rng(7), AudioFeatureConfig(sample_rate=sr))
    drums_path = out / "percussion.wav"
    sf.write(drums_path, drums, sr, subtype="PCM_16")
    return [note_path, drums_path]


def _sample_text() -> str:
    lines = [
        "Autoencoder Comparison Studio - example text file for the fragment repair demo.",
        "",
        "A file fragment is 512 consecutive bytes of a file. Storage media and networks corrupt them with",
        "bit flips, substituted bytes, zeroed runs (erasures) and bursts of errors; the fragment denoising",
        "autoencoder learns to put the original bytes back from what is left.",
        "",
        "Typical C-band backscatter of land covers (sigma nought, dB):",
    ]
    covers = [("calm water", -24), ("road", -20), ("bare soil", -14), ("grassland", -11), ("forest", -7)]
    covers += [("crop field", -9), ("urban block", 2), ("corner reflector", 20)]
    for name, db in covers:
        lines.append(f"  {name:<18s} {db:>4d} dB   linear {10 ** (db / 10):10.5f}")
    lines.append("")
    for i in range(48):
        checksum = (i * 2654435761) % 2**32
        lines.append(f"line {i:03d}: the quick brown fox jumps over the lazy dog; checksum {checksum:08x}")
    return "\n".join(lines) + "\n"


def make_fragments(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    text = _sample_text().encode("ascii")
    txt = out / "sample.txt"
    txt.write_bytes(text)
    buf = io.BytesIO()
    # mtime=0 and no file name in the header keep the archive byte-identical across runs.
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as gz:
        gz.write(text * 4)
    gz_path = out / "sample.txt.gz"
    gz_path.write_bytes(buf.getvalue())
    return [txt, gz_path]


def main(root: Path = ASSETS) -> list[Path]:
    return make_sar(root / "sar") + make_audio(root / "audio") + make_fragments(root / "fragments")


if __name__ == "__main__":
    for p in main():
        print(f"{p.relative_to(ASSETS.parent)}  {p.stat().st_size:,} bytes")
