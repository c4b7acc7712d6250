"""The Train tab: launch jobs for chosen variants, watch the jobs table and live curve panels, name, tag and
cancel runs.

Handlers are plain functions of the studio context that raise ValueError with a message for a person; the
Gradio wrappers in :func:`build_tab` turn those into a status line and a warning toast, so bad input never
shows a stack trace and never launches anything. Polling is one ``gr.Timer``: each tick reads the jobs
table and only the metric rows newer than what this browser session has (see ``studio.curves``), and skips
every output that did not change, so an idle page costs a couple of small SQLite queries.
"""

from __future__ import annotations

import html
import json
import logging
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import gradio as gr

from models import VARIANTS
from studio.context import StudioContext
from studio.curves import (
    X_AXES,
    CurveCache,
    RunLabel,
    check_x_axis,
    figure_points,
    figure_spec,
    is_finite_number,
    keep_view_spec,
    plot_data,
    run_color,
)
from trainers.config import PRESETS
from trainers.data.spec import parse_data_spec
from trainers.metrics.registry import arrow, format_value, metric_info
from trainers.runs.store import STATUSES, check_tags
from trainers.settings import REAL_POSITIVE, make_config, real, whole
from trainers.training.fastpath import PRECISIONS

log = logging.getLogger(__name__)

POLL_SECONDS = 2.0
LOG_LINES = 40
DEFAULT_METRIC = "train/loss"
# Runs preselected for the curves when a page opens: the running ones, else the newest few.
INITIAL_CURVE_RUNS = 4
# Metric panels side by side, and what they show first for runs of each domain.
PANEL_COUNT = 4
DEFAULT_PANEL_COUNT = 3
DEFAULT_PANELS: dict[str, tuple[str, ...]] = {
    "sar": ("train/loss", "val/psnr", "val/ssim", "val/epi"),
    "audio": ("train/loss", "val/loss", "val/spectral_convergence", "val/lsd"),
    "fragments": ("train/loss", "val/loss", "val/accuracy_corrupted", "val/accuracy"),
}
PANEL_HEIGHT = 340
JOB_HEADERS = [
    "run",
    "variant",
    "status",
    "progress",
    "speed · ETA",
    "best",
    "elapsed",
    "preset",
    "epochs",
    "batch",
    "lr",
    "data",
    "seed",
    "device",
    "where",
    "CPU · memory",
    "GPU",
    "tags",
    "note",
]
SORTS: tuple[str, ...] = ("newest", "oldest", "name", "status", "best", "progress")
NOTE_CHARS = 90
# A Space is a small shared CPU: smoke preset only, bounded runs, built-in data only (no server folders).
SPACE_MAX_EPOCHS = 10
# Settings shown in the legend (where they differ between the plotted runs) and in the hover: key -> word.
LEGEND_SETTINGS: dict[str, str] = {
    "variant": "variant",
    "preset": "preset",
    "epochs": "epochs",
    "batch_size": "batch",
    "lr": "lr",
    "data": "data",
    "seed": "seed",
    "precision": "precision",
}
# Layout rules of the tab: numbers never wrap mid-value, the jobs table scrolls sideways instead of breaking
# words at 800 px, and dropdowns keep room for their arrow.
CSS = """
#train-jobs td, #train-jobs th { white-space: nowrap; }
#train-jobs td span, #train-jobs th span { white-space: nowrap; word-break: keep-all; overflow-wrap: normal; }
#train-jobs .run-dot { font-size: 1.1em; }
#tab-train .gr-dropdown input, #tab-train [data-testid="dropdown"] input { padding-right: 2.2em; }
#tab-train .wrap-inner { padding-right: 1.8em; }
#train-cancel-status p { margin: 0.25em 0; }
"""


def view_js(slots: Mapping[int, int]) -> str:
    """JavaScript run in the browser before a curve refresh: puts the current zoom of panel p (see
    studio.curves.keep_view) into argument i of the event, for each i -> p of ``slots``."""
    pairs = json.dumps([[i, p] for i, p in slots.items()])
    return (
        "(...args) => {\n"
        f"    for (const [i, p] of {pairs}) {{\n"
        "        const graph = document.querySelector('#train-plot-' + p + ' .js-plotly-plot');\n"
        "        const full = graph && graph._fullLayout;\n"
        "        if (full && graph.layout) {\n"
        "            const range = (axis) => (axis && !axis.autorange ? axis.range : null);\n"
        "            args[i] = JSON.stringify({uirevision: graph.layout.uirevision ?? null,\n"
        "                                      x: range(full.xaxis), y: range(full.yaxis)});\n"
        "        }\n"
        "    }\n"
        "    return args;\n"
        "}"
    )


# ------------------------------------------------------------------------------------------ pure handlers
def variant_choices() -> list[tuple[str, str]]:
    """(label, value) of every variant for the checkbox group: the name and its one-line description."""
    return [(f"{name} — {info.description}", name) for name, info in VARIANTS.items()]


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


# Settings for which 0 is no value: a number field left at 0 takes the preset's value, as a blank one does
# (the page shows a number field without a value as 0).
PRESET_IF_ZERO = ("epochs", "batch_size", "lr")


def _is_zero(value: Any) -> bool:
    try:
        return float(value) == 0.0
    except (TypeError, ValueError):
        return False


