"""The jobs table: one job manager row as a table row (progress, speed, best value, settings, resources),
the filter and the sort (the page's grouped view of them: ``studio.views.train.jobs_view``)."""

from __future__ import annotations

import html
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from studio.curves import is_finite_number, run_color
from trainers.metrics.registry import arrow, format_value, metric_info
from trainers.runs.store import STATUSES

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


# A run id's creation time ("20261207-173748-"): the same few seconds for a whole launch, so the table's run
# cell and the curves' legends show what tells runs apart (variant and suffix), the whole id in a tooltip.
_RUN_STAMP = re.compile(r"^\d{8}-\d{6}-")


def short_run_id(run_id: str) -> str:
    """``run_id`` less its creation time: "sar-residual-3fa2"."""
    return _RUN_STAMP.sub("", run_id)


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
    if row.get("anonymous") and row.get("status") == "running":
        return "running"
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
        limit, elapsed = row.get("time_limit_s"), row.get("elapsed") or 0.0
        if is_finite_number(limit) and elapsed + row["eta_s"] > limit:  # a Space stops every job there
            text += f" ⚠ past the {format_elapsed(limit)} limit: it stops early"
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
    if row.get("anonymous"):  # another visitor's job on a public Space: only its place in the queue
        cells = ["<i>another visitor's job</i>", "–", row.get("status"), progress_text(row)]
        return cells + ["–"] * (len(JOB_HEADERS) - len(cells))
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
