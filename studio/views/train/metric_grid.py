"""Which metric each curve panel shows: one panel per metric the plotted runs logged that matches the
search (TensorBoard's tag filter), the plotted domains' default metrics first, at most a few panels drawn so
a page with 40 logged metrics stays as fast as one with 4 (the rest are counted, not drawn).

Pure functions of names, kept apart from Gradio so the order and the cap are tested exactly.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# The `regex` engine, not `re`: a search typed on a public Space such as (\w+_?)+! keeps `re` backtracking
# over a 30-character metric name for minutes, holding the GIL, so the whole studio stops; `regex` answers it
# at once and takes a timeout besides.
import regex

# Panels the page has room for (hidden until a metric fills them), and how many it shows unless told.
PANEL_SLOTS = 12
DEFAULT_MAX_PANELS = 6
MAX_PANEL_CHOICES = (1, 2, 3, 4, 6, 8, 12)
# What the panels show first for runs of each domain (even before a run logs them: a fresh run's val/...
# comes at the end of its first epoch, and the panel waiting for it keeps the grid from jumping).
DEFAULT_PANELS: dict[str, tuple[str, ...]] = {
    "sar": ("train/loss", "val/psnr", "val/ssim", "val/epi"),
    "audio": ("train/loss", "val/loss", "val/spectral_convergence", "val/lsd"),
    "fragments": ("train/loss", "val/loss", "val/accuracy_corrupted", "val/accuracy"),
}
FALLBACK_PANELS: tuple[str, ...] = ("train/loss", "val/loss")
# After the defaults: training, then validation and test metrics, other splits, and resource use last.
SPLIT_ORDER = {"train": 0, "val": 1, "test": 2}
LAST_SPLITS = {"sys": 9}
# Time one search may take over all the metric names before it is matched as plain text instead.
SEARCH_SECONDS = 0.2


def default_metrics(domains: Iterable[str | None]) -> list[str]:
    """The default panels of each plotted domain, in the order the domains come, without repeats; the
    generic pair (train/loss, val/loss) when no domain is known."""
    out: list[str] = []
    for domain in domains:
        for metric in DEFAULT_PANELS.get(domain or "", ()):
            if metric not in out:
                out.append(metric)
    return out or list(FALLBACK_PANELS)


def _rank(metric: str) -> tuple[int, str, str]:
    split, _, name = metric.partition("/")
    return (LAST_SPLITS.get(split, SPLIT_ORDER.get(split, 3)), split, name)


def order_metrics(logged: Iterable[str], defaults: Sequence[str]) -> list[str]:
    """``defaults`` first (in their order, logged or not), then every other logged metric: train/, val/,
    test/, other splits, then sys/; by name within a split."""
    rest = sorted(set(logged) - set(defaults), key=_rank)
    return list(dict.fromkeys(defaults)) + rest


def compile_search(query: str | None) -> tuple[regex.Pattern[str] | None, str]:
    """(pattern, note) of a search: None for a blank one (everything matches); a case-insensitive regular
    expression where it is one ("val/(psnr|ssim)", "^sys/"), else the text itself (an unbalanced "val/(" is
    searched as those characters), with a note saying so."""
    text = (query or "").strip()
    if not text:
        return None, ""
    try:
        return regex.compile(text, regex.IGNORECASE), ""
    except regex.error as exc:
        note = f"'{text}' is not a regular expression ({exc.msg}): matched as plain text"
        return _literal(text), note


def _literal(text: str) -> regex.Pattern[str]:
    return regex.compile(regex.escape(text), regex.IGNORECASE)


def search_metrics(names: Sequence[str], query: str | None) -> tuple[list[str], str]:
    """(the names matching ``query`` in their order, a note or ""): see ``compile_search``; a search that
    takes over ``SEARCH_SECONDS`` in all is matched as plain text, with a note saying so."""
    pattern, note = compile_search(query)
    if pattern is None:
        return list(names), note
    deadline = time.monotonic() + SEARCH_SECONDS
    try:
        found = [m for m in names if pattern.search(m, timeout=max(deadline - time.monotonic(), 1e-3))]
    except TimeoutError:
        text = (query or "").strip()
        found = [m for m in names if _literal(text).search(m)]
        note = f"'{text}' took too long as a regular expression: matched as plain text"
    return found, note


@dataclass(frozen=True)
class PanelPlan:
    """The panels to draw (``metrics``, at most the cap), how many metrics matched in all, and one line for
    the page (what matched, what was left out, a search that was not a regular expression)."""

    metrics: tuple[str, ...]
    matched: int
    note: str

    @property
    def more(self) -> int:
        return self.matched - len(self.metrics)


def plan_panels(
    logged: Iterable[str],
    domains: Iterable[str | None],
    query: str | None = "",
    cap: int = DEFAULT_MAX_PANELS,
) -> PanelPlan:
    """The panels of the grid: the metrics the plotted runs ``logged`` plus their ``domains``' defaults,
    ordered (``order_metrics``), those matching ``query`` (``search_metrics``), the first ``cap`` of them."""
    if isinstance(cap, bool) or not isinstance(cap, int) or not 1 <= cap <= PANEL_SLOTS:
        raise ValueError(f"the panel count must be a whole number from 1 to {PANEL_SLOTS}, got {cap!r}")
    ordered = order_metrics(logged, default_metrics(domains))
    matching, note = search_metrics(ordered, query)
    shown = tuple(matching[:cap])
    parts = [note] if note else []
    if not matching:
        parts.append(f"no logged metric matches '{(query or '').strip()}'")
    else:
        parts.append(f"{len(matching)} metric{'s' if len(matching) != 1 else ''} match")
        if len(matching) > cap:
            wider = " or show more panels" if cap < PANEL_SLOTS else ""
            parts.append(
                f"showing the first {cap}; {len(matching) - cap} more match — refine the search{wider}"
            )
    return PanelPlan(shown, len(matching), " · ".join(parts))
