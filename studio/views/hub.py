"""Hub tab: push a run's checkpoint with its model card, export it to a folder, or load a checkpoint from the
Hub (or a folder) so that every comparison tab can pick it.

Pure functions (:func:`push`, :func:`export`, :func:`load`, :func:`pushable_runs`) do the work through
``trainers.hub.push``; :func:`build_tab` wires them to components and the ``hub_push`` / ``hub_export`` /
``hub_load`` / ``hub_runs`` API endpoints. :func:`export_metrics` (``export_metrics`` endpoint) makes one
download of every logged point of the chosen runs as CSV, JSONL or zipped TensorBoard files.

The token field is a password box whose value goes to one push or load and nowhere else. On a Space the
environment's token (the Space owner's) is never used for a visitor: a push needs a pasted token, a load
without one is anonymous, and neither the server's folders (export target, load source) are reachable.
"""

from __future__ import annotations

import html
import shutil
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from studio.views.common import (
    choices_update,
    escape_markdown,
    match_choice,
    page_handler,
    user_errors,
)
from trainers.hub import push as hub_lib
from trainers.hub import source as source_lib
from trainers.runs import checkpoints
from trainers.runs import export as export_lib
from trainers.training.progress import Progress, no_progress

KINDS = ("best", "last")
METRIC_FORMATS = {
    "csv": "CSV (Trackio's import_csv layout)",
    "jsonl": "JSONL (one point per line)",
    "tensorboard": "TensorBoard event files (zipped, with the media)",
}
# Metric downloads are made under the system temp folder and removed after this many seconds.
DOWNLOAD_TTL_S = 3600.0
# Exports named by a relative path go here, inside the runs folder.
EXPORTS_DIR = "exports"


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def _checkpoint_kinds(ctx: Any, run_id: str) -> list[str]:
    kinds = []
    for kind in KINDS:
        try:
            if checkpoints.checkpoint_path(Path(ctx.runs_dir) / run_id, kind) is not None:
                kinds.append(kind)
        except ValueError:  # an incomplete checkpoint cannot be shared; the run is listed without it
            continue
    return kinds


def pushable_runs(ctx: Any) -> list[tuple[str, str]]:
    """(label, run id) of every run with a complete checkpoint, newest first."""
    choices = []
    for run in ctx.store.list_runs():
        kinds = _checkpoint_kinds(ctx, run.id)
        if kinds:
            choices.append((f"{run.id} · {run.variant} · {run.status} · {'/'.join(kinds)}", run.id))
    return choices


def _run_id(ctx: Any, run_id: Any) -> str:
    text = _text(run_id)
    if not text:
        raise ValueError(
            "no run chosen: pick a run with a checkpoint (train one in the Train tab, then ↻ refresh)"
        )
    if ctx.store.get_run(text) is not None:
        return text
    typed = match_choice(text, pushable_runs(ctx))  # part of a run's id or name typed into the list
    if typed is None:
        raise ValueError(
            f"no run matches {text!r}: pick a run with a checkpoint from the list (↻ refreshes it)"
        )
    return typed


def push(
    ctx: Any,
    run_id: Any,
    kind: Any,
    repo_id: Any,
    private: Any = False,
    branch: Any = None,
    commit_message: Any = None,
    token: Any = None,
    source_url: Any = None,
    progress: Progress | None = None,
) -> str:
    """Push the chosen checkpoint; returns a Markdown line with the commit link. ``progress(fraction, desc)``
    (the page's gr.Progress) hears the export steps and the upload. ``source_url``: where the model card
    installs the studio from (empty: the default of trainers.hub.source)."""
    run_id = _run_id(ctx, run_id)
    token = _text(token) or None
    if ctx.space and token is None:
        raise ValueError(
            "paste your Hugging Face token (with write access) to push from this Space; "
            "the Space's own token is never used for visitors"
        )
    url = hub_lib.push_checkpoint(
        run_id,
        ctx.runs_dir,
        _text(repo_id),
        token=token,
        private=bool(private),
        branch=_text(branch) or None,
        commit_message=_text(commit_message) or None,
        kind=str(kind or "best"),
        progress=progress or no_progress,
        source_url=_text(source_url) or None,
    )
    repo_url = url.split("/commit/", 1)[0]
    where = f" (branch `{html.escape(_text(branch))}`)" if _text(branch) else ""
    return (
        f"✅ Pushed the `{kind}` checkpoint of run `{html.escape(run_id)}` to [{repo_url}]({repo_url})"
        f"{where}: [commit]({url})."
    )


