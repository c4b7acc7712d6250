"""Fragments tab: corrupt a 512-byte fragment, repair it with a checkpoint, show the bytes side by side.

Pure functions (:func:`compare_fragment`, :func:`hex_view_html`, ...) do the work; :func:`build_tab` only
wires them to Gradio components and the ``fragments_compare`` / ``fragments_checkpoints`` API endpoints.
"""

from __future__ import annotations

import contextlib
import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from studio.views.common import (
    checkpoint_picker,
    clear_results_on_change,
    fmt,
    load_checkpoint,
    model_call,
    model_device,
    notes_markdown,
    page_handler,
    run_label,
    selected_folders,
    upload_path,
)
from trainers.data.fragments import FRAGMENT_SIZE, NoiseGenerator, bytes_to_tensor, read_fragment
from trainers.metrics import registry, sanity
from trainers.metrics.fragments import fragment_metrics
from trainers.training.fastpath import prepare_for_inference
from trainers.training.progress import Progress, no_progress

BYTES_PER_ROW = 16
# With the ASCII gutter three 16-byte columns need ~1500 px; 8 bytes a row keeps them within a 1400 px page.
BYTES_PER_ROW_ASCII = 8
BUILTIN_CHOICES = 40  # a dropdown, not a file browser: a few dozen corpus files of every kind
SOURCES = ("built-in file", "uploaded file")

# Marks of the repaired column, and the one mark of the corrupted column. Colour plus a text decoration, so
# the marks survive colour-blindness and a dark theme (text colour is forced on marked bytes).
MARK_STYLES = {
    "changed": "background:#fde68a;color:#000",
    "fixed": "background:#86efac;color:#000",
    "wrong": "background:#fca5a5;color:#000;font-weight:bold",
    "broken": "background:#d8b4fe;color:#000;text-decoration:underline",
}
MARK_MEANINGS = {
    "changed": "changed by the noise (corrupted column)",
    "fixed": "corrupted byte the repair restored",
    "wrong": "corrupted byte still wrong after the repair",
    "broken": "intact byte the repair made wrong",
}
METRIC_HEADERS = ["figure", "repair", "identity baseline"]


@dataclass
class FragmentComparison:
    clean: np.ndarray  # (n,) uint8
    corrupted: np.ndarray  # (n,) uint8
    repaired: np.ndarray  # (n,) uint8
    changed: np.ndarray  # (n,) bool, bytes the noise changed
    metrics: dict[str, float]
    html: str
    table: list[list[Any]]
    summary: str
    flags: list[sanity.Flag] = field(default_factory=list)  # empty: the repair beats the identity baseline


# ------------------------------------------------------------------------------------------------ inputs
def corpus_name(path: str | Path) -> str:
    """A built-in file's name relative to the Python installation's ``lib`` folder, e.g.
    ``python3.11/__future__.py``: the app may be public, and absolute paths would describe the server."""
    from trainers.data.fragments import installation_stdlib  # the installation's, also inside a venv

    path = Path(path)
    for folder in installation_stdlib():
        with contextlib.suppress(ValueError):
            return path.relative_to(folder.parent).as_posix()
    return path.name


def builtin_choices(limit: int = BUILTIN_CHOICES) -> list[tuple[str, str]]:
    """(label, name) of files from the default corpus (the Python installation), spread over its kinds;
    the value is the `corpus_name`, so neither the page nor the API's schema shows server paths."""
    return [(label, corpus_name(path)) for label, path in _builtin_files(limit)]


def builtin_path(choice: str) -> Path:
    """The corpus file a built-in choice names (its `corpus_name`, or its path as older clients sent)."""
    for _, path in _builtin_files(BUILTIN_CHOICES):
        if choice in (corpus_name(path), path):
            return Path(path)
    # Only the listed corpus files: the API must not become a way to read any file on the server.
    raise ValueError(f"{corpus_name(choice)!r} is not one of the built-in files; pick one from the list")