def _parse(key: str, value: Any) -> int | float | None:
    """A number field through the one validation layer; blank (or 0 where 0 means nothing) leaves the
    preset's value."""
    zero_means_preset = key in PRESET_IF_ZERO
    if _blank(value) or (zero_means_preset and _is_zero(value)):
        return None
    try:
        return real(key, value) if key in REAL_POSITIVE else whole(key, value)
    except ValueError as exc:
        hint = "blank or 0" if zero_means_preset else "blank"
        raise ValueError(f"{exc} (or leave it {hint} for the preset's value)") from None


def parse_settings(epochs: Any, batch_size: Any, lr: Any, data: Any, seed: Any) -> dict[str, Any]:
    """The form's settings as run settings; empty ones are left out (the preset's value applies)."""
    settings: dict[str, Any] = {
        "epochs": _parse("epochs", epochs),
        "batch_size": _parse("batch_size", batch_size),
        "lr": _parse("lr", lr),
        "seed": _parse("seed", seed),
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
    if compile not in (None, False):  # checked with the rest by the job manager (trainers.settings)
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


def queue_note(ctx: StudioContext, run_ids: Sequence[str]) -> str:
    """ " · #3 in line, wait ≤ ~15m 00s (an estimate: ...)" for the first still-queued run of `run_ids` on a
    public Space, where every job has a time limit; "" elsewhere or when none waits."""
    if not ctx.space or ctx.jobs is None:
        return ""
    rows = {row["id"]: row for row in ctx.jobs.jobs() if row.get("id") in run_ids}
    for run_id in run_ids:
        row = rows.get(run_id, {})
        place, wait = row.get("queue_position"), row.get("queue_wait_s")
        if place and is_finite_number(wait):
            return (
                f" · `{run_id}` is #{place} in line, wait ≤ ~{format_elapsed(wait)} (an estimate: each job "
                "ahead stops at the Space's time limit at the latest)"
            )
    return ""


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


def format_count(value: Any) -> str:
    """A whole number with thousands separators ("1,234,567"); "–" for a missing one."""
    return f"{int(value):,}" if is_finite_number(value) else "–"


def format_bytes(value: Any) -> str:
    """Memory at a glance: 812 MiB, 3.4 GiB."""
    if not is_finite_number(value) or value < 0:
        return "–"
    if value >= 1024**3:
        return f"{value / 1024**3:.1f} GiB"
    return f"{value / 1024**2:.0f} MiB"


def progress_text(row: Mapping[str, Any]) -> str:
    """ "epoch 3 / 20 · 14%", or the queue place of a queued run ("queued · #2 in line"), with its estimated
    wait on a public Space ("queued · #2 in line · wait ≤ ~10m 00s (est.)")."""
    if row.get("status") == "queued":
        place = row.get("queue_position")
        if not place:
            return "queued"
        wait = row.get("queue_wait_s")
        if is_finite_number(wait):
            return f"queued · #{place} in line · wait ≤ ~{format_elapsed(wait)} (est.)"
        return f"queued · #{place} in line"
    epochs = row.get("epochs")
    text = f"epoch {row.get('epoch_now', row.get('epoch')) or 0} / {epochs if epochs else '?'}"
    percent = row.get("percent")
    if is_finite_number(percent):
        text += f" · {percent:.0f}%"
    return text


def speed_text(row: Mapping[str, Any]) -> str:
    """ "12.3 steps/s · ETA 4m 05s" while running; the average speed of an ended run."""
    rate = row.get("steps_per_s")
    if not is_finite_number(rate) or rate <= 0:
        return "–"
    text = f"{rate:.3g} steps/s"
    if row.get("status") == "running" and is_finite_number(row.get("eta_s")):
        text += f" · ETA {format_elapsed(row['eta_s'])}"
    return text


def resource_texts(row: Mapping[str, Any]) -> tuple[str, str]:
    """("CPU 97% · 640 MiB", "GPU 0 · 45% · 1.2 GiB") of a running trainer; "–" where not measured."""
    if row.get("status") != "running":
        return "–", "–"
    cpu = row.get("cpu_percent")
    rss = row.get("rss_bytes")
    parts = [f"CPU {cpu:.0f}%" if is_finite_number(cpu) else "CPU …", format_bytes(rss)]
    cpu_text = " · ".join(parts) if is_finite_number(rss) else "–"
    if row.get("gpu_index") is None:
        return cpu_text, "–"
    gpu = f"GPU {int(row['gpu_index'])} · {row.get('gpu_util_percent', 0):.0f}%"
    return cpu_text, f"{gpu} · {format_bytes(row.get('gpu_memory_bytes'))}"


def run_cell(row: Mapping[str, Any]) -> str:
    """The run column: the run's colour (as in every plot), its name, and its id when it has a name."""
    run_id = str(row.get("id"))
    dot = f'<span class="run-dot" style="color:{run_color(run_id)}">●</span>'
    name = row.get("name")
    if name:
        return f"{dot} <b>{html.escape(str(name))}</b> <small>{html.escape(run_id)}</small>"
    return f"{dot} {html.escape(run_id)}"


def _best_text(row: Mapping[str, Any]) -> str:
    best = row.get("best")
    metric = str(row.get("metric") or "").split("/", 1)[-1]
    # Which way is better and how to round, from the metric registry: "psnr ↑ 23.41".
    return f"{metric} {arrow(metric)} {format_value(metric, best)}" if is_finite_number(best) else "–"


def _setting(value: Any, kind: str = "") -> str:
    if value is None or value == "":
        return "–"
    if kind == "lr" and is_finite_number(value):
        return f"{value:g}"
    if kind == "int" and is_finite_number(value):
        return format_count(value)
    return str(value)


def job_row(row: Mapping[str, Any]) -> list[Any]:
    """One job manager row as a table row under ``JOB_HEADERS``."""
    note = " · ".join(str(part) for part in (row.get("note"), row.get("reason")) if part)
    if len(note) > NOTE_CHARS:
        note = note[: NOTE_CHARS - 1] + "…"
    cpu, gpu = resource_texts(row)
    return [
        run_cell(row),
        row.get("variant"),
        row.get("status"),
        progress_text(row),
        speed_text(row),
        _best_text(row),
        format_elapsed(row.get("elapsed")),
        _setting(row.get("preset")),
        _setting(row.get("epochs"), "int"),
        _setting(row.get("batch_size"), "int"),
        _setting(row.get("lr"), "lr"),
        _setting(row.get("data")),
        _setting(row.get("seed")),
        " · ".join(str(part) for part in (row.get("device"), row.get("precision")) if part) or "–",
        row.get("where") or "–",  # the host, or "ray node <ip>" (studio.backends.base.describe_host)
        cpu,
        gpu,
        ", ".join(row.get("tags") or []) or "–",
        note,
    ]


def row_matches(row: Mapping[str, Any], query: str) -> bool:
    """Whether a jobs row matches the filter: every word must match; ``tag:x`` needs the tag x,
    ``status:run`` a status starting with "run", any other word a part of the id, name, variant, note,
    reason, tags, data or preset (case does not matter)."""
    tags = [str(t).lower() for t in row.get("tags") or []]
    haystack = " ".join(
        str(row.get(key) or "") for key in ("id", "name", "variant", "note", "reason", "data", "preset")
    ).lower()
    haystack += " " + " ".join(tags)
    for word in query.lower().split():
        if word.startswith("tag:"):
            if word[4:] not in tags:
                return False
        elif word.startswith("status:"):
            if not str(row.get("status") or "").startswith(word[7:]):
                return False
        elif word not in haystack:
            return False
    return True


def _best_key(row: Mapping[str, Any]) -> tuple[int, float]:
    info = metric_info(str(row.get("metric") or ""))
    best = row.get("best")
    if info is None or not is_finite_number(best) or info.direction not in ("max", "min"):
        return (1, 0.0)
    return (0, -best if info.direction == "max" else best)


def sort_rows(rows: Sequence[Mapping[str, Any]], order: str) -> list[Mapping[str, Any]]:
    """The rows in the chosen order (rows arrive newest first); see SORTS."""
    if order not in SORTS:
        raise ValueError(f"sort must be one of {', '.join(SORTS)}; got {order!r}")
    rows = list(rows)
    if order == "oldest":
        return rows[::-1]
    if order == "name":
        return sorted(rows, key=lambda r: str(r.get("name") or r.get("id")).lower())
    if order == "status":
        rank = {status: i for i, status in enumerate(("running", "queued", *STATUSES))}
        return sorted(rows, key=lambda r: rank.get(str(r.get("status")), len(rank)))
    if order == "best":  # best first within each direction; runs without a value last
        return sorted(rows, key=_best_key)
    if order == "progress":
        return sorted(rows, key=lambda r: -(r.get("percent") or 0.0))
    return rows


def job_table(
    rows: Sequence[Mapping[str, Any]], query: str = "", order: str = "newest"
) -> tuple[list[list[Any]], list[str]]:
    """The job manager's rows that match ``query``, in ``order``, as table rows under ``JOB_HEADERS``, and
    their run ids (a click on a table row names its run by position)."""
    if not isinstance(query, str):
        raise ValueError(f"filter must be text such as 'tag:sweep status:running', got {query!r}")
    chosen = sort_rows([row for row in rows if row_matches(row, query)], order or "newest")
    return [job_row(row) for row in chosen], [str(row.get("id")) for row in chosen]


def set_run_labels(ctx: StudioContext, run_id: Any, name: Any, tags: Any, note: Any) -> str:
    """Save a run's name, tags (comma-separated) and note; the answer is the message for the user."""
    if _blank(run_id):
        raise ValueError("No run selected: pick a run in the jobs table (or the run dropdown) to label.")
    for what, value in (("name", name), ("tags", tags), ("note", note)):
        if value is not None and not isinstance(value, (str, list)):
            raise ValueError(f"the run's {what} must be text, got {type(value).__name__}")
    if ctx.store.get_run(str(run_id)) is None:
        raise ValueError(f"no run with id {str(run_id)!r} in {ctx.runs_dir}")
    record = ctx.store.set_labels(str(run_id), name=name or "", tags=check_tags(tags or []), note=note or "")
    tags_text = f" · tags {', '.join(record.tags)}" if record.tags else ""
    return f"Saved: {record.label}{tags_text}"


def run_labels(rows: Mapping[str, Mapping[str, Any]], run_ids: Sequence[str]) -> dict[str, RunLabel]:
    """Legend text and hover of each plotted run: its name (else id) plus the settings in which the plotted
    runs differ ("lr=0.002, batch=8"), so runs of the same variant can be told apart; the hover lists all."""
    known = [rows[r] for r in run_ids if r in rows]
    differing = [
        key for key in LEGEND_SETTINGS if len({json.dumps(row.get(key), default=str) for row in known}) > 1
    ]
    labels = {}
    for run_id in run_ids:
        row = rows.get(run_id)
        if row is None:
            labels[run_id] = RunLabel(run_id)
            continue
        name = str(row.get("name") or run_id)
        diff = ", ".join(f"{LEGEND_SETTINGS[k]}={_setting(row.get(k), 'lr')}" for k in differing)
        settings = " · ".join(
            f"{word} {_setting(row.get(key), 'lr')}" for key, word in LEGEND_SETTINGS.items() if row.get(key)
        )
        total, epochs = row.get("total_steps"), row.get("epochs")
        per_epoch = row.get("steps_per_epoch")
        if not per_epoch and total and epochs and not row.get("max_steps"):
            per_epoch = total // epochs
        labels[run_id] = RunLabel(f"{name} ({diff})" if diff else name, settings, per_epoch or None)
    return labels


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
    """Who is asking, on a public Space (None elsewhere: a local studio has one user): the visitor's HF
    login, else the id their browser keeps (it survives a reload), else the page session; see
    ``StudioContext.visitor``."""
    return ctx.visitor(request) if ctx.space and request is not None else None


def log_tail(ctx: StudioContext, run_id: Any, lines: int = LOG_LINES, requester: str | None = None) -> str:
    """The last lines of a run's log, or a hint while there is none.

    On a public Space `requester` (the visitor) reads only the logs of the runs they launched."""
    if _blank(run_id):
        return ""
    if ctx.jobs is None:
        return "(no job manager in this studio)"
    text = ctx.jobs.log_tail(str(run_id), lines, requester=requester if ctx.space else None)
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
    panel_keys: dict[int, tuple[Any, ...]] = field(default_factory=dict)
    log: str | None = None
    table: list[list[Any]] | None = None
    table_ids: list[str] = field(default_factory=list)
    x_axis: str = "step"
    cancel_enabled: bool | None = None
    panels_domain: str | None = None  # the domain whose default metrics the panels were last given


def curve_caption(points: Mapping[str, int], metric: str) -> str:
    """One line under the plots: how many points of which metric over how many runs."""
    if not points:
        return f"*{metric}: choose runs to plot.*"
    with_points = sum(1 for n in points.values() if n)
    return (
        f"*{metric}: {sum(points.values())} points from {with_points} of {len(points)} run(s)"
        f" · updated {time.strftime('%H:%M:%S')}*"
    )


def preset_summary(variants: Any, preset: Any) -> str:
    """What the preset gives each chosen variant, so a field left at 0 (or blank) is not a guess."""
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
    return f"**{preset}** preset (a field left at 0 takes these):\n" + "\n".join(lines)


def default_panels(domain: str | None) -> list[str]:
    """The metrics the panels show first for runs of ``domain``."""
    metrics = list(DEFAULT_PANELS.get(domain or "", ("train/loss", "val/loss")))
    return (metrics + [DEFAULT_METRIC] * PANEL_COUNT)[:PANEL_COUNT]


def draw_panel(
    ctx: StudioContext,
    state: TrainSession,
    index: int,
    metric: Any,
    run_ids: list[str],
    settings: tuple[float, bool],
    view: Any,
    rows: Mapping[str, Mapping[str, Any]],
    force: bool,
) -> tuple[Any, dict[str, int] | None]:
    """(plot payload, points per run) of one panel, or (skip, None) when nothing it shows has changed.
    ``settings`` is (smoothing, log scale); the cache must be up to date (``CurveCache.update``)."""
    if _blank(metric):
        return gr.skip(), None
    smoothing, log_y = settings
    labels = run_labels(rows, run_ids)
    key = (
        metric,
        tuple(run_ids),
        smoothing,
        log_y,
        state.x_axis,
        tuple(sorted((r, lab.label, lab.settings) for r, lab in labels.items())),
        tuple(state.cache.point_counts(metric, run_ids).values()),
    )
    if not force and state.panel_keys.get(index) == key:
        return gr.skip(), None
    spec = figure_spec(
        state.cache, metric, run_ids, smoothing, log_y, state.x_axis, labels, height=PANEL_HEIGHT
    )
    keep_view_spec(spec, view)
    state.panel_keys[index] = key
    return plot_data(spec), {run_id: 0 for run_id in run_ids} | figure_points(spec)


def _rows_by_id(ctx: StudioContext) -> dict[str, dict[str, Any]]:
    return {row["id"]: row for row in (ctx.jobs.jobs() if ctx.jobs is not None else [])}


def _check_plot_settings(smoothing: Any, log_y: Any) -> tuple[float, bool]:
    if isinstance(smoothing, bool) or not isinstance(smoothing, (int, float)):
        raise ValueError(f"smoothing must be a number in [0, 1), e.g. 0.6; got {smoothing!r}")
    return float(smoothing), bool(log_y)


def draw_curves(
    ctx: StudioContext,
    state: TrainSession,
    metrics: Sequence[Any],
    runs: Any,
    smoothing: Any,
    log_y: Any,
    views: Sequence[Any],
    force: bool,
    rows: Mapping[str, Mapping[str, Any]] | None = None,
) -> tuple[list[Any], Any]:
    """Refresh every panel from one incremental read: (plot payloads or skips, caption or skip). Runs the
    page does not list are an error with a message (a poll passes ``force=False`` and skips them)."""
    _, run_ids = check_curve_request(
        metrics[0] if metrics and not _blank(metrics[0]) else DEFAULT_METRIC, runs
    )
    rows = _rows_by_id(ctx) if rows is None else rows
    unknown = [run_id for run_id in run_ids if run_id not in rows and ctx.store.get_run(run_id) is None]
    if unknown:
        raise ValueError(f"no run with id {', '.join(map(repr, unknown))} in {ctx.runs_dir}")
    settings = _check_plot_settings(smoothing, log_y)
    state.cache.update(ctx.store, run_ids)
    plots, caption = [], gr.skip()
    for index, metric in enumerate(metrics):
        view = views[index] if index < len(views) else ""
        payload, points = draw_panel(ctx, state, index, metric, run_ids, settings, view, rows, force)
        plots.append(payload)
        if index == 0 and points is not None:
            caption = curve_caption(points, str(metric))
    return plots, caption


# ------------------------------------------------------------------------------------------------ Gradio
def _launch_form(ctx: StudioContext) -> SimpleNamespace:
    """The launch form: variants, preset, device/precision, the number settings and the data spec, Launch
    and its status."""
    presets = ["smoke"] if ctx.space else list(PRESETS)
    gpus = list(getattr(ctx.jobs, "gpus", []) or [])
    ui = SimpleNamespace()
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            ui.variants = gr.CheckboxGroup(
                choices=variant_choices(),
                label="Variants",
                info="one job per ticked variant",
                elem_id="train-variants",
            )
            ui.preset_info = gr.Markdown(elem_id="train-preset-info")
        with gr.Column(scale=2):
            with gr.Row():
                ui.preset = gr.Radio(
                    presets,
                    value="smoke",
                    label="Preset",
                    info="smoke: small and quick on a CPU; full: the full-size models and batch sizes",
                )
                ui.device = gr.Radio(
                    ["auto", "cpu", "cuda"], value="auto", label="Device", visible=bool(gpus)
                )
            # Both only act on a GPU (trainers.training.fastpath), so a CPU-only studio does not show them.
            with gr.Row(visible=bool(gpus)):
                ui.precision = gr.Radio(
                    list(PRECISIONS),
                    value="auto",
                    label="Precision",
                    info="auto: bf16 autocast on GPUs that have it; fp32: exact reference",
                )
                ui.compile = gr.Checkbox(
                    False, label="torch.compile", info="faster steps after ~1 min of compiling"
                )
            # No value: the /launch API keeps them optional (the handler's parameters default to None),
            # and None is the preset's value. The page shows such a field as 0 (Gradio's number field
            # does), so 0 is the preset's value too for the settings where 0 means nothing; the seed
            # starts at the presets' seed 0. No precision or bounds here: Gradio would round 2.5 epochs to
            # 2 silently or answer in its own words; trainers.settings checks them all.
            with gr.Row():
                ui.epochs = gr.Number(None, label="Epochs", info="0: the preset's", elem_id="train-epochs")
                ui.batch = gr.Number(None, label="Batch size", info="0: the preset's", elem_id="train-batch")
            with gr.Row():
                ui.lr = gr.Number(
                    None, label="Learning rate", info="0: the preset's", step=1e-4, elem_id="train-lr"
                )
                ui.seed = gr.Number(0, label="Seed", info="the presets' seed is 0", elem_id="train-seed")
            ui.data = gr.Textbox(
                "",
                label="Data spec",
                info="blank: the preset's built-in data",
                placeholder="e.g. sar:folder=/data/s1 or fragments:folder=/data/files,max_files=500",
                elem_id="train-data",
            )
            ui.launch = gr.Button("Launch", variant="primary", elem_id="train-launch")
            ui.status = gr.Markdown(label="Status", elem_id="train-status")
    return ui


def _jobs_section() -> SimpleNamespace:
    """The jobs table with its filter and sort, the selected run with Cancel, its labels and its log."""
    ui = SimpleNamespace()
    gr.Markdown("### Jobs")
    with gr.Row(equal_height=True):
        ui.filter = gr.Textbox(
            "",
            label="Filter",
            placeholder="words of a name, id or note; tag:sweep; status:running",
            scale=4,
            elem_id="train-filter",
        )
        ui.sort = gr.Dropdown(list(SORTS), value="newest", label="Sort", scale=1, elem_id="train-sort")
    ui.table = gr.Dataframe(
        headers=JOB_HEADERS,
        datatype=["html"] + ["str"] * (len(JOB_HEADERS) - 1),
        interactive=False,
        wrap=False,
        max_height=420,
        pinned_columns=1,
        elem_id="train-jobs",
        label="Click a row to select its run",
    )
    with gr.Row(equal_height=True):
        # Custom values: API clients name runs this page has not listed yet; the handlers check them.
        ui.selected = gr.Dropdown(
            choices=[],
            value=None,
            label="Selected run",
            allow_custom_value=True,
            scale=4,
            elem_id="train-selected",
        )
        with gr.Column(scale=2, min_width=200):
            ui.cancel = gr.Button("Cancel run", variant="stop", elem_id="train-cancel", interactive=False)
            ui.cancel_status = gr.Markdown(label="Cancel status", elem_id="train-cancel-status")
    with gr.Row(equal_height=True):
        ui.name = gr.Textbox(
            "", label="Name", placeholder="e.g. lr sweep 3e-4", scale=2, elem_id="train-name"
        )
        ui.tags = gr.Textbox(
            "",
            label="Tags",
            placeholder="e.g. sweep, baseline",
            scale=2,
            elem_id="train-tags",
        )
        ui.note = gr.Textbox(
            "", label="Note", placeholder="what this run tries", scale=3, elem_id="train-note"
        )
        ui.save_labels = gr.Button("Save labels", scale=1, elem_id="train-save-labels")
    ui.labels_status = gr.Markdown(label="Labels status", elem_id="train-labels-status")
    ui.log = gr.Textbox(
        label="Log (last lines)",
        lines=8,
        max_lines=16,
        autoscroll=True,
        interactive=False,
        elem_id="train-log",
    )
    return ui


def _curves_section() -> SimpleNamespace:
    """Shared curve settings (runs, x-axis, smoothing, log scale, panel count) and the metric panels."""
    ui = SimpleNamespace()
    gr.Markdown("### Curves")
    ui.runs = gr.Dropdown(
        choices=[],
        value=[],
        multiselect=True,
        allow_custom_value=True,
        label="Runs",
        elem_id="train-curve-runs",
    )
    with gr.Row():
        ui.x_axis = gr.Dropdown(list(X_AXES), value="step", label="x-axis", scale=1, elem_id="train-x-axis")
        ui.smoothing = gr.Slider(
            0.0, 0.99, value=0.6, step=0.01, label="Smoothing (EMA)", scale=2, elem_id="train-smoothing"
        )
        ui.log_y = gr.Checkbox(value=False, label="Log scale", scale=1, elem_id="train-log-scale")
        ui.n_panels = gr.Dropdown(
            list(range(1, PANEL_COUNT + 1)),
            value=DEFAULT_PANEL_COUNT,
            label="Panels",
            scale=1,
            elem_id="train-panel-count",
        )
    ui.caption = gr.Markdown(label="Curve summary", elem_id="train-curve-info")
    ui.columns, ui.metrics, ui.plots, ui.views = [], [], [], []
    for first in range(0, PANEL_COUNT, 2):
        with gr.Row(equal_height=False):
            for index in range(first, min(first + 2, PANEL_COUNT)):
                with gr.Column(min_width=320, visible=index < DEFAULT_PANEL_COUNT) as column:
                    ui.metrics.append(
                        gr.Dropdown(
                            choices=[DEFAULT_METRIC],
                            value=default_panels(None)[index],
                            label=f"Panel {index + 1} metric",
                            allow_custom_value=True,
                            elem_id=f"train-metric-{index}",
                        )
                    )
                    ui.plots.append(gr.Plot(label=f"Panel {index + 1}", elem_id=f"train-plot-{index}"))
                    ui.views.append(gr.Textbox("", visible=False, label=f"Zoom of panel {index + 1} (JSON)"))
                ui.columns.append(column)
    return ui


def _warn(exc: Exception) -> str:
    gr.Warning(html.escape(str(exc)))
    return f"⚠️ {exc}"  # Markdown sanitises HTML itself; escaping here would garble the API's text


def _wire_launch(
    ctx: StudioContext,
    form: SimpleNamespace,
    jobs: SimpleNamespace,
    curves: SimpleNamespace,
    session: gr.State,
) -> None:
    """Launch: queue the runs, plot them beside those of their domain, select the first; the panels switch to
    the domain's metrics when the plotted domain changes."""
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
        request: gr.Request | None = None,
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
            return _warn(exc), gr.skip(), gr.skip(), state
        gr.Info(f"Queued {len(launched)} run(s)")
        message = f"Queued {len(launched)} run(s): " + ", ".join(f"`{run_id}`" for run_id in launched)
        message += queue_note(ctx, launched)
        return message, plot_selection(ctx, plotted_runs, launched), launched[0], state

    def after_launch(plotted: list[str], state: TrainSession):
        """Fresh choices for both run pickers; the domain's default panels when the plotted domain changed."""
        state.run_ids = tuple(_rows_by_id(ctx))
        domain = next((run.domain for r in plotted or [] if (run := ctx.store.get_run(r))), None)
        updates = [gr.skip()] * PANEL_COUNT
        if domain is not None and domain != state.panels_domain:
            state.panels_domain = domain
            updates = [gr.update(value=m) for m in default_panels(domain)]
        choices = list(state.run_ids)
        return gr.update(choices=choices), gr.update(choices=choices), *updates, state

    form.launch.click(
        launch,
        inputs=[
            form.variants,
            form.preset,
            form.epochs,
            form.batch,
            form.lr,
            form.data,
            form.seed,
            form.device,
            form.precision,
            form.compile,
            curves.runs,
            session,
        ],
        outputs=[form.status, curves.runs, jobs.selected, session],
        api_name="launch",
        concurrency_limit=4,
    ).success(
        after_launch,
        inputs=[curves.runs, session],
        outputs=[curves.runs, jobs.selected, *curves.metrics, session],
        api_visibility="private",
    )


def _wire_jobs(ctx: StudioContext, ui: SimpleNamespace, session: gr.State) -> None:
    """The jobs API, the table's filter/sort and row selection, the selected run's Cancel, labels and log."""

    def jobs() -> list[dict[str, Any]]:
        """Every run, newest first: the job manager's rows (id, variant, status, progress, settings...)."""
        return ctx.jobs.jobs() if ctx.jobs is not None else []

    gr.api(jobs, api_name="jobs", concurrency_limit=None)

    def cancel(run_id: str, request: gr.Request) -> str:
        try:
            return cancel_run(ctx, run_id, _session(ctx, request))
        except (ValueError, FileNotFoundError, PermissionError) as exc:
            return _warn(exc)

    ui.cancel.click(
        cancel, inputs=ui.selected, outputs=ui.cancel_status, api_name="cancel", concurrency_limit=4
    )

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

    def select_row(state: TrainSession, evt: gr.SelectData):
        index = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        if not isinstance(index, int) or not 0 <= index < len(state.table_ids):
            return gr.skip()
        return gr.update(value=state.table_ids[index])

    ui.table.select(select_row, inputs=session, outputs=ui.selected, api_visibility="private")

    def show_run(run_id: str, state: TrainSession, request: gr.Request):
        try:
            text = log_tail(ctx, run_id, requester=_session(ctx, request))
        except (ValueError, FileNotFoundError) as exc:
            text = _warn(exc)
        state.log = text
        run = None if _blank(run_id) else ctx.store.get_run(str(run_id))
        state.cancel_enabled = run is not None and not run.is_terminal
        labels = [run.name or "", ", ".join(run.tags), run.note or ""] if run else ["", "", ""]
        return text, gr.update(interactive=state.cancel_enabled), "", *labels, "", state

    ui.selected.change(
        show_run,
        inputs=[ui.selected, session],
        outputs=[ui.log, ui.cancel, ui.cancel_status, ui.name, ui.tags, ui.note, ui.labels_status, session],
        api_visibility="private",
    )

    def log_only(run_id: str, request: gr.Request) -> str:
        try:
            return log_tail(ctx, run_id, requester=_session(ctx, request))
        except (ValueError, FileNotFoundError) as exc:
            return _warn(exc)

    gr.api(log_only, api_name="log_tail", concurrency_limit=None)

    def refilter(query: str, order: str, state: TrainSession):
        try:
            table, ids = job_table(list(_rows_by_id(ctx).values()), query, order)
        except ValueError as exc:
            _warn(exc)
            return gr.skip(), state
        state.table, state.table_ids = table, ids
        return table, state

    gr.on(
        [ui.filter.submit, ui.filter.blur, ui.sort.change],
        refilter,
        inputs=[ui.filter, ui.sort, session],
        outputs=[ui.table, session],
        api_visibility="private",
    )


def _panel_handler(ctx: StudioContext, index: int):
    """The handler of panel ``index``'s own metric picker: redraws that panel only."""

    def one_panel(
        metric: str, runs: list[str], smoothing: float, log_y: bool, view: str, state: TrainSession
    ):
        try:
            metrics = [None] * index + [metric]
            plots, _ = draw_curves(ctx, state, metrics, runs, smoothing, log_y, [""] * index + [view], True)
        except ValueError:
            return gr.skip(), state
        return plots[index], state

    return one_panel


def _wire_curves(ctx: StudioContext, ui: SimpleNamespace, session: gr.State) -> None:
    """Panel 1 answers the `curves` API; any shared setting redraws every panel; a panel's metric itself."""

    def curves(metric: str, runs: list[str], smoothing: float, log_y: bool, view: str, state: TrainSession):
        try:
            check_curve_request(metric, runs)
            plots, caption = draw_curves(ctx, state, [metric], runs, smoothing, log_y, [view], force=True)
        except ValueError as exc:
            return gr.skip(), _warn(exc), state
        return plots[0], caption, state

    ui.metrics[0].change(
        curves,
        inputs=[ui.metrics[0], ui.runs, ui.smoothing, ui.log_y, ui.views[0], session],
        outputs=[ui.plots[0], ui.caption, session],
        js=view_js({4: 0}),
        api_name="curves",
        concurrency_limit=8,
    )
    for index in range(1, PANEL_COUNT):
        ui.metrics[index].change(
            _panel_handler(ctx, index),
            inputs=[ui.metrics[index], ui.runs, ui.smoothing, ui.log_y, ui.views[index], session],
            outputs=[ui.plots[index], session],
            js=view_js({4: index}),
            api_visibility="private",
        )

    n = PANEL_COUNT

    def redraw(runs, smoothing, log_y, x_axis, n_panels, *rest):
        *values, state = rest
        metrics, views = values[:n], values[n:]
        try:
            state.x_axis = check_x_axis(x_axis)
            shown = [m if i < int(n_panels or n) else None for i, m in enumerate(metrics)]
            plots, caption = draw_curves(ctx, state, shown, runs, smoothing, log_y, views, force=True)
        except ValueError as exc:
            return *[gr.skip()] * n, _warn(exc), *[gr.skip()] * n, state
        visible = [gr.update(visible=i < int(n_panels or n)) for i in range(n)]
        return *plots, caption, *visible, state

    gr.on(
        [ui.runs.change, ui.smoothing.release, ui.log_y.change, ui.x_axis.change, ui.n_panels.change],
        redraw,
        inputs=[ui.runs, ui.smoothing, ui.log_y, ui.x_axis, ui.n_panels, *ui.metrics, *ui.views, session],
        outputs=[*ui.plots, ui.caption, *ui.columns, session],
        js=view_js({5 + n + i: i for i in range(n)}),
        api_visibility="private",
        concurrency_limit=8,
    )


def poll(
    ctx: StudioContext,
    state: TrainSession,
    query: Any,
    order: Any,
    runs: Any,
    smoothing: Any,
    log_y: Any,
    n_panels: Any,
    metrics: Sequence[Any],
    views: Sequence[Any],
    run_id: Any,
    requester: str | None = None,
) -> dict[str, Any]:
    """One tick of the page: what changed since this session's last look (others are ``gr.skip()``);
    `requester` is the visitor on a public Space, who sees only their own runs' logs."""
    rows = _rows_by_id(ctx)
    out: dict[str, Any] = {}
    try:
        table, ids = job_table(list(rows.values()), query or "", order or "newest")
    except ValueError:
        table, ids = state.table, state.table_ids
    out["table"] = gr.skip() if table == state.table else table
    state.table, state.table_ids = table, ids
    run_ids = tuple(rows)
    out["choices"] = gr.skip()
    if run_ids != state.run_ids:
        state.run_ids = run_ids
        out["choices"] = gr.update(choices=list(run_ids))
    shown = [m if i < int(n_panels or PANEL_COUNT) else None for i, m in enumerate(metrics)]
    try:
        out["plots"], out["caption"] = draw_curves(
            ctx, state, shown, runs, smoothing, log_y, views, False, rows
        )
    except ValueError:  # a bad selection; the curves event has already said so
        out["plots"], out["caption"] = [gr.skip()] * len(metrics), gr.skip()
    out["log"] = out["cancel"] = gr.skip()
    if not _blank(run_id):
        try:
            text = log_tail(ctx, run_id, requester=requester)
        except (ValueError, FileNotFoundError) as exc:
            text = str(exc)
        if text != state.log:
            state.log = out["log"] = text
        row = rows.get(str(run_id))
        enabled = row is not None and row.get("status") in ("queued", "running")
        if enabled != state.cancel_enabled:
            state.cancel_enabled = enabled
            out["cancel"] = gr.update(interactive=enabled)
    names = tuple(sorted({DEFAULT_METRIC, *state.cache.metric_names(runs or [])}))
    out["metric_choices"] = gr.skip()
    if names != state.metrics:
        state.metrics = names
        out["metric_choices"] = gr.update(choices=list(names))
    return out


def _wire_poll(ctx: StudioContext, jobs: SimpleNamespace, curves: SimpleNamespace, session: gr.State) -> None:
    """The one timer: table, pickers, panels, log and Cancel's state, each only when it changed."""
    timer = gr.Timer(POLL_SECONDS)
    n = PANEL_COUNT

    def tick(query, order, runs, smoothing, log_y, n_panels, run_id, *rest):
        *values, state = rest
        try:
            out = poll(
                ctx,
                state,
                query,
                order,
                runs,
                smoothing,
                log_y,
                n_panels,
                values[:n],
                values[n:],
                run_id,
                ctx.visitor(),  # the visitor of the Gradio event being handled (None off a Space)
            )
        except Exception:  # noqa: BLE001 - a failing poll must not put an error on the page every 2 s
            log.exception("Train tab poll failed")
            return (*[gr.skip()] * (6 + 2 * n), state)
        return (
            out["table"],
            out["choices"],
            out["choices"],
            *[out["metric_choices"]] * n,
            *out["plots"],
            out["caption"],
            out["log"],
            out["cancel"],
            state,
        )

    timer.tick(
        tick,
        inputs=[
            jobs.filter,
            jobs.sort,
            curves.runs,
            curves.smoothing,
            curves.log_y,
            curves.n_panels,
            jobs.selected,
            *curves.metrics,
            *curves.views,
            session,
        ],
        outputs=[
            jobs.table,
            curves.runs,
            jobs.selected,
            *curves.metrics,
            *curves.plots,
            curves.caption,
            jobs.log,
            jobs.cancel,
            session,
        ],
        js=view_js({7 + n + i: i for i in range(n)}),
        api_visibility="private",
        concurrency_limit=None,
    )


def _wire_load(ctx: StudioContext, jobs: SimpleNamespace, curves: SimpleNamespace, session: gr.State) -> None:
    """Fill the table, pickers and panels when the page opens, not on the first tick."""

    def load(state: TrainSession):
        rows = _rows_by_id(ctx)
        state.run_ids = tuple(rows)
        state.table, state.table_ids = job_table(list(rows.values()))
        plotted = initial_curve_runs(list(rows.values()))
        ids = list(state.run_ids)
        domain = rows[plotted[0]].get("domain") if plotted else None
        state.panels_domain = domain
        panels = [gr.update(value=m) for m in default_panels(domain)]
        selected = gr.update(choices=ids, value=plotted[0] if plotted else None)
        return state.table, gr.update(choices=ids, value=plotted), selected, *panels, state

    root = gr.context.Context.root_block
    if root is not None:
        root.load(
            load,
            inputs=session,
            outputs=[jobs.table, curves.runs, jobs.selected, *curves.metrics, session],
            api_visibility="private",
        )


def build_tab(ctx: StudioContext) -> None:
    """The Train tab's components and events (call inside ``with gr.Tab("Train"):``)."""
    gr.HTML(f"<style>{CSS}</style>", js_on_load=None, elem_id="train-css")
    form = _launch_form(ctx)
    jobs = _jobs_section()
    curves = _curves_section()
    session = gr.State(TrainSession())
    _wire_launch(ctx, form, jobs, curves, session)
    _wire_jobs(ctx, jobs, session)
    _wire_curves(ctx, curves, session)
    _wire_poll(ctx, jobs, curves, session)
    _wire_load(ctx, jobs, curves, session)
    # Media logged at each validation (trainers.runs.media), one example at a time along a step slider.
    from studio.views.media import build_panel as build_media_panel

    gr.Markdown("### Media")
    build_media_panel(ctx)