def export(
    ctx: Any,
    run_id: Any,
    kind: Any,
    folder: Any,
    source_url: Any = None,
    progress: Progress | None = None,
) -> str:
    """Export the chosen checkpoint to a folder on this machine (refused on a Space); ``source_url`` as in
    :func:`push`."""
    if ctx.space:
        raise ValueError(
            "export to a folder is disabled on a Space (its disk is not yours); push to the Hub instead"
        )
    run_id = _run_id(ctx, run_id)
    text = _text(folder)
    if not text:
        raise ValueError("no export folder given: type a folder name, e.g. my-model, or an absolute path")
    target = export_folder(ctx, text)
    earlier = target.is_dir() and any(target.iterdir())
    target = hub_lib.export_checkpoint(
        run_id,
        ctx.runs_dir,
        target,
        kind=str(kind or "best"),
        progress=progress or no_progress,
        source_url=_text(source_url) or None,
    )
    files = ", ".join(sorted(p.name for p in target.iterdir()))
    verb = "Replaced the earlier export in" if earlier else "Exported to"
    return f"✅ {verb} `{escape_markdown(str(target))}`: {escape_markdown(files)}."


def export_folder(ctx: Any, text: str) -> Path:
    """Where an export goes: an absolute (or ~) path as given, a relative one under the runs folder's
    `exports/`. Relative to the server's working directory it would land wherever the app was started,
    often inside a source checkout."""
    path = Path(text).expanduser()
    if path.is_absolute():
        return path
    root = Path(ctx.runs_dir).resolve() / EXPORTS_DIR
    target = (root / path).resolve()
    if not target.is_relative_to(root):
        raise ValueError(
            f"a relative export name stays inside {root}; {text!r} leads out of it: give an absolute path "
            "to export elsewhere"
        )
    return target


def metric_runs(ctx: Any) -> list[tuple[str, str]]:
    """(label, run id) of every run, newest first: all of them have (or will have) points to export."""
    return [(f"{run.id} · {run.variant} · {run.status}", run.id) for run in ctx.store.list_runs()]


def _download_root() -> Path:
    root = Path(tempfile.gettempdir()) / "studio-metric-exports"
    root.mkdir(exist_ok=True)
    now = time.time()
    for old in root.iterdir():  # earlier downloads: Gradio has served its own copy long ago
        try:
            if now - old.stat().st_mtime > DOWNLOAD_TTL_S:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            continue
    return root


def export_metrics(ctx: Any, run_ids: Any, fmt: Any) -> tuple[str, str]:
    """Every logged point of the chosen runs as one download (see trainers.runs.export): (status Markdown,
    path
    of the file: a single run's CSV/JSONL as it is, else a zip)."""
    if isinstance(run_ids, str):
        run_ids = [run_ids]
    ids = [_text(r) for r in run_ids or [] if _text(r)]
    if not ids:
        raise ValueError("no run chosen: pick one or more runs to export their metrics")
    if fmt not in METRIC_FORMATS:
        raise ValueError(f"export format must be one of {', '.join(METRIC_FORMATS)}; got {fmt!r}")
    path = export_lib.export_download(ids, str(fmt), ctx.runs_dir, _download_root())
    what = "run" if len(ids) == 1 else "runs"
    return f"✅ {METRIC_FORMATS[fmt]} of {len(ids)} {what}: `{escape_markdown(path.name)}`.", str(path)


def hub_placeholders(ctx: Any, run_id: Any) -> tuple[str, str]:
    """Repo id and commit message suggestions for the chosen run."""
    run = ctx.store.get_run(_text(run_id)) if _text(run_id) else None
    variant = run.variant if run is not None else "sar-residual"
    return f"your-name/{variant}", f"Upload {variant} checkpoint"


def loaded_markdown(ctx: Any) -> str:
    """The checkpoints loaded so far (on a Space: by this visitor) and the tab where each can be picked."""
    loaded = ctx.externals() if hasattr(ctx, "externals") else ctx.external
    if not loaded:
        return "_No checkpoint loaded from the Hub or a folder yet._"
    lines = ["| checkpoint | variant | tab |", "|---|---|---|"]
    for label, folder in loaded.items():
        try:
            variant, _, tab = hub_lib.domain_tab(folder)
        except (OSError, ValueError, KeyError):
            variant, tab = "unreadable", "–"
        lines.append(f"| {html.escape(label)} | {variant} | {tab} |")
    return "\n".join(lines)


