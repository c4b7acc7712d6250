"""The Train tab's studies section: a study's (or all plotted runs') curves grouped by variant, study or
a setting, as a mean line with a band over seeds; the parallel-coordinates and setting-vs-metric views of
their settings against a chosen best metric; and the study leaderboard with its claims answered."""

from __future__ import annotations

from typing import Any

import gradio as gr
import plotly.graph_objects as go

from studio.context import StudioContext
from studio.curves import PALETTE
from studio.groups import BANDS, band_traces, group_curve, group_key, parallel_coordinates, setting_scatter

GROUP_BY = ("variant", "study")
DEFAULT_METRIC = "train/loss"


def study_choices(ctx: StudioContext) -> list[tuple[str, str]]:
    """(label, study id) of every study the visitor may see, newest first."""
    from trainers.runs.studies import list_studies

    out = []
    for s in list_studies(ctx.store):
        done = sum(n for status, n in s.statuses.items() if status not in ("queued", "running"))
        out.append(
            (f"{s.id} · {', '.join(s.variants)} · {len(s.seeds)} seeds · {done}/{len(s.runs)} ended", s.id)
        )
    return out


def _runs(ctx: StudioContext, study: Any) -> list[Any]:
    from trainers.runs.studies import study_runs

    if not study:
        raise ValueError("no study chosen: launch one with Seeds > 1 (or a sweep), then pick it here")
    return study_runs(ctx.store, str(study))


def grouped_figure(ctx: StudioContext, study: Any, metric: Any, by: Any, band: Any) -> go.Figure:
    """The study's curves of ``metric`` grouped by ``by`` (variant, study or a setting key), one colour a
    group, the mean line with its band."""
    runs = _runs(ctx, study)
    metric = str(metric or DEFAULT_METRIC)
    split, _, name = metric.partition("/")
    if not name:
        raise ValueError(f"a metric is split/name such as train/loss, got {metric!r}")
    by = str(by or "variant").strip()
    groups: dict[str, dict[str, Any]] = {}
    for run in runs:
        points = ctx.store.metric_series(run.id, name, split=split)
        if points:
            steps, values = zip(*points, strict=True)
            groups.setdefault(group_key(run, by), {})[run.id] = (list(steps), list(values))
    fig = go.Figure()
    for k, (label, series) in enumerate(sorted(groups.items())):
        for trace in band_traces(
            group_curve(label, series, band=str(band)), PALETTE[k % len(PALETTE)], str(band)
        ):
            fig.add_trace(trace)
    title = f"{metric} by {by}: mean of the seeds with its {band} band"
    if not groups:
        title = f"no run of this study has logged {metric} yet"
    fig.update_layout(
        title=title,
        xaxis_title="step",
        yaxis_title=metric,
        height=420,
        margin={"t": 60},
        template="plotly_white",
    )
    return fig


def settings_figures(
    ctx: StudioContext, study: Any, metric: Any, setting: Any
) -> tuple[go.Figure, go.Figure]:
    """Parallel coordinates of the study's differing settings to the runs' best ``metric`` (val/...), and
    that metric against one setting (the first differing one when none is named)."""
    from studio.groups import numeric_settings

    runs = _runs(ctx, study)
    metric = str(metric or "val/loss")
    name = metric.partition("/")[2] or metric
    scores = [ctx.store.best_metrics(r.id).get(name) for r in runs]
    chosen = str(setting or "").strip() or next(iter(numeric_settings(runs)))
    return parallel_coordinates(runs, metric, scores), setting_scatter(runs, chosen, metric, scores)


def study_domains(ctx: StudioContext, study: Any) -> list[str]:
    """The domains of the study's runs, in the order they come (a message for no or an unknown study)."""
    return list(dict.fromkeys(run.domain for run in _runs(ctx, study)))


def study_result(
    ctx: StudioContext, study: Any, data: str | None, claims: Any, progress: Any = None, seed: int = 0
) -> dict[str, Any]:
    """The study leaderboard (``compare --study``) of a study the visitor may see, on ``data`` (None: each
    domain's built-in data) with the design's claims and the user's (``claims``: one per line, each
    checked before anything is scored). The one path of the Train tab's button and the Compare tab."""
    from trainers.evaluation.claims import parse_claim
    from trainers.evaluation.study import compare_study

    _runs(ctx, study)  # a study the visitor may not see is "no study with id"
    wanted = [parse_claim(line) for line in str(claims or "").splitlines() if line.strip()]

    def report(fraction: float, desc: str) -> None:
        if progress is not None:
            progress(fraction, desc=desc)

    return compare_study(str(study), ctx.runs_dir, data, wanted, seed=seed, progress=report)