def _builtin_files(limit: int) -> list[tuple[str, str]]:
    """(label, path) of the built-in files."""
    from trainers.data.fragments import default_corpus_paths

    try:
        paths = default_corpus_paths(max_files=limit)
    except (FileNotFoundError, ValueError):
        return []
    out = []
    for p in paths:
        try:
            size = p.stat().st_size
        except OSError:
            continue
        out.append((f"{corpus_name(p)} ({size:,} bytes)", str(p)))
    return out


def fragment_input(
    source: str, builtin: str | None, upload: Any, offset: Any, size: int = FRAGMENT_SIZE
) -> tuple[np.ndarray, str]:
    """The clean fragment (uint8) and a description; every bad choice is a ValueError/FileNotFoundError."""
    offset_i = _offset(offset)
    if source == SOURCES[1]:
        path = upload_path(upload, "file")
        name = path.name
    elif source == SOURCES[0]:
        if not builtin:
            raise ValueError("no built-in file chosen: pick one from the list, or upload a file")
        path = builtin_path(str(builtin))
        name = corpus_name(path)
    else:
        raise ValueError(f"unknown input source {source!r}; expected one of {', '.join(SOURCES)}")
    try:
        data = read_fragment(path, offset_i, size)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"file not found: {name}") from exc
    except ValueError as exc:
        # read_fragment names the full path (a temporary upload, or the server's Python installation);
        # name the file the user knows instead.
        raise ValueError(str(exc).replace(str(path), name)) from exc
    return data, f"{name}, bytes {offset_i}..{offset_i + size - 1} of {path.stat().st_size:,}"


def _offset(offset: Any) -> int:
    try:
        value = float(offset if offset is not None else 0)
    except (TypeError, ValueError):
        raise ValueError(f"offset must be a whole number of bytes, got {offset!r}") from None
    if not np.isfinite(value) or value != int(value) or value < 0:
        raise ValueError(f"offset must be a non-negative whole number of bytes, got {offset!r}")
    return int(value)


def make_noise(ber: float, substitution: float, erasure: float, burst: float, seed: Any) -> NoiseGenerator:
    """A NoiseGenerator from the tab's settings; its own checks give the messages for bad rates."""
    try:
        seed_i = int(seed if seed is not None else 0)
    except (TypeError, ValueError):
        raise ValueError(f"seed must be a non-negative whole number, got {seed!r}") from None
    return NoiseGenerator(
        bit_error_rate=ber,
        substitution_rate=substitution,
        erasure_rate=erasure,
        burst_p_enter=burst,
        seed=seed_i,
    )


# ----------------------------------------------------------------------------------------------- compute
@torch.no_grad()
def repair_bytes(model: torch.nn.Module, corrupted: np.ndarray) -> np.ndarray:
    """The model's repair of one fragment, as uint8 bytes of the same length."""
    x = bytes_to_tensor(corrupted)[None].to(model_device(model))  # (1, 1, n)
    model = prepare_for_inference(model)  # the variant's precision (trainers.training.fastpath)
    out = model_call("the fragment model", lambda: model.predict_bytes(x))
    out = out.detach().cpu().numpy().reshape(-1)
    if out.shape != corrupted.shape:
        raise ValueError(
            f"the fragment model returned {out.shape[0]} bytes for a {corrupted.shape[0]}-byte fragment"
        )
    return np.clip(out, 0, 255).astype(np.uint8)


def byte_marks(
    clean: np.ndarray, corrupted: np.ndarray, repaired: np.ndarray, changed: np.ndarray
) -> dict[str, np.ndarray]:
    """Boolean masks: ``changed`` by the noise; of those ``fixed`` / ``wrong``; ``broken`` intact bytes."""
    changed = np.asarray(changed, dtype=bool)
    right = repaired == clean
    return {
        "changed": changed,
        "fixed": changed & right,
        "wrong": changed & ~right,
        "broken": ~changed & ~right,
    }