def load(ctx: Any, source: Any, token: Any = None) -> tuple[str, str]:
    """Fetch a Hub repo (or read a folder), check it loads, register it (``ctx.add_external``: on a Space for
    this visitor only).

    Returns (status Markdown naming the tab that can use it, the table of loaded checkpoints).
    """
    text = _text(source)
    token_text = _text(token) or None
    if ctx.space:
        if text.startswith((".", "/", "~", "\\")) or text.split("@", 1)[0].count("/") > 1:
            raise ValueError(
                "loading from a folder is disabled on a Space; give a Hub repo id such as owner/name"
            )
        # Always as a Hub URL, so that the server's disk is never read (assets/sar is a repo id here, not
        # a folder) and no answer tells a visitor which folders exist. A visitor without a token loads
        # anonymously instead of with the Space owner's token.
        if not text.startswith(("http://", "https://")):
            from huggingface_hub import constants

            text = f"{constants.ENDPOINT.rstrip('/')}/{text}"
        label, folder = hub_lib.load_from_hub_or_folder(text, token=token_text or False)
    else:
        label, folder = hub_lib.load_from_hub_or_folder(text, token=token_text)
    variant, domain, tab = hub_lib.domain_tab(folder)
    ctx.add_external(label, folder)
    status = (
        f"✅ Loaded **{html.escape(label)}** ({variant}, {domain}). Pick it in the **{tab}** tab's "
        "checkpoint list (press ↻ refresh there)."
    )
    return status, loaded_markdown(ctx)


def build_tab(ctx: Any) -> tuple[Any, Any]:
    """The Hub tab's components and events (call inside ``with gr.Tab("Hub"):``)."""
    import gradio as gr

    runs = pushable_runs(ctx)
    gr.Markdown(
        "Share a run's checkpoint: **push** it to a Hugging Face Hub model repo with a model card (metrics, "
        "example reconstructions) and the run's TensorBoard logs (the Hub's metrics tab)"
        + ("" if ctx.space else ", or **export** the same folder locally")
        + ". **Load** a checkpoint from the Hub"
        + ("" if ctx.space else " or a folder")
        + " to compare it with your runs."
    )
    with gr.Row():
        with gr.Column(scale=1):
            picked = _checkpoint_column(ctx, runs)
        with gr.Column(scale=1):
            sent = _push_column(ctx, runs)
        with gr.Column(scale=1):
            loading = _load_column(ctx)
    hub_runs = _wire_checkpoints(ctx, picked, sent, loading)
    _metrics_export_section(ctx, picked.refresh)
    return hub_runs, picked.run


def _checkpoint_column(ctx: Any, runs: list[tuple[str, str]]) -> SimpleNamespace:
    """The run and checkpoint to push or export, and the token a push or load uses."""
    import gradio as gr

    gr.Markdown("### Checkpoint")
    with gr.Row():
        run = gr.Dropdown(
            choices=runs,
            value=runs[0][1] if runs else None,
            label="Run",
            scale=4,
            # API clients name runs started after this page was built; `_run_id` checks them.
            allow_custom_value=True,
        )
        refresh = gr.Button("↻", scale=0, min_width=40, size="sm")
    kind = gr.Radio(list(KINDS), value="best", label="Checkpoint", info="best validation or most recent")
    token = gr.Textbox(
        label="Hugging Face token",
        type="password",
        placeholder="hf_...",
        info="used for this push or load only, never saved"
        + ("" if ctx.space else "; empty: HF_TOKEN or `hf auth login`"),
    )
    return SimpleNamespace(run=run, refresh=refresh, kind=kind, token=token)


def _push_column(ctx: Any, runs: list[tuple[str, str]]) -> SimpleNamespace:
    """The push form, and (not on a Space) the export-to-a-folder form."""
    import gradio as gr

    gr.Markdown("### Push to the Hub")
    repo_hint, message_hint = hub_placeholders(ctx, runs[0][1] if runs else None)
    repo_id = gr.Textbox(label="Repo id", placeholder=repo_hint)
    with gr.Row():
        private = gr.Checkbox(value=False, label="Private (new repos)")
        branch = gr.Textbox(label="Branch", placeholder="main")
    commit_message = gr.Textbox(label="Commit message", placeholder=message_hint)
    source_url = gr.Textbox(
        label="Source URL (model card)",
        placeholder=source_lib.default_source_url()
        or "https://github.com/owner/autoencoder-comparison-studio",
        info='the studio\'s git repository; the card installs it with pip install "git+URL"',
    )
    push_btn = gr.Button("Push", variant="primary")
    push_status = gr.Markdown(label="Push status")
    with gr.Column(visible=not ctx.space):
        gr.Markdown("### Export to a folder")
        folder = gr.Textbox(
            label="Folder",
            placeholder="my-model, or an absolute path",
            info=f"a relative name goes under {Path(ctx.runs_dir).resolve() / EXPORTS_DIR}; "
            "an earlier export there is replaced, other files are never touched",
        )
        export_btn = gr.Button("Export")
        export_status = gr.Markdown(label="Export status")
    return SimpleNamespace(
        repo_id=repo_id,
        private=private,
        branch=branch,
        commit_message=commit_message,
        source_url=source_url,
        push_btn=push_btn,
        push_status=push_status,
        folder=folder,
        export_btn=export_btn,
        export_status=export_status,
    )


