"""SAR tab: reconstructions and error maps of several SAR checkpoints on one input, with a metrics table.

The input is normalised on its own, in dB (``trainers.data.sar.normalize_db``): every checkpoint sees the
same [0, 1] image, as in training, whatever product the pixels came from. Panels show the input and each
reconstruction mapped back through the input's dB knots, i.e. in dB of the input's own units; metrics are
computed with the input's no-data mask and dB knots.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from studio.views.common import (
    checkpoint_picker,
    clear_results_on_change,
    display_name,
    heatmap,
    load_checkpoint,
    model_call,
    model_device,
    notes_markdown,
    page_handler,
    resolve_checkpoint,
    run_label,
    selected_folders,
    timed_ms,
    upload_path,
    wrap_title,
)
from trainers.data.sar import (
    INPUT_KINDS,
    KNOT_PCTS,
    KNOT_X,
    SyntheticSARDataset,
    legacy_preprocessing_note,
    normalize_db,
    read_sar_patch,
    x_to_db,
)
from trainers.metrics import registry, sanity
from trainers.metrics.sar import sar_metrics
from trainers.training.progress import Progress, no_progress

SOURCES = ("validation sample", "uploaded image")
PATCHES = ("centre", "first (top-left)")
ERROR_SCALES = ("stretched to the largest error", "same scale as the images")
MULTIPLE = 16  # every SAR variant downsamples 4 times
MAX_SIDE = 256  # the full preset's SAR patch size; larger uploads are cropped to it
MAX_CHECKPOINTS = 6  # more panels than this no longer fit side by side
SHORT_LABEL = 28  # characters of a run label in plot titles and the table
NAME_CHARS = 40  # a run's own name in the table (one line, the table scrolls) and titles (wrapped)
TITLE_FONT_SIZE = 11
TITLE_LINES = 3
# The plot's width at the narrowest page (800 px: the controls stack above it, see build_tab) and the average
# width of a character of TITLE_FONT_SIZE in plotly's font, with a margin (measured in Chromium: ~5.9 px).
MIN_PLOT_PX = 680
CHAR_PX = 6.4
# The trainer's synthetic validation set uses data seed + 1_000_003, so "sample i" is its i-th image.
VALIDATION_SEED_OFFSET = 1_000_003
#: (metric key, header) of the table's metric columns; each header carries its direction from the registry.
TABLE_METRICS = (
    ("psnr", "PSNR (dB)"),
    ("ssim", "SSIM"),
    ("enl_ratio", "ENL ratio"),
    ("epi", "EPI"),
    ("bpp_8bit", "latent bpp (8-bit)"),
)


def _header(key: str, title: str) -> str:
    mark = registry.arrow(key)
    return f"{title} {mark}" if mark else title


TABLE_HEADERS = [
    "variant",
    "run",
    *(_header(k, t) for k, t in TABLE_METRICS),
    "params",
    "inference (ms) ↓",
    "flag (details in the notes)",
]


@dataclass
class SARInput:
    """The model-scale input (sides multiples of 16) and what is needed to show it in the input's units."""

    x: np.ndarray  # (H, W) float32 in [0, 1], normalised per image in dB; 0 at no-data
    valid: np.ndarray  # (H, W) bool
    db_range: tuple[float, ...]  # the dB knots of the whole source image (trainers.data.sar.normalize_db)
    notes: list[str]


