"""The fragment models' decision rule, tuned on the validation split at every validation.

A repair net's output says how likely each byte is to be wrong and what it should be; turning that into
bytes needs a rule, and the rule decides the trade between the corrupted bytes it fixes and the clean ones
it breaks (92 % of the bytes are clean, so breaking 1 % of them costs more than fixing 10 % of the
corrupted ones gains). The argmax (fragment-dae-bytes) or a gate at 0.5 (fragment-dae) is rarely the best
rule: each validation sweeps the rule's thresholds over the validation fragments, keeps the most accurate
rule among those that break at most ``BROKEN_CAP`` of the clean bytes, sets it on the model (its checkpoint's
config records it) and reports the validation metrics under it. Only validation data is used, never test
data: ``trainers eval`` and ``compare`` score a checkpoint under the rule it was saved with.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from models.fragments import change_rule, gate_rule, nearest_bit_neighbour
from trainers.metrics import fragments as fragment_metrics

log = logging.getLogger(__name__)

# At most this fraction of the clean validation bytes may be changed: half the bound of 0.5 %, so
# files unlike the validation ones (the held-out licence texts, changelogs, binaries) keep a margin.
BROKEN_CAP = 0.0025
# fragment-dae-bytes: replace a byte by the most likely one where the input byte's probability is under t
# (0.5 is the plain argmax).
CHANGE_THRESHOLDS = (0.5, 0.4, 0.3, 0.2, 0.15, 0.1, 0.07, 0.05, 0.03, 0.02, 0.01)
# fragment-dae: open the gate above t, and snap the value to the nearest single-bit neighbour of the input
# within the tolerance (bytes), or round it (None).
GATE_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)
SNAP_TOLERANCES: tuple[float | None, ...] = (None, 2.0, 4.0, 8.0, 16.0, 32.0)


@dataclass
class ValidationOutputs:
    """What the rule needs of every validation byte, (N, L) each: the clean and corrupted bytes, the noise's
    mask, and the model's outputs (fragment-dae-bytes: the input byte's probability and the most likely
    byte; fragment-dae: the value and the gate in [0, 1])."""

    clean: torch.Tensor
    corrupted: torch.Tensor
    changed: torch.Tensor
    first: torch.Tensor
    second: torch.Tensor
    loss: float
    snap: tuple[torch.Tensor, torch.Tensor] | None = None  # the nearest bit neighbours, once per sweep


def is_byte_classifier(model: nn.Module) -> bool:
    return hasattr(model, "change_threshold")


def tunable(model: nn.Module) -> bool:
    """Whether the model has a decision rule to tune (the whole-fragment fragment-dae has none)."""
    return is_byte_classifier(model) or bool(getattr(model, "correction", False))


@torch.no_grad()
def collect(
    model: nn.Module,
    batches: Iterable[Any],
    device: torch.device,
    loss_fn: Callable[[nn.Module, Any], torch.Tensor],
) -> ValidationOutputs:
    """One pass over the validation batches: the loss (sample-weighted mean) and each byte's outputs."""
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("clean", "corrupted", "changed", "a", "b")}
    loss_sum, n = 0.0, 0
    for batch in batches:
        corrupted, clean, changed = (t.to(device) for t in batch)
        loss_sum += float(loss_fn(model, (corrupted, clean, changed))) * corrupted.shape[0]
        n += corrupted.shape[0]
        kept = torch.round(corrupted[:, 0].float() * 255).long()
        if is_byte_classifier(model):
            probs = model(corrupted).float().softmax(dim=1)
            a = probs.gather(1, kept.unsqueeze(1)).squeeze(1)
            b = probs.argmax(dim=1).to(torch.uint8)
        else:
            value, gate = model.correction_parts(corrupted)
            a, b = value[:, 0].float(), gate[:, 0].float()
        # Bytes as uint8: a large validation set's bytes cost one byte each here.
        parts["clean"].append(torch.round(clean[:, 0] * 255).to(torch.uint8))
        parts["corrupted"].append(kept.to(torch.uint8))
        parts["changed"].append(changed.reshape(kept.shape).bool())
        parts["a"].append(a)
        parts["b"].append(b)
    cat = {k: torch.cat(v) for k, v in parts.items()}
    return ValidationOutputs(
        cat["clean"], cat["corrupted"], cat["changed"], cat["a"], cat["b"], loss_sum / max(n, 1)
    )


def candidate_rules(model: nn.Module) -> list[dict[str, Any]]:
    """The rules swept, each as the keyword arguments of the model's ``set_decision``, the most cautious
    (fewest changes) last within each family."""
    if is_byte_classifier(model):
        return [{"change_threshold": t} for t in CHANGE_THRESHOLDS]
    return [{"gate_threshold": g, "snap_tolerance": tol} for tol in SNAP_TOLERANCES for g in GATE_THRESHOLDS]


def repaired_bytes(out: ValidationOutputs, rule: dict[str, Any]) -> torch.Tensor:
    """The bytes the model gives under ``rule``, (N, L): its ``predict_bytes``' own rule (``change_rule`` /
    ``gate_rule``) on the collected outputs, with the snap's neighbour search done once per sweep."""
    kept = out.corrupted.long()
    if "change_threshold" in rule:
        return change_rule(kept, out.first, out.second, rule["change_threshold"])
    target = out.first * 255
    if rule["snap_tolerance"] is not None and out.snap is None:
        out.snap = nearest_bit_neighbour(kept, target)
    return gate_rule(kept, target, out.second > rule["gate_threshold"], rule["snap_tolerance"], out.snap)


def choose_rule(
    out: ValidationOutputs, rules: list[dict[str, Any]]
) -> tuple[dict[str, Any], dict[str, float]]:
    """(rule, its metrics): the most accurate rule whose broken fraction is at most ``BROKEN_CAP``; if none
    is, the one that breaks the fewest clean bytes. Ties go to the earlier rule."""
    best: tuple[dict[str, Any], dict[str, float]] | None = None
    safest: tuple[dict[str, Any], dict[str, float]] | None = None
    for rule in rules:
        values = fragment_metrics.fragment_metrics(
            out.clean, out.corrupted, repaired_bytes(out, rule), out.changed
        )
        broken = values["broken_fraction"]
        broken = 0.0 if broken != broken else broken  # NaN: no clean byte to break
        if broken <= BROKEN_CAP and (best is None or values["accuracy"] > best[1]["accuracy"]):
            best = (rule, values)
        if safest is None or broken < safest[1]["broken_fraction"]:
            safest = (rule, values)
    chosen = best or safest
    assert chosen is not None, "no rule to choose from"
    return chosen


def tune_and_score(
    model: nn.Module,
    batches: Iterable[Any],
    device: torch.device,
    loss_fn: Callable[[nn.Module, Any], torch.Tensor],
) -> dict[str, float]:
    """Tune the model's decision rule on these (validation) batches, set it, and return the validation
    metrics under it (pooled over every byte) with the loss."""
    out = collect(model, batches, device, loss_fn)
    rule, values = choose_rule(out, candidate_rules(model))
    model.set_decision(**rule)
    log.info(
        "decision rule tuned on validation: %s (fixes %.1f %% of corrupted bytes, breaks %.2f %% of clean)",
        rule,
        100 * values["fixed_fraction"],
        100 * values["broken_fraction"],
    )
    return {**values, "loss": out.loss}
