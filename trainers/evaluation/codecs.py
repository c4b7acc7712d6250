"""Classic codecs as baselines for the `compare` leaderboard: JPEG, JPEG 2000 and WebP through Pillow for
SAR images, Opus through PyAV for audio.

Every codec is run on exactly what the models see (the normalised 8-bit image, the 48 kHz mono window) and its
rate is measured from the bytes it actually wrote, headers included, never from its nominal setting: at small
image sizes a JPEG header alone costs more than half a bit per pixel, and a leaderboard must show that.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any

import numpy as np


# -------------------------------------------------------------------------------------------------- images
@dataclass(frozen=True)
class ImageCodec:
    """A lossy Pillow image codec and the ordered grid of its rate setting (low rate first).

    ``setting`` is the quality (JPEG 1-95, WebP 0-100) or, for JPEG 2000, the nominal rate in bits per pixel
    (Pillow takes a compression ratio, 8 / bpp for an 8-bit image); either way a larger setting spends more
    bytes, which :func:`match_rate` relies on.
    """

    name: str
    pillow_format: str
    feature: str  # PIL.features.check name
    setting_name: str
    grid: tuple[float, ...]

    def unavailable_reason(self) -> str | None:
        """None when this Pillow can encode and decode the format, else why not (for a 'skipped' note)."""
        from PIL import features

        try:
            ok = features.check(self.feature)
        except ValueError as exc:  # a Pillow that does not know the feature name
            return f"this Pillow cannot tell whether it supports {self.name}: {exc}"
        if not ok:
            return f"this Pillow build has no {self.name} support (features.check({self.feature!r}) is False)"
        return None

    def encode(self, image: np.ndarray, setting: float) -> bytes:
        """The file bytes of a 2-D uint8 image at `setting`."""
        from PIL import Image

        img = _check_image(image)
        buf = io.BytesIO()
        pil = Image.fromarray(img, mode="L")
        if self.pillow_format == "JPEG":
            pil.save(buf, format="JPEG", quality=int(setting), optimize=True)
        elif self.pillow_format == "WEBP":
            pil.save(buf, format="WEBP", quality=int(setting), method=6)
        elif self.pillow_format == "JPEG2000":
            ratio = max(8.0 / float(setting), 1.0)
            pil.save(buf, format="JPEG2000", quality_mode="rates", quality_layers=[ratio], irreversible=True)
        else:  # pragma: no cover - the table below lists every format
            raise ValueError(f"unknown image format {self.pillow_format!r}")
        return buf.getvalue()

    def decode(self, data: bytes, shape: tuple[int, int]) -> np.ndarray:
        """The decoded grey image as uint8 of `shape`."""
        from PIL import Image

        with Image.open(io.BytesIO(data)) as pil:
            out = np.asarray(pil.convert("L"), dtype=np.uint8)
        if out.shape != tuple(shape):
            raise ValueError(f"{self.name} decoded a {out.shape} image from a {tuple(shape)} one")
        return out

    def roundtrip(self, image: np.ndarray, setting: float) -> tuple[np.ndarray, int]:
        """(decoded uint8 image, bytes written) of one image."""
        data = self.encode(image, setting)
        return self.decode(data, image.shape), len(data)

    def label(self, setting: float) -> str:
        if self.setting_name == "quality":
            return f"{self.name} q={int(setting)}"
        return f"{self.name} {self.setting_name}={float(setting):.3g}"


IMAGE_CODECS: tuple[ImageCodec, ...] = (
    ImageCodec("JPEG", "JPEG", "jpg", "quality", tuple(float(q) for q in range(1, 96))),
    ImageCodec(
        "JPEG 2000",
        "JPEG2000",
        "jpg_2000",
        "nominal bpp",
        tuple(float(v) for v in np.geomspace(0.005, 8, 97)),
    ),
    ImageCodec("WebP", "WEBP", "webp", "quality", tuple(float(q) for q in range(0, 101))),
)

# Settings of each codec's small rate-distortion sweep (the plot's codec curves), low rate first.
SWEEP: dict[str, tuple[float, ...]] = {
    "JPEG": (2.0, 5.0, 10.0, 25.0, 50.0, 80.0),
    "JPEG 2000": (0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0),
    "WebP": (0.0, 5.0, 20.0, 50.0, 75.0, 90.0),
}


def _check_image(image: Any) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 2 or image.size == 0:
        got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"image codecs take a 2-D uint8 image, got {got}")
    return np.ascontiguousarray(image)


def to_8bit(x: np.ndarray) -> np.ndarray:
    """The 8-bit image a model's [0, 1] input stands for: round(x * 255), clipped."""
    return np.clip(np.rint(np.asarray(x, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)


def mean_bpp(codec: ImageCodec, images: list[np.ndarray], setting: float) -> float:
    """Mean over images of the actual bits per pixel at `setting`."""
    return float(np.mean([8.0 * len(codec.encode(img, setting)) / img.size for img in images]))


def match_rate(codec: ImageCodec, images: list[np.ndarray], target_bpp: float) -> tuple[float, float]:
    """(setting, mean measured bpp) of the grid setting whose mean file size over `images` is closest to
    `target_bpp` bits per pixel.

    A bisection over the grid (sizes grow with the setting; where they do not quite, the neighbours of the
    bracket are checked too), so about a dozen encodes of the set instead of one per grid value.
    """
    if not images:
        raise ValueError("match_rate needs at least one image")
    grid = codec.grid
    cache: dict[int, float] = {}

    def rate(i: int) -> float:
        if i not in cache:
            cache[i] = mean_bpp(codec, images, grid[i])
        return cache[i]

    lo, hi = 0, len(grid) - 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if rate(mid) < target_bpp:
            lo = mid
        else:
            hi = mid
    candidates = {max(lo - 1, 0), lo, hi, min(hi + 1, len(grid) - 1)}
    # Ties (e.g. the header floor) go to the higher setting: the same bytes at better quality.
    best = min(candidates, key=lambda i: (abs(rate(i) - target_bpp), -i))
    return grid[best], rate(best)


#: How close a codec's file must come to a model's measured rate, per image (a fraction of the target).
RATE_TOLERANCE = 0.02
_CONTINUOUS_STEPS = 12  # secant/bisection steps on JPEG 2000's continuous rate


def match_image(codec: ImageCodec, image: np.ndarray, target_bpp: float) -> tuple[float, float]:
    """(setting, measured bpp) of one image whose file size is closest to `target_bpp`, header included.

    Quality grids (JPEG, WebP) are bisected over their whole numbers, where one step may move the size by
    more than :data:`RATE_TOLERANCE`; JPEG 2000's rate is continuous and is searched (a secant step on the
    size, inside a bisection bracket) until the file is within the tolerance or the steps run out (a target
    under the header's size cannot be met:
    the smallest file is kept).
    """
    if codec.setting_name == "quality":
        return match_rate(codec, [image], target_bpp)
    cache: dict[float, float] = {}

    def rate(setting: float) -> float:
        if setting not in cache:
            cache[setting] = 8.0 * len(codec.encode(image, setting)) / image.size
        return cache[setting]

    lo, hi = codec.grid[0], codec.grid[-1]
    setting = min(max(target_bpp, lo), hi)
    for _ in range(_CONTINUOUS_STEPS):
        got = rate(setting)
        if abs(got / target_bpp - 1.0) <= RATE_TOLERANCE * 0.9:
            break
        if got < target_bpp:
            lo = max(lo, setting)
        else:
            hi = min(hi, setting)
        # The file grows about in proportion to the nominal rate: step there, inside the bracket.
        guess = setting * target_bpp / max(got, 1e-12)
        setting = guess if lo < guess < hi else math.sqrt(lo * hi)
        if hi / lo < 1.0001:
            break
    best = min(cache, key=lambda v: (abs(cache[v] - target_bpp), -v))
    return best, cache[best]


# --------------------------------------------------------------------------------------------------- audio
OPUS_BITRATES = (6000, 8000)  # the lowest useful libopus rates: the leaderboard's rows
OPUS_SWEEP = (6000, 8000, 12000, 16000, 24000, 32000)  # the plot's Opus curve


def opus_unavailable_reason() -> str | None:
    """None when PyAV can encode Opus (libopus), else why not."""
    try:
        import av
    except ImportError as exc:
        return f"PyAV is not installed ({exc})"
    if "libopus" not in av.codecs_available:
        return "this PyAV build has no libopus encoder"
    return None


def opus_roundtrip(wav: np.ndarray, sample_rate: int, bitrate: int) -> tuple[np.ndarray, int]:
    """(decoded float32 waveform of the same length, packet bytes) of a mono waveform through libopus.

    Packets go through an in-memory Ogg stream so the decoder drops the encoder's pre-skip and the output
    lines up with the input; the rate counts the Opus packets only (the Ogg pages are container overhead).
    """
    import av

    y = np.ascontiguousarray(np.asarray(wav, dtype=np.float32).reshape(-1))
    if y.size == 0 or not np.isfinite(y).all():
        raise ValueError("Opus needs a non-empty, finite waveform")
    buf = io.BytesIO()
    packet_bytes = 0
    with av.open(buf, mode="w", format="ogg") as out:
        stream = out.add_stream("libopus", rate=int(sample_rate))
        stream.bit_rate = int(bitrate)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(y[None, :], format="flt", layout="mono")
        frame.sample_rate = int(sample_rate)
        frame.pts = 0
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            packet_bytes += packet.size
            out.mux(packet)
    buf.seek(0)
    chunks = []
    with av.open(buf, mode="r") as inp:
        for decoded in inp.decode(audio=0):
            if decoded.sample_rate != sample_rate:
                raise ValueError(f"Opus decoded at {decoded.sample_rate} Hz, expected {sample_rate} Hz")
            chunks.append(decoded.to_ndarray().reshape(-1))
    dec = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    if dec.size < y.size:
        dec = np.pad(dec, (0, y.size - dec.size))
    return dec[: y.size], packet_bytes


__all__ = [
    "IMAGE_CODECS",
    "OPUS_BITRATES",
    "OPUS_SWEEP",
    "SWEEP",
    "ImageCodec",
    "RATE_TOLERANCE",
    "match_image",
    "match_rate",
    "mean_bpp",
    "opus_roundtrip",
    "opus_unavailable_reason",
    "to_8bit",
]
