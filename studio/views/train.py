"""The Train tab: launch jobs for chosen variants, watch the jobs table and live curves, cancel a run.

Handlers are plain functions of the studio context that raise ValueError with a message for a person; the
Gradio wrappers in :func:`build_tab` turn those into a status line and a warning toast, so bad input never
shows a stack trace and never launches anything. Polling is one ``gr.Timer``: each tick reads the jobs
table and only the metric rows newer than what this browser session has (see ``studio.curves``), and skips
every output that did not change, so an idle page costs a couple of small SQLite queries.
"""

from __future__ import annotations

import contextlib
import html
import logging
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from models import VARIANTS
from studio.context import StudioContext
from studio.curves import CurveCache, figure_points, is_finite_number, keep_view, make_figure
from trainers.config import PRESETS, make_config
from trainers.dataspec import parse_data_spec
from trainers.fastpath import PRECISIONS
from trainers.metrics.registry import arrow, format_value

log = logging.getLogger(__name__)

POLL_SECONDS = 2.0
LOG_LINES = 40
DEFAULT_METRIC = "train/loss"
# Runs preselected for the curves when a page opens: the running ones, else the newest few.
INITIAL_CURVE_RUNS = 4
JOB_HEADERS = ["run", "variant", "status", "epoch / step", "best", "elapsed", "device", "note"]
NOTE_CHARS = 90
# A Space is a small shared CPU: smoke preset only, bounded runs, built-in data only (no server folders).
SPACE_MAX_EPOCHS = 10
# Runs in the browser before each curve refresh: puts the plot's current zoom (see studio.curves.keep_view)
# into the hidden "view" input, which is the fifth input of both the curves and the polling events.
VIEW_JS = """(...args) => {
    const graph = document.querySelector('#train-plot .js-plotly-plot');
    const full = graph && graph._fullLayout;
    if (full && graph.layout) {
        const range = (axis) => (axis && !axis.autorange ? axis.range : null);
        args[4] = JSON.stringify({
            uirevision: graph.layout.uirevision ?? null, x: range(full.xaxis), y: range(full.yaxis)
        });
    }
    return args;
}"""


# ------------------------------------------------------------------------------------------ pure handlers
def variant_choices() -> list[tuple[str, str]]:
    """(label, value) of every variant for the checkbox group: the name and its one-line description."""
    return [(f"{name} — {info.description}", name) for name, info in VARIANTS.items()]


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _parse_int(what: str, value: Any, minimum: int) -> int | None:
    if _blank(value):
        return None
    number = math.nan
    if not isinstance(value, bool):
        with contextlib.suppress(TypeError, ValueError):
            number = float(value)  # accepts "12", 12 and 12.0 (number widgets hand over floats)
    if not math.isfinite(number) or not number.is_integer() or number < minimum:
        raise ValueError(
            f"{what} must be a whole number >= {minimum} (or blank for the preset's value); got {value!r}"
        )
    return int(number)


def _parse_lr(value: Any) -> float | None:
    if _blank(value):
        return None
    try:
        if isinstance(value, bool):
            raise ValueError
        number = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or number <= 0:
        raise ValueError(
            "learning rate must be a positive number such as 3e-4 (or blank for the preset's value); "
            f"got {value!r}"
        )
    return number


def parse_settings(epochs: Any, batch_size: Any, lr: Any, data: Any, seed: Any) -> dict[str, Any]:
    """The form's text fields as run settings; blank fields are left out (the preset's value applies)."""
    settings: dict[str, Any] = {
        "epochs": _parse_int("epochs", epochs, 1),
        "batch_size": _parse_int("batch size", batch_size, 1),
        "lr": _parse_lr(lr),
        "seed": _parse_int("seed", seed, 0),
    }
    if not _blank(data):
        if not isinstance(data, str):
            raise ValueError(
                f"data spec must be text such as 'sar:synthetic,n=200'; got {type(data).__name__}"
            )
        settings["data"] = data.strip()
    return {key: value for key, value in settings.items() if value is not None}


