"""The study leaderboard: every finished run of a study scored on the same data by ``compare``, then per
variant (or variant and swept value) the mean over training seeds with an interval over seeds × units,
paired differences between groups on the same seeds and units, and the claims answered
(:mod:`trainers.evaluation.claims`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from trainers.evaluation.claims import BUILT_IN_CLAIMS, Claim, study_statistics
from trainers.runs.store import RunRecord, RunStore
from trainers.runs.studies import differing_settings, flatten_config, study_runs


def _group(run: RunRecord, swept: Sequence[str]) -> str:
    """The run's group: its variant, and the swept settings' values when the study swept one."""
    if not swept:
        return run.variant
    flat = flatten_config(run.config or {})
    return run.variant + "".join(f" · {key}={flat.get(key)}" for key in swept)


def _finished(runs: list[RunRecord]) -> tuple[list[RunRecord], list[dict[str, str]]]:
    usable, skipped = [], []
    for run in runs:
        if run.best_checkpoint or run.last_checkpoint:
            usable.append(run)
        else:
            skipped.append({"run": run.id, "reason": f"{run.status}, no checkpoint yet"})
    return usable, skipped


def compare_study(
    study_id: str,
    runs_dir: str | Path,
    data: str | None = None,
    claims: Sequence[Claim] = (),
    seed: int = 0,
    device: str = "auto",
    batch_size: int = 8,
    progress: Any = None,
) -> dict[str, Any]:
    """The study's leaderboard as a JSON-ready dict: ``{"study", "domains": [...], "skipped"}`` with, per
    domain, the ``compare`` header (data, n, ci_unit, eval_size), ``rows`` per group with ``seeds``,
    ``pairs`` and ``claims`` (the design's two SAR claims plus ``claims``)."""
    from trainers.evaluation.compare import run_compare

    with RunStore(runs_dir) as store:
        runs, skipped = _finished(study_runs(store, study_id))
    if not runs:
        raise ValueError(f"study {study_id} has no run with a checkpoint yet: nothing to compare")
    swept = [k for k in differing_settings(runs) if k not in ("data",)]
    domains = []
    for domain in dict.fromkeys(r.domain for r in runs):
        members = [r for r in runs if r.domain == domain]
        result = run_compare(
            [r.id for r in members],
            data,
            seed=seed,
            runs_dir=runs_dir,
            device=device,
            batch_size=batch_size,
            progress=progress,
            unit_scores=True,
        )
        scores: dict[str, dict[str, dict[int, np.ndarray]]] = {}
        for run in members:
            group = scores.setdefault(_group(run, swept), {})
            run_seed = int((run.config or {}).get("seed", 0))
            for metric, values in result["unit_scores"][run.id].items():
                vector = np.array([math.nan if v is None else v for v in values], dtype=np.float64)
                group.setdefault(metric, {})[run_seed] = vector
        # The design's claims where the study ran either side of them (not a SAR claim in a fragments study).
        built_in = [c for c in BUILT_IN_CLAIMS if c.a in scores or c.b in scores]
        stats = study_statistics(scores, [*built_in, *claims], seed=seed)
        header = {k: result[k] for k in ("domain", "data", "n", "n_units", "ci_unit", "eval_size", "metrics")}
        domains.append({**header, **stats, "runs": [r.id for r in members]})
    return _json_safe({"study": study_id, "swept": swept, "domains": domains, "skipped": skipped})


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        return _json_safe(obj.item())
    return obj


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def study_markdown(result: dict[str, Any]) -> str:
    """The study leaderboard as Markdown: per domain a table of groups, the paired differences of the main
    metric, and the claims with their verdicts."""
    lines = [f"# Study {result['study']}", ""]
    if result["swept"]:
        lines.append(f"Swept: {', '.join(result['swept'])}.")
    for d in result["domains"]:
        metrics = [m["name"] for m in d["metrics"]]
        arrows = {m["name"]: m["arrow"] for m in d["metrics"]}
        unit = d["ci_unit"]
        lines += [
            "",
            f"**{d['domain']}** on `{d['data']}` at {d['eval_size']}: {d['n_units']} {unit}s; mean over "
            f"training seeds [95% CI over seeds × {unit}s]",
            "",
            "| group | seeds | " + " | ".join(f"{m} ({arrows[m]})" for m in metrics) + " |",
            "|---|---:|" + "---:|" * len(metrics),
        ]
        for row in d["rows"]:
            cells = []
            for m in metrics:
                s = row["metrics"].get(m)
                cells.append(
                    "–" if not s else f"{_fmt(s['mean'])} [{_fmt(s['ci95'][0])}, {_fmt(s['ci95'][1])}]"
                )
            lines.append(f"| {row['name']} | {row['seeds']} | " + " | ".join(cells) + " |")
        main = metrics[0]
        pairs = [p for p in d["pairs"] if p["metric"] == main]
        if pairs:
            lines += ["", f"Paired differences of {main} (a − b on the same seeds and {unit}s):", ""]
            lines += ["| a | b | diff | 95% CI | p | seeds |", "|---|---|---:|---:|---:|---:|"]
            for p in pairs:
                ci = f"[{_fmt(p['ci95'][0])}, {_fmt(p['ci95'][1])}]"
                lines.append(
                    f"| {p['a']} | {p['b']} | {_fmt(p['diff'])} | {ci} | {_fmt(p['p'])} | {p['seeds']} |"
                )
        lines += ["", "Claims:", ""]
        if not d["claims"]:
            lines.append("- none here (the design's claims are on SAR variants; add yours with --claim)")
        for c in d["claims"]:
            detail = (
                c.get("reason") or f"a − b = {_fmt(c['diff'])} [{_fmt(c['ci95'][0])}, {_fmt(c['ci95'][1])}]"
            )
            lines.append(f"- {c['claim']}: **{c['verdict']}** ({detail})")
    for s in result["skipped"]:
        lines.append(f"- skipped {s['run']}: {s['reason']}")
    return "\n".join(lines) + "\n"
