"""SAR tab: reconstructions and error maps of several SAR checkpoints on one input, with a metrics table.

Each checkpoint reads the input through its own normaliser (``model.preprocessing``), and its metrics are
computed in that model's own [0, 1] domain, as in training. For display, every reconstruction is mapped to
the first checkpoint's scale so that all panels share one colour axis (a no-op when the normalisers agree).
"""

from __future__ import annotations

import functools
import re
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from studio.views.common import (
    checkpoint_picker,
    fmt,
    heatmap,
    load_checkpoint,
    model_call,
    model_device,
    notes_markdown,
    resolve_checkpoint,
    run_label,
    selected_folders,
    timed_ms,
    upload_path,
    user_errors,
)
from trainers.data.sar import (
    INPUT_KINDS,
    SARNormalizer,
    SyntheticSARDataset,
    log_median,
    quicklook_gain,
    read_sar_image,
)
from trainers.metrics.sar import sar_metrics

SOURCES = ("validation sample", "uploaded image")
PATCHES = ("centre", "first (top-left)")
ERROR_SCALES = ("stretched to the largest error", "same scale as the images")
MULTIPLE = 16  # every SAR variant downsamples 4 times
MAX_SIDE = 256  # the SPEC's patch size; larger uploads are cropped to it
MAX_CHECKPOINTS = 6  # more panels than this no longer fit side by side
SHORT_LABEL = 28  # characters of a run label in plot titles and the table
# The trainer's synthetic validation set uses data seed + 1_000_003, so "sample i" is its i-th image.
VALIDATION_SEED_OFFSET = 1_000_003
TABLE_HEADERS = [
    "variant",
    "run",
    "PSNR (dB)",
    "SSIM",
    "ENL ratio",
    "EPI",
    "latent bpp (8-bit)",
    "params",
    "inference (ms)",
]


@dataclass
class SARInput:
    intensity: np.ndarray  # (H, W) linear intensity, sides multiples of 16; grey-level units for quick-looks
    notes: list[str]
    # The whole uncalibrated quick-look (not just the crop), from which each checkpoint's gain is estimated;
    # None for calibrated data.
    quicklook: np.ndarray | None = None


@dataclass
class SARComparison:
    image: np.ndarray  # (H, W) input on the display scale (the first checkpoint's normaliser)
    recons: list[np.ndarray]  # (H, W) per checkpoint, display scale
    errors: list[np.ndarray]  # |image - recon| per checkpoint
    labels: list[str]  # "variant · full run id" per checkpoint (hover text)
    metrics: list[dict[str, float]]  # sar_metrics in each model's own domain, plus params and time
    table: list[list[Any]]
    figure: Any  # plotly Figure
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------ inputs
def _as_int(value: Any, name: str, minimum: int = 0) -> int:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a whole number, got {value!r}") from None
    if not np.isfinite(v) or v != int(v) or v < minimum:
        raise ValueError(f"{name} must be a whole number of at least {minimum}, got {value!r}")
    return int(v)