def _byte_span(value: int, mark: str, col: str, i: int, title: str) -> str:
    style = f' style="{MARK_STYLES[mark]}"' if mark else ""
    tip = f' title="{title}"' if title else ""
    return f'<span data-col="{col}" data-i="{i}" data-mark="{mark}"{tip}{style}>{value:02x}</span>'


def _ascii(row: np.ndarray) -> str:
    return html.escape("".join(chr(b) if 32 <= b < 127 else "." for b in row.tolist()), quote=True)


def hex_view_html(
    clean: np.ndarray,
    corrupted: np.ndarray,
    repaired: np.ndarray,
    changed: np.ndarray,
    base_offset: int = 0,
    show_ascii: bool = False,
) -> str:
    """Original, corrupted and repaired bytes side by side with the file offset of each row: 16 bytes a
    row, or :data:`BYTES_PER_ROW_ASCII` with the ASCII gutter, so the three columns fit a 1400 px page.

    Every byte is a ``<span data-col=... data-i=... data-mark=...>`` so the marks can be checked (and
    styled) without parsing colours: ``changed`` in the corrupted column; ``fixed``, ``wrong`` or
    ``broken`` in the repaired column; the original column is the unmarked reference.
    """
    arrays = [np.asarray(a) for a in (clean, corrupted, repaired)]
    if any(a.dtype != np.uint8 or a.ndim != 1 for a in arrays) or len({a.shape for a in arrays}) != 1:
        raise ValueError("hex view needs three 1-D uint8 arrays of the same length")
    marks = byte_marks(*arrays, changed)
    n = arrays[0].shape[0]
    per_row = BYTES_PER_ROW_ASCII if show_ascii else BYTES_PER_ROW
    repaired_mark = np.full(n, "", dtype=object)
    for name in ("fixed", "wrong", "broken"):
        repaired_mark[marks[name]] = name
    # Inline cell styles: Gradio's prose table rules (cell padding and borders) would otherwise make the
    # table several screens tall.
    cell_style = "padding:0 1.2em 0 0;border:none;white-space:pre;line-height:1.5"
    row_style = "border:none;border-bottom:1px solid var(--border-color-primary,#e5e7eb)"
    rows = []
    for start in range(0, n, per_row):
        stop = min(start + per_row, n)
        cells = [f'<td style="{cell_style};color:#888">{base_offset + start:08x}</td>']
        for col, arr in zip(("original", "corrupted", "repaired"), arrays, strict=True):
            spans = []
            for i in range(start, stop):
                mark = "changed" if col == "corrupted" and marks["changed"][i] else ""
                title = ""
                if col == "repaired":  # one tooltip per byte keeps the page light
                    mark = repaired_mark[i]
                    title = (
                        f"offset {base_offset + i:#x}: original {arrays[0][i]:02x}, "
                        f"corrupted {arrays[1][i]:02x}, repaired {arrays[2][i]:02x}"
                    )
                spans.append(_byte_span(int(arr[i]), mark, col, i, title))
            cell = " ".join(spans)
            if show_ascii:
                cell += f' <span style="color:#888">|{_ascii(arr[start:stop])}|</span>'
            cells.append(f'<td style="{cell_style}">{cell}</td>')
        rows.append(f'<tr style="{row_style}">' + "".join(cells) + "</tr>")
    legend = " ".join(
        f'<span style="{MARK_STYLES[m]};padding:0 .4em;white-space:nowrap">{html.escape(MARK_MEANINGS[m])}: '
        f"{int(marks[m].sum())}</span>"
        for m in MARK_STYLES
    )
    # A sticky header: the rows scroll inside a box of at most 70% of the window, so the column names and
    # (on a narrow window) the horizontal scrollbar stay in reach.
    head_style = (
        "text-align:left;padding:0 1.2em 0 0;border:none;position:sticky;top:0;"
        "background:var(--background-fill-primary,#fff)"
    )
    header = "".join(
        f'<th style="{head_style}">{h}</th>' for h in ("offset", "original", "corrupted", "repaired")
    )
    return (
        '<div class="fragment-hex" style="font-family:ui-monospace,monospace;font-size:12px">'
        f'<div style="margin-bottom:.5em;line-height:1.8">{legend}</div>'
        '<div class="fragment-hex-rows" style="max-height:70vh;overflow:auto">'
        '<table style="border-collapse:collapse;border:none;width:auto;margin:0">'
        f'<thead><tr style="{row_style}">{header}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div></div>"
    )