def _chosen_variants(variants: Any) -> list[str]:
    if _blank(variants):
        chosen: list[Any] = []
    elif isinstance(variants, str):
        chosen = [variants]
    elif isinstance(variants, Iterable):
        chosen = list(variants)
    else:
        raise ValueError(f"variants must be a list of variant names, got {type(variants).__name__}")
    if not chosen:
        raise ValueError("No variant chosen: tick one or more variants to launch.")
    unknown = [v for v in chosen if v not in VARIANTS]
    if unknown:
        raise ValueError(
            f"unknown variant(s) {', '.join(map(repr, unknown))}; choose from {', '.join(VARIANTS)}"
        )
    return list(dict.fromkeys(chosen))


def launch_runs(
    ctx: StudioContext,
    variants: Any,
    preset: Any,
    epochs: Any = None,
    batch_size: Any = None,
    lr: Any = None,
    data: Any = None,
    seed: Any = None,
    device: Any = "auto",
    owner: str | None = None,
    precision: Any = "auto",
    compile: Any = False,
) -> list[str]:
    """Queue one run per chosen variant; every setting is checked first, so bad input launches nothing.

    `owner` (the browser session, on a public Space) is recorded so only that visitor can cancel the runs.
    """
    chosen = _chosen_variants(variants)
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {', '.join(PRESETS)}; got {preset!r}")
    if ctx.space and preset != "smoke":
        raise ValueError("This demo Space runs on a small CPU: only the smoke preset can be launched here.")
    settings = parse_settings(epochs, batch_size, lr, data, seed)
    if ctx.space and settings.get("epochs", 0) > SPACE_MAX_EPOCHS:
        raise ValueError(
            f"This demo Space trains at most {SPACE_MAX_EPOCHS} epochs per run; got {settings['epochs']}"
        )
    if "data" in settings:
        spec = parse_data_spec(settings["data"])
        if ctx.space and spec.folder_path is not None:
            raise ValueError(
                "This demo Space trains on the built-in data only; leave the data spec without folder="
            )
        wrong = [v for v in chosen if VARIANTS[v].domain != spec.domain]
        if wrong:
            raise ValueError(
                f"data spec '{settings['data']}' is {spec.domain} data, but {', '.join(wrong)} "
                f"train(s) on {VARIANTS[wrong[0]].domain} data: launch other domains separately or leave "
                "the data blank"
            )
    if ctx.jobs is None:
        raise ValueError("this studio has no job manager; start it with `python app.py`")
    if device not in (None, "", "auto"):
        settings["device"] = device
    if precision not in (None, "", "auto"):
        settings["precision"] = precision
    if compile not in (None, False):
        if not isinstance(compile, bool):
            raise ValueError(f"compile must be true or false, got {compile!r}")
        settings["compile"] = compile
    for variant in chosen:  # every variant's settings are checked before the first one is queued
        ctx.jobs.check(variant, preset, **settings)
    if owner:
        settings["owner"] = owner
    queued: list[str] = []
    for variant in chosen:
        try:
            queued.append(ctx.jobs.submit(variant, preset, **settings))
        except (ValueError, FileNotFoundError) as exc:  # checked above, so only a change meanwhile gets here
            done = f" (already queued: {', '.join(queued)})" if queued else ""
            raise type(exc)(f"{variant}: {exc}{done}") from exc
    return queued


def plot_selection(ctx: StudioContext, plotted: Sequence[str] | None, launched: Sequence[str]) -> list[str]:
    """The runs to plot after a launch: the new ones, plus those already plotted of the same domains (a
    fragment cross-entropy of ~5 would flatten a SAR loss of ~0.3 on a shared axis)."""
    domains = {ctx.store.get_run(r).domain for r in launched}
    kept = [r for r in plotted or [] if (run := ctx.store.get_run(r)) is not None and run.domain in domains]
    return list(dict.fromkeys([*kept, *launched]))


def format_elapsed(seconds: float | None) -> str:
    """42 s, 3m 05s, 1h 02m: elapsed time at a glance."""
    if seconds is None or not math.isfinite(seconds):
        return "–"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"


