"""Compare tab: the `python -m trainers compare` leaderboard for a chosen domain, its checkpoints and data;
or, with the "study" choice, the study leaderboard (``compare --study``, see ``compare_study``).

:func:`compare_checkpoints` does the work (the same :func:`trainers.evaluation.compare.run_compare` as the
CLI, with the tab's cached models); :func:`build_tab` wires it to Gradio and the ``compare`` /
``compare_checkpoints`` / ``compare_study`` API endpoints. The data choice is ``compare_data``.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from studio.views.common import (
    DOMAIN_NAMES,
    display_name,
    dropdown_update,
    escape_markdown,
    load_checkpoint,
    model_device,
    page_handler,
    run_label,
    selected_folders,
    user_errors,
    wrap_title,
)
from studio.views.compare_data import (
    BUILTIN_DEFAULT_N,
    BUILTIN_MAX_N,
    SOURCES,
    _count,
    chosen_data,
)

DOMAINS = ("sar", "audio", "fragments")
DOMAIN_LABELS = {"sar": "SAR", "audio": "Audio", "fragments": "Fragments"}
MAX_MODELS = 8


@dataclass
class CompareView:
    result: dict[str, Any]
    headers: list[str]
    rows: list[list[str]]
    details: str
    figure: Any
    summary: str


def _check_domain(domain: Any) -> str:
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; choose one of {', '.join(DOMAINS)}")
    return str(domain)


# ----------------------------------------------------------------------------------------------- compute
def _model_sources(ctx: Any, domain: str, checkpoints: Any) -> list[Any]:
    """The chosen checkpoints loaded (from the studio's cache), each named as the person named its run."""
    from trainers.evaluation.compare import ModelSource

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
        models.append(ModelSource(display_name(ctx, f), kind, Path(f), model, config))
    names = [m.name for m in models]
    for k, (f, m) in enumerate(zip(dict.fromkeys(folders), models, strict=True)):
        if names.count(m.name) > 1:  # two runs a person gave one name: their ids tell them apart
            models[k] = ModelSource(run_label(ctx, f), m.kind, m.folder, m.model, m.config)
    return models


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
    from trainers.evaluation.compare import leaderboard, markdown_report, run_compare

    domain = _check_domain(domain)
    seed_i = _count(seed if seed is not None else 0, "the seed", 0, 2**31 - 1)
    models = _model_sources(ctx, domain, checkpoints)
    callback = None
    if progress is not None:

        def callback(fraction: float, desc: str) -> None:
            progress(fraction, desc=desc)

    device = str(model_device(models[0].model))  # leave the shared, cached models where they are
    with chosen_data(ctx, domain, source, folder, uploads, n) as (data, label, hide):
        result = run_compare(
            [],
            data,
            baselines=bool(baselines),
            seed=seed_i,
            device=device,
            progress=callback,
            models=models,
        )
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
        + f", evaluated as {result.get('eval_size', 'given')}. Each cell: mean [95% bootstrap CI over "
        f"{result.get('n_units', '?')} {result.get('ci_unit', 'example')}s]; ↑ higher is better, ↓ lower is "
        "better. Model rates are their real bitstreams' bytes."
    )
    return CompareView(result, headers, rows, details, rd_figure(result), summary)


# ------------------------------------------------------------------------------------------------- figure
#: Codec sweeps are drawn up to this multiple of the largest model rate: they give context near the models'
#: rates, and a sweep to 5 bpp would otherwise squeeze every model into the first tenth of the axis.
SWEEP_SPAN = 2.0
CODEC_COLOURS = {"JPEG": "#9467bd", "JPEG 2000": "#8c564b", "WebP": "#e377c2", "Opus": "#2ca02c"}
MODEL_COLOURS = ("#1f77b4", "#ff7f0e", "#d62728", "#17becf", "#bcbd22", "#393b79", "#637939", "#7f7f7f")
# Open symbols of different shapes: models often share one rate, and filled markers would hide each other.
MODEL_SYMBOLS = tuple(
    f"{s}-open" for s in ("circle", "diamond", "triangle-up", "square", "x", "star", "hexagon", "cross")
)
LEGEND_CHARS = 32  # longer names are cut in the legend (the hover has them whole)
X_TITLE_CHARS = 60