def label(title: str, key: str) -> str:
    """A row label with the direction of its metric from the registry ("↑" or "↓")."""
    mark = registry.arrow(key)
    return f"{title} {mark}" if mark else title


def metrics_table(
    metrics: dict[str, float], marks: dict[str, np.ndarray], flags: list[sanity.Flag] | None = None
) -> list[list[Any]]:
    """Rows of (figure, repair, identity baseline); the identity baseline returns the corrupted input. Each
    label says which way is better; a missing value says why; the last row holds the repair's flags."""
    n = int(marks["changed"].shape[0])
    n_changed = int(marks["changed"].sum())
    n_intact = n - n_changed

    def pct(v: float, key: str) -> Any:
        if np.isfinite(v):
            return fmt(100.0 * v, 2)
        reason = registry.missing_reason(key)
        return f"n/a: {reason}" if reason else "n/a"

    return [
        [
            label(f"byte accuracy, all {n} bytes (%)", "accuracy"),
            pct(metrics["accuracy"], "accuracy"),
            pct(metrics["identity_accuracy"], "identity_accuracy"),
        ],
        [
            label(f"byte accuracy, {n_changed} corrupted bytes (%)", "accuracy_corrupted"),
            pct(metrics["accuracy_corrupted"], "accuracy_corrupted"),
            pct(metrics["identity_accuracy_corrupted"], "identity_accuracy_corrupted"),
        ],
        [label("bit error rate (%)", "ber"), pct(metrics["ber"], "ber"), pct(metrics["identity_ber"], "ber")],
        [label(f"corrupted bytes fixed (of {n_changed})", "fixed_fraction"), int(marks["fixed"].sum()), 0],
        [label(f"intact bytes broken (of {n_intact})", "broken_fraction"), int(marks["broken"].sum()), 0],
        ["flag", sanity.flag_cell(flags or []), "the baseline a repair must beat"],
    ]


def compare_fragment(
    ctx: Any,
    checkpoint: Any,
    source: str = SOURCES[0],
    builtin: str | None = None,
    upload: Any = None,
    offset: Any = 0,
    ber: float = 0.005,
    substitution: float = 0.01,
    erasure: float = 0.002,
    burst: float = 0.0,
    seed: Any = 0,
    show_ascii: bool = False,
    progress: Progress | None = None,
) -> FragmentComparison:
    """Corrupt the chosen fragment with seeded noise, repair it with the checkpoint, and score both;
    ``progress(fraction, desc)`` (the page's gr.Progress) hears the steps."""
    progress = progress or no_progress
    folder = selected_folders(checkpoint, "fragments", ctx=ctx)[0]
    noise = make_noise(ber, substitution, erasure, burst, seed)
    progress(0.0, "loading the checkpoint")
    model = load_checkpoint(ctx, folder, "fragments")
    size = int(getattr(model, "fragment_size", FRAGMENT_SIZE))
    clean, description = fragment_input(source, builtin, upload, offset, size)
    corrupted, changed = noise(clean)
    progress(0.5, "repairing the fragment")
    repaired = repair_bytes(model, corrupted)
    metrics = fragment_metrics(clean, corrupted, repaired, changed)
    marks = byte_marks(clean, corrupted, repaired, changed)
    flags = sanity.fragments_flags(metrics["accuracy"], metrics["identity_accuracy"])
    view = hex_view_html(
        clean, corrupted, repaired, changed, base_offset=_offset(offset), show_ascii=show_ascii
    )
    acc, base = 100 * metrics["accuracy"], 100 * metrics["identity_accuracy"]
    gain = acc - base
    verdict = "beats" if gain > 0 else ("matches" if gain == 0 else "is worse than")
    notes = [
        f"input: {description}",
        f"checkpoint: {run_label(ctx, folder)} ({model.VARIANT})",
        f"noise changed {int(changed.sum())} of {clean.size} bytes; the repair {verdict} the identity "
        f"baseline ({acc:.2f}% vs {base:.2f}% bytes right)",
        *(f"flagged: {f.text}" for f in flags),
    ]
    return FragmentComparison(
        clean=clean,
        corrupted=corrupted,
        repaired=repaired,
        changed=changed,
        metrics=metrics,
        html=view,
        table=metrics_table(metrics, marks, flags),
        summary=notes_markdown(notes),
        flags=flags,
    )