def study_leaderboard(ctx: StudioContext, study: Any, data: Any, claims: Any, progress: Any = None) -> str:
    """The study leaderboard as Markdown: means over seeds, paired differences on the same seeds and units,
    the design's claims and the user's (one per line) answered."""
    from trainers.evaluation.study import study_markdown

    return study_markdown(study_result(ctx, study, str(data or "").strip() or None, claims, progress))


def build_studies_section(ctx: StudioContext) -> None:
    """The "Studies" accordion under the curves, and the /studies listing."""

    def studies() -> list[dict[str, Any]]:
        """Every study the visitor may see, newest first: id, variants, seeds, swept settings, runs and
        how many of them ended (launch one with /launch's seeds and sweep)."""
        from trainers.runs.studies import list_studies

        return [study.to_dict() for study in list_studies(ctx.store)]

    gr.api(studies, api_name="studies", concurrency_limit=None)
    with gr.Accordion("Studies: seeds grouped, settings against metrics, claims", open=False) as section:
        with gr.Row():
            study = gr.Dropdown([], label="Study", scale=3, elem_id="train-study")
            refresh = gr.Button("↻", scale=0, min_width=40, elem_id="train-study-refresh")
        with gr.Row():
            metric = gr.Textbox(DEFAULT_METRIC, label="Metric", info="split/name, e.g. val/psnr", scale=2)
            by = gr.Textbox(
                "variant", label="Group by", info="variant, study or a setting (lr, model.x)", scale=2
            )
            band = gr.Radio(list(BANDS), value=BANDS[0], label="Band", scale=2)
        grouped = gr.Plot(label="Grouped curves", elem_id="train-grouped")
        with gr.Row():
            best = gr.Textbox("val/loss", label="Best metric", scale=2)
            setting = gr.Textbox(
                "", label="Setting for the scatter", info="blank: the first that differs", scale=2
            )
        with gr.Row():
            parcoords = gr.Plot(label="Parallel coordinates", elem_id="train-parcoords")
            scatter = gr.Plot(label="Setting vs metric")
        with gr.Row():
            data = gr.Textbox("", label="Leaderboard data", info="blank: the runs' built-in data", scale=3)
            claims = gr.Textbox("", label="Claims", info="one a line: A - B >= D on METRIC", lines=2, scale=3)
        run_board = gr.Button("Study leaderboard", elem_id="train-study-board")
        board = gr.Markdown(elem_id="train-study-result")

    def choices():
        return gr.update(choices=study_choices(ctx))

    def draw(study_id, metric_name, group_by, band_name, best_name, setting_name):
        try:
            curves = grouped_figure(ctx, study_id, metric_name, group_by, band_name)
            coords, points = settings_figures(ctx, study_id, best_name, setting_name)
        except ValueError as exc:
            gr.Warning(str(exc))
            return gr.skip(), gr.skip(), gr.skip()
        return curves, coords, points

    def leaderboard(study_id, data_spec, claim_text, progress=gr.Progress()):  # noqa: B008 - Gradio's idiom
        try:
            return study_leaderboard(ctx, study_id, data_spec, claim_text, progress)
        except (ValueError, FileNotFoundError) as exc:
            return f"⚠ {exc}"

    # Opening the section lists the studies launched since the page loaded, as the ↻ button does.
    gr.on([refresh.click, section.expand], choices, outputs=study, api_visibility="private")
    root = gr.context.Context.root_block
    if root is not None:
        root.load(choices, outputs=study, api_visibility="private")
    inputs = [study, metric, by, band, best, setting]
    gr.on(
        [study.change, band.change, metric.submit, by.submit, best.submit, setting.submit],
        draw,
        inputs=inputs,
        outputs=[grouped, parcoords, scatter],
        api_visibility="private",
    )
    # The CLI is the scripted way (compare --study); the page button only.
    run_board.click(leaderboard, inputs=[study, data, claims], outputs=board, api_visibility="private")