def _short(name: str) -> str:
    """A legend entry: a run id without its date (its time and suffix tell runs apart), and a long name cut
    in the middle, so "(best)" and "(last)" of one run stay two different entries."""
    name = re.sub(r"^\d{8}-(?=\d{6}-)", "", name)
    if len(name) <= LEGEND_CHARS:
        return name
    half = (LEGEND_CHARS - 1) // 2
    return name[:half] + "…" + name[-(LEGEND_CHARS - 1 - half) :]


def _rd_curve(row: dict[str, Any], metric: str) -> list[tuple[float, float]]:
    """(bpp, mean) of a model's R-D curve (the compare JSON's per-model ``rd`` list), sorted by rate."""
    points = []
    for p in row.get("rd") or []:
        bpp, value = p.get("bpp"), (p.get("metrics") or {}).get(metric)
        if _finite(bpp) and _finite(value):
            points.append((float(bpp), float(value)))
    return sorted(points)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _ci_bars(points: list[dict[str, Any]]) -> dict[str, Any]:
    plus = [(p["ci95"][1] - p["mean"]) if p.get("ci95") else 0 for p in points]
    minus = [(p["mean"] - p["ci95"][0]) if p.get("ci95") else 0 for p in points]
    return {"type": "data", "symmetric": False, "array": plus, "arrayminus": minus, "thickness": 1.2}


def _point(row: dict[str, Any], metric: str) -> dict[str, Any] | None:
    stats = row["metrics"].get(metric) or {}
    if not _finite(stats.get("mean")):
        return None
    ci = stats.get("ci95")
    ci = ci if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(map(_finite, ci)) else None
    bpp = row.get("bpp")
    return {
        "name": row["name"],
        "bpp": float(bpp) if _finite(bpp) else None,
        "mean": stats["mean"],
        "ci95": ci,
    }


def rd_figure(result: dict[str, Any]) -> Any:
    """The rate-distortion plot of a leaderboard: one legend entry per model (its R-D curve as a line with
    markers where the result has one, else its one point, with the 95% CI), one per codec (its rate-matched
    points and its sweep), and a dashed line per row without a rate. No text on the points: models share
    rates, and their labels stacked into a heap. The x axis fits the models; sweeps are cut at SWEEP_SPAN
    times the largest model rate."""
    import plotly.graph_objects as go

    metric = result["metrics"][0]["name"]
    arrow = result["metrics"][0].get("arrow") or ""
    hover = f"<b>%{{text}}</b><br>%{{x:.4g}} bpp<br>{metric} %{{y:.4g}}<extra></extra>"
    fig = go.Figure()
    models = [r for r in result["rows"] if r.get("kind") != "codec"]
    model_x: list[float] = []
    for k, row in enumerate(models):
        point, curve = _point(row, metric), _rd_curve(row, metric)
        colour, symbol = MODEL_COLOURS[k % len(MODEL_COLOURS)], MODEL_SYMBOLS[k % len(MODEL_SYMBOLS)]
        common = {"legendgroup": f"model{k}", "meta": row["name"], "hovertemplate": hover}
        if curve:
            model_x += [x for x, _ in curve]
            fig.add_scatter(
                x=[x for x, _ in curve],
                text=[row["name"]] * len(curve),
                y=[y for _, y in curve],
                mode="lines+markers",
                name=_short(row["name"]),
                line={"color": colour, "width": 2},
                marker={"symbol": symbol, "size": 8, "color": colour},
                **common,
            )
        if point is not None and point["bpp"] is not None:
            model_x.append(point["bpp"])
            fig.add_scatter(
                x=[point["bpp"]],
                text=[row["name"]],
                y=[point["mean"]],
                mode="markers",
                name=_short(row["name"]),
                showlegend=not curve,
                error_y=_ci_bars([point]) | {"color": colour},
                marker={
                    "symbol": symbol,
                    "size": 12,
                    "color": colour,
                    "line": {"width": 2, "color": colour},
                },
                **common,
            )
    limit = SWEEP_SPAN * max(model_x) if model_x else math.inf
    codec_x = _add_codecs(fig, result, metric, limit, hover)
    shown_x = model_x + [x for x in codec_x if x <= limit]
    _add_flat_rows(fig, result, metric, shown_x)
    fig.update_layout(
        title={
            "text": f"{result['domain']}: {metric} {arrow} against rate, {result['n']} examples",
            "x": 0.01,
        },
        # The rate's unit is a sentence: wrapped, since plotly cuts a long axis title at the figure's edge.
        xaxis_title=wrap_title(f"bpp: {result['bpp_unit']}", X_TITLE_CHARS, 3),
        yaxis_title=f"{metric} {arrow}".strip(),
        height=520,
        margin={"l": 60, "r": 10, "t": 50, "b": 60},
        legend={"orientation": "v", "x": 1.02, "xanchor": "left", "y": 1, "yanchor": "top"},
        template="plotly_white",
    )
    fig.update_xaxes(**_x_range(shown_x))
    return fig


