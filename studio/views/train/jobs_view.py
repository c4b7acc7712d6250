"""The jobs table as a page shows it: the runs of one study under one group row (its shape and progress,
collapsible), the columns this browser chose, and an eye column that hides a run's curves from the panels.

``jobs_view`` is what a poll builds; it is pure (rows in, table out), so the grouping, the progress of a
group, a collapsed group, the column choice and the hidden runs are tested against exact rows.
``_jobs_section`` is the table's section of the page (filter, table, columns, hidden runs, the selected run
with its buttons, labels and log).
"""

from __future__ import annotations

import html
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from types import SimpleNamespace
from typing import Any

import gradio as gr

from studio.curves import is_finite_number, run_color
from studio.views.train.table import (
    JOB_HEADERS,
    SORTS,
    _best_key,
    format_elapsed,
    job_row,
    row_matches,
    short_run_id,
    sort_rows,
)
from trainers.runs.store import TERMINAL

# The eye: symbols every font has (an emoji eye shows as an empty box where no emoji font is installed).
EYE_HEADER = "show"
EYE_ON, EYE_OFF = "◉", "○"
#: Columns every view has, pinned at the left: the eye (show/hide the run's curves) and the run.
FIXED_HEADERS: tuple[str, ...] = (EYE_HEADER, JOB_HEADERS[0])
#: The columns a browser starts with, and all a person may pick, in table order: what changes first
#: (status, progress, best) leads, since the column beside the panels shows only a few without scrolling.
DEFAULT_COLUMNS: tuple[str, ...] = ("status", "progress", "best", "speed · ETA", "variant")
OPTIONAL_COLUMNS: tuple[str, ...] = (
    *DEFAULT_COLUMNS,
    *(name for name in JOB_HEADERS[1:] if name not in DEFAULT_COLUMNS),
)
#: The table's cell types: the eye and the run cells are HTML (colour dot, name, marks), the rest text.
DATATYPES: list[str] = ["html", "html"] + ["str"] * len(OPTIONAL_COLUMNS)
#: Table keys of group rows are this prefix and the study id; a run's key is its id.
GROUP_PREFIX = "study:"
GROUP_STYLE = "font-weight: 600; background: var(--background-fill-secondary);"
#: Settings whose differing values name a study's sweep in its group row ("× 2 lr").
SWEEP_WORDS: dict[str, str] = {
    "lr": "lr",
    "batch_size": "batch",
    "epochs": "epochs",
    "data": "data",
    "preset": "preset",
    "precision": "precision",
    "max_steps": "max_steps",
}
_TERMINAL = TERMINAL
_INDEX = {name: i for i, name in enumerate(JOB_HEADERS)}
# Group cells that show the members' common value, or their distinct values side by side ("0, 1").
_SHARED = ("preset", "epochs", "batch", "lr", "data", "seed", "device", "where")


@dataclass
class JobsView:
    """The table's value (headers, rows, group rows' styling) and the key of each row: a run id, or
    ``GROUP_PREFIX`` + study id for a group row (a click names its row by position)."""

    value: dict[str, Any]
    keys: list[str] = field(default_factory=list)


def chosen_columns(value: Any) -> tuple[str, ...]:
    """The optional columns to show, in table order: the picker's (or a browser's saved) choice, the
    names no longer offered left out; the defaults for a value that is not a list of names."""
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        return DEFAULT_COLUMNS
    wanted = set(value)
    return tuple(name for name in OPTIONAL_COLUMNS if name in wanted)


def group_key(study: str) -> str:
    return GROUP_PREFIX + study


def study_of_key(key: str) -> str | None:
    """The study id of a group row's key, None for a run's."""
    return key[len(GROUP_PREFIX) :] if key.startswith(GROUP_PREFIX) else None


def _eye(shown: bool, what: str) -> str:
    if shown:
        return f'<span class="run-eye" title="{what} shown in the panels: click to hide">{EYE_ON}</span>'
    return f'<span class="run-eye off" title="{what} hidden from the panels: click to show">{EYE_OFF}</span>'


