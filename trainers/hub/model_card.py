"""Model cards for exported checkpoints: Hub metadata, the metrics table, the loss curve and examples.

Everything here works offline and without matplotlib: the figures are drawn with Pillow, the YAML metadata
is built with ``huggingface_hub.ModelCardData`` (so ``model-index`` has the layout the Hub parses).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from huggingface_hub import ModelCard, ModelCardData
from PIL import Image, ImageDraw, ImageFont
from torch import nn

from models.base import LIBRARY_NAME, LICENSE
from trainers.data.spec import parse_data_spec
from trainers.hub.source import pip_requirement
from trainers.metrics import registry

LOSS_CURVE_FILE = "loss_curve.png"
EXAMPLES_FILE = "examples.png"
#: The one model card template (shipped as package data); the models' hub mixin writes no card of its own.
TEMPLATE = Path(__file__).resolve().parent / "templates" / "model_card.md.j2"

# What the card calls the data of the built-in sources. None of them is a Hub dataset, so the metadata names
# none: `datasets` and model-index's `dataset.type` take Hub dataset ids only, and the Hub links them.
BUILTIN_DATASETS: dict[tuple[str, str], str] = {
    ("sar", "synthetic"): (
        "built-in synthetic SAR scenes (scikit-image sample images as reflectivity, Gamma speckle)"
    ),
    ("audio", "synthetic"): "built-in synthetic audio clips",
    ("fragments", "python"): "files of a Python installation (source, bytecode, shared libraries, archives)",
}

# Hub pipeline of each domain (no Hub pipeline repairs file fragments) and extra tags.
DOMAIN_INFO: dict[str, dict[str, Any]] = {
    "sar": {
        "title": "SAR image autoencoder",
        "pipeline_tag": "image-to-image",
        "tags": ["sar", "remote-sensing", "speckle"],
        "headline": ("psnr", "ssim", "enl_ratio", "epi", "loss"),
    },
    "audio": {
        "title": "audio variational autoencoder",
        "pipeline_tag": "audio-to-audio",
        "tags": ["audio", "vae", "spectrogram"],
        "headline": ("loss", "mse", "kl", "spectral_convergence", "lsd"),
    },
    "fragments": {
        "title": "file-fragment denoising autoencoder",
        "pipeline_tag": None,
        "tags": ["file-fragments", "data-recovery", "denoising"],
        "headline": (
            "accuracy",
            "accuracy_corrupted",
            "identity_accuracy",
            "identity_accuracy_corrupted",
            "loss",
        ),
    },
}
TAB_OF_DOMAIN = {"sar": "SAR", "audio": "Audio", "fragments": "Fragments"}

# Tableau-like colours: distinguishable and readable on white.
SERIES_COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189))


@dataclass
class CardInfo:
    """What a model card says about one exported checkpoint (all plain data, gathered by
    trainers.hub.push)."""

    run_id: str
    variant: str
    domain: str
    kind: str  # "best" or "last"
    step: int | None
    epoch: int | None
    status: str
    run_config: dict[str, Any]
    model_config: dict[str, Any]  # the checkpoint's config.json
    parameters: dict[str, int]
    model_class: str  # "models.fragments.FragmentAutoencoder"
    checkpoint_metrics: dict[str, float] = field(default_factory=dict)  # val metrics at the checkpoint's step
    best_metrics: dict[str, float] = field(default_factory=dict)
    final_metrics: dict[str, float] = field(default_factory=dict)
    repo_id: str | None = None
    has_loss_curve: bool = False
    has_examples: bool = False
    examples_markdown: str = ""
    tensorboard_dir: str | None = None  # folder of TensorBoard event files in the export, if any
    source_url: str | None = None  # the studio's source repository (trainers.hub.source): the install line


# ------------------------------------------------------------------------------------------- model card
def _fmt(value: float | None, name: str = "") -> str:
    """A metric value as the registry formats it ("–" when absent, "n/a" when missing or not finite)."""
    if value is None or not isinstance(value, (int, float)):
        return "–"
    return registry.format_value(name, value)


def _missing(value: object) -> bool:
    return isinstance(value, (int, float)) and not math.isfinite(value)


def lower_is_better(name: str) -> bool:
    """Whether a smaller value of metric ``name`` is better, as the metric registry says."""
    return registry.direction(name) == "min"


def _metric_order(domain: str, names: set[str]) -> list[str]:
    headline = [m for m in DOMAIN_INFO[domain]["headline"] if m in names]
    return headline + sorted(names - set(headline))


def metrics_table(info: CardInfo) -> str:
    """Markdown table: each validation metric at this checkpoint, best over the run and at the last epoch."""
    names = set(info.checkpoint_metrics) | set(info.best_metrics) | set(info.final_metrics)
    if not names:
        return "_No validation metrics were logged for this run._"
    step = f"step {info.step}" if info.step is not None else "checkpoint"
    lines = [
        f"| metric | this checkpoint ({info.kind}, {step}) | best over the run | last epoch | better |",
        "|---|---|---|---|---|",
    ]
    for name in _metric_order(info.domain, names):
        better = registry.better_text(name)
        reason = registry.missing_reason(name)
        if reason and any(_missing(d.get(name)) for d in (info.checkpoint_metrics, info.final_metrics)):
            better += f"; n/a: {reason}"
        lines.append(
            f"| {name} | {_fmt(info.checkpoint_metrics.get(name), name)} "
            f"| {_fmt(info.best_metrics.get(name), name)} "
            f"| {_fmt(info.final_metrics.get(name), name)} | {better} |"
        )
    return "\n".join(lines)


def dataset_of(info: CardInfo) -> str:
    """What the card calls the data a run trained on: the named source for the built-in sources, the
    folder's own name (not its path, which may be private) for a folder."""
    spec = info.run_config.get("data")
    source = "synthetic" if info.domain != "fragments" else "python"
    folder = None
    if spec:
        try:
            parsed = parse_data_spec(str(spec))
        except ValueError:
            return str(spec)
        source, folder = parsed.source or source, parsed.folder_path
    if folder is not None:
        return f"files of the folder '{folder.name or folder}'"
    return BUILTIN_DATASETS.get((info.domain, source), f"{info.domain} {source}")