def _add_codecs(fig: Any, result: dict[str, Any], metric: str, limit: float, hover: str) -> list[float]:
    """Each codec's rate-matched rows as squares and its sweep as a dotted line (cut at ``limit``), under one
    legend entry; the x values drawn."""
    codec_rows = [r for r in result["rows"] if r.get("kind") == "codec"]
    sweep = [s for s in result.get("rd_sweep") or [] if s.get("metric", metric) == metric]
    names = list(
        dict.fromkeys([r.get("codec") or r["name"] for r in codec_rows] + [s["codec"] for s in sweep])
    )
    drawn: list[float] = []
    for k, codec in enumerate(names):
        colour = CODEC_COLOURS.get(codec, MODEL_COLOURS[-1 - k % len(MODEL_COLOURS)])
        rows = [r for r in codec_rows if (r.get("codec") or r["name"]) == codec]
        points = [p for r in rows if (p := _point(r, metric)) is not None and p["bpp"] is not None]
        line = sorted(
            (s["bpp"], s["mean"])
            for s in sweep
            if s["codec"] == codec and _finite(s.get("bpp")) and _finite(s.get("mean")) and s["bpp"] <= limit
        )
        group = {"legendgroup": f"codec-{codec}", "hovertemplate": hover}
        if line:
            drawn += [x for x, _ in line]
            fig.add_scatter(
                x=[x for x, _ in line],
                y=[y for _, y in line],
                mode="lines+markers",
                name=codec,
                text=[f"{codec} sweep"] * len(line),
                line={"dash": "dot", "color": colour, "width": 1.5},
                marker={"size": 5, "color": colour},
                **group,
            )
        if points:
            drawn += [p["bpp"] for p in points]
            fig.add_scatter(
                x=[p["bpp"] for p in points],
                y=[p["mean"] for p in points],
                mode="markers",
                name=codec,
                text=[p["name"] for p in points],
                showlegend=not line,
                error_y=_ci_bars(points) | {"color": colour},
                marker={"symbol": "square", "size": 9, "color": colour},
                **group,
            )
    return drawn


def _add_flat_rows(fig: Any, result: dict[str, Any], metric: str, xs: list[float]) -> None:
    """Rows without a rate (a feature round trip) as dashed horizontal lines across the shown rates, each
    with its legend entry instead of a text label."""
    lo, hi = (min(xs), max(xs)) if xs else (0.0, 1.0)
    for row in result["rows"]:
        point = _point(row, metric)
        if point is None or point["bpp"] is not None:
            continue
        fig.add_scatter(
            x=[lo, hi],
            y=[point["mean"]] * 2,
            mode="lines",
            name=_short(row["name"]),
            meta=row["name"],
            text=[row["name"]] * 2,
            line={"dash": "dash", "color": "#555", "width": 1},
            hovertemplate=f"<b>%{{text}}</b> (no rate)<br>{metric} %{{y:.4g}}<extra></extra>",
        )


def _x_range(xs: list[float]) -> dict[str, Any]:
    """An x axis fitted to the points drawn: linear from 0 with a margin, or log when they span more than
    a factor of 20 (then a margin of a tenth of a decade either side)."""
    positive = [x for x in xs if x > 0]
    if not positive:
        return {}
    lo, hi = min(positive), max(positive)
    if hi / lo > 20:
        return {"type": "log", "range": [math.log10(lo) - 0.1, math.log10(hi) + 0.1]}
    return {"type": "linear", "range": [0.0, hi * 1.1]}


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


def _wire_pickers(ctx: Any, refresh: Any, domain: Any, checkpoints: Any) -> None:
    """The checkpoint picker: refreshed by its button (the `compare_checkpoints` API) and by the domain."""

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