def group_progress(members: Sequence[Mapping[str, Any]]) -> str:
    """ "3/4 done · 1 running · 62%": runs ended (those failed or cancelled named), running, queued, and
    the share of the study's work done (an ended run counts whole)."""
    statuses = [str(m.get("status")) for m in members]
    done = sum(s in _TERMINAL for s in statuses)
    text = f"{done}/{len(members)} done"
    bad = [f"{statuses.count(s)} {s}" for s in ("failed", "diverged", "cancelled") if s in statuses]
    if bad:
        text += f" ({', '.join(bad)})"
    for status in ("running", "queued"):
        if status in statuses:
            text += f" · {statuses.count(status)} {status}"
    shares = [_share(m) for m in members]
    return f"{text} · {sum(shares) / len(shares):.0f}%" if shares else text


def _share(row: Mapping[str, Any]) -> float:
    """How much of a run's work is done, in percent: an ended run's all of it."""
    if row.get("status") in _TERMINAL:
        return 100.0
    percent = row.get("percent")
    return float(percent) if is_finite_number(percent) else 0.0


def group_status(members: Sequence[Mapping[str, Any]]) -> str:
    """The group's status word: running or queued while any member is, completed when all are, else ended."""
    statuses = {str(m.get("status")) for m in members}
    for status in ("running", "queued"):
        if status in statuses:
            return status
    return "completed" if statuses == {"completed"} else "ended"


def study_shape(members: Sequence[Mapping[str, Any]]) -> str:
    """ "2 variants × 3 seeds × 2 lr": what the study launched (a swept model key: "× 2 sweep values")."""
    variants = {m.get("variant") for m in members}
    seeds = {m.get("seed") for m in members}
    v, s = len(variants), len(seeds)
    text = f"{v} variant{'s' if v != 1 else ''} × {s} seed{'s' if s != 1 else ''}"
    swept = [
        (word, n) for key, word in SWEEP_WORDS.items() if (n := len({repr(m.get(key)) for m in members})) > 1
    ]
    if swept:
        text += "".join(f" × {n} {word}" for word, n in swept)
    elif len(members) > v * s and len(members) % (v * s) == 0:
        text += f" × {len(members) // (v * s)} sweep values"
    return text


def _study_label(study: str, members: Sequence[Mapping[str, Any]]) -> str:
    """The name the study was launched with (its runs' names start with it), else its id."""
    firsts = {str(m.get("name") or "").split(" · ", 1)[0] for m in members}
    name = firsts.pop() if len(firsts) == 1 else ""
    return name if name and name != study else ""


def _distinct(cells: Sequence[Any]) -> str:
    values = list(dict.fromkeys(str(c) for c in cells if c not in (None, "", "–")))
    if not values:
        return "–"
    return ", ".join(values) if len(values) <= 3 else f"{len(values)} values"


def group_row(
    study: str,
    members: Sequence[Mapping[str, Any]],
    cells: Mapping[str, list[Any]],
    collapsed: bool,
    shown: bool,
    columns: Collection[str] = OPTIONAL_COLUMNS,
) -> list[Any]:
    """A study's group row under (eye, ``JOB_HEADERS``): ▸/▾ and its name or id in the run cell, its shape
    ("2 variants × 3 seeds") in the variant cell, its status and progress, the best member's value, and the
    settings its runs share (or their values side by side). Only the ``columns`` shown are summed up (a
    poll builds 250 group rows at 1,000 runs); the others read "–"."""
    rows = [cells[str(m.get("id"))] for m in members]
    label = _study_label(study, members)
    shape = study_shape(members)
    title = html.escape(f"{label} ({study})" if label else study, quote=True) + f": {shape}"
    short = _STUDY_DATE.sub("study ", study)  # the launch's time and suffix tell studies apart
    name = f"<b>{html.escape(label or short)}</b>"
    name += f" <small>{html.escape(short)}</small>" if label else ""
    out = ["–"] * len(JOB_HEADERS)
    out[0] = f'<span class="run-cell" title="{title}">{"▸" if collapsed else "▾"} {name}</span>'
    out[_INDEX["variant"]] = shape  # the variants are in its runs' rows
    out[_INDEX["status"]] = group_status(members)
    out[_INDEX["progress"]] = group_progress(members)
    if "best" in columns:
        best = min(range(len(members)), key=lambda i: _best_key(members[i]))
        out[_INDEX["best"]] = rows[best][_INDEX["best"]]
    if "elapsed" in columns:
        elapsed = [m.get("elapsed") for m in members if is_finite_number(m.get("elapsed"))]
        out[_INDEX["elapsed"]] = format_elapsed(max(elapsed)) if elapsed else "–"
    for name in _SHARED:
        if name in columns:
            out[_INDEX[name]] = _distinct([row[_INDEX[name]] for row in rows])
    if "tags" in columns:
        common = set.intersection(*[set(m.get("tags") or []) for m in members])
        out[_INDEX["tags"]] = ", ".join(t for t in (members[0].get("tags") or []) if t in common) or "–"
    if "note" in columns:
        notes = {str(m.get("note") or "") for m in members}
        out[_INDEX["note"]] = notes.pop() if len(notes) == 1 else ""
    return [_eye(shown, "the study's runs"), *out]


