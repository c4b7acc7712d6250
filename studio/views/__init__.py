"""The studio's tabs: each module has ``build_tab(ctx: StudioContext)``, called inside a gr.Tab.

A tab with a checkpoint picker returns ``(refresh function, picker)``; the app runs it when the tab opens.
"""