def _study_controls(ctx: Any) -> SimpleNamespace:
    """The study choice's own inputs (hidden until "A study" is chosen): the study and the claims."""
    import gradio as gr

    from studio.views.train.studies import study_choices

    ui = SimpleNamespace()
    with gr.Column(visible=False) as ui.box:
        with gr.Row():
            ui.study = gr.Dropdown(
                study_choices(ctx),
                label="Study",
                info="launched from the Train tab (Seeds, Sweep) or `python -m trainers study`",
                scale=4,
                elem_id="compare-study",
            )
            ui.refresh = gr.Button("↻ refresh", scale=1, size="sm", elem_id="compare-study-refresh")
        ui.claims = gr.Textbox(
            "",
            label="Claims",
            info="one a line: A - B >= DELTA on METRIC (the design's SAR claims are built in)",
            lines=2,
            elem_id="compare-claims",
        )
    return ui


def _wire_study(ctx: Any, ui: SimpleNamespace, data: list[Any], outputs: list[Any]) -> None:
    """The study choice: its picker's refresh and the study leaderboard (the `compare_study` API)."""
    import gradio as gr

    from studio.views.compare_study import compare_study, present
    from studio.views.train.studies import study_choices

    ui.refresh.click(
        lambda: gr.update(choices=study_choices(ctx)), outputs=ui.study, api_visibility="private"
    )
    source, folder, uploads, n, seed = data
    ui.run.click(
        page_handler(ctx, compare_study, present),
        inputs=[ui.study, source, folder, uploads, n, ui.claims, seed],
        outputs=outputs,
        api_name="compare_study",
        show_progress_on=outputs[:1],
    )


def _wire_what(ui: SimpleNamespace, by_checkpoints: list[Any], by_study: list[Any]) -> None:
    """Checkpoints or a study: each choice shows its own inputs, button and results."""
    import gradio as gr

    def show(what: str) -> list[Any]:
        study = what == "study"
        return [gr.update(visible=not study)] * len(by_checkpoints) + [gr.update(visible=study)] * len(
            by_study
        )

    ui.what.change(show, inputs=ui.what, outputs=[*by_checkpoints, *by_study], api_visibility="private")


def build_tab(ctx: Any) -> tuple[Any, list[Any]]:
    """The Compare tab's components and events (call inside ``with gr.Tab("Compare"):``)."""
    import gradio as gr

    from studio.views.compare_study import WHAT

    with gr.Row():
        # Minimum widths wrap the row on a narrow page: the leaderboard and plot get the page's width below
        # the controls instead of 370 px beside them, where the legend left the plot a sliver.
        with gr.Column(scale=1, min_width=300):
            what = gr.Radio(list(WHAT), value=WHAT[0][1], label="Compare", elem_id="compare-what")
            domain = gr.Radio(
                [(DOMAIN_LABELS[d], d) for d in DOMAINS],
                value="sar",
                label="Domain",
                elem_id="compare-domain",
            )
            with gr.Row() as picker_row:
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
            study = _study_controls(ctx)
            study.what = what
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
            study.run = gr.Button(
                "Run study leaderboard", variant="primary", visible=False, elem_id="compare-study-run"
            )
        with gr.Column(scale=3, min_width=600):
            summary = gr.Markdown(
                "Pick a domain, its checkpoints and the data, then press **Run comparison**; or choose "
                "**A study** to score every run of a study and answer its claims.",
                label="Notes",
                elem_id="compare-summary",
            )
            with gr.Column() as checkpoint_results:
                table = gr.Dataframe(label="Leaderboard", interactive=False, wrap=True)
                plot = gr.Plot(label="Rate-distortion")
                details = gr.Markdown(label="Details")
            with gr.Column(visible=False) as study_results:
                study_plot = gr.Plot(label="Study: mean over seeds", elem_id="compare-study-plot")
                study_details = gr.Markdown(label="Study leaderboard", elem_id="compare-study-result")

    _wire_pickers(ctx, refresh, domain, checkpoints)
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
    _wire_study(ctx, study, [source, folder, uploads, n, seed], [summary, study_plot, study_details])
    by_checkpoints = [domain, picker_row, baselines, run, checkpoint_results]
    _wire_what(study, by_checkpoints, [study.box, study.run, study_results])

    from studio.views.train.studies import study_choices

    def refresh_on_open(domain, current, chosen_study):
        studies = gr.update(choices=study_choices(ctx), value=chosen_study)
        return gr.update(), _choices_update(ctx, domain if domain in DOMAINS else "sar", current), studies

    return refresh_on_open, [domain, checkpoints, study.study]
