"""Compare tab: the `python -m trainers compare` leaderboard for a chosen domain, its checkpoints and data.

:func:`compare_checkpoints` does the work (the same :func:`trainers.evaluation.compare.run_compare` as the
CLI, with the
tab's cached models); :func:`build_tab` wires it to Gradio and the ``compare`` / ``compare_checkpoints`` API
endpoints.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from studio.views.common import (
    DOMAIN_NAMES,
    dropdown_update,
    escape_markdown,
    load_checkpoint,
    model_device,
    page_handler,
    run_label,
    selected_folders,
    upload_path,
    user_errors,
)

DOMAINS = ("sar", "audio", "fragments")
DOMAIN_LABELS = {"sar": "SAR", "audio": "Audio", "fragments": "Fragments"}
SOURCES = ("built-in", "server folder", "uploaded files")
# Built-in data of each domain: how many examples (SAR patches, audio clips) or corpus files (fragments).
BUILTIN_DEFAULT_N = 16
BUILTIN_MAX_N = 256
MAX_MODELS = 8


@dataclass
class CompareView:
    result: dict[str, Any]
    headers: list[str]
    rows: list[list[str]]
    details: str
    figure: Any
    summary: str


# ------------------------------------------------------------------------------------------------ inputs
def _count(value: Any, what: str, low: int, high: int) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a whole number, got {value!r}") from None
    if number != int(number) or not low <= number <= high:
        raise ValueError(f"{what} must be a whole number from {low} to {high}, got {value!r}")
    return int(number)


def builtin_spec(domain: str, n: Any) -> str:
    """The built-in data spec of `domain` with `n` examples (fragments: `n` corpus files)."""
    count = _count(n, "the number of built-in examples", 1, BUILTIN_MAX_N)
    if domain == "sar":
        return f"sar:synthetic,n={count}"
    if domain == "audio":
        return f"audio:synthetic,n={count}"
    return f"fragments:python,max_files={count}"


def _copy_uploads(uploads: Any, folder: Path) -> int:
    """Copy uploaded files into `folder` under their own names; the number copied."""
    items = uploads if isinstance(uploads, (list, tuple)) else [uploads]
    items = [u for u in items if u is not None]
    if not items:
        raise ValueError("no files uploaded: upload the files to compare on, or choose another data source")
    names: set[str] = set()
    for item in items:
        path = upload_path(item, "file")
        name = path.name
        k = 2
        while name in names:
            name = f"{path.stem}-{k}{path.suffix}"
            k += 1
        names.add(name)
        shutil.copyfile(path, folder / name)
    return len(names)


def _check_domain(domain: Any) -> str:
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; choose one of {', '.join(DOMAINS)}")
    return str(domain)


# ----------------------------------------------------------------------------------------------- compute
def compare_checkpoints(
    ctx: Any,
    domain: str,
    checkpoints: Any,
    source: str = SOURCES[0],
    folder: str | None = None,
    uploads: Any = None,
    n: Any = BUILTIN_DEFAULT_N,
    baselines: bool = True,
    seed: Any = 0,
    progress: Any = None,
) -> CompareView:
    """Run the leaderboard for the chosen checkpoints of `domain` on the chosen data.

    Data: the built-in set (`n` examples), a folder on the server (not on a public Space), or uploaded
    files (copied into a temporary folder for the duration of the comparison).
    """
    from trainers.evaluation.compare import ModelSource, leaderboard, markdown_report, rd_figure, run_compare

    domain = _check_domain(domain)
    seed_i = _count(seed if seed is not None else 0, "the seed", 0, 2**31 - 1)
    folders = selected_folders(checkpoints, domain, multiple=True, ctx=ctx)
    if len(folders) > MAX_MODELS:
        raise ValueError(f"{len(folders)} checkpoints chosen; compare at most {MAX_MODELS} at once")
    models = []
    runs_root = Path(ctx.runs_dir).resolve()
    for f in dict.fromkeys(folders):
        model = load_checkpoint(ctx, f, domain)
        config_path = Path(f) / "config.json"
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        try:
            Path(f).resolve().relative_to(runs_root)
            kind = "run"
        except ValueError:
            kind = "checkpoint"
        name = run_label(ctx, f)
        models.append(ModelSource(name, kind, Path(f), model, config))

    callback = None
    if progress is not None:

        def callback(fraction: float, desc: str) -> None:
            progress(fraction, desc=desc)

    device = str(model_device(models[0].model))  # leave the shared, cached models where they are
    tmp: tempfile.TemporaryDirectory | None = None
    try:
        hide: str | None = None
        if source == SOURCES[0]:
            data = builtin_spec(domain, n)
            label = f"built-in {DOMAIN_NAMES[domain]} data"
        elif source == SOURCES[1]:
            if getattr(ctx, "space", False):
                raise ValueError("server folders cannot be read on a public Space: upload the files instead")
            if not folder or not str(folder).strip():
                raise ValueError(
                    "no server folder given: type the folder's path, or choose another data source"
                )
            path = Path(str(folder).strip()).expanduser()
            if not path.is_dir():
                raise FileNotFoundError(f"server folder {str(path)!r} does not exist or is not a folder")
            data = f'{domain}:folder="{path}"'
            label = f"folder {path}"
        elif source == SOURCES[2]:
            tmp = tempfile.TemporaryDirectory(prefix="studio-compare-")
            count = _copy_uploads(uploads, Path(tmp.name))
            data = f'{domain}:folder="{tmp.name}"'
            label = f"{count} uploaded file{'s' if count != 1 else ''}"
            hide = tmp.name
        else:
            raise ValueError(f"unknown data source {source!r}; expected one of {', '.join(SOURCES)}")
        result = run_compare(
            [],
            data,
            baselines=bool(baselines),
            seed=seed_i,
            device=device,
            progress=callback,
            models=models,
        )
    finally:
        if tmp is not None:
            tmp.cleanup()
    if hide is not None:  # temporary upload paths mean nothing to the user
        result["data"] = label
        for s in result.get("skipped_files", []):
            s["file"] = Path(s["file"]).name
    headers, rows = leaderboard(result)
    details = markdown_report(result, main_table=False)
    summary = (
        f"{len(models)} {DOMAIN_NAMES[domain]} checkpoint{'s' if len(models) != 1 else ''} on "
        f"{escape_markdown(label)}: {result['n']} examples"
        + (", with classic codecs" if baselines else "")
        + ". Each cell: mean [95% bootstrap CI]; ↑ higher is better, ↓ lower is better."
    )
    return CompareView(result, headers, rows, details, rd_figure(result), summary)


# ------------------------------------------------------------------------------------------------- Gradio
def _choices_update(ctx: Any, domain: str, current: Any = None) -> Any:
    """Fresh checkpoint choices of `domain`; with nothing chosen yet, the first few are selected."""
    import gradio as gr

    update = dropdown_update(ctx, domain, current, multiselect=True)
    if not update.get("value"):
        update = gr.update(
            choices=update["choices"], value=[folder for _, folder in update["choices"][:MAX_MODELS]]
        )
    return update


def build_tab(ctx: Any) -> tuple[Any, list[Any]]:
    """The Compare tab's components and events (call inside ``with gr.Tab("Compare"):``)."""
    import gradio as gr

    with gr.Row():
        with gr.Column(scale=1):
            domain = gr.Radio(
                [(DOMAIN_LABELS[d], d) for d in DOMAINS],
                value="sar",
                label="Domain",
                elem_id="compare-domain",
            )
            with gr.Row():
                checkpoints = gr.Dropdown(
                    choices=ctx.checkpoint_choices("sar"),
                    value=[f for _, f in ctx.checkpoint_choices("sar")[:MAX_MODELS]],
                    multiselect=True,
                    label="Checkpoints",
                    info=f"runs and loaded checkpoints of the domain (at most {MAX_MODELS})",
                    allow_custom_value=True,  # API clients may name runs; resolve_checkpoint checks them
                    scale=4,
                )
                refresh = gr.Button("↻ refresh", scale=1, size="sm")
            source = gr.Radio(list(SOURCES), value=SOURCES[0], label="Data")
            n = gr.Number(
                value=BUILTIN_DEFAULT_N,
                precision=0,
                minimum=1,
                maximum=BUILTIN_MAX_N,
                label="Built-in data: examples (fragments: corpus files)",
            )
            folder = gr.Textbox(
                label="Server folder",
                placeholder="/data/my-sar-images",
                visible=not ctx.space,
            )
            uploads = gr.File(label="Or upload files", file_count="multiple", type="filepath")
            baselines = gr.Checkbox(value=True, label="Classic codecs (JPEG/JPEG 2000/WebP, Opus, identity)")
            seed = gr.Number(value=0, precision=0, minimum=0, label="Bootstrap seed")
            run = gr.Button("Run comparison", variant="primary")
        with gr.Column(scale=3):
            summary = gr.Markdown(
                "Pick a domain, its checkpoints and the data, then press **Run comparison**.", label="Notes"
            )
            table = gr.Dataframe(label="Leaderboard", interactive=False, wrap=True)
            plot = gr.Plot(label="Rate-distortion")
            details = gr.Markdown(label="Details")

    @user_errors
    def compare_checkpoints_choices(domain, checkpoints):
        return _choices_update(ctx, _check_domain(domain), checkpoints)

    refresh.click(
        compare_checkpoints_choices,
        inputs=[domain, checkpoints],
        outputs=checkpoints,
        api_name="compare_checkpoints",
    )
    domain.change(
        lambda d: _choices_update(ctx, _check_domain(d)),
        inputs=domain,
        outputs=checkpoints,
        api_visibility="private",
    )
    uploads.upload(lambda _f: SOURCES[2], inputs=uploads, outputs=source, api_visibility="private")

    def present(view: CompareView) -> tuple:
        return view.summary, {"headers": view.headers, "data": view.rows}, view.figure, view.details

    compare = page_handler(ctx, compare_checkpoints, present)

    run.click(
        compare,
        inputs=[domain, checkpoints, source, folder, uploads, n, baselines, seed],
        outputs=[summary, table, plot, details],
        api_name="compare",
        # Progress and an error badge go on the caption only: the last leaderboard stays as it was.
        show_progress_on=[summary],
    )

    def refresh_on_open(domain, current):
        return gr.update(), _choices_update(ctx, domain if domain in DOMAINS else "sar", current)

    return refresh_on_open, [domain, checkpoints]