_STUDY_DATE = re.compile(r"^study-\d{8}-")


def compact_run_cell(row: Mapping[str, Any], name: str = "") -> str:
    """The run's colour dot and its name (bold), else its id without the creation time
    ("sar-residual-3fa2"); narrower than ``table.run_cell``, which the API's table keeps."""
    run_id = str(row.get("id"))
    dot = f'<span class="run-dot" style="color:{run_color(run_id)}">●</span>'
    if name:
        return f"{dot} <b>{html.escape(name)}</b>"
    return f"{dot} {html.escape(short_run_id(run_id))}"


def _run_row(
    row: Mapping[str, Any], cells: list[Any], hidden: bool, study_label: str | None = None
) -> list[Any]:
    """A run's table row: its eye, its run cell (``compact_run_cell``; under a study: indented, without the
    study's name that its name starts with; hidden: faded), its other cells. The run cell is cut to the
    column's width with its whole name and id in its tooltip."""
    if row.get("anonymous"):
        return ["", *cells]
    name = str(row.get("name") or "")
    short = name
    if study_label and name.startswith(study_label + " · "):
        short = name[len(study_label) + 3 :]
    run = compact_run_cell(row, short)
    title = html.escape(f"{name} ({row.get('id')})" if name else str(row.get("id")), quote=True)
    classes = "run-cell" + (" run-hidden" if hidden else "")
    classes += " in-study" if study_label is not None else ""
    run = f'<span class="{classes}" title="{title}">{run}</span>'
    return [_eye(not hidden, "its curves"), run, *cells[1:]]


def jobs_view(
    rows: Sequence[Mapping[str, Any]],
    query: str = "",
    order: str = "newest",
    columns: Any = None,
    collapsed: Collection[str] = (),
    hidden: Collection[str] = (),
) -> JobsView:
    """The job manager's rows that match ``query``, in ``order``, as the page's table: each study's runs
    under its group row (placed where its first run comes; ``collapsed`` studies show the group row only),
    runs without a study as plain rows, ``hidden`` runs marked; only the chosen ``columns``."""
    if not isinstance(query, str):
        raise ValueError(f"filter must be text such as 'tag:sweep status:running', got {query!r}")
    chosen = sort_rows([row for row in rows if row_matches(row, query)], order or "newest")
    studies: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:  # a group sums up every run of its study, the filtered-out ones too
        if row.get("study") and not row.get("anonymous"):
            studies.setdefault(str(row["study"]), []).append(row)
    cells = {str(row.get("id")): job_row(row) for row in rows if row.get("id")}
    matched: dict[str, list[Mapping[str, Any]]] = {}
    for row in chosen:
        if row.get("study") and not row.get("anonymous"):
            matched.setdefault(str(row["study"]), []).append(row)
    picked_names = chosen_columns(columns)
    out: list[list[Any]] = []
    keys: list[str] = []
    styles: list[bool] = []
    emitted: set[str] = set()
    for row in chosen:
        study = str(row.get("study") or "") if not row.get("anonymous") else ""
        if not study:
            run_cells = cells.get(str(row.get("id"))) or job_row(row)  # anonymous rows have no id
            out.append(_run_row(row, run_cells, row.get("id") in hidden))
            keys.append(str(row.get("id")))
            styles.append(False)
            continue
        if study in emitted:
            continue
        emitted.add(study)
        members = studies[study]
        shown = any(m.get("id") not in hidden for m in members)
        folded = study in collapsed
        out.append(group_row(study, members, cells, folded, shown, picked_names))
        keys.append(group_key(study))
        styles.append(True)
        if folded:
            continue
        label = _study_label(study, members)
        for member in matched[study]:
            run_id = str(member.get("id"))
            out.append(_run_row(member, cells[run_id], run_id in hidden, label))
            keys.append(run_id)
            styles.append(False)
    picked = [0, 1] + [1 + _INDEX[name] for name in picked_names]
    headers = [([EYE_HEADER] + JOB_HEADERS)[i] for i in picked]
    pick = itemgetter(*picked)  # at least two indices: it returns tuples
    data = [list(pick(row)) for row in out]
    value: dict[str, Any] = {"headers": headers, "data": data}
    if any(styles):
        value["metadata"] = {
            "styling": [[GROUP_STYLE if group else ""] * len(picked) for group in styles],
        }
    return JobsView(value, keys)


