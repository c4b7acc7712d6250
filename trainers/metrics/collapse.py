"""Collapse caught during training: after each validation the loop asks :func:`collapse_reasons` whether the
model is collapsing, so a run that learns nothing says so at its first validation instead of after the
comparison of its checkpoint.

Collapsed models seen in this project: a SAR network that paints a near-constant image (Variant C with the
paper's sigmoid gates on its main path), audio VAEs whose posterior is the prior for every input (the same
spectrogram whatever the clip), and a fragment repair that regresses blurred bytes (worse than leaving the
corrupted input as it is). Each has a cheap signature in the validation metrics:

- SAR: ``output_spread`` (the output's spread over the input's) under :data:`SPREAD_WARNING`;
- audio: no active latent unit (``active_units`` 0), or ``output_spread`` under :data:`SPREAD_WARNING`;
- fragments: byte ``accuracy`` below the identity baseline's by more than :data:`IDENTITY_MARGIN`.

A run found collapsing gets a warning in its log, the ``collapsing`` metric (1, else 0) at every
validation, its reason column while it runs, and ``collapse.json`` in its folder (:func:`collapse_note`
reads it back for the jobs table).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Spread ratio under which the output counts as collapsing. Twice the leaderboard's constant-output flag
#: (trainers.metrics.sanity.CONSTANT_STD_FRACTION, 5 %): a warning during training should come early, and
#: the collapsed Variant C reference sat at 1.9-5.6 %.
SPREAD_WARNING = 0.10
#: Fragments: accuracy this far below the identity baseline's counts as collapsing (at the first
#: validation a repair that starts as the identity can sit a hair below it by chance).
IDENTITY_MARGIN = 0.01
COLLAPSE_FILE = "collapse.json"


def _finite(metrics: dict[str, float], name: str) -> float | None:
    value = metrics.get(name)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def collapse_reasons(domain: str, metrics: dict[str, float]) -> list[str]:
    """Why validation ``metrics`` of a ``domain`` model say it is collapsing (empty: they do not)."""
    reasons = []
    spread = _finite(metrics, "output_spread")
    if domain in ("sar", "audio") and spread is not None and spread < SPREAD_WARNING:
        what = "image" if domain == "sar" else "spectrogram"
        reasons.append(
            f"near-constant output: its {what} varies {spread:.1%} as much as the input's "
            f"(under {SPREAD_WARNING:.0%})"
        )
    units = _finite(metrics, "active_units")
    if domain == "audio" and units is not None and units < 1:
        reasons.append("posterior collapse: no latent dimension in use (0 active units)")
    accuracy, identity = _finite(metrics, "accuracy"), _finite(metrics, "identity_accuracy")
    if (
        domain == "fragments"
        and accuracy is not None
        and identity is not None
        and accuracy < identity - IDENTITY_MARGIN
    ):
        reasons.append(
            f"repairs worse than the identity: byte accuracy {accuracy:.2%} against {identity:.2%} for the "
            "corrupted input left as it is"
        )
    return reasons


def check_collapse(
    domain: str, metrics: dict[str, float], store: Any, run_id: str, folder: Path, epoch: int
) -> dict[str, float]:
    """Run the checks on one validation; when collapsing, log a warning, note it in the run's reason
    (status stays running) and ``collapse.json``. Returns ``{"collapsing": 1.0 or 0.0}`` to log."""
    reasons = collapse_reasons(domain, metrics)
    if not reasons:
        return {"collapsing": 0.0}
    text = "; ".join(reasons)
    log.warning("run %s is collapsing at epoch %d: %s", run_id, epoch, text)
    store.update_run(run_id, reason=f"collapse warning (epoch {epoch}): {text}")
    path = Path(folder) / COLLAPSE_FILE
    try:
        first = json.loads(path.read_text()).get("first_epoch", epoch)
    except (OSError, ValueError, AttributeError):
        first = epoch
    record = {"collapsing": True, "first_epoch": first, "epoch": epoch, "reasons": reasons}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=1) + "\n")
    except OSError as exc:  # the log line and the metric still say it
        log.warning("could not write %s: %s", path, exc)
    return {"collapsing": 1.0}


def collapse_note(folder: str | Path) -> str:
    """The collapse warning of the run in ``folder`` ("" when none was raised), for a jobs table cell."""
    try:
        record = json.loads((Path(folder) / COLLAPSE_FILE).read_text())
    except (OSError, ValueError):
        return ""
    if not isinstance(record, dict) or not record.get("collapsing"):
        return ""
    return f"⚠ collapsing since epoch {record.get('first_epoch')}: " + "; ".join(record.get("reasons", []))
