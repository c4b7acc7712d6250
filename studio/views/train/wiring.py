"""The wiring: the Train tab's components built and their events connected (launch, the jobs API, the
selected run's buttons, the curve panels, the timer, the page load, the media section)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import gradio as gr

from studio.context import StudioContext
from studio.curves import check_x_axis
from studio.jobs.policy import client_address
from studio.views.train.form import _launch_form, launch_runs, plot_selection, preset_summary, queue_note
from studio.views.train.jobs_view import (
    DEFAULT_COLUMNS,
    _jobs_section,
    _run_details_section,
    chosen_columns,
    jobs_view,
    study_of_key,
    toggle_hidden,
)
from studio.views.train.media import build_media_section
from studio.views.train.metric_grid import PANEL_SLOTS
from studio.views.train.panels import (
    _curves_section,
    check_curve_request,
    draw_curves,
    refresh_panels,
    view_js,
)
from studio.views.train.polling import _wire_load, _wire_poll
from studio.views.train.run_actions import RESUMABLE, cancel_run, log_tail, resume_run, set_run_labels
from studio.views.train.session import TrainSession, _blank, _rows_by_id, _session, _warn, job_rows
from studio.views.train.studies import build_studies_section

# The jobs table scrolls sideways rather than wrap a header (the page-wide TABLE_CSS wraps headers between
# words, with !important, so this one needs it too).
CSS = """
#train-jobs td, #train-jobs th { white-space: nowrap; }
#train-jobs td span, #train-jobs th span {
  white-space: nowrap !important; word-break: keep-all; overflow-wrap: normal;
}
#train-jobs .run-dot { font-size: 1.1em; }
#tab-train .gr-dropdown input, #tab-train [data-testid="dropdown"] input { padding-right: 2.2em; }
#tab-train .wrap-inner { padding-right: 1.8em; }
#train-cancel-status p { margin: 0.25em 0; }
#train-css { display: none; }
#train-jobs .run-cell {
  display: inline-block; max-width: 14em; overflow: hidden; text-overflow: ellipsis; vertical-align: bottom;
}
#train-jobs .in-study { padding-left: 1.2em; max-width: 13em; }
#train-jobs .run-hidden { opacity: 0.45; }
#train-jobs .run-eye { cursor: pointer; }
#train-jobs .run-eye.off { opacity: 0.6; }
"""
#: What this browser keeps of the Train tab (localStorage, gr.BrowserState): the jobs table's columns and
#: whether the launch form is open. The "secret" only obfuscates these preferences (Gradio sends it to the
#: page); it is fixed so that a restarted studio still reads what a browser kept.
PREFS_KEY = "autoencoder-studio-train-view"
PREFS_SECRET = "train-view-preferences"
DEFAULT_PREFS: dict[str, Any] = {"columns": list(DEFAULT_COLUMNS), "launch_open": True}


def _launch_inputs(form: SimpleNamespace, curves: SimpleNamespace, session: gr.State) -> list[Any]:
    """The launch event's inputs, in the order of `launch`'s parameters (and /launch's, for API clients)."""
    return [
        *(form.variants, form.preset, form.epochs, form.batch, form.lr, form.data, form.seed, form.device),
        *(form.precision, form.compile, curves.runs, session, form.run_name, form.run_tags, form.run_note),
        *(form.seeds, form.sweep),
    ]


def _launched_message(ctx: StudioContext, launched: list[str]) -> str:
    """What the status line says after a launch: the runs queued, their study, the queue's wait."""
    message = f"Queued {len(launched)} run(s): " + ", ".join(f"`{run_id}`" for run_id in launched)
    study = (ctx.store.get_run(launched[0]).config or {}).get("study")
    if study:  # the jobs filter finds a study's runs by its id, which each run carries as a tag
        message = f"Study `{study}` (filter the jobs by `tag:{study}`): " + message
    return message + queue_note(ctx, launched)


def _after_launch(ctx: StudioContext):
    """The handler after a launch: fresh choices for the run pickers (the panels follow the plotted runs'
    domains by themselves: see ``refresh_panels``)."""

    def after_launch(state: TrainSession):
        state.run_ids = tuple(_rows_by_id(ctx))
        choices = list(state.run_ids)
        return (
            gr.update(choices=choices),
            gr.update(choices=choices),
            gr.update(choices=choices),
            state,
        )

    return after_launch


def _wire_resume(ctx: StudioContext, ui: SimpleNamespace) -> None:
    """Resume run (and the `resume` API): a failed or cancelled run goes on from its last checkpoint."""

    def resume(run_id: str, request: gr.Request) -> str:
        try:
            address = client_address(request) if ctx.space else None
            return resume_run(ctx, run_id, _session(ctx, request), address)
        except (ValueError, FileNotFoundError, PermissionError) as exc:
            return _warn(exc)

    ui.resume.click(
        resume, inputs=ui.selected, outputs=ui.cancel_status, api_name="resume", concurrency_limit=4
    )


def _wire_launch(
    ctx: StudioContext,
    form: SimpleNamespace,
    jobs: SimpleNamespace,
    curves: SimpleNamespace,
    session: gr.State,
) -> None:
    """Launch: queue the runs, plot them beside those of their domain, select the first; the panels follow
    the plotted runs (their domains' defaults first)."""
    gr.on(
        [form.variants.change, form.preset.change],
        preset_summary,
        inputs=[form.variants, form.preset],
        outputs=form.preset_info,
        api_visibility="private",
    )

    def launch(
        variants,
        preset,
        epochs=None,
        batch_size=None,
        lr=None,
        data=None,
        seed=None,
        device="auto",
        precision="auto",
        compile=False,
        plotted_runs=None,
        state: TrainSession | None = None,
        request: gr.Request | None = None,  # Gradio passes it here; the inputs after it follow
        name="",
        tags="",
        note="",
        seeds=1,
        sweep="",
    ):
        try:
            launched = launch_runs(
                ctx,
                variants,
                preset,
                epochs,
                batch_size,
                lr,
                data,
                seed,
                device,
                _session(ctx, request),
                precision,
                compile,
                client_address(request) if ctx.space and request is not None else None,
                name,
                tags,
                note,
                seeds,
                sweep,
            )
        except (ValueError, FileNotFoundError) as exc:
            return _warn(exc), gr.skip(), gr.skip(), state
        gr.Info(f"Queued {len(launched)} run(s)")
        return (
            _launched_message(ctx, launched),
            plot_selection(ctx, plotted_runs, launched),
            launched[0],
            state,
        )

    after_launch = _after_launch(ctx)

    # The status says a launch is under way at once, not the previous launch's "Queued ... id".
    form.launch.click(
        lambda: "⏳ Launching…",
        outputs=form.status,
        queue=False,
        api_visibility="private",
        show_progress="hidden",
    )
    form.launch.click(
        launch,
        inputs=_launch_inputs(form, curves, session),
        outputs=[form.status, curves.runs, jobs.selected, session],
        api_name="launch",
        concurrency_limit=4,
    ).success(
        after_launch,
        inputs=session,
        outputs=[curves.runs, jobs.selected, jobs.hidden, session],
        api_visibility="private",
    )


def _view(ctx: StudioContext, state: TrainSession, query: Any, order: Any) -> dict[str, Any]:
    """The jobs table as this session shows it now (its columns, folded studies, hidden runs), kept in the
    session so the poll sends it again only when it changes."""
    view = jobs_view(
        job_rows(ctx), query or "", order or "newest", state.columns, state.collapsed, state.hidden
    )
    state.table, state.table_ids = view.value, view.keys
    return view.value


def _wire_view(
    ctx: StudioContext,
    jobs: SimpleNamespace,
    session: gr.State,
    prefs: gr.BrowserState,
    launch_box: gr.Accordion,
) -> None:
    """The column picker and the launch form's fold, kept in this browser; the hidden runs, kept in the
    page session (the curve panels leave them out: ``draw_curves``, redrawn by ``_wire_curves``)."""

    def set_columns(columns: Any, query: str, order: str, saved: Any, state: TrainSession):
        state.columns = chosen_columns(columns)
        saved = {
            **DEFAULT_PREFS,
            **(saved if isinstance(saved, dict) else {}),
            "columns": list(state.columns),
        }
        try:
            return _view(ctx, state, query, order), saved, state
        except ValueError:  # a bad filter: its own event says so
            return gr.skip(), saved, state

    jobs.columns.change(
        set_columns,
        inputs=[jobs.columns, jobs.filter, jobs.sort, prefs, session],
        outputs=[jobs.table, prefs, session],
        api_visibility="private",
        show_progress="hidden",
    )

    def set_hidden(hidden: Any, query: str, order: str, state: TrainSession):
        state.hidden = frozenset(_hidden_ids(hidden))
        try:
            return _view(ctx, state, query, order), state
        except ValueError:
            return gr.skip(), state

    jobs.hidden.change(
        set_hidden,
        inputs=[jobs.hidden, jobs.filter, jobs.sort, session],
        outputs=[jobs.table, session],
        api_visibility="private",
        show_progress="hidden",
    )

    def fold(open_: bool):
        def keep(saved: Any) -> dict[str, Any]:
            return {**DEFAULT_PREFS, **(saved if isinstance(saved, dict) else {}), "launch_open": open_}

        return keep

    launch_box.expand(fold(True), inputs=prefs, outputs=prefs, api_visibility="private", queue=False)
    launch_box.collapse(fold(False), inputs=prefs, outputs=prefs, api_visibility="private", queue=False)


def _hidden_ids(value: Any) -> list[str]:
    """The hidden-runs picker's value as run ids (one id, a list of them, or nothing)."""
    if _blank(value):
        return []
    values = [value] if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else []
    return [str(v) for v in values if not _blank(v)]


def _wire_jobs(ctx: StudioContext, ui: SimpleNamespace, session: gr.State) -> None:
    """The jobs API, the table's filter/sort and row selection, the selected run's Cancel, labels and log."""

    def jobs() -> list[dict[str, Any]]:
        """Every run, newest first: the job manager's rows (id, variant, status, progress, settings...)."""
        return job_rows(ctx)

    gr.api(jobs, api_name="jobs", concurrency_limit=None)

    def cancel(run_id: str, request: gr.Request) -> str:
        try:
            return cancel_run(ctx, run_id, _session(ctx, request))
        except (ValueError, FileNotFoundError, PermissionError) as exc:
            return _warn(exc)

    ui.cancel.click(
        cancel, inputs=ui.selected, outputs=ui.cancel_status, api_name="cancel", concurrency_limit=4
    )

    _wire_resume(ctx, ui)

    def set_labels(run_id: str, name: str, tags: str, note: str) -> str:
        try:
            return set_run_labels(ctx, run_id, name, tags, note)
        except ValueError as exc:
            return _warn(exc)

    ui.save_labels.click(
        set_labels,
        inputs=[ui.selected, ui.name, ui.tags, ui.note],
        outputs=ui.labels_status,
        api_name="set_labels",
        concurrency_limit=4,
    )

    def show_run(run_id: str, state: TrainSession, request: gr.Request):
        try:
            text = log_tail(ctx, run_id, requester=_session(ctx, request))
        except (ValueError, FileNotFoundError) as exc:
            text = _warn(exc)
        state.log = text
        run = None if _blank(run_id) else ctx.store.get_run(str(run_id))  # another visitor's: None
        state.cancel_enabled = run is not None and not run.is_terminal
        state.resume_enabled = run is not None and run.status in RESUMABLE
        labels = [run.name or "", ", ".join(run.tags), run.note or ""] if run else ["", "", ""]
        buttons = [gr.update(interactive=state.cancel_enabled), gr.update(interactive=state.resume_enabled)]
        return text, *buttons, "", *labels, "", state

    ui.selected.change(
        show_run,
        inputs=[ui.selected, session],
        outputs=[
            ui.log,
            ui.cancel,
            ui.resume,
            ui.cancel_status,
            ui.name,
            ui.tags,
            ui.note,
            ui.labels_status,
            session,
        ],
        api_visibility="private",
    )

    def log_only(run_id: str, request: gr.Request) -> str:
        try:
            return log_tail(ctx, run_id, requester=_session(ctx, request))
        except (ValueError, FileNotFoundError) as exc:
            return _warn(exc)

    gr.api(log_only, api_name="log_tail", concurrency_limit=None)


def _wire_table(ctx: StudioContext, ui: SimpleNamespace, session: gr.State) -> None:
    """The table's clicks (select a run, fold a study, hide or show curves) and its filter and sort."""

    def select_row(query: str, order: str, state: TrainSession, evt: gr.SelectData):
        """A click in the table: the eye cell hides or shows the row's curves (a study's: all of them), a
        study's row folds or unfolds it, a run's row selects the run."""
        row, col = (evt.index[0], evt.index[1]) if isinstance(evt.index, (list, tuple)) else (evt.index, 1)
        if not isinstance(row, int) or not 0 <= row < len(state.table_ids):
            return gr.skip(), gr.skip(), gr.skip(), state
        key = state.table_ids[row]
        if col == 0 and key:
            return gr.skip(), gr.skip(), toggle_hidden(state.hidden, key, job_rows(ctx)), state
        study = study_of_key(key)
        if study is not None:
            state.collapsed ^= {study}
            try:
                return gr.skip(), _view(ctx, state, query, order), gr.skip(), state
            except ValueError as exc:
                _warn(exc)
                return gr.skip(), gr.skip(), gr.skip(), state
        return (gr.update(value=key) if key else gr.skip()), gr.skip(), gr.skip(), state

    ui.table.select(
        select_row,
        inputs=[ui.filter, ui.sort, session],
        outputs=[ui.selected, ui.table, ui.hidden, session],
        api_visibility="private",
        show_progress="hidden",
    )

    def refilter(query: str, order: str, state: TrainSession):
        try:
            return _view(ctx, state, query, order), state
        except ValueError as exc:
            _warn(exc)
            return gr.skip(), state

    gr.on(
        [ui.filter.submit, ui.filter.blur, ui.sort.change],
        refilter,
        inputs=[ui.filter, ui.sort, session],
        outputs=[ui.table, session],
        api_visibility="private",
    )


def _wire_curves(ctx: StudioContext, ui: SimpleNamespace, session: gr.State, hidden: gr.Dropdown) -> None:
    """The `curves` API (one metric's panel, for API clients); any shared setting, the metric search or the
    hidden runs redraw the grid of panels."""

    def curves(metric: str, runs: list[str], smoothing: float, log_y: bool, view: str, state: TrainSession):
        try:
            check_curve_request(metric, runs)
            plots, caption = draw_curves(ctx, state, [metric], runs, smoothing, log_y, [view], force=True)
        except ValueError as exc:
            return gr.skip(), _warn(exc), state
        return plots[0], caption, state

    ui.api_metric.change(
        curves,
        inputs=[ui.api_metric, ui.runs, ui.smoothing, ui.log_y, ui.views[0], session],
        outputs=[ui.plots[0], ui.caption, session],
        api_name="curves",
        concurrency_limit=8,
    )

    n = PANEL_SLOTS

    def redraw(runs, smoothing, log_y, x_axis, n_panels, search, *rest):
        *views, state, hidden_runs = rest
        state.hidden = frozenset(_hidden_ids(hidden_runs))  # the jobs table's set_hidden does it too
        try:
            state.x_axis = check_x_axis(x_axis)
            out = refresh_panels(ctx, state, runs, search, n_panels, smoothing, log_y, views, force=True)
        except ValueError as exc:
            return *[gr.skip()] * (2 * n), _warn(exc), gr.skip(), state
        return *out.plots, *out.columns, out.caption, out.note, state

    gr.on(
        [
            *(ui.runs.change, ui.smoothing.release, ui.log_y.change, ui.x_axis.change, ui.n_panels.change),
            *(ui.search.submit, ui.search.blur, hidden.change),
        ],
        redraw,
        inputs=[
            ui.runs,
            ui.smoothing,
            ui.log_y,
            ui.x_axis,
            ui.n_panels,
            ui.search,
            *ui.views,
            session,
            hidden,
        ],
        outputs=[*ui.plots, *ui.columns, ui.caption, ui.note, session],
        js=view_js({6 + i: i for i in range(n)}),
        api_visibility="private",
        concurrency_limit=8,
        trigger_mode="always_last",
    )


def build_tab(ctx: StudioContext) -> None:
    """The Train tab's components and events (call inside ``with gr.Tab("Train"):``): the launch form
    (foldable), then the dashboard: the jobs table in a column at the left, the curve panels beside it, so
    a run's row and its curves are on screen together; the studies and media sections under them."""
    gr.HTML(f"<style>{CSS}</style>", js_on_load=None, elem_id="train-css")
    prefs = gr.BrowserState(DEFAULT_PREFS, storage_key=PREFS_KEY, secret=PREFS_SECRET)
    with gr.Accordion("Launch runs", open=True, elem_id="train-launch-box") as launch_box:
        form = _launch_form(ctx)
    with gr.Row(equal_height=False, elem_id="train-dashboard"):
        with gr.Column(scale=9, min_width=380, elem_id="train-runs-column"):
            jobs = _jobs_section()
        with gr.Column(scale=11, min_width=480, elem_id="train-panels-column"):
            curves = _curves_section()
    _run_details_section(jobs)
    session = gr.State(TrainSession())
    _wire_launch(ctx, form, jobs, curves, session)
    _wire_jobs(ctx, jobs, session)
    _wire_table(ctx, jobs, session)
    _wire_view(ctx, jobs, session, prefs, launch_box)
    _wire_curves(ctx, curves, session, jobs.hidden)
    _wire_poll(ctx, jobs, curves, session)
    _wire_load(ctx, jobs, curves, session, prefs, launch_box)
    build_studies_section(ctx)
    build_media_section(ctx)