def toggle_hidden(hidden: Collection[str], key: str, rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The hidden runs after a click on the eye of row ``key``: a run flips; a study's runs are all hidden
    when any was shown, else all shown. Sorted, for the hidden-runs picker."""
    now = set(hidden)
    study = study_of_key(key)
    if study is None:
        return sorted(now ^ {key})
    members = {str(r.get("id")) for r in rows if r.get("study") == study and r.get("id")}
    return sorted(now - members if members <= now else now | members)


def _jobs_section() -> SimpleNamespace:
    """The jobs table with its filter, sort, column picker and hidden runs; the selected run with Cancel and
    Resume. Built inside the column beside the curve panels (its labels and log: ``_run_details_section``)."""
    ui = SimpleNamespace()
    gr.Markdown("### Jobs")
    with gr.Row(equal_height=True):
        ui.filter = gr.Textbox(
            "",
            label="Filter",
            placeholder="words of a name, id or note; tag:sweep; status:running",
            scale=3,
            elem_id="train-filter",
        )
        # Capitalised labels: a choice named exactly "status" collides with Gradio's own i18n group of that
        # name (a svelte-i18n warning on every page load).
        choices = [(s.capitalize(), s) for s in SORTS]
        ui.sort = gr.Dropdown(choices, value="newest", label="Sort", scale=1, elem_id="train-sort")
    ui.table = gr.Dataframe(
        headers=[*FIXED_HEADERS, *DEFAULT_COLUMNS],
        datatype=DATATYPES,
        interactive=False,
        wrap=False,
        max_height=420,
        pinned_columns=len(FIXED_HEADERS),
        elem_id="train-jobs",
        label="Click a run to select it · ◉ hides or shows its curves · a study's row folds its runs",
    )
    with gr.Accordion("Columns", open=False, elem_id="train-columns-box"):
        # Kept in this browser (a gr.BrowserState, see studio.views.train.wiring): a reload keeps the choice.
        ui.columns = gr.CheckboxGroup(
            list(OPTIONAL_COLUMNS),
            value=list(DEFAULT_COLUMNS),
            label="Columns shown",
            info="the run and show columns always are; this browser keeps the choice",
            elem_id="train-columns",
        )
    # Custom values: API clients and a fresh page name runs before the poll lists them.
    ui.hidden = gr.Dropdown(
        choices=[],
        value=[],
        multiselect=True,
        allow_custom_value=True,
        label="Hidden runs",
        info="left out of the curve panels, still in the table (◉ in the table toggles)",
        elem_id="train-hidden",
    )
    with gr.Row(equal_height=True):
        ui.selected = gr.Dropdown(
            choices=[],
            value=None,
            label="Selected run",
            allow_custom_value=True,
            scale=3,
            elem_id="train-selected",
        )
        with gr.Column(scale=2, min_width=200):
            with gr.Row():
                ui.cancel = gr.Button("Cancel run", variant="stop", elem_id="train-cancel", interactive=False)
                # A failed or cancelled run goes on from its last checkpoint (JobManager.resume).
                ui.resume = gr.Button("Resume run", elem_id="train-resume", interactive=False)
            ui.cancel_status = gr.Markdown(label="Cancel status", elem_id="train-cancel-status")
    return ui


def _run_details_section(ui: SimpleNamespace) -> None:
    """The selected run's labels and log, added to the jobs section's ``ui``; under the runs and panels
    (full width), so the column beside the panels stays no taller than they are."""
    with gr.Row(equal_height=True):
        ui.name = gr.Textbox(
            "", label="Name", placeholder="e.g. lr sweep 3e-4", scale=2, elem_id="train-name"
        )
        ui.tags = gr.Textbox(
            "", label="Tags", placeholder="e.g. sweep, baseline", scale=2, elem_id="train-tags"
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
