"""The Train tab's media section: media logged at each validation (``trainers.media``), one example at a time
along a step slider (the panel itself is ``studio.views.media``)."""

from __future__ import annotations

import gradio as gr

from studio.context import StudioContext


def build_media_section(ctx: StudioContext) -> None:
    """The "Media" heading and the media panel, under the curves."""
    from studio.views.media import build_panel as build_media_panel

    gr.Markdown("### Media")
    build_media_panel(ctx)
