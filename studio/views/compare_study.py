"""The Compare tab's "study" choice: the study leaderboard (``compare --study``: every run of a study on the
same data, the mean over seeds per variant with its interval, paired differences, the claims answered) on
the data chosen in the tab. The scoring is the Train tab's Studies path (``study_result``); this module only
turns the tab's data choice into a spec and draws the result."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from studio.views.common import escape_markdown
from studio.views.compare_data import BUILTIN_DEFAULT_N, SOURCES, _count, chosen_data

WHAT = (("Checkpoints", "checkpoints"), ("A study: variants × seeds", "study"))


@dataclass
class StudyView:
    result: dict[str, Any]
    summary: str
    figure: Any
    details: str


def compare_study(
    ctx: Any,
    study: Any,
    source: str = SOURCES[0],
    folder: str | None = None,
    uploads: Any = None,
    n: Any = BUILTIN_DEFAULT_N,
    claims: Any = "",
    seed: Any = 0,
    progress: Any = None,
) -> StudyView:
    """The study leaderboard of ``study`` on the tab's data choice (``chosen_data`` for the study's
    domain). A study of several domains is scored on each domain's built-in data (a folder holds one
    domain's files)."""
    from studio.views.train.studies import study_domains, study_result
    from trainers.evaluation.study import study_markdown

    seed_i = _count(seed if seed is not None else 0, "the seed", 0, 2**31 - 1)
    domains = study_domains(ctx, study)
    if len(domains) > 1:
        if source != SOURCES[0]:
            raise ValueError(
                f"study {study} has runs of {' and '.join(domains)}: a folder or upload holds one domain's "
                "files, so compare it on the built-in data"
            )
        result = study_result(ctx, study, None, claims, progress, seed_i)
        label = "each domain's built-in data"
    else:
        with chosen_data(ctx, domains[0], source, folder, uploads, n) as (data, label, hide):
            result = study_result(ctx, study, data, claims, progress, seed_i)
        if hide is not None:  # a temporary upload folder means nothing to the user
            for domain in result["domains"]:
                domain["data"] = label
    runs = sum(len(d["runs"]) for d in result["domains"])
    groups = sum(len(d["rows"]) for d in result["domains"])
    units = ", ".join(f"{d['n_units']} {d['ci_unit']}s" for d in result["domains"])
    summary = (
        f"Study `{result['study']}`: {runs} runs in {groups} groups on {escape_markdown(label)} ({units}). "
        "Each cell: the mean over training seeds [95% CI over seeds × units, a crossed bootstrap]; a claim "
        "A − B ≥ δ is **supported** when the whole interval of A − B is at or above δ, **not supported** "
        "when it is below, **inconclusive** when it straddles δ."
    )
    return StudyView(result, summary, study_figure(result), study_markdown(result))


def study_figure(result: dict[str, Any]) -> Any:
    """Each group's mean of its domain's first metric with its 95 % interval over seeds × units, a panel
    per domain, so the groups a claim compares are seen side by side."""
    from plotly.subplots import make_subplots

    domains = result["domains"]
    titles = [f"{d['domain']}: {d['metrics'][0]['name']} {d['metrics'][0].get('arrow', '')}" for d in domains]
    fig = make_subplots(rows=len(domains), cols=1, subplot_titles=titles)
    for k, d in enumerate(domains, start=1):
        metric = d["metrics"][0]["name"]
        rows = [r for r in d["rows"] if (r["metrics"].get(metric) or {}).get("mean") is not None]
        stats = [r["metrics"][metric] for r in rows]
        low = [s["mean"] - s["ci95"][0] if s["ci95"][0] is not None else 0 for s in stats]
        high = [s["ci95"][1] - s["mean"] if s["ci95"][1] is not None else 0 for s in stats]
        fig.add_scatter(
            x=[f"{r['name']} ({r['seeds']} seeds)" for r in rows],
            y=[s["mean"] for s in stats],
            error_y={"type": "data", "symmetric": False, "array": high, "arrayminus": low},
            mode="markers",
            marker={"size": 11},
            name=d["domain"],
            showlegend=False,
            hovertemplate="%{x}<br>%{y:.4g}<extra></extra>",
            row=k,
            col=1,
        )
        fig.update_yaxes(title_text=metric, row=k, col=1)
    fig.update_layout(
        height=320 * len(domains) + 60,
        margin={"l": 60, "r": 20, "t": 50, "b": 40},
        template="plotly_white",
        title={"text": f"Study {result['study']}: mean over seeds, 95% CI", "x": 0.01},
    )
    return fig


def present(view: StudyView) -> tuple[str, Any, str]:
    """The study's outputs in the tab: summary, figure, report (groups, pairs, claims)."""
    return view.summary, view.figure, view.details