@dataclass
class SARComparison:
    image: np.ndarray  # (H, W) input in dB of its own units, NaN at no-data
    recons: list[np.ndarray]  # (H, W) per checkpoint, dB, NaN at no-data
    errors: list[np.ndarray]  # |image - recon| in dB per checkpoint
    labels: list[str]  # "variant · full run id" per checkpoint (hover text)
    metrics: list[dict[str, float]]  # sar_metrics (masked, with the dB range), plus params and time
    table: list[list[Any]]
    figure: Any  # plotly Figure
    notes: list[str] = field(default_factory=list)
    flags: list[list[sanity.Flag]] = field(default_factory=list)  # per checkpoint; empty: not flagged
    baseline: dict[str, float] = field(default_factory=dict)  # psnr, ssim of the mean-value image


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
) -> tuple[tuple[slice, slice], str]:
    """The window (rows, columns) of a crop whose sides are multiples of 16 and at most ``max_side``
    (centre or top-left), and a note when it is not the whole image."""
    h, w = image.shape
    if h < MULTIPLE or w < MULTIPLE:
        raise ValueError(f"the image is {h}x{w} pixels; SAR models need at least {MULTIPLE}x{MULTIPLE}")
    if patch not in PATCHES:
        raise ValueError(f"unknown patch position {patch!r}; expected one of {', '.join(PATCHES)}")
    th = min(h, max_side) // MULTIPLE * MULTIPLE
    tw = min(w, max_side) // MULTIPLE * MULTIPLE
    y0, x0 = ((h - th) // 2, (w - tw) // 2) if patch == PATCHES[0] else (0, 0)
    note = (
        "" if (th, tw) == (h, w) else f"the {h}x{w} image was cropped to its {th}x{tw} patch at ({y0}, {x0})"
    )
    return (slice(y0, y0 + th), slice(x0, x0 + tw)), note


def _range_note(db_range: tuple[float, ...]) -> str:
    if len(db_range) == 2:
        lo, hi = db_range
        return f"normalised per image in dB: {lo:.1f} … {hi:.1f} dB map linearly to 0 … 1"
    pcts = ", ".join(f"{p:g}" for p in KNOT_PCTS)
    knots = ", ".join(f"{v:.1f}" for v in db_range)
    xs = ", ".join(f"{v:g}" for v in KNOT_X)
    return (
        f"normalised per image in dB, piecewise linear: {knots} dB (its {pcts} % percentiles) map to x = {xs}"
    )


def sar_input(
    source: str,
    seed: Any = 0,
    size: Any = MAX_SIDE,
    looks: Any = 0,
    upload: Any = None,
    input_kind: str = "auto",
    patch: str = PATCHES[0],
) -> SARInput:
    """The normalised input (sides multiples of 16), its mask and dB range, and notes on how it was read.

    ``looks`` 0 draws L from 1 … 4 per scene, as the built-in training data does.
    """
    if source == SOURCES[0]:
        seed_i = _as_int(seed, "sample seed")
        size_i = _as_int(size, "image size", MULTIPLE)
        if size_i % MULTIPLE:
            raise ValueError(f"image size must be a multiple of {MULTIPLE}, got {size_i}")
        looks_i = _as_int(looks, "number of looks")
        data = SyntheticSARDataset(
            seed_i + 1, image_size=size_i, looks=looks_i or None, seed=VALIDATION_SEED_OFFSET, cache=False
        )
        scene = data.scene(seed_i)
        x, valid, db_range = normalize_db(scene.intensity, scene.valid, data.pcts)
        note = (
            f"synthetic {size_i}x{size_i} scene #{seed_i} ({scene.kind} reflectivity), "
            f"{scene.looks:g}-look speckle" + ("" if looks_i else " (L drawn from 1-4, as in training)")
        )
        return SARInput(x, valid, db_range, [note, _range_note(db_range)])
    if source != SOURCES[1]:
        raise ValueError(f"unknown input source {source!r}; expected one of {', '.join(SOURCES)}")
    path = upload_path(upload, "SAR image")
    if input_kind not in INPUT_KINDS:
        raise ValueError(f"unknown pixel kind {input_kind!r}; expected one of {', '.join(INPUT_KINDS)}")
    # read_sar_image names the temporary upload path; the user knows the file by its name.
    notes_box: list[str] = []

    def window(shape: tuple[int, int]) -> tuple[slice, slice]:
        found, crop_note = crop_for_model(np.broadcast_to(np.float32(0), shape), patch)
        notes_box.append(crop_note)
        return found

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            # Header checked before decoding; the range comes from the whole image (every patch of it is on
            # one scale), but only the patch is converted, so a huge upload costs megabytes.
            read = read_sar_patch(path, window, input_kind)
    except (ValueError, FileNotFoundError) as exc:
        raise ValueError(str(exc).replace(str(path), path.name)) from exc
    img, db_range, (h, w) = read.image, read.db_range, read.shape
    note = notes_box[0] if notes_box else ""
    x, valid = np.ascontiguousarray(read.x), np.ascontiguousarray(read.valid)
    if not valid.any():
        raise ValueError(f"the {patch} patch of {path.name} is all no-data; choose the other patch position")
    notes = [f"uploaded {path.name}: {h}x{w} pixels, read as {img.describe()}"]
    notes += [str(w.message).replace(str(path), path.name) for w in caught]  # e.g. RGB turned to luminance
    notes += [note] if note else []
    if not valid.all():
        notes.append(f"{100 * (1 - valid.mean()):.1f} % of the patch is no-data: masked, not scored")
    return SARInput(x, valid, db_range, notes + [_range_note(db_range)])


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
    db_range: tuple[float, ...] = (0.0, 1.0),
) -> Any:
    """Input and reconstructions (top row) over their error maps (bottom row), all axes linked.

    Images are in dB of the input's units and share one grey scale, from the first to the last of the
    ``db_range`` knots (NaN pixels, no-data,
    are left blank); the error maps share one scale among themselves, either stretched to the largest
    error of any checkpoint or the images' own span. ``labels`` (full names) go in the hover text;
    ``titles`` are the short panel titles (default: the labels), since up to seven columns must fit.
    """
    from plotly.subplots import make_subplots

    if error_scale not in ERROR_SCALES:
        raise ValueError(f"unknown error scale {error_scale!r}; expected one of {', '.join(ERROR_SCALES)}")
    n = len(recons)
    titles = list(labels) if titles is None else list(titles)
    if len(titles) != n:
        raise ValueError(f"expected {n} panel titles, got {len(titles)}")
    # Plotly never wraps a title: each is wrapped to its column's share of the narrowest plot the page
    # lays out, on up to TITLE_LINES lines, so neighbours never run into each other.
    width = title_chars(n + 1)
    top = ["input"] + [_fit_title(t, width) for t in titles]
    bottom = [""] + ["|error|"] * n
    fig = make_subplots(
        rows=2, cols=n + 1, subplot_titles=top + bottom, horizontal_spacing=0.02, vertical_spacing=0.1
    )
    fig.add_trace(heatmap(image, "coloraxis", "input"), row=1, col=1)
    for k, (rec, err, label) in enumerate(zip(recons, errors, labels, strict=True)):
        fig.add_trace(heatmap(rec, "coloraxis", label), row=1, col=k + 2)
        fig.add_trace(heatmap(err, "coloraxis2", f"|error| {label}"), row=2, col=k + 2)
    fig.update_annotations(font_size=TITLE_FONT_SIZE)
    same = error_scale == ERROR_SCALES[1]
    lo, hi = float(db_range[0]), float(db_range[-1])
    largest = max((float(np.nanmax(e)) for e in errors if np.isfinite(e).any()), default=0.0)
    emax = hi - lo if same else max(largest, 1e-6)
    bar = {"len": 0.42, "thickness": 12, "title": {"side": "right", "font": {"size": 11}}}
    fig.update_layout(
        coloraxis={
            "colorscale": "gray",
            "cmin": lo,
            "cmax": hi,
            "colorbar": {**bar, "y": 0.78, "title": {**bar["title"], "text": "dB (input's units)"}},
        },
        coloraxis2={
            "colorscale": "gray" if same else "inferno",
            "cmin": 0.0,
            "cmax": emax,
            "colorbar": {**bar, "y": 0.22, "title": {**bar["title"], "text": "|input − reconstruction| dB"}},
        },
        # Square panels are as wide as a column: beyond two rows of those the figure is empty space.
        height=min(660, 2 * (1100 // (n + 1)) + 90),
        # Room above for TITLE_LINES lines of title, and on the left for the first title's overhang.
        margin={"l": 20, "r": 10, "t": 26 + 15 * TITLE_LINES, "b": 10},
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
    # The first axes anchor the others: an axis matching itself, or matching and scale-anchored at once,
    # is a conflict plotly ignores with a console warning on every render.
    fig.layout.xaxis.matches = None
    fig.layout.yaxis.matches = None
    for name in fig.layout:
        if name.startswith("yaxis") and name != "yaxis":
            fig.layout[name].scaleanchor = None
    return fig


def _fit_title(title: str, width: int) -> str:
    """A "variant · name" title as the variant on one line over the name on the others."""
    variant, _, name = title.partition(" · ")
    head = wrap_title(variant, width, 1)
    if not name:
        return head
    # A person's run name keeps its start when cut; ids and catalogue labels their distinguishing end.
    human = not re.fullmatch(r"(….*|\d{6}-[0-9a-z]+|reference|hub: .*)( \(\w+\))?", name)
    return head + "<br>" + wrap_title(name, width, TITLE_LINES - 1, keep_tail=not human)


def title_chars(columns: int, plot_px: int = MIN_PLOT_PX) -> int:
    """Characters of a panel title that fit in one of ``columns`` columns of a ``plot_px`` wide plot."""
    return max(8, int(plot_px * (1 - 0.02 * (columns - 1)) / columns / CHAR_PX))


def checkpoint_name(ctx: Any, folder: str, variant: str) -> str:
    """What a title or the table calls a checkpoint beside its variant: the run's name where it has one (cut
    at NAME_CHARS), else the short run id; a reference is "reference"."""
    name = display_name(ctx, folder)
    if name.startswith("reference · ") and name.endswith(variant):
        return "reference"
    if name != run_label(ctx, folder):  # a name the person gave the run
        return name if len(name) <= NAME_CHARS else name[: NAME_CHARS - 1] + "…"
    return short_run(name, variant)


def panel_title(ctx: Any, folder: str, variant: str) -> str:
    """A panel's title: the variant and the checkpoint's name (``checkpoint_name``)."""
    return f"{variant} · {checkpoint_name(ctx, folder, variant)}"


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


#: Figures a flag makes meaningless: a flat image has no speckle, so its ENL ratio is huge and says nothing.
FLAGGED_METRICS = ("enl_ratio",)


def metrics_row(
    label_variant: str, run: str, metrics: dict[str, float], flags: list[sanity.Flag] | None = None
) -> list[Any]:
    """A table row: every figure finite and rounded per the metric registry, "n/a" where missing; the
    flags in words in the last column, and a flagged model's ENL ratio shown with its flag."""
    flags = flags or []
    cells = []
    for k, _ in TABLE_METRICS:
        text = registry.format_value(k, metrics.get(k))
        cells.append(sanity.qualified(text, flags) if k in FLAGGED_METRICS else text)
    return [
        label_variant,
        run,
        *cells,
        f"{int(metrics['params']):,}",
        f"{metrics['inference_ms']:.1f}",
        # The short words only: the figures behind each flag are in the notes above the panels, and a long
        # cell would squeeze the number columns until their values break mid-figure.
        sanity.flag_cell([f.short for f in flags]),
    ]


def _missing_notes(metrics: list[dict[str, float]]) -> list[str]:
    """Why a table cell reads n/a, once per metric."""
    notes = []
    for key, title in TABLE_METRICS:
        if any(not np.isfinite(m.get(key, np.nan)) for m in metrics):
            reason = registry.missing_reason(key) or "no value for this input"
            notes.append(f"{title} n/a: {reason}")
    return notes


def sar_compare(
    ctx: Any,
    checkpoints: Any,
    source: str = SOURCES[0],
    seed: Any = 0,
    size: Any = 0,
    looks: Any = 0,
    upload: Any = None,
    input_kind: str = "auto",
    patch: str = PATCHES[0],
    error_scale: str = ERROR_SCALES[0],
    progress: Progress | None = None,
) -> SARComparison:
    """Run every chosen SAR checkpoint on one input and collect images, error maps and metrics.

    ``size`` 0 (or None) simulates the validation scene at the first checkpoint's training size;
    ``progress(fraction, desc)`` (the page's gr.Progress) hears each checkpoint.
    """
    progress = progress or no_progress
    folders = selected_folders(checkpoints, "sar", multiple=True)
    if len(folders) > MAX_CHECKPOINTS:
        raise ValueError(
            f"choose at most {MAX_CHECKPOINTS} checkpoints to compare at once, got {len(folders)}"
        )
    folders = [resolve_checkpoint(ctx, f, "sar") for f in folders]
    if error_scale not in ERROR_SCALES:
        raise ValueError(f"unknown error scale {error_scale!r}; expected one of {', '.join(ERROR_SCALES)}")
    progress(0.0, "loading the checkpoints")
    models = [load_checkpoint(ctx, f, "sar") for f in folders]
    if size in (None, 0, "", "auto"):  # scenes at the training size look like the training data
        size = int(getattr(models[0], "image_size", MAX_SIDE))
    inp = sar_input(source, seed, size, looks, upload, input_kind, patch)
    notes = list(inp.notes)
    legacy: dict[str, list[str]] = {}  # note -> the variants it applies to
    for m in models:
        note = legacy_preprocessing_note(getattr(m, "preprocessing", None))
        if note:
            legacy.setdefault(note, []).append(m.VARIANT)
    notes += [f"{', '.join(dict.fromkeys(variants))}: {note}" for note, variants in legacy.items()]

    x_t = torch.from_numpy(inp.x)[None, None]
    valid_t = torch.from_numpy(inp.valid.astype(np.float32))[None, None]
    range_t = torch.tensor([inp.db_range], dtype=torch.float64)
    blank = ~inp.valid
    image = x_to_db(inp.x.astype(np.float64), inp.db_range)
    image[blank] = np.nan
    baseline = {k: float(v[0]) for k, v in sanity.sar_mean_image_scores(x_t, valid_t, range_t).items()}
    recons, errors, labels, metrics, table, flags = [], [], [], [], [], []
    for k, (folder, model) in enumerate(zip(folders, models, strict=True)):
        progress(0.1 + 0.8 * k / len(models), f"{model.VARIANT}: reconstruction and metrics")
        x_hat, z, ms = reconstruct(model, inp.x)
        x_hat_t = torch.from_numpy(x_hat)[None, None]
        values = sar_metrics(x_t, x_hat_t, z, valid_t, range_t)
        values["params"] = float(model.count_parameters()["total"])
        values["inference_ms"] = ms
        found = sanity.sar_flags(
            values["psnr"], values["ssim"], sanity.sar_spread(x_t, x_hat_t, valid_t), baseline
        )
        shown = x_to_db(np.clip(x_hat, 0.0, 1.0).astype(np.float64), inp.db_range)
        shown[blank] = np.nan
        run = run_label(ctx, folder)
        recons.append(shown)
        errors.append(np.abs(image - shown))
        labels.append(f"{model.VARIANT} · {run}")
        metrics.append(values)
        flags.append(found)
        table.append(metrics_row(model.VARIANT, checkpoint_name(ctx, folder, model.VARIANT), values, found))
        notes += [f"{model.VARIANT} · {run} flagged: {f.text}" for f in found]
    notes += _missing_notes(metrics)
    notes.append(_baseline_note(baseline))
    shorts = [panel_title(ctx, f, model.VARIANT) for f, model in zip(folders, models, strict=True)]
    progress(0.9, "figure")
    figure = comparison_figure(
        image, recons, errors, labels, error_scale, titles=shorts, db_range=inp.db_range
    )
    return SARComparison(image, recons, errors, labels, metrics, table, figure, notes, flags, baseline)


def _baseline_note(baseline: dict[str, float]) -> str:
    psnr = registry.format_value("psnr", baseline["psnr"])
    ssim = registry.format_value("ssim", baseline["ssim"])
    return (
        f"trivial baseline: the mean-value image (the input's mean over its valid pixels, everywhere) scores "
        f"PSNR {psnr} dB, SSIM {ssim}; a model at or below it, or whose output is flat (spread under "
        f"{sanity.CONSTANT_STD_FRACTION:.0%} of the input's), is flagged, and its ENL ratio means nothing"
    )


# ------------------------------------------------------------------------------------------------- Gradio
def build_tab(ctx: Any) -> tuple[Any, Any]:
    """The SAR tab's components and events (call inside ``with gr.Tab("SAR"):``)."""
    import gradio as gr

    # Minimum widths make the row wrap on a narrow page: the figure gets the page's width under the controls
    # instead of a third of it beside them (368 px at 800, where seven panels' titles cannot fit).
    with gr.Row():
        with gr.Column(scale=1, min_width=300):
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
                looks = gr.Slider(
                    0,
                    16,
                    value=0,
                    step=1,
                    label="Speckle looks (0: drawn from 1-4 per scene, as in training)",
                )
            with gr.Group():
                upload = gr.File(
                    label="Or upload a SAR image (.npy / .tif / .png)",
                    file_types=[".npy", ".tif", ".tiff", ".png"],
                    type="filepath",
                )
                input_kind = gr.Radio(
                    list(INPUT_KINDS), value="auto", label="Pixel values are (auto: see the caption)"
                )
                patch = gr.Radio(list(PATCHES), value=PATCHES[0], label="256x256 patch of a larger image")
            error_scale = gr.Radio(list(ERROR_SCALES), value=ERROR_SCALES[0], label="Error map scale")
            run = gr.Button("Compare", variant="primary")
        with gr.Column(scale=3, min_width=600):
            status = gr.Markdown(
                "Choose one or more checkpoints and an input, then press **Compare**.", label="Notes"
            )
            # The label badge would sit on top of the first panel's title; the panels are titled anyway.
            figure = gr.Plot(label="Input, reconstructions and absolute error maps", show_label=False)
            # Columns sized by their content: cells never wrap (common.TABLE_CSS), the table scrolls sideways.
            table = gr.Dataframe(
                headers=TABLE_HEADERS,
                label="Metrics",
                elem_id="sar-metrics",
                interactive=False,
                wrap=True,
            )

    upload.upload(lambda _f: SOURCES[1], inputs=upload, outputs=source, api_visibility="private")
    clear_results_on_change(upload, status, [figure, table], "Compare")  # no results under another's name

    compare = page_handler(ctx, sar_compare, lambda r: (notes_markdown(r.notes), r.figure, r.table))

    run.click(
        compare,
        inputs=[checkpoints, source, seed, size, looks, upload, input_kind, patch, error_scale],
        outputs=[status, figure, table],
        api_name="sar_compare",
        # Progress and error badges go on the status line only, so a bad input leaves the last results.
        show_progress_on=[status],
    )

    return sar_checkpoints, checkpoints