def card_data(info: CardInfo) -> ModelCardData:
    """Hub metadata: library, license, tags and pipeline.

    No ``datasets`` and no ``model-index``: both name the data by Hub dataset id (the Hub links and lists
    them), and no data source of the studio is a Hub dataset. The metrics are in the card's table and the
    repo's metrics tab (the TensorBoard event files)."""
    domain = DOMAIN_INFO[info.domain]
    tags = [
        info.domain,
        info.variant,
        "autoencoder",
        *domain["tags"],
        "model_hub_mixin",
        "pytorch_model_hub_mixin",
    ]
    return ModelCardData(
        library_name=LIBRARY_NAME,
        license=LICENSE,
        tags=list(dict.fromkeys(tags)),
        pipeline_tag=domain["pipeline_tag"],
        model_name=info.repo_id or f"{info.variant}-{info.run_id}",
    )


def _json(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, default=str)


def build_model_card(info: CardInfo) -> str:
    """The README.md text, rendered from ``templates/model_card.md.j2`` by ``ModelCard.from_template``:
    YAML metadata, then what the model is, its metrics, curve, examples and usage."""
    if info.domain not in DOMAIN_INFO:
        raise ValueError(f"unknown domain {info.domain!r}; expected one of {', '.join(DOMAIN_INFO)}")
    domain = DOMAIN_INFO[info.domain]
    module, _, cls_name = info.model_class.rpartition(".")
    total = info.parameters.get("total")
    cfg = info.run_config
    trained = (
        f"Trained with the Autoencoder Comparison Studio, run `{info.run_id}` ({info.status}); this is its "
        f"`{info.kind}` checkpoint"
        + (f" at step {info.step}" if info.step is not None else "")
        + (f", epoch {info.epoch}" if info.epoch is not None else "")
        + "."
    )
    card = ModelCard.from_template(
        card_data(info),
        template_path=str(TEMPLATE),
        title=domain["title"],
        variant=info.variant,
        domain=info.domain,
        cls_name=cls_name,
        module=module,
        params=f"{total:,} parameters" if isinstance(total, int) else "parameters unknown",
        trained=trained,
        data_spec=cfg.get("data") or f"{info.domain} (built-in default)",
        dataset_name=dataset_of(info),
        **{key: cfg.get(key, "–") for key in ("preset", "epochs", "batch_size", "lr", "seed")},
        metrics_table=metrics_table(info),
        loss_curve_file=LOSS_CURVE_FILE if info.has_loss_curve else "",
        examples_file=EXAMPLES_FILE if info.has_examples else "",
        examples_markdown=info.examples_markdown,
        tensorboard_dir=info.tensorboard_dir or "",
        source_url=info.source_url or "",
        pip_requirement=pip_requirement(info.source_url) if info.source_url else "",
        source=info.repo_id or "path/to/this/folder",
        tab=TAB_OF_DOMAIN[info.domain],
        preprocessing_json=_json(info.model_config.get("preprocessing", {})),
        run_config_json=_json(info.run_config),
    )
    # The template's optional sections leave runs of blank lines where they are off; Markdown ignores them.
    return re.sub(r"\n{3,}", "\n\n", str(card)).rstrip("\n") + "\n"