# ------------------------------------------------------------------------------------------------- Gradio
def build_tab(ctx: Any) -> tuple[Any, Any]:
    """The Fragments tab's components and events (call inside ``with gr.Tab("Fragments"):``)."""
    import gradio as gr

    choices = builtin_choices()
    with gr.Row():
        with gr.Column(scale=1, min_width=300):
            checkpoint, fragments_checkpoints = checkpoint_picker(
                ctx, "fragments", "Fragment checkpoint", "fragment-dae or fragment-dae-bytes"
            )
            source = gr.Radio(list(SOURCES), value=SOURCES[0], label="Input")
            builtin = gr.Dropdown(
                choices=choices,
                value=choices[0][1] if choices else None,
                label="Built-in file (from the Python installation)",
            )
            upload = gr.File(label="Or upload any file (at least 512 bytes)", type="filepath")
            offset = gr.Number(value=0, precision=0, minimum=0, label="Byte offset of the fragment")
            with gr.Accordion("Noise", open=True):
                ber = gr.Slider(0.0, 0.1, value=0.005, step=0.001, label="Bit error rate")
                substitution = gr.Slider(0.0, 0.2, value=0.01, step=0.005, label="Byte substitution rate")
                erasure = gr.Slider(0.0, 0.05, value=0.002, step=0.001, label="Erasure rate (zeroed runs)")
                burst = gr.Slider(0.0, 0.1, value=0.0, step=0.005, label="Burst entry probability")
                seed = gr.Number(value=0, precision=0, minimum=0, label="Noise seed")
            show_ascii = gr.Checkbox(value=False, label="Show ASCII")
            run = gr.Button("Corrupt and repair", variant="primary")
        with gr.Column(scale=3, min_width=600):
            # Starts with a hint so the progress spinner and an "Error" badge have a visible place to sit.
            summary = gr.Markdown(
                "Pick a checkpoint and a fragment, then press **Corrupt and repair**.", label="Notes"
            )
            table = gr.Dataframe(headers=METRIC_HEADERS, label="Accuracy", interactive=False)
    # Full width: three 16-byte hex columns side by side do not fit beside the controls.
    hex_view = gr.HTML(label="Hex view")

    # Uploading a file is a clear intent to use it.
    upload.upload(lambda _f: SOURCES[1], inputs=upload, outputs=source, api_visibility="private")
    # No results under another file's name, also when the new file turns out to be bad.
    clear_results_on_change(upload, summary, [table, hex_view], "Corrupt and repair")

    fragments_compare = page_handler(ctx, compare_fragment, lambda r: (r.summary, r.table, r.html))

    run.click(
        fragments_compare,
        inputs=[
            checkpoint,
            source,
            builtin,
            upload,
            offset,
            ber,
            substitution,
            erasure,
            burst,
            seed,
            show_ascii,
        ],
        outputs=[summary, table, hex_view],
        api_name="fragments_compare",
        # Progress and a bad input's "Error" badge go on the caption alone: the previous table and hex view
        # stay as they were instead of being covered.
        show_progress_on=[summary],
    )

    return fragments_checkpoints, checkpoint
