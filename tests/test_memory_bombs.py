"""The campaign's memory bombs, served by the studio's own input paths in a fresh process, each under 1 GB.

Each case runs in a subprocess that imports everything, resets the kernel's peak RSS (VmHWM) to its current
size and reads the peak after serving one bomb, so the figure is the extra memory that one request costs.
The bombs are the issue's, cheap to make: PNGs are written row by row through zlib (a 12000² all-zero PNG
is 140 KB), the .npy and the WAV are written in blocks.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
LIMIT_MB = 1024

SERVE = r"""
import json, resource, sys
import numpy as np
from studio.views import sar, audio
from trainers.data.audio import make_features
from models.registry import load_pretrained

def status_mb(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

def peak_mb():
    return status_mb("VmHWM")

case, path = sys.argv[1], sys.argv[2]
features = make_features("log-mel")
np.zeros(1)  # everything imported and warmed up before the baseline
before = status_mb("VmRSS")
try:  # reset the peak to the current size, so that the figure is this request's own peak (Linux)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
except OSError:
    before = peak_mb()
message = ""
try:
    if case == "sar":
        got = sar.sar_input(sar.SOURCES[1], upload=path)
        message = "; ".join(got.notes) + f" shape={got.x.shape}"
    elif case == "audio-clip":
        clip = audio.clip_input(features, audio.SOURCES[1], upload=path, start=5000.0)
        message = "; ".join(clip.notes) + f" samples={len(clip.wav)}"
    elif case == "audio-windows":
        full, notes = audio._whole_clip(features, audio.SOURCES[1], "note", 0, path)
        message = "; ".join(notes) + f" samples={len(full)}"
    elif case == "model":
        load_pretrained(path)
except ValueError as exc:
    message = f"ValueError: {exc}"
print(json.dumps({"extra_mb": peak_mb() - before, "message": message}))
"""


def serve(case: str, path: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GRADIO_ANALYTICS_ENABLED": "False", "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", SERVE, case, str(path)], capture_output=True, text=True, env=env, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"{case} {path.name}: +{got['extra_mb']:.0f} MB peak")  # the figures of the report (pytest -s)
    return got


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def png_bomb(path: Path, side: int, value: int = 0) -> Path:
    """An 8-bit greyscale side x side PNG of one value, compressed a row at a time (never held whole)."""
    z = zlib.compressobj(9)
    row = b"\x00" + bytes([value]) * side
    idat = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    head = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", head) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    )
    return path


@pytest.mark.parametrize("side, value", [(12000, 0), (12000, 90)])
def test_png_of_12000_squared_costs_little(tmp_path, side, value):
    path = png_bomb(tmp_path / "bomb.png", side, value)
    assert path.stat().st_size < 1_000_000
    got = serve("sar", path)
    assert got["extra_mb"] < LIMIT_MB, got
    if value == 0:
        assert "every pixel is no-data" in got["message"]
    else:  # read, cropped to the model's patch; the whole image's size is named
        assert "12000x12000" in got["message"] and "shape=(256, 256)" in got["message"], got


def test_png_decompression_bomb_is_refused_from_its_header(tmp_path):
    got = serve("sar", png_bomb(tmp_path / "huge.png", 30000))
    assert got["extra_mb"] < LIMIT_MB, got
    assert "too many pixels" in got["message"] or "30000x30000" in got["message"], got
    assert str(tmp_path) not in got["message"]  # the upload's server path is not shown


def test_huge_npy_converts_only_its_patch(tmp_path):
    path = tmp_path / "big.npy"
    side = 16000  # 256 MB of uint8; the old path made a float64 copy (2 GB) before cutting the patch
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(side, side))
    ramp = (np.arange(side, dtype=np.uint32) % 250 + 1).astype(np.uint8)
    for r0 in range(0, side, 2000):
        arr[r0 : r0 + 2000] = ramp
    arr.flush()
    del arr
    got = serve("sar", path)
    assert got["extra_mb"] < 400, got
    assert "16000x16000" in got["message"] and "shape=(256, 256)" in got["message"], got


def test_text_named_npy_says_it_is_not_an_array(tmp_path):
    path = tmp_path / "notes.npy"
    path.write_text("hello, this is text\n" * 10)
    got = serve("sar", path)
    assert "not a NumPy array file" in got["message"] and "pickle" not in got["message"], got


@pytest.fixture(scope="module")
def long_wav(tmp_path_factory) -> Path:
    """Two hours of an 8 kHz 16-bit tone (115 MB): the old path resampled all of it to 48 kHz."""
    path = tmp_path_factory.mktemp("audio") / "long.wav"
    rate, block = 8000, 8000 * 600
    t = np.arange(block) / rate
    tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    with sf.SoundFile(path, "w", rate, 1, subtype="PCM_16") as f:
        for _ in range(12):
            f.write(tone)
    return path


def test_long_wav_decodes_only_the_clip(long_wav):
    got = serve("audio-clip", long_wav)
    assert got["extra_mb"] < 100, got
    assert "7200.00 s" in got["message"] and "resampled from 8000 Hz" in got["message"], got


def test_long_wav_windows_decode_only_the_scored_minute(long_wav):
    got = serve("audio-windows", long_wav)
    assert got["extra_mb"] < 200, got
    assert "7200.00 s" in got["message"], got


@pytest.mark.parametrize("channels", [[4000, 4000, 4000], [1000000000]])
def test_oversized_model_config_is_refused_before_building(tmp_path, channels):
    from models import create_model

    folder = tmp_path / "ck"
    create_model("fragment-dae").save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config["channels"] = channels
    (folder / "config.json").write_text(json.dumps(config))
    got = serve("model", folder)
    assert got["extra_mb"] < LIMIT_MB and got["message"].startswith(
        "ValueError: checkpoint 'ck' describes"
    ), got
    assert "at most 100,000,000" in got["message"] and str(tmp_path) not in got["message"]
