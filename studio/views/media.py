"""Media viewer of the Train tab: pick a run, slide through its validations, watch one example improve.

The trainer writes the media (``trainers.runs.media``): at each validation the same few validation examples,
as a
SAR input | reconstruction image, an audio spectrogram with the decoded audio (and the input audio to compare
with), or a fragment's hex diff. Pure functions (:func:`media_runs`, :func:`media_choices`,
:func:`media_view`) read them; :func:`build_panel` wires them to components and the ``media_runs`` /
``media_steps`` / ``media_view`` API endpoints.

Images and audio go to the page as arrays, not file paths, so the runs folder never has to be served.
"""

from __future__ import annotations

import html
import wave
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from studio.views.common import match_choice
from trainers.runs import media

#: Seconds between two looks for runs that have written their first media (the run list is live).
POLL_SECONDS = 5.0
#: Media images are small (a 64-px SAR patch): they are enlarged by a whole factor, nearest-neighbour so every
#: pixel stays a sharp square, until their height reaches this many pixels.
DISPLAY_HEIGHT = 320
MAX_ZOOM = 8

DOMAIN_HELP = {
    "sar": "input | reconstruction of the normalised dB image",
    "audio": "log-mel spectrograms (input above, reconstruction below) and the decoded reconstruction",
    "fragments": "hex diff of the clean, corrupted and repaired bytes",
}


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def _run_folder(ctx: Any, run_id: Any) -> tuple[Any, Path]:
    text = _text(run_id)
    if not text:
        raise ValueError("no run chosen: pick a run that has validated at least once (↻ refreshes the list)")
    run = ctx.store.get_run(text)
    if run is None:
        typed = match_choice(text, media_runs(ctx))  # part of a run's id or name typed into the list
        if typed is None:
            raise ValueError(f"no run matches {text!r}: pick a run with media from the list (↻ refreshes it)")
        run = ctx.store.get_run(typed)
    return run, Path(ctx.runs_dir) / run.id


def media_runs(ctx: Any) -> list[tuple[str, str]]:
    """(label, run id) of the runs with media, newest first; a run's label leads with its name where it
    has one (the id is the value)."""
    choices = []
    for run in ctx.store.list_runs():
        steps = media.media_steps(Path(ctx.runs_dir) / run.id)
        if steps:
            many = "s" if len(steps) != 1 else ""
            choices.append(
                (f"{run.label} · {run.variant} · {run.status} · {len(steps)} validation{many}", run.id)
            )
    return choices


def enlarge(image: np.ndarray, height: int = DISPLAY_HEIGHT) -> np.ndarray:
    """``image`` (H, W, C) repeated by the whole factor that brings its height to about ``height`` (at most
    MAX_ZOOM; 1 for an image already that tall): nearest-neighbour, so speckle stays speckle, not a blur."""
    zoom = max(1, min(MAX_ZOOM, round(height / max(1, image.shape[0]))))
    return image if zoom == 1 else np.repeat(np.repeat(image, zoom, axis=0), zoom, axis=1)


def media_choices(ctx: Any, run_id: Any) -> dict[str, Any]:
    """What the controls offer for a run: its kept steps, its examples (key, label) and its domain."""
    run, folder = _run_folder(ctx, run_id)
    index = media.read_index(folder)
    steps = [e["step"] for e in index["entries"]]
    if not steps:
        raise ValueError(
            f"run {run.id} ({run.status}) has no media yet: they are written at each validation "
            "(end of epoch)"
        )
    examples: dict[str, str] = {}
    for item in index["entries"][-1].get("items", []):
        examples.setdefault(item.get("key", item["example"]), item["example"])
    return {"run_id": run.id, "domain": run.domain, "steps": steps, "examples": list(examples.items())}


def _read_wav(path: Path) -> tuple[int, np.ndarray]:
    with wave.open(str(path), "rb") as f:
        rate = f.getframerate()
        pcm = np.frombuffer(f.readframes(f.getnframes()), dtype="<i2").copy()
    return rate, pcm


def media_view(ctx: Any, run_id: Any, step: Any, example: Any) -> dict[str, Any]:
    """One example at (the kept validation nearest to) ``step``: {"caption": Markdown, "image": HxWx3 uint8
    or None, "audio": (rate, int16 samples) or None, "input_audio": same or None, "text": str or None,
    "step": the step shown}."""
    run, folder = _run_folder(ctx, run_id)
    try:
        wanted = int(float(step))
    except (TypeError, ValueError):
        raise ValueError(f"step must be a whole number, got {step!r}") from None
    items = media.media_at(folder, wanted)
    if not items:
        raise ValueError(f"run {run.id} has no media yet: they are written at each validation (end of epoch)")
    keys = list(dict.fromkeys(i.get("key", i["example"]) for i in items))
    key = _text(example) or keys[0]
    if key not in keys:
        raise ValueError(f"no example {key!r} in run {run.id}; choose one of {', '.join(keys)}")
    chosen = [i for i in items if i.get("key", i["example"]) == key]
    shown = chosen[0]["step"]
    epoch = chosen[0].get("epoch")
    out: dict[str, Any] = {"image": None, "audio": None, "input_audio": None, "text": None, "step": shown}
    captions = []
    for item in chosen:
        path = item["path"]
        if not path.is_file():  # thinned away since the index was read
            raise ValueError(f"the media of step {shown} were just thinned out; press ↻ to reload the steps")
        if item["kind"] == "image":
            with Image.open(path) as im:
                out["image"] = enlarge(np.asarray(im.convert("RGB")))
        elif item["kind"] == "audio":
            out["audio"] = _read_wav(path)
        elif item["kind"] == "text":
            out["text"] = path.read_text(encoding="utf-8")
        if item.get("caption"):
            captions.append(html.escape(item["caption"]))
    ref = media.references(folder).get(key)
    if ref is not None and ref["path"].is_file():
        out["input_audio"] = _read_wav(ref["path"])
    where = f"step {shown}" + (f", epoch {epoch}" if epoch is not None else "")
    note = "" if shown == wanted else f" (the kept validation nearest to step {wanted})"
    out["caption"] = (
        f"**{html.escape(chosen[0]['example'])}** at {where}{note}: {DOMAIN_HELP.get(run.domain, '')}."
        + ("<br>" + "<br>".join(captions) if captions else "")
        + f"<br><small>At most {media.MAX_KEPT} validations are kept per run, thinned evenly.</small>"
    )
    return out