def _load_column(ctx: Any) -> SimpleNamespace:
    """The form that loads a checkpoint from the Hub (or a folder) for the comparison tabs."""
    import gradio as gr

    gr.Markdown("### Load a checkpoint")
    source = gr.Textbox(
        label="Hub repo id" + ("" if ctx.space else " or folder"),
        placeholder="owner/name, owner/name@branch" + ("" if ctx.space else " or /path/to/checkpoint"),
    )
    load_btn = gr.Button("Load")
    load_status = gr.Markdown(label="Load status")
    loaded = gr.Markdown(loaded_markdown(ctx), label="Loaded checkpoints")
    return SimpleNamespace(source=source, load_btn=load_btn, load_status=load_status, loaded=loaded)


def _wire_checkpoints(
    ctx: Any, picked: SimpleNamespace, sent: SimpleNamespace, loading: SimpleNamespace
) -> Any:
    """Push, export, load and the run list's refresh; returns the refresh handler (the app runs it when the
    tab opens)."""
    import gradio as gr

    # source_url came after the first API clients: they may leave it out.
    hub_push = page_handler(ctx, push, optional=("source_url",))
    hub_export = page_handler(ctx, export, optional=("source_url",))

    @user_errors
    def hub_load(source, token):
        return load(ctx, source, token)

    @user_errors
    def hub_runs(current):
        return choices_update(pushable_runs(ctx), current)

    def suggest(run_id):
        repo_hint, message_hint = hub_placeholders(ctx, run_id)
        return gr.update(placeholder=repo_hint), gr.update(placeholder=message_hint)

    run, kind = picked.run, picked.kind
    sent.push_btn.click(
        hub_push,
        inputs=[
            run,
            kind,
            sent.repo_id,
            sent.private,
            sent.branch,
            sent.commit_message,
            picked.token,
            sent.source_url,
        ],
        outputs=sent.push_status,
        api_name="hub_push",
    )
    sent.export_btn.click(
        hub_export,
        inputs=[run, kind, sent.folder, sent.source_url],
        outputs=sent.export_status,
        api_name="hub_export",
    )
    # A failed load marks only its status line; the table of loaded checkpoints stays as it was.
    loading.load_btn.click(
        hub_load,
        inputs=[loading.source, picked.token],
        outputs=[loading.load_status, loading.loaded],
        api_name="hub_load",
        show_progress_on=[loading.load_status],
    )
    run.change(suggest, inputs=run, outputs=[sent.repo_id, sent.commit_message], api_visibility="private")
    picked.refresh.click(hub_runs, inputs=run, outputs=run, api_name="hub_runs")
    return hub_runs


def _metrics_export_section(ctx: Any, refresh: Any) -> None:
    """The metrics download: runs, format, button, status and file; `refresh` (the run list's ↻) also
    refreshes its run list."""
    import gradio as gr

    gr.Markdown(
        "### Export metrics\nEvery logged point (train and validation, step, epoch, wall time) of the chosen "
        "runs, to open in Trackio, TensorBoard or a spreadsheet (see the README, 'Export, TensorBoard and "
        "Trackio')."
    )
    with gr.Row(equal_height=False):
        metric_run_list = gr.Dropdown(
            choices=metric_runs(ctx),
            value=[],
            multiselect=True,
            label="Runs",
            scale=3,
            allow_custom_value=True,
            elem_id="hub-metric-runs",
        )
        metric_format = gr.Radio(
            [(label, key) for key, label in METRIC_FORMATS.items()],
            value="csv",
            label="Format",
            scale=2,
            elem_id="hub-metric-format",
        )
    with gr.Row(equal_height=False):
        metric_btn = gr.Button("Export metrics", scale=0, elem_id="hub-metric-export")
        metric_status = gr.Markdown(label="Export status", elem_id="hub-metric-status")
        metric_file = gr.File(label="Download", interactive=False, elem_id="hub-metric-file")

    @user_errors
    def hub_export_metrics(run_ids, fmt):
        return export_metrics(ctx, run_ids, fmt)

    @user_errors
    def hub_metric_runs(current):
        return choices_update(metric_runs(ctx), current or [], multiselect=True)

    refresh.click(hub_metric_runs, inputs=metric_run_list, outputs=metric_run_list, api_visibility="private")
    metric_run_list.focus(
        hub_metric_runs, inputs=metric_run_list, outputs=metric_run_list, api_visibility="private"
    )
    metric_btn.click(
        hub_export_metrics,
        inputs=[metric_run_list, metric_format],
        outputs=[metric_status, metric_file],
        api_name="export_metrics",
    )
