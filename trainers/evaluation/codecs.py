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
from typing import Any, NamedTuple

import numpy as np

# -------------------------------------------------------------------------------------------------- images
#: The IJG (libjpeg) standard luminance quantisation table (ITU-T T.81 Annex K), in natural order: the table
#: libjpeg scales for its `quality`. JPEG here scales it by a continuous factor instead, so that a file's
#: size can be matched to a target: libjpeg's whole-number qualities move a small image's size by several
#: percent per step.
IJG_LUMINANCE = (
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
)  # fmt: skip


def jpeg_table(quality: float) -> list[int]:
    """The baseline luminance table of a continuous `quality` in [1, 100]: libjpeg's own scaling
    (5000 / q below 50, 200 - 2 q above, as a percentage of the standard table, rounded, clipped to
    1..255) without rounding q, so it equals libjpeg's table at whole qualities of 50 and above and moves
    continuously in between."""
    q = min(max(float(quality), 1.0), 100.0)
    scale = 5000.0 / q if q < 50 else 200.0 - 2.0 * q
    return [int(min(max(math.floor((v * scale + 50.0) / 100.0), 1), 255)) for v in IJG_LUMINANCE]


#: A codec setting: the rate knob alone (with the codec's default second knob), or (rate knob, second knob).
Setting = float | tuple[float, float]


@dataclass(frozen=True)
class ImageCodec:
    """A lossy Pillow image codec with a continuous rate setting over ``bounds`` (low rate first).

    The rate knob is the quality (JPEG 1-100 through scaled quantisation tables; WebP 0-100, which libwebp
    takes as a float) or, for JPEG 2000, the nominal rate in bits per pixel (Pillow takes a compression
    ratio, 8 / bpp for an 8-bit image); a larger value spends more bytes (about: sizes are step functions of
    it), which :func:`match_image` relies on. ``knobs`` are the values of a second setting, the default first,
    whose other values only move where those steps fall: JPEG 2000's code-block side (64 by default; OpenJPEG
    truncates whole coding passes of a block, so a 256 px image's size jumps by 10-15 % at 64, 2-4 % at 16)
    and WebP's method (effort 6 by default; each method quantises differently). A setting is the rate
    knob alone (the default second knob) or the pair.
    """

    name: str
    pillow_format: str
    feature: str  # PIL.features.check name
    setting_name: str
    bounds: tuple[float, float]
    log_scale: bool = False  # search the setting on a log scale (JPEG 2000's rate spans three decades)
    resolution: float = 0.0  # settings closer than this give the same file: the search stops there
    knobs: tuple[float, ...] = (0.0,)
    knob_name: str = ""

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

    def split(self, setting: Setting | list[float]) -> tuple[float, float]:
        """(rate knob, second knob) of a setting; a second knob this codec does not have is an error."""
        if isinstance(setting, tuple | list):
            value, knob = float(setting[0]), float(setting[1])
            if knob not in self.knobs:
                raise ValueError(f"{self.name} has no {self.knob_name or 'second setting'} {knob:g}")
            return value, knob
        return float(setting), self.knobs[0]

    def encode(self, image: np.ndarray, setting: Setting) -> bytes:
        """The file bytes of a 2-D uint8 image at `setting`."""
        from PIL import Image

        img = _check_image(image)
        value, knob = self.split(setting)
        buf = io.BytesIO()
        pil = Image.fromarray(img, mode="L")
        if self.pillow_format == "JPEG":
            pil.save(buf, format="JPEG", qtables=[jpeg_table(value)], optimize=True)
        elif self.pillow_format == "WEBP":
            pil.save(buf, format="WEBP", quality=value, method=int(knob))
        elif self.pillow_format == "JPEG2000":
            ratio = max(8.0 / value, 1.0)
            side = int(knob)
            pil.save(
                buf,
                format="JPEG2000",
                quality_mode="rates",
                quality_layers=[ratio],
                irreversible=True,
                codeblock_size=(side, side),
            )
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

    def roundtrip(self, image: np.ndarray, setting: Setting) -> tuple[np.ndarray, int]:
        """(decoded uint8 image, bytes written) of one image."""
        data = self.encode(image, setting)
        return self.decode(data, image.shape), len(data)

    def label(self, setting: Setting) -> str:
        value, knob = self.split(setting)
        text = f"q={value:.4g}" if self.setting_name == "quality" else f"{self.setting_name}={value:.3g}"
        extra = "" if knob == self.knobs[0] else f" ({self.knob_name} {knob:g})"
        return f"{self.name} {text}{extra}"