def build_panel(ctx: Any) -> dict[str, Any]:
    """The media viewer's components and events (call inside a tab, column or accordion)."""
    import gradio as gr

    from studio.views.common import choices_update, user_errors

    with gr.Row():
        run = gr.Dropdown(
            choices=media_runs(ctx),
            value=None,
            label="Run",
            info="runs that have validated at least once",
            scale=4,
            allow_custom_value=True,
            elem_id="media-run",
        )
        example = gr.Dropdown(choices=[], value=None, label="Example", scale=2, elem_id="media-example")
        refresh = gr.Button("↻", scale=0, min_width=40, size="sm", elem_id="media-refresh")
    step = gr.Slider(0, 1, value=1, step=1, label="Step", interactive=True, elem_id="media-step")
    caption = gr.Markdown(label="Caption", elem_id="media-caption")
    with gr.Row():
        image = gr.Image(
            label="Image", type="numpy", visible=False, interactive=False, elem_id="media-image", format="png"
        )
        with gr.Column(visible=True):
            audio = gr.Audio(
                label="Decoded reconstruction", visible=False, interactive=False, elem_id="media-audio"
            )
            input_audio = gr.Audio(
                label="Input", visible=False, interactive=False, elem_id="media-input-audio"
            )
    text = gr.Code(label="Hex diff", language=None, visible=False, interactive=False, elem_id="media-text")

    def _outputs(view: dict[str, Any]) -> tuple[Any, ...]:
        return (
            view["caption"],
            gr.update(value=view["image"], visible=view["image"] is not None),
            gr.update(value=view["audio"], visible=view["audio"] is not None),
            gr.update(value=view["input_audio"], visible=view["input_audio"] is not None),
            gr.update(value=view["text"], visible=view["text"] is not None),
        )

    @user_errors
    def on_run(run_id, current_example):
        if not _text(run_id):
            return (gr.update(), gr.update(), "_Pick a run to see its media._", *[gr.update()] * 4)
        choices = media_choices(ctx, run_id)
        steps, examples = choices["steps"], choices["examples"]
        keys = [k for k, _ in examples]
        key = current_example if current_example in keys else keys[0]
        view = media_view(ctx, run_id, steps[-1], key)
        slider = gr.update(
            minimum=steps[0], maximum=max(steps[-1], steps[0] + 1), value=steps[-1], visible=True
        )
        return (slider, gr.update(choices=[(label, k) for k, label in examples], value=key), *_outputs(view))

    @user_errors
    def on_view(run_id, step_value, key):
        if not _text(run_id):
            return ("_Pick a run to see its media._", *[gr.update()] * 4)
        return _outputs(media_view(ctx, run_id, step_value, key))

    @user_errors
    def on_refresh(current):
        return choices_update(media_runs(ctx), current)

    @user_errors
    def on_poll(current, shown):
        """The run list as it is now, sent only when it changed (runs that validated since, new names)."""
        choices = media_runs(ctx)
        if choices == shown:
            return gr.skip(), shown
        # The run the person picked stays; nothing is picked for them (that would load media unasked).
        value = current if current in {value for _, value in choices} else None
        return gr.update(choices=choices, value=value), choices

    listed = gr.State(None)  # the choices this page shows; None until the page's first look
    gr.Timer(POLL_SECONDS).tick(
        on_poll, inputs=[run, listed], outputs=[run, listed], api_visibility="private", concurrency_limit=None
    )
    root = gr.context.Context.root_block
    if root is not None:  # the list of the page's opening, not of the app's start
        root.load(on_poll, inputs=[run, listed], outputs=[run, listed], api_visibility="private")
    outputs = [caption, image, audio, input_audio, text]
    run.change(on_run, inputs=[run, example], outputs=[step, example, *outputs], api_name="media_steps")
    step.release(on_view, inputs=[run, step, example], outputs=outputs, api_name="media_view")
    example.input(on_view, inputs=[run, step, example], outputs=outputs, api_visibility="private")
    refresh.click(on_refresh, inputs=run, outputs=run, api_name="media_runs").then(
        on_run, inputs=[run, example], outputs=[step, example, *outputs], api_visibility="private"
    )
    return {"run": run, "step": step, "example": example, "refresh": refresh, "caption": caption}