# ----------------------------------------------------------------------------------------------- charts
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _nice_ticks(lo: float, hi: float, target: int = 5) -> list[float]:
    """Round tick values (1, 2, 2.5, 5 times a power of ten) covering [lo, hi]."""
    if not hi > lo:
        return [lo]
    raw = (hi - lo) / target
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    start = math.ceil(lo / step - 1e-9) * step
    ticks = []
    value = start
    while value <= hi + step * 1e-9:
        ticks.append(0.0 if abs(value) < step * 1e-9 else value)
        value += step
    return ticks


def _tick_label(value: float, log: bool) -> str:
    if log:
        exponent = round(math.log10(value))
        return f"1e{exponent}" if abs(exponent) >= 3 else f"{10.0**exponent:g}"
    return f"{value:.4g}"


def render_chart(
    series: Mapping[str, Sequence[tuple[float, float]]],
    title: str,
    x_label: str = "step",
    y_label: str = "",
    size: tuple[int, int] = (900, 500),
    log_y: bool | None = None,
) -> Image.Image:
    """A line chart of named (x, y) series; NaN/inf points are skipped.

    ``log_y=None`` picks a log axis when every value is positive and they span more than 1.5 decades, which
    is what a loss curve usually needs to show its tail.
    """
    width, height = size
    left, right, top, bottom = 90, 24, 56, 64
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font, small, big = _font(15), _font(13), _font(19)
    draw.text((width / 2, 14), title, fill="black", font=big, anchor="mt")
    clean = {
        name: [(float(x), float(y)) for x, y in points if math.isfinite(float(x)) and math.isfinite(float(y))]
        for name, points in series.items()
    }
    clean = {name: pts for name, pts in clean.items() if pts}
    x0, y0, x1, y1 = left, top, width - right, height - bottom
    draw.rectangle((x0, y0, x1, y1), outline="black")
    if not clean:
        draw.text(
            ((x0 + x1) / 2, (y0 + y1) / 2), "no finite values logged", fill="gray", font=font, anchor="mm"
        )
        return image
    xs = [x for pts in clean.values() for x, _ in pts]
    ys = [y for pts in clean.values() for _, y in pts]
    if log_y is None:
        log_y = min(ys) > 0 and max(ys) / min(ys) > 10**1.5
    elif log_y and min(ys) <= 0:
        log_y = False  # a log axis cannot show zero or negative values

    def ty(v: float) -> float:
        return math.log10(v) if log_y else v

    x_lo, x_hi = min(xs), max(xs)
    y_lo, y_hi = min(ty(v) for v in ys), max(ty(v) for v in ys)
    if x_hi == x_lo:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    pad = (y_hi - y_lo) * 0.05 or (abs(y_hi) * 0.1 or 1.0)
    y_lo, y_hi = y_lo - pad, y_hi + pad

    def px(x: float) -> float:
        return x0 + (x - x_lo) / (x_hi - x_lo) * (x1 - x0)

    def py(v: float) -> float:
        return y1 - (ty(v) - y_lo) / (y_hi - y_lo) * (y1 - y0)

    for tick in _nice_ticks(x_lo, x_hi):
        draw.line((px(tick), y0, px(tick), y1), fill=(230, 230, 230))
        draw.text((px(tick), y1 + 6), _tick_label(tick, False), fill="black", font=small, anchor="mt")
    if log_y:
        y_ticks = [10.0**e for e in range(math.ceil(y_lo), math.floor(y_hi) + 1)]
        if len(y_ticks) < 2:  # less than a decade in view: label a few in-between values too
            y_ticks = [10**t for t in _nice_ticks(y_lo, y_hi)]
    else:
        y_ticks = _nice_ticks(y_lo, y_hi)
    for tick in y_ticks:
        y = py(tick)
        if y0 <= y <= y1:
            draw.line((x0, y, x1, y), fill=(230, 230, 230))
            label = _tick_label(tick, log_y) if log_y and len(y_ticks) > 1 else f"{tick:.4g}"
            draw.text((x0 - 6, y), label, fill="black", font=small, anchor="rm")
    draw.rectangle((x0, y0, x1, y1), outline="black")
    draw.text(((x0 + x1) / 2, height - 10), x_label, fill="black", font=font, anchor="md")
    if y_label:
        label_img = Image.new("RGB", (y1 - y0, 24), "white")
        ImageDraw.Draw(label_img).text(
            ((y1 - y0) / 2, 12),
            y_label + (" (log scale)" if log_y else ""),
            fill="black",
            font=font,
            anchor="mm",
        )
        image.paste(label_img.rotate(90, expand=True), (6, y0))

    for i, (name, pts) in enumerate(clean.items()):
        colour = SERIES_COLOURS[i % len(SERIES_COLOURS)]
        points = [(px(x), py(y)) for x, y in sorted(pts)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2, joint="curve")
        if len(points) <= 60:  # markers on sparse series (per-epoch validation), not on dense ones
            for x, y in points:
                draw.ellipse((x - 3.5, y - 3.5, x + 3.5, y + 3.5), fill=colour)
        ly = y0 + 10 + 22 * i
        draw.line((x1 - 170, ly + 8, x1 - 140, ly + 8), fill=colour, width=3)
        draw.text((x1 - 132, ly + 8), name, fill="black", font=small, anchor="lm")
    return image


