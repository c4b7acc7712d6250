"""The studio's tabs: each module has ``build_tab(ctx: StudioContext) -> None``, called inside a gr.Tab."""