def crop_for_model(
    image: np.ndarray, patch: str = PATCHES[0], max_side: int = MAX_SIDE
) -> tuple[np.ndarray, str]:
    """A crop whose sides are multiples of 16 and at most ``max_side`` (centre or top-left), and a note."""
    h, w = image.shape
    if h < MULTIPLE or w < MULTIPLE:
        raise ValueError(f"the image is {h}x{w} pixels; SAR models need at least {MULTIPLE}x{MULTIPLE}")
    if patch not in PATCHES:
        raise ValueError(f"unknown patch position {patch!r}; expected one of {', '.join(PATCHES)}")
    th = min(h, max_side) // MULTIPLE * MULTIPLE
    tw = min(w, max_side) // MULTIPLE * MULTIPLE
    y0, x0 = ((h - th) // 2, (w - tw) // 2) if patch == PATCHES[0] else (0, 0)
    crop = np.ascontiguousarray(image[y0 : y0 + th, x0 : x0 + tw])
    note = (
        "" if (th, tw) == (h, w) else f"the {h}x{w} image was cropped to its {th}x{tw} patch at ({y0}, {x0})"
    )
    return crop, note


def sar_input(
    source: str,
    seed: Any = 0,
    size: Any = MAX_SIDE,
    looks: Any = 4,
    upload: Any = None,
    input_kind: str = "auto",
    patch: str = PATCHES[0],
) -> SARInput:
    """The input as linear intensity (H, W) with sides multiples of 16, and notes on how it was obtained."""
    if source == SOURCES[0]:
        seed_i = _as_int(seed, "sample seed")
        size_i = _as_int(size, "image size", MULTIPLE)
        if size_i % MULTIPLE:
            raise ValueError(f"image size must be a multiple of {MULTIPLE}, got {size_i}")
        looks_i = _as_int(looks, "number of looks", 1)
        # A fixed normaliser skips fitting one on 8 scenes; only the raw intensity is used here.
        data = SyntheticSARDataset(
            1,
            image_size=size_i,
            looks=looks_i,
            seed=VALIDATION_SEED_OFFSET + seed_i,
            normalizer=SARNormalizer(-10.0, 5.0),
            cache=False,
        )
        note = f"synthetic {size_i}x{size_i} scene #{seed_i}, {looks_i}-look speckle"
        return SARInput(data.intensity(0), [note])
    if source != SOURCES[1]:
        raise ValueError(f"unknown input source {source!r}; expected one of {', '.join(SOURCES)}")
    path = upload_path(upload, "SAR image")
    if input_kind not in INPUT_KINDS:
        raise ValueError(f"unknown pixel kind {input_kind!r}; expected one of {', '.join(INPUT_KINDS)}")
    # read_sar_image names the temporary upload path; the user knows the file by its name.
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            img = read_sar_image(path, input_kind)
        if img.quicklook:
            log_median(img.intensity)  # an all-zero quick-look has no level to match: refuse it here
    except (ValueError, FileNotFoundError) as exc:
        raise ValueError(str(exc).replace(str(path), path.name)) from exc
    crop, note = crop_for_model(img.intensity, patch)
    h, w = img.intensity.shape
    notes = [f"uploaded {path.name}: {h}x{w} pixels, read as {img.describe()}"]
    notes += [str(w.message).replace(str(path), path.name) for w in caught]  # e.g. RGB turned to luminance
    return SARInput(crop, notes + ([note] if note else []), img.intensity if img.quicklook else None)


def normalizer_of(model: torch.nn.Module, intensity: np.ndarray) -> tuple[SARNormalizer, str]:
    """The checkpoint's own normaliser; one fitted on the input (with a note) if it saved none."""
    prep = getattr(model, "preprocessing", None) or {}
    if "log_min" in prep and "log_max" in prep:
        return SARNormalizer.from_dict(prep), ""
    return SARNormalizer.fit(
        intensity
    ), f"{model.VARIANT} has no saved normalisation; fitted one on this input"


def reference_log_median(model: torch.nn.Module) -> float | None:
    """Median log-intensity of the checkpoint's training data, if it is known or can be reproduced.

    Checkpoints save it in ``preprocessing["log_median"]``. Older ones trained on the built-in simulator
    (``looks`` in their preprocessing) did not, but the trainer fits its normaliser on the first 8 scenes
    of data seed 0, so simulating those again gives the same number (and a close one for another data seed:
    the simulator's median varies little from scene to scene).
    """
    prep = getattr(model, "preprocessing", None) or {}
    median = prep.get("log_median")
    if isinstance(median, int | float) and not isinstance(median, bool) and np.isfinite(median):
        return float(median)
    looks, size = prep.get("looks"), getattr(model, "image_size", None)
    if isinstance(looks, int | float) and isinstance(size, int) and looks >= 1 and size >= MULTIPLE:
        return _simulated_log_median(size, int(looks))
    return None


@functools.lru_cache(maxsize=16)
def _simulated_log_median(size: int, looks: int) -> float | None:
    return SyntheticSARDataset(8, image_size=size, looks=looks, seed=0, cache=False).log_median


def input_gain(model: torch.nn.Module, norm: SARNormalizer, inp: SARInput, fitted: bool) -> tuple[float, str]:
    """Intensity gain that puts the input on ``model``'s scale, and how it was chosen when it is not 1.

    Quick-look grey levels have no calibration, so reading them with a normaliser fitted on backscatter
    saturates it (every pixel maps to 1). A checkpoint trained on quick-looks (``scale`` "display", as a
    folder of PNGs gives) reads them as they are, like in training; a normaliser fitted on this very input
    needs no gain either.
    """
    prep = getattr(model, "preprocessing", None) or {}
    if inp.quicklook is None or fitted or prep.get("scale") == "display":
        return 1.0, ""
    median = reference_log_median(model)
    gain = quicklook_gain(inp.quicklook, norm, median)
    how = (
        "move their median log-intensity to that of the training data"
        if median is not None
        else "centre their 0.5-99.5 % log-intensity range on the normalisation range"
    )
    return gain, f"scaled by {10 * np.log10(gain):+.1f} dB to {how}"


# ----------------------------------------------------------------------------------------------- compute
@torch.no_grad()
def reconstruct(model: torch.nn.Module, x: np.ndarray) -> tuple[np.ndarray, torch.Tensor, float]:
    """(reconstruction (H, W), latent, forward time in ms) of a model-scale image (H, W)."""
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None, None].to(model_device(model))
    (x_hat, z), ms = model_call(f"the {model.VARIANT} model", lambda: timed_ms(lambda: model(t)))
    return x_hat.float()[0, 0].cpu().numpy(), z.float().cpu(), ms