def render_loss_curve(series: Mapping[str, Sequence[tuple[float, float]]], title: str) -> Image.Image:
    """The loss chart of a run: pass e.g. {"train/loss": [...], "val/loss": [...]} from the run store."""
    return render_chart(series, title, x_label="step", y_label="loss")


# --------------------------------------------------------------------------------------------- examples
_VIRIDIS = np.array([(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)], float)


def _colourise(values: np.ndarray, lo: float, hi: float) -> Image.Image:
    """A 2-D array as a viridis-like RGB image, ``lo`` -> dark purple, ``hi`` -> yellow, row 0 at the top."""
    t = np.clip((values - lo) / ((hi - lo) or 1.0), 0.0, 1.0)
    anchors = np.linspace(0.0, 1.0, len(_VIRIDIS))
    rgb = np.stack([np.interp(t, anchors, _VIRIDIS[:, c]) for c in range(3)], axis=-1)
    return Image.fromarray(rgb.round().astype(np.uint8), "RGB")


def _grey(values: np.ndarray) -> Image.Image:
    return Image.fromarray((np.clip(values, 0.0, 1.0) * 255).round().astype(np.uint8), "L").convert("RGB")


def _grid(
    tiles: Sequence[Sequence[Image.Image]], col_titles: Sequence[str], row_titles: Sequence[str], title: str
) -> Image.Image:
    """Tiles in rows and columns with column headers, row labels and a title; tiles share one size."""
    tile_w, tile_h = tiles[0][0].size
    gap, head, label_w = 8, 56, 120
    cols = len(col_titles)
    width = label_w + cols * (tile_w + gap) + gap
    height = head + len(tiles) * (tile_h + gap) + gap
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((width / 2, 8), title, fill="black", font=_font(17), anchor="mt")
    for c, text in enumerate(col_titles):
        draw.text(
            (label_w + c * (tile_w + gap) + tile_w / 2, head - 8),
            text,
            fill="black",
            font=_font(14),
            anchor="md",
        )
    for r, row in enumerate(tiles):
        y = head + r * (tile_h + gap)
        draw.multiline_text((8, y + tile_h / 2), row_titles[r], fill="black", font=_font(13), anchor="lm")
        for c, tile in enumerate(row):
            image.paste(
                tile.resize((tile_w, tile_h), Image.Resampling.NEAREST), (label_w + c * (tile_w + gap), y)
            )
    return image