IMAGE_CODECS: tuple[ImageCodec, ...] = (
    ImageCodec("JPEG", "JPEG", "jpg", "quality", (1.0, 100.0), resolution=1e-3),
    ImageCodec(
        "JPEG 2000",
        "JPEG2000",
        "jpg_2000",
        "nominal bpp",
        (0.005, 8.0),
        log_scale=True,
        resolution=1e-4,
        knobs=(64.0, 32.0, 16.0),
        knob_name="code-block side",
    ),
    # libwebp maps a float quality onto its 128 quantiser levels: about 0.4 quality apart at the finest
    ImageCodec(
        "WebP",
        "WEBP",
        "webp",
        "quality",
        (0.0, 100.0),
        resolution=0.05,
        knobs=(6.0, 5.0, 4.0),
        knob_name="method",
    ),
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


#: How close a codec's file must come to a model's measured rate, per image (a fraction of the target).
RATE_TOLERANCE = 0.02
_SEARCH_STEPS = 16  # encodes per image and target at most, beyond those a shared cache already holds


class RateMatch(NamedTuple):
    """A codec's setting for one image and target rate: the file bytes it gives and, where the file is
    not within :data:`RATE_TOLERANCE` of the target, why not (in words), else None."""

    setting: Setting
    bpp: float
    unmet: str | None


def match_image(
    codec: ImageCodec, image: np.ndarray, target_bpp: float, cache: dict[Any, int] | None = None
) -> RateMatch:
    """The setting whose file (header included) is closest to `target_bpp` bits per pixel on `image`.

    The rate knob is searched at the codec's default second knob (:func:`_search_knob`); only where that
    leaves the file more than :data:`RATE_TOLERANCE` off are the other second-knob values searched too, and
    the closest file of all is kept (ties to the default). `cache` ((knob, value) -> bytes) may be shared
    between targets of the same image and codec: a second model's target then starts from the brackets the
    first one measured. A target below the codec's smallest file (its header and minimum payload), or between
    two sizes that no setting splits, is not met: the closest file is kept and `unmet` says which.
    """
    if not (isinstance(target_bpp, int | float) and math.isfinite(target_bpp) and target_bpp > 0):
        raise ValueError(f"a target rate must be a positive number of bits per pixel, got {target_bpp!r}")
    sizes: dict[Any, int] = {} if cache is None else cache
    pixels = _check_image(image).size
    best: tuple[float, float] | None = None
    for knob in codec.knobs:
        value = _search_knob(codec, image, target_bpp, knob, sizes)
        rate = 8.0 * sizes[(knob, value)] / pixels
        if best is None or abs(rate - target_bpp) < abs(8.0 * sizes[best] / pixels - target_bpp):
            best = (knob, value)
        if _close(rate, target_bpp):
            break
    assert best is not None
    knob, value = best
    got = 8.0 * sizes[best] / pixels
    setting: Setting = value if knob == codec.knobs[0] else (value, knob)
    unmet = None if _close(got, target_bpp) else _unmet(codec, sizes, pixels, target_bpp)
    return RateMatch(setting, got, unmet)


def _close(rate: float, target: float) -> bool:
    return abs(rate / target - 1.0) <= RATE_TOLERANCE


def _search_knob(
    codec: ImageCodec, image: np.ndarray, target: float, knob: float, sizes: dict[Any, int]
) -> float:
    """The rate knob's value (at second knob `knob`) whose file is closest to `target` bits per pixel.

    The smallest file first (a target under it cannot be met), then a safeguarded regula falsi on the log
    rate between the tightest bracketing settings measured so far: interpolated steps, a bisection whenever
    one shrinks the bracket by less than half, a doubling while no file is above the target; it stops when a
    file is within :data:`RATE_TOLERANCE`, the bracket is narrower than the codec's resolution (adjacent
    settings give the same file), or after :data:`_SEARCH_STEPS` encodes.
    """
    pixels = image.size
    lo, hi = codec.bounds

    def rate(value: float) -> float:
        if (knob, value) not in sizes:
            sizes[(knob, value)] = len(codec.encode(image, (value, knob)))
        return 8.0 * sizes[(knob, value)] / pixels

    def warp(v: float) -> float:
        return math.log(v) if codec.log_scale else v

    def unwarp(v: float) -> float:
        return math.exp(v) if codec.log_scale else v

    rate(lo)
    if codec.log_scale and len([k for k, _ in sizes if k == knob]) < 3:
        # JPEG 2000's nominal rate is about the file's: start there rather than double up from the bottom.
        rate(min(max(target, lo), hi))
    bisect_next = False
    for _ in range(_SEARCH_STEPS):
        tried = [v for k, v in sizes if k == knob]
        below = [v for v in tried if rate(v) < target]
        above = [v for v in tried if rate(v) >= target]
        if any(_close(rate(v), target) for v in tried) or not below:
            break
        if not above:  # no file big enough yet: double the setting
            a = max(below)
            if a >= hi:
                break
            rate(min(hi, 2.0 * a + (0.0 if codec.log_scale else 1.0)))
            continue
        a, b = max(below), min(above)
        if b <= a or b - a <= codec.resolution:
            break  # sizes are not monotone here, or adjacent settings: nothing between them to find
        wa, wb = warp(a), warp(b)
        if bisect_next:
            guess = 0.5 * (wa + wb)
        else:  # the file size is about a power of the setting: interpolate the log rate linearly
            ra, rb = math.log(rate(a)), math.log(rate(b))
            t = (math.log(target) - ra) / (rb - ra) if rb > ra else 0.5
            guess = wa + min(max(t, 0.05), 0.95) * (wb - wa)
        value = float(unwarp(guess))
        shrunk = value - a if rate(value) >= target else b - value
        bisect_next = shrunk > 0.5 * (b - a)
    tried = [v for k, v in sizes if k == knob]
    return min(tried, key=lambda v: (abs(rate(v) - target), -v))


def _unmet(codec: ImageCodec, sizes: dict[Any, int], pixels: int, target: float) -> str:
    rates = {s: 8.0 * n / pixels for s, n in sizes.items()}
    smallest, largest = min(rates.values()), max(rates.values())
    if smallest > target * (1 + RATE_TOLERANCE):
        return (
            f"{codec.name}'s smallest file on this image is {smallest:.3g} bpp (header and minimum payload), "
            f"above the target {target:.3g} bpp"
        )
    if largest < target * (1 - RATE_TOLERANCE):
        return (
            f"{codec.name}'s largest file tried on this image is {largest:.3g} bpp, "
            f"below the target {target:.3g} bpp"
        )
    under = max((r for r in rates.values() if r < target), default=smallest)
    over = min((r for r in rates.values() if r >= target), default=largest)
    return (
        f"{codec.name}'s sizes jump from {under:.3g} to {over:.3g} bpp around the target {target:.3g} bpp: "
        f"no setting{' or ' + codec.knob_name if codec.knob_name else ''} tried gives a file in between"
    )


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
    "RateMatch",
    "Setting",
    "jpeg_table",
    "match_image",
    "mean_bpp",
    "opus_roundtrip",
    "opus_unavailable_reason",
    "to_8bit",
]