def comparison_figure(
    image: np.ndarray,
    recons: list[np.ndarray],
    errors: list[np.ndarray],
    labels: list[str],
    error_scale: str = ERROR_SCALES[0],
    titles: list[str] | None = None,
) -> Any:
    """Input and reconstructions (top row) over their error maps (bottom row), all axes linked.

    Images share one grey scale [0, 1]; the error maps share one scale among themselves, either stretched
    to the largest error of any checkpoint or the images' own [0, 1]. ``labels`` (full names) go in the
    hover text; ``titles`` are the short panel titles (default: the labels), since up to seven columns
    must fit side by side.
    """
    from plotly.subplots import make_subplots

    if error_scale not in ERROR_SCALES:
        raise ValueError(f"unknown error scale {error_scale!r}; expected one of {', '.join(ERROR_SCALES)}")
    n = len(recons)
    titles = list(labels) if titles is None else list(titles)
    if len(titles) != n:
        raise ValueError(f"expected {n} panel titles, got {len(titles)}")
    top = ["input<br> "] + titles
    bottom = [""] + ["|error|<br>" + t.split("<br>")[-1] for t in titles]
    fig = make_subplots(
        rows=2, cols=n + 1, subplot_titles=top + bottom, horizontal_spacing=0.02, vertical_spacing=0.1
    )
    fig.add_trace(heatmap(image, "coloraxis", "input"), row=1, col=1)
    for k, (rec, err, label) in enumerate(zip(recons, errors, labels, strict=True)):
        fig.add_trace(heatmap(rec, "coloraxis", label), row=1, col=k + 2)
        fig.add_trace(heatmap(err, "coloraxis2", f"|error| {label}"), row=2, col=k + 2)
    # Two-line titles in a small font: long names would otherwise run into the next panel's title.
    fig.update_annotations(font_size=12)
    same = error_scale == ERROR_SCALES[1]
    emax = 1.0 if same else max(max((float(e.max()) for e in errors), default=0.0), 1e-6)
    bar = {"len": 0.42, "thickness": 12, "title": {"side": "right", "font": {"size": 11}}}
    fig.update_layout(
        coloraxis={
            "colorscale": "gray",
            "cmin": 0.0,
            "cmax": 1.0,
            "colorbar": {**bar, "y": 0.78, "title": {**bar["title"], "text": "normalised log-intensity"}},
        },
        coloraxis2={
            "colorscale": "gray" if same else "inferno",
            "cmin": 0.0,
            "cmax": emax,
            "colorbar": {**bar, "y": 0.22, "title": {**bar["title"], "text": "|input − reconstruction|"}},
        },
        height=330 * 2,
        margin={"l": 10, "r": 10, "t": 60, "b": 10},
    )
    # Square pixels, row 0 on top, no ticks, and zoom/pan linked across every panel. No grid or tinted
    # background: square pixels leave part of each cell empty, and it should look empty.
    fig.update_layout(plot_bgcolor="rgba(0,0,0,0)")
    fig.update_xaxes(showticklabels=False, matches="x", constrain="domain", showgrid=False, zeroline=False)
    fig.update_yaxes(
        showticklabels=False,
        matches="y",
        autorange="reversed",
        scaleanchor="x",
        showgrid=False,
        zeroline=False,
    )
    fig.update_xaxes(visible=False, row=2, col=1)
    fig.update_yaxes(visible=False, row=2, col=1)
    return fig