def _scaled(image: Image.Image, target: int) -> Image.Image:
    w, h = image.size
    factor = max(1, round(target / max(w, h)))
    return image.resize((w * factor, h * factor), Image.Resampling.NEAREST)


@torch.no_grad()
def sar_examples(model: nn.Module, images: torch.Tensor) -> tuple[Image.Image, str]:
    """Input | reconstruction | error x4 for a batch (N, 1, S, S) of normalised SAR images."""
    from trainers.metrics.sar import psnr

    x_hat = model.reconstruct(images).float().clamp(0, 1)
    rows, labels = [], []
    for i in range(images.shape[0]):
        x, y = images[i, 0].numpy(), x_hat[i, 0].numpy()
        rows.append([_scaled(_grey(x), 192), _scaled(_grey(y), 192), _scaled(_grey(np.abs(x - y) * 4), 192)])
        labels.append(f"sample {i + 1}\nPSNR {float(psnr(images[i : i + 1], x_hat[i : i + 1])):.2f} dB")
    grid = _grid(
        rows, ["input", "reconstruction", "|error| x4"], labels, "SAR: built-in synthetic speckled scenes"
    )
    return grid, ""


@torch.no_grad()
def audio_examples(model: nn.Module, features: torch.Tensor) -> tuple[Image.Image, str]:
    """Spectrograms of input and reconstruction for a batch (N, C, mels, frames); IF too for 2 channels."""
    recon = model.reconstruct(features).float()
    channels = features.shape[1]
    cols = ["input log-mel", "reconstruction log-mel"]
    if channels > 1:
        cols += ["input IF", "reconstruction IF"]
    rows, labels = [], []
    for i in range(features.shape[0]):
        # Rows flipped so that low frequencies sit at the bottom, as in every spectrogram plot.
        mag_in, mag_out = features[i, 0].numpy()[::-1], recon[i, 0].numpy()[::-1]
        hi = float(max(mag_in.max(), 1e-6))
        row = [_scaled(_colourise(mag_in, 0.0, hi), 256), _scaled(_colourise(mag_out, 0.0, hi), 256)]
        if channels > 1:
            row += [
                _scaled(_colourise(features[i, 1].numpy()[::-1], -1.0, 1.0), 256),
                _scaled(_colourise(recon[i, 1].numpy()[::-1], -1.0, 1.0), 256),
            ]
        rows.append(row)
        mse = float(torch.mean((recon[i] - features[i]) ** 2))
        labels.append(f"clip {i + 1}\nMSE {mse:.4g}")
    return _grid(rows, cols, labels, "Audio: built-in synthetic clips (mel bins up, frames right)"), ""


HEX_BYTES = 128  # bytes of each fragment drawn in the image (the first rows are enough to see the repair)
_MARKS = {
    "changed": (253, 230, 138),
    "fixed": (134, 239, 172),
    "wrong": (252, 165, 165),
    "broken": (216, 180, 254),
}