def job_table(rows: Sequence[Mapping[str, Any]]) -> list[list[Any]]:
    """The job manager's rows as table rows under ``JOB_HEADERS``."""
    table = []
    for row in rows:
        best = row.get("best")
        metric = str(row.get("metric") or "").split("/", 1)[-1]
        # Which way is better and how to round, from the metric registry: "psnr ↑ 23.41".
        best_text = (
            f"{metric} {arrow(metric)} {format_value(metric, best)}" if is_finite_number(best) else "–"
        )
        started = row.get("status") != "queued"
        progress = f"{row.get('epoch') or 0} / {row.get('step') or 0}" if started else "–"
        note = str(row.get("reason") or "")
        if len(note) > NOTE_CHARS:
            note = note[: NOTE_CHARS - 1] + "…"
        table.append(
            [
                row.get("id"),
                row.get("variant"),
                row.get("status"),
                progress,
                best_text,
                format_elapsed(row.get("elapsed")),
                row.get("device") or "–",
                note,
            ]
        )
    return table


def cancel_run(ctx: StudioContext, run_id: Any, requester: str | None = None) -> str:
    """Ask the job manager to cancel a run; its answer is the message for the user.

    On a public Space `requester` is the browser session: a visitor may cancel only the runs they launched.
    """
    if _blank(run_id):
        raise ValueError("No run selected: pick a run in the jobs table (or the run dropdown) to cancel.")
    if ctx.jobs is None:
        raise ValueError("this studio has no job manager; start it with `python app.py`")
    return str(ctx.jobs.cancel(str(run_id), requester=requester if ctx.space else None))


def _session(ctx: StudioContext, request: gr.Request | None) -> str | None:
    """Who is asking, on a public Space (None elsewhere: a local studio has one user)."""
    return getattr(request, "session_hash", None) if ctx.space else None


def log_tail(ctx: StudioContext, run_id: Any, lines: int = LOG_LINES) -> str:
    """The last lines of a run's log, or a hint while there is none."""
    if _blank(run_id):
        return ""
    if ctx.jobs is None:
        return "(no job manager in this studio)"
    text = ctx.jobs.log_tail(str(run_id), lines)
    if text:
        return text
    run = ctx.store.get_run(str(run_id))
    if run is None or run.status == "queued":
        return "(no log yet: the run has not started)"
    return "(no log here: this run was started outside the studio, e.g. `python -m trainers train`)"


def check_curve_request(metric: Any, runs: Any) -> tuple[str, list[str]]:
    """A curves request as (metric, run ids), with a message for a missing or malformed one."""
    if _blank(metric) or not isinstance(metric, str):
        raise ValueError("No metric chosen: pick one such as 'train/loss' or 'val/psnr'.")
    if _blank(runs):
        return metric, []
    if isinstance(runs, str):
        runs = [runs]
    if not isinstance(runs, Iterable) or not all(isinstance(r, str) and r for r in runs):
        raise ValueError(f"runs must be a list of run ids, got {runs!r}")
    return metric, list(dict.fromkeys(runs))