def short_run(run: str, variant: str) -> str:
    """A run label short enough for a plot title or a table cell next to the variant column.

    Run ids are "YYYYMMDD-HHMMSS-<variant>-<suffix>": the variant is in its own column and the random
    suffix with the time tells runs apart, so the date and variant are dropped ("070049-352d (best)").
    Other labels (Hub checkpoints) are kept, cut to their last characters when very long.
    """
    m = re.fullmatch(r"\d{8}-(\d{6})-(.+)-([0-9a-z]+)( \(\w+\))?", run)
    if m and m.group(2) == variant:
        return f"{m.group(1)}-{m.group(3)}{m.group(4) or ''}"
    return run if len(run) <= SHORT_LABEL else "…" + run[-(SHORT_LABEL - 1) :]


def metrics_row(label_variant: str, run: str, metrics: dict[str, float]) -> list[Any]:
    return [
        label_variant,
        run,
        fmt(metrics["psnr"], 2),
        fmt(metrics["ssim"], 4),
        fmt(metrics["enl_ratio"], 3),
        fmt(metrics["epi"], 3),
        fmt(metrics["bpp_8bit"], 3),
        int(metrics["params"]),
        fmt(metrics["inference_ms"], 1),
    ]


def sar_compare(
    ctx: Any,
    checkpoints: Any,
    source: str = SOURCES[0],
    seed: Any = 0,
    size: Any = 0,
    looks: Any = 4,
    upload: Any = None,
    input_kind: str = "auto",
    patch: str = PATCHES[0],
    error_scale: str = ERROR_SCALES[0],
) -> SARComparison:
    """Run every chosen SAR checkpoint on one input and collect images, error maps and metrics.

    ``size`` 0 (or None) simulates the validation scene at the first checkpoint's training size.
    """
    folders = selected_folders(checkpoints, "sar", multiple=True)
    if len(folders) > MAX_CHECKPOINTS:
        raise ValueError(
            f"choose at most {MAX_CHECKPOINTS} checkpoints to compare at once, got {len(folders)}"
        )
    folders = [resolve_checkpoint(ctx, f, "sar") for f in folders]
    if error_scale not in ERROR_SCALES:
        raise ValueError(f"unknown error scale {error_scale!r}; expected one of {', '.join(ERROR_SCALES)}")
    models = [load_checkpoint(ctx, f, "sar") for f in folders]
    if size in (None, 0, "", "auto"):  # scenes at the training size look like the training data
        size = int(getattr(models[0], "image_size", MAX_SIDE))
    inp = sar_input(source, seed, size, looks, upload, input_kind, patch)
    notes = list(inp.notes)

    # Each checkpoint reads the input through its own normaliser and gain; (norm, gain) together say how
    # model-scale values map back to the input's intensity units, which is how panels share one scale.
    scales, gain_notes = [], {}
    for model in models:
        norm, fit_note = normalizer_of(model, inp.intensity)
        gain, gain_note = input_gain(model, norm, inp, fitted=bool(fit_note))
        notes += [fit_note] if fit_note and fit_note not in notes else []
        if gain_note:
            gain_notes.setdefault(gain_note, []).append(model.VARIANT)
        scales.append((norm, gain))
    for gain_note, variants in gain_notes.items():
        who = f" (for {', '.join(dict.fromkeys(variants))})" if len(gain_notes) > 1 else ""
        notes.append(
            f"the quick-look's grey levels are not calibrated backscatter: they were {gain_note}{who}"
        )
    ref_norm, ref_gain = scales[0]
    image = ref_norm.to_model(inp.intensity * ref_gain)
    recons, errors, labels, metrics, table = [], [], [], [], []
    for folder, model, (norm, gain) in zip(folders, models, scales, strict=True):
        x = norm.to_model(inp.intensity * gain)
        x_hat, z, ms = reconstruct(model, x)
        values = sar_metrics(torch.from_numpy(x)[None, None], torch.from_numpy(x_hat)[None, None], z)
        values["params"] = float(model.count_parameters()["total"])
        values["inference_ms"] = ms
        # Map to the reference scale only when this checkpoint reads intensity differently.
        same = norm == ref_norm and gain == ref_gain
        shown = x_hat if same else ref_norm.to_model(norm.to_intensity(x_hat) / gain * ref_gain)
        run = run_label(ctx, folder)
        recons.append(shown)
        errors.append(np.abs(image - shown))
        labels.append(f"{model.VARIANT} · {run}")
        metrics.append(values)
        table.append(metrics_row(model.VARIANT, short_run(run, model.VARIANT), values))
    if len(set(scales)) > 1:
        notes.append(
            "the checkpoints use different normalisations: metrics are in each model's own scale, "
            "images on the first checkpoint's"
        )
    shorts = [
        f"{model.VARIANT}<br>{short_run(run_label(ctx, f), model.VARIANT)}"
        for f, model in zip(folders, models, strict=True)
    ]
    figure = comparison_figure(image, recons, errors, labels, error_scale, titles=shorts)
    return SARComparison(image, recons, errors, labels, metrics, table, figure, notes)