def _hex_block(
    draw: ImageDraw.ImageDraw,
    origin: tuple[int, int],
    data: np.ndarray,
    marks: Sequence[str | None],
    font: Any,
) -> None:
    cell_w, cell_h = 24, 18
    for j, value in enumerate(data):
        x = origin[0] + (j % 16) * cell_w
        y = origin[1] + (j // 16) * cell_h
        if marks[j]:
            draw.rectangle((x, y, x + cell_w - 2, y + cell_h - 2), fill=_MARKS[marks[j]])
        draw.text(
            (x + cell_w / 2 - 1, y + cell_h / 2 - 1),
            f"{int(value):02x}",
            fill="black",
            font=font,
            anchor="mm",
        )


@torch.no_grad()
def fragment_examples(
    model: nn.Module, corrupted: torch.Tensor, clean: torch.Tensor
) -> tuple[Image.Image, str]:
    """Hex views of clean | corrupted | repaired bytes with the changed/fixed/still-wrong bytes marked.

    Also returns a markdown table of byte accuracy of the repair against the identity baseline.
    """
    repaired = model.predict_bytes(corrupted).cpu().numpy().astype(np.uint8)
    clean_b = np.rint(clean[:, 0].numpy() * 255).astype(np.uint8)
    corrupt_b = np.rint(corrupted[:, 0].numpy() * 255).astype(np.uint8)
    n = corrupted.shape[0]
    shown = min(HEX_BYTES, clean_b.shape[1])
    block_w, block_h, gap, head = 16 * 24, (shown // 16) * 18, 24, 70
    width = 3 * block_w + 4 * gap
    height = head + n * (block_h + gap + 22) + 40
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font = _font(12)
    draw.text(
        (width / 2, 8),
        f"Fragments: first {shown} bytes of {n} held-out fragments",
        fill="black",
        font=_font(17),
        anchor="mt",
    )
    for c, text in enumerate(["clean", "corrupted", "repaired"]):
        draw.text(
            (gap + c * (block_w + gap) + block_w / 2, head - 14),
            text,
            fill="black",
            font=_font(14),
            anchor="md",
        )
    lines = ["| fragment | bytes corrupted | identity accuracy | repair accuracy |", "|---|---|---|---|"]
    for i in range(n):
        changed = corrupt_b[i] != clean_b[i]
        ok = repaired[i] == clean_b[i]
        corrupt_marks = ["changed" if changed[j] else None for j in range(shown)]
        repair_marks = [
            ("fixed" if ok[j] else "wrong") if changed[j] else (None if ok[j] else "broken")
            for j in range(shown)
        ]
        y = head + i * (block_h + gap + 22)
        draw.text(
            (gap, y),
            f"fragment {i + 1}: {int(changed.sum())} bytes corrupted, "
            f"repair accuracy {ok.mean():.1%} (identity {(~changed).mean():.1%})",
            fill="black",
            font=font,
        )
        y += 20
        _hex_block(draw, (gap, y), clean_b[i, :shown], [None] * shown, font)
        _hex_block(draw, (gap + block_w + gap, y), corrupt_b[i, :shown], corrupt_marks, font)
        _hex_block(draw, (gap + 2 * (block_w + gap), y), repaired[i, :shown], repair_marks, font)
        lines.append(f"| {i + 1} | {int(changed.sum())} | {(~changed).mean():.2%} | {ok.mean():.2%} |")
    legend_y = height - 28
    for k, (mark, meaning) in enumerate(
        [
            ("changed", "corrupted"),
            ("fixed", "repaired"),
            ("wrong", "still wrong"),
            ("broken", "broken by repair"),
        ]
    ):
        x = gap + k * 200
        draw.rectangle((x, legend_y, x + 16, legend_y + 14), fill=_MARKS[mark])
        draw.text((x + 22, legend_y + 7), meaning, fill="black", font=font, anchor="lm")
    return image, "\n".join(lines)