def initial_curve_runs(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The runs a fresh page plots: those running now, else the newest few; of one domain, the newest
    one's, since one axis cannot show a fragment cross-entropy of ~5 and a SAR loss of ~0.3 together."""
    candidates = [row for row in rows if row.get("status") == "running"] or list(rows)
    first = candidates[0].get("domain") if candidates else None
    return [row["id"] for row in candidates if row.get("domain") == first][:INITIAL_CURVE_RUNS]


# -------------------------------------------------------------------------------------------- page state
@dataclass
class TrainSession:
    """What one browser session has shown, so a poll can skip everything that did not change."""

    cache: CurveCache = field(default_factory=CurveCache)
    run_ids: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ()
    figure_key: tuple[Any, ...] | None = None
    log: str | None = None
    table: list[list[Any]] | None = None


def curve_caption(points: Mapping[str, int], metric: str) -> str:
    """One line under the plot: how many points of which metric over how many runs."""
    if not points:
        return f"*{metric}: choose runs to plot.*"
    with_points = sum(1 for n in points.values() if n)
    return (
        f"*{metric}: {sum(points.values())} points from {with_points} of {len(points)} run(s)"
        f" · updated {time.strftime('%H:%M:%S')}*"
    )


def preset_summary(variants: Any, preset: Any) -> str:
    """What the preset gives each chosen variant, so a blank field is not a guess."""
    try:
        chosen = _chosen_variants(variants)
    except ValueError:
        return ""
    if preset not in PRESETS:
        return ""
    lines = []
    for variant in chosen:
        cfg = make_config(variant, preset)
        lines.append(
            f"- `{variant}`: {cfg.epochs} epochs, batch {cfg.batch_size}, lr {cfg.lr:g}, seed {cfg.seed}, "
            f"data `{cfg.data}`"
        )
    return f"**{preset}** preset (a blank field takes these):\n" + "\n".join(lines)


# ------------------------------------------------------------------------------------------------ Gradio
def build_tab(ctx: StudioContext) -> None:
    """The Train tab's components and events (call inside ``with gr.Tab("Train"):``)."""
    presets = ["smoke"] if ctx.space else list(PRESETS)
    gpus = list(getattr(ctx.jobs, "gpus", []) or [])

    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            variants_box = gr.CheckboxGroup(
                choices=variant_choices(),
                label="Variants",
                info="one job per ticked variant",
                elem_id="train-variants",
            )
            preset_info = gr.Markdown(elem_id="train-preset-info")
        with gr.Column(scale=2):
            with gr.Row():
                preset_radio = gr.Radio(
                    presets,
                    value="smoke",
                    label="Preset",
                    info="smoke: small and quick on a CPU; full: the SPEC's settings",
                )
                device_radio = gr.Radio(
                    ["auto", "cpu", "cuda"], value="auto", label="Device", visible=bool(gpus)
                )
            # Both only act on a GPU (trainers.fastpath), so a CPU-only studio does not show them.
            with gr.Row(visible=bool(gpus)):
                precision_radio = gr.Radio(
                    list(PRECISIONS),
                    value="auto",
                    label="Precision",
                    info="auto: bf16 autocast on GPUs that have it; fp32: exact reference",
                )
                compile_box = gr.Checkbox(
                    False, label="torch.compile", info="faster steps after ~1 min of compiling"
                )
            with gr.Row():
                epochs_box = gr.Textbox("", label="Epochs", placeholder="preset", elem_id="train-epochs")
                batch_box = gr.Textbox("", label="Batch size", placeholder="preset", elem_id="train-batch")
            with gr.Row():
                lr_box = gr.Textbox(
                    "", label="Learning rate", placeholder="preset, e.g. 3e-4", elem_id="train-lr"
                )
                seed_box = gr.Textbox("", label="Seed", placeholder="preset", elem_id="train-seed")
            data_box = gr.Textbox(
                "",
                label="Data spec",
                info="blank: the preset's built-in data",
                placeholder="e.g. sar:folder=/data/s1 or fragments:folder=/data/files,max_files=500",
                elem_id="train-data",
            )
            launch_btn = gr.Button("Launch", variant="primary", elem_id="train-launch")
            status_md = gr.Markdown(label="Status", elem_id="train-status")

    gr.Markdown("### Jobs")
    jobs_df = gr.Dataframe(
        headers=JOB_HEADERS,
        interactive=False,
        wrap=True,
        max_height=420,
        column_widths=["22%", "11%", "9%", "8%", "15%", "7%", "10%", "18%"],
        elem_id="train-jobs",
        label="Click a row to select its run",
    )
    with gr.Row(equal_height=True):
        # Custom values: API clients name runs this page has not listed yet; the handlers check them.
        selected_dd = gr.Dropdown(
            choices=[],
            value=None,
            label="Selected run",
            allow_custom_value=True,
            scale=4,
            elem_id="train-selected",
        )
        cancel_btn = gr.Button("Cancel run", variant="stop", scale=1, elem_id="train-cancel")
    log_box = gr.Textbox(
        label="Log (last lines)",
        lines=8,
        max_lines=16,
        autoscroll=True,
        interactive=False,
        elem_id="train-log",
    )

    gr.Markdown("### Curves")
    with gr.Row():
        metric_dd = gr.Dropdown(
            choices=[DEFAULT_METRIC],
            value=DEFAULT_METRIC,
            label="Metric",
            allow_custom_value=True,
            scale=2,
            elem_id="train-metric",
        )
        runs_dd = gr.Dropdown(
            choices=[],
            value=[],
            multiselect=True,
            allow_custom_value=True,
            label="Runs",
            scale=4,
            elem_id="train-curve-runs",
        )
        smoothing_slider = gr.Slider(
            0.0, 0.99, value=0.6, step=0.01, label="Smoothing (EMA)", scale=2, elem_id="train-smoothing"
        )
        log_check = gr.Checkbox(value=False, label="Log scale", scale=1, elem_id="train-log-scale")
    curve_md = gr.Markdown(label="Curve summary", elem_id="train-curve-info")
    plot = gr.Plot(label="Training curves", elem_id="train-plot")
    view_box = gr.Textbox("", visible=False, label="Zoom of the plot in the page (JSON)")
    session = gr.State(TrainSession())
    timer = gr.Timer(POLL_SECONDS)

    def rows() -> list[dict[str, Any]]:
        return ctx.jobs.jobs() if ctx.jobs is not None else []

    def warn(exc: Exception) -> str:
        gr.Warning(html.escape(str(exc)))
        return f"⚠️ {exc}"  # Markdown sanitises HTML itself; escaping here would garble the API's text

    def draw(state: TrainSession, metric: Any, runs: Any, smoothing: Any, log_y: Any, view: Any, force: bool):
        """(figure, caption), or skips when neither the points nor the settings changed."""
        metric, run_ids = check_curve_request(metric, runs)
        new_points = state.cache.update(ctx.store, run_ids)
        key = (metric, tuple(run_ids), float(smoothing), bool(log_y))
        if not force and not new_points and key == state.figure_key:
            return gr.skip(), gr.skip()
        fig = keep_view(make_figure(state.cache, metric, run_ids, float(smoothing), bool(log_y)), view)
        state.figure_key = key
        return fig, curve_caption({run_id: 0 for run_id in run_ids} | figure_points(fig), metric)

    def metric_choices(state: TrainSession, runs: Any) -> Any:
        metrics = tuple(sorted({DEFAULT_METRIC, *state.cache.metric_names(runs or [])}))
        if metrics == state.metrics:
            return gr.skip()
        state.metrics = metrics
        return gr.update(choices=list(metrics))

    # -- launch -------------------------------------------------------------------------------------------
    def show_preset(variants: list[str], preset: str) -> str:
        return preset_summary(variants, preset)

    gr.on(
        [variants_box.change, preset_radio.change],
        show_preset,
        inputs=[variants_box, preset_radio],
        outputs=preset_info,
        api_visibility="private",
    )

    def launch(
        variants: list[str],
        preset: str,
        epochs: str,
        batch_size: str,
        lr: str,
        data: str,
        seed: str,
        device: str,
        precision: str,
        compile: bool,
        plotted_runs: list[str],
        state: TrainSession,
        request: gr.Request,
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
            )
        except (ValueError, FileNotFoundError) as exc:
            return warn(exc), gr.skip(), gr.skip(), state
        gr.Info(f"Queued {len(launched)} run(s)")
        return (
            f"Queued {len(launched)} run(s): " + ", ".join(f"`{run_id}`" for run_id in launched),
            plot_selection(ctx, plotted_runs, launched),
            launched[0],
            state,
        )

    def run_choices(state: TrainSession):
        """Fresh choices for both run pickers (kept apart from the endpoints so they return plain values)."""
        state.run_ids = tuple(row["id"] for row in rows())
        return gr.update(choices=list(state.run_ids)), gr.update(choices=list(state.run_ids)), state

    launch_btn.click(
        launch,
        inputs=[
            variants_box,
            preset_radio,
            epochs_box,
            batch_box,
            lr_box,
            data_box,
            seed_box,
            device_radio,
            precision_radio,
            compile_box,
            runs_dd,
            session,
        ],
        outputs=[status_md, runs_dd, selected_dd, session],
        api_name="launch",
        concurrency_limit=4,
    ).success(run_choices, inputs=session, outputs=[runs_dd, selected_dd, session], api_visibility="private")

    # -- jobs ---------------------------------------------------------------------------------------------
    def jobs() -> list[dict[str, Any]]:
        """Every run, newest first: the job manager's rows (id, variant, status, epoch, step, best...)."""
        return rows()

    gr.api(jobs, api_name="jobs", concurrency_limit=None)

    def cancel(run_id: str, request: gr.Request) -> str:
        try:
            return cancel_run(ctx, run_id, _session(ctx, request))
        except (ValueError, FileNotFoundError, PermissionError) as exc:
            return warn(exc)

    cancel_btn.click(cancel, inputs=selected_dd, outputs=status_md, api_name="cancel", concurrency_limit=4)

    def select_row(evt: gr.SelectData):
        row = evt.row_value or []
        return gr.update(value=row[0]) if row and row[0] else gr.skip()

    jobs_df.select(select_row, outputs=selected_dd, api_visibility="private")

    def show_log(run_id: str, state: TrainSession):
        try:
            text = log_tail(ctx, run_id)
        except (ValueError, FileNotFoundError) as exc:
            text = warn(exc)
        state.log = text
        return text, state

    selected_dd.change(
        show_log, inputs=[selected_dd, session], outputs=[log_box, session], api_name="log_tail"
    )

    # -- curves -------------------------------------------------------------------------------------------
    def curves(metric: str, runs: list[str], smoothing: float, log_y: bool, view: str, state: TrainSession):
        try:
            _, run_ids = check_curve_request(metric, runs)
            unknown = [run_id for run_id in run_ids if ctx.store.get_run(run_id) is None]
            if unknown:
                raise ValueError(f"no run with id {', '.join(map(repr, unknown))} in {ctx.runs_dir}")
            fig, caption = draw(state, metric, run_ids, smoothing, log_y, view, force=True)
        except ValueError as exc:
            return gr.skip(), warn(exc), state
        return fig, caption, state

    def update_metric_choices(runs: list[str], state: TrainSession):
        return metric_choices(state, runs), state

    gr.on(
        [metric_dd.change, runs_dd.change, smoothing_slider.release, log_check.change],
        curves,
        inputs=[metric_dd, runs_dd, smoothing_slider, log_check, view_box, session],
        outputs=[plot, curve_md, session],
        js=VIEW_JS,
        api_name="curves",
        concurrency_limit=8,
    ).success(
        update_metric_choices,
        inputs=[runs_dd, session],
        outputs=[metric_dd, session],
        api_visibility="private",
    )

    # -- polling ------------------------------------------------------------------------------------------
    def tick(
        metric: str,
        runs: list[str],
        smoothing: float,
        log_y: bool,
        view: str,
        run_id: str,
        state: TrainSession,
    ):
        try:
            return poll(metric, runs, smoothing, log_y, view, run_id, state)
        except Exception:  # noqa: BLE001 - a failing poll must not put an error on the page every 2 s
            log.exception("Train tab poll failed")
            return (*[gr.skip()] * 7, state)

    def poll(metric: Any, runs: Any, smoothing: Any, log_y: Any, view: Any, run_id: Any, state: TrainSession):
        all_rows = rows()
        table = job_table(all_rows)
        table_update = gr.skip() if table == state.table else table
        state.table = table
        ids = tuple(row["id"] for row in all_rows)
        runs_update = selected_update = gr.skip()
        if ids != state.run_ids:
            state.run_ids = ids
            runs_update = selected_update = gr.update(choices=list(ids))
        try:
            fig, caption = draw(state, metric, runs, smoothing, log_y, view, force=False)
        except ValueError:  # a bad selection; the curves event has already said so
            fig, caption = gr.skip(), gr.skip()
        log_update = gr.skip()
        if not _blank(run_id):
            try:
                text = log_tail(ctx, run_id)
            except (ValueError, FileNotFoundError) as exc:
                text = str(exc)
            if text != state.log:
                state.log = log_update = text
        metric_update = metric_choices(state, runs)
        return table_update, runs_update, selected_update, metric_update, fig, caption, log_update, state

    timer.tick(
        tick,
        inputs=[metric_dd, runs_dd, smoothing_slider, log_check, view_box, selected_dd, session],
        outputs=[jobs_df, runs_dd, selected_dd, metric_dd, plot, curve_md, log_box, session],
        js=VIEW_JS,
        api_visibility="private",
        concurrency_limit=None,
    )

    def load(state: TrainSession):
        all_rows = rows()
        state.run_ids = tuple(row["id"] for row in all_rows)
        state.table = job_table(all_rows)
        plotted = initial_curve_runs(all_rows)
        ids = list(state.run_ids)
        return (
            state.table,
            gr.update(choices=ids, value=plotted),
            gr.update(choices=ids, value=plotted[0] if plotted else None),
            state,
        )

    root = gr.context.Context.root_block
    if root is not None:  # fill the table and pickers when the page opens, not on the first tick
        root.load(
            load, inputs=session, outputs=[jobs_df, runs_dd, selected_dd, session], api_visibility="private"
        )