# ------------------------------------------------------------------------------------------------- Gradio
def build_tab(ctx: Any) -> tuple[Any, Any]:
    """The SAR tab's components and events (call inside ``with gr.Tab("SAR"):``)."""
    import gradio as gr

    with gr.Row():
        with gr.Column(scale=1):
            checkpoints, sar_checkpoints = checkpoint_picker(
                ctx, "sar", "SAR checkpoints", "any SAR variants, compared side by side", multiselect=True
            )
            source = gr.Radio(list(SOURCES), value=SOURCES[0], label="Input")
            with gr.Group():
                seed = gr.Slider(0, 255, value=0, step=1, label="Validation sample (synthetic scene #)")
                size = gr.Slider(
                    0,
                    512,
                    value=0,
                    step=MULTIPLE,
                    label="Image size (0: the first checkpoint's training size)",
                )
                looks = gr.Slider(1, 16, value=4, step=1, label="Speckle looks")
            with gr.Group():
                upload = gr.File(
                    label="Or upload a SAR image (.npy / .tif / .png)",
                    file_types=[".npy", ".tif", ".tiff", ".png"],
                    type="filepath",
                )
                input_kind = gr.Radio(list(INPUT_KINDS), value="auto", label="Pixel values are")
                patch = gr.Radio(list(PATCHES), value=PATCHES[0], label="256x256 patch of a larger image")
            error_scale = gr.Radio(list(ERROR_SCALES), value=ERROR_SCALES[0], label="Error map scale")
            run = gr.Button("Compare", variant="primary")
        with gr.Column(scale=3):
            status = gr.Markdown(
                "Choose one or more checkpoints and an input, then press **Compare**.", label="Notes"
            )
            # The label badge would sit on top of the first panel's title; the panels are titled anyway.
            figure = gr.Plot(label="Input, reconstructions and absolute error maps", show_label=False)
            # Fixed shares of the width so the last columns (bpp, params, time) are not pushed off-screen.
            table = gr.Dataframe(
                headers=TABLE_HEADERS,
                label="Metrics",
                interactive=False,
                wrap=True,
                column_widths=["13%", "17%", "9%", "8%", "9%", "7%", "12%", "12%", "13%"],
            )

    upload.upload(lambda _f: SOURCES[1], inputs=upload, outputs=source, api_visibility="private")

    @user_errors
    def compare(checkpoints, source, seed, size, looks, upload, input_kind, patch, error_scale):
        result = sar_compare(
            ctx, checkpoints, source, seed, size, looks, upload, input_kind, patch, error_scale
        )
        return notes_markdown(result.notes), result.figure, result.table

    run.click(
        compare,
        inputs=[checkpoints, source, seed, size, looks, upload, input_kind, patch, error_scale],
        outputs=[status, figure, table],
        api_name="sar_compare",
        # Progress and error badges go on the status line only, so a bad input leaves the last results.
        show_progress_on=[status],
    )

    return sar_checkpoints, checkpoints
