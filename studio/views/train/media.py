"""The Train tab's media section: media logged at each validation (``trainers.runs.media``), one example at a
time along a step slider (the panel itself is ``studio.views.media``). Its run list stays live: the page's
load and a slow timer refill it (with the runs' names) whenever the runs with media change, so it is not
empty until ↻ on a page opened before the first validation."""

from __future__ import annotations

from typing import Any

import gradio as gr

from studio.context import StudioContext

#: Seconds between two looks for runs that have new media (a validation is at most every few seconds).
MEDIA_POLL_SECONDS = 5.0


def media_choices_update(ctx: StudioContext, shown: Any) -> tuple[Any, tuple]:
    """(update of the run list or ``gr.skip()``, the choices now shown): skips when nothing changed; the
    chosen run stays chosen."""
    from studio.views.media import media_runs

    choices = tuple(media_runs(ctx))
    if choices == tuple(shown or ()):
        return gr.skip(), choices
    return gr.update(choices=list(choices)), choices


def build_media_section(ctx: StudioContext) -> None:
    """The "Media" heading and the media panel, under the curves, with its run list kept live."""
    from studio.views.media import build_panel as build_media_panel

    gr.Markdown("### Media")
    parts = build_media_panel(ctx)
    shown = gr.State(())

    def refresh(state: Any):
        return media_choices_update(ctx, state)

    timer = gr.Timer(MEDIA_POLL_SECONDS)
    timer.tick(
        refresh,
        inputs=shown,
        outputs=[parts["run"], shown],
        api_visibility="private",
        concurrency_limit=None,
        show_progress="hidden",
    )
    root = gr.context.Context.root_block
    if root is not None:
        root.load(refresh, inputs=shown, outputs=[parts["run"], shown], api_visibility="private")
