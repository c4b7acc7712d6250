"""Studies: one launch of variants × seeds (× optionally one setting swept over a few values) whose runs
share one study id, so they can be grouped, aggregated and compared as repeated measurements.

A study is not a table of its own: each run carries its study id in its config (``RunConfig.study``)
and a tag of the study id, so the run store, exports and the Hub push carry it with every other setting,
and the jobs table's tag filter finds a study's runs.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from trainers.config import RunConfig
from trainers.runs.store import RunRecord, RunStore

MAX_SEEDS = 20
MAX_SWEEP_VALUES = 8
# A study beyond this many runs is almost always a typo (20 seeds × 8 values × 9 variants is 1,440 runs).
MAX_RUNS = 200


@dataclass(frozen=True)
class Sweep:
    """One setting swept over a few values: a run setting (``lr``) or a model key
    (``model.base_channels``)."""

    key: str
    values: tuple[Any, ...]

    @property
    def is_model_key(self) -> bool:
        return self.key.startswith("model.")

    def overrides(self, value: Any) -> dict[str, Any]:
        if self.is_model_key:
            return {"model": {self.key.removeprefix("model."): value}}
        return {self.key: value}


def parse_sweep(text: str | None) -> Sweep | None:
    """``KEY=V1,V2,...`` (values parsed as JSON where they can be: numbers, lists) or None when blank."""
    if text is None or not str(text).strip():
        return None
    key, sep, rest = str(text).partition("=")
    key = key.strip()
    if not sep or not key or not rest.strip():
        raise ValueError(f"a sweep is KEY=V1,V2,... such as lr=1e-3,3e-4; got {text!r}")
    values = []
    for item in rest.split(","):
        item = item.strip()
        if not item:
            raise ValueError(f"sweep {key}: an empty value in {rest!r}")
        try:
            values.append(json.loads(item))
        except json.JSONDecodeError:
            values.append(item)
    if len(set(map(repr, values))) != len(values):
        raise ValueError(f"sweep {key}: a value is given twice in {rest!r}")
    if not 2 <= len(values) <= MAX_SWEEP_VALUES:
        raise ValueError(f"sweep {key}: give 2 to {MAX_SWEEP_VALUES} values, got {len(values)}")
    return Sweep(key, tuple(values))


def new_study_id() -> str:
    """Sortable by creation time like run ids: ``study-20261207-141502-3fa2``."""
    return f"study-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(2)}"


def seed_count(seeds: Any) -> int:
    """The number of training seeds of a study: a whole number from 1 to MAX_SEEDS."""
    if isinstance(seeds, bool) or not isinstance(seeds, (int, float)) or not float(seeds).is_integer():
        raise ValueError(f"seeds must be a whole number from 1 to {MAX_SEEDS}, got {seeds!r}")
    if not 1 <= int(seeds) <= MAX_SEEDS:
        raise ValueError(f"seeds must be a whole number from 1 to {MAX_SEEDS}, got {int(seeds)}")
    return int(seeds)


def plan_study(
    variants: Sequence[str],
    seeds: int,
    sweep: Sweep | None = None,
    *,
    preset: str = "smoke",
    first_seed: int = 0,
    study_id: str | None = None,
    check_paths: bool = True,
    **settings: Any,
) -> list[RunConfig]:
    """The run configs of a study, every one checked by the one validation layer before any run exists:
    variants × seeds ``first_seed .. first_seed+seeds-1`` × the sweep's values, each carrying the study id.

    ``settings`` are the same run settings the Train tab and ``train`` take (None leaves the preset's).
    """
    from trainers.settings import validate_run

    variants = list(dict.fromkeys(variants))
    if not variants:
        raise ValueError("a study needs at least one variant")
    count = seed_count(seeds)
    values: tuple[Any, ...] = sweep.values if sweep else (None,)
    total = len(variants) * count * len(values)
    if total > MAX_RUNS:
        raise ValueError(
            f"a study of {total} runs is more than the {MAX_RUNS} allowed; use fewer seeds or values"
        )
    study_id = study_id or new_study_id()
    configs = []
    for variant in variants:
        for value in values:
            for seed in range(first_seed, first_seed + count):
                per_run = dict(settings, seed=seed)
                model = dict(per_run.pop("model", None) or {})
                if sweep is not None:
                    extra = sweep.overrides(value)
                    model.update(extra.pop("model", {}))
                    per_run.update(extra)
                per_run["study"] = study_id
                configs.append(
                    validate_run(variant, preset, check_paths=check_paths, model=model or None, **per_run)
                )
    return configs


def study_tag(study_id: str) -> str:
    """The tag that finds a study's runs in the jobs table's filter (``tag:study-…``): the id itself."""
    return study_id


def create_study_runs(store: RunStore, configs: Iterable[RunConfig], name: str | None = None) -> list[str]:
    """Queue one run per config in the store, tagged with its study; returns the run ids in order."""
    ids = []
    for cfg in configs:
        run_id = store.create_run(cfg.variant, cfg.domain, cfg.to_dict())
        label = name or cfg.study
        store.set_labels(
            run_id, name=f"{label} · {cfg.variant} · seed {cfg.seed}", tags=[study_tag(cfg.study)]
        )
        ids.append(run_id)
    return ids


@dataclass
class StudySummary:
    """One study as the run store holds it."""

    id: str
    created_at: float
    variants: list[str]
    seeds: list[int]
    sweep: dict[str, list[Any]] = field(default_factory=dict)
    runs: list[str] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "study": self.id,
            "created_at": self.created_at,
            "variants": self.variants,
            "seeds": self.seeds,
            "sweep": self.sweep,
            "runs": self.runs,
            "statuses": self.statuses,
            "done": sum(n for s, n in self.statuses.items() if s not in ("queued", "running")),
        }


def study_of(run: RunRecord) -> str:
    """The run's study id, "" for a run launched on its own."""
    return str((run.config or {}).get("study") or "")


def differing_settings(runs: Sequence[RunRecord]) -> dict[str, list[Any]]:
    """The settings (``model.`` keys flattened) whose values differ between the runs; variant, seed and
    study aside."""
    flat = [flatten_config(r.config or {}) for r in runs]
    keys = sorted({k for f in flat for k in f} - {"seed", "study", "variant"})
    out = {}
    for key in keys:
        values = list(dict.fromkeys(json.dumps(f.get(key), sort_keys=True) for f in flat))
        if len(values) > 1:
            out[key] = [json.loads(v) for v in values]
    return out


def flatten_config(config: dict[str, Any]) -> dict[str, Any]:
    """``{"lr": 1e-3, "model": {"base_channels": 8}}`` -> ``{"lr": 1e-3, "model.base_channels": 8}``."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in flatten_config(value).items()})
        else:
            out[key] = value
    return out


def list_studies(store: RunStore) -> list[StudySummary]:
    """Every study in the store, newest first."""
    groups: dict[str, list[RunRecord]] = {}
    for run in store.list_runs():
        sid = study_of(run)
        if sid:
            groups.setdefault(sid, []).append(run)
    out = []
    for sid, runs in groups.items():
        runs.sort(key=lambda r: (r.created_at, r.id))
        statuses: dict[str, int] = {}
        for run in runs:
            statuses[run.status] = statuses.get(run.status, 0) + 1
        out.append(
            StudySummary(
                id=sid,
                created_at=runs[0].created_at,
                variants=list(dict.fromkeys(r.variant for r in runs)),
                seeds=sorted({int((r.config or {}).get("seed", 0)) for r in runs}),
                sweep=differing_settings(runs),
                runs=[r.id for r in runs],
                statuses=statuses,
            )
        )
    out.sort(key=lambda s: s.created_at, reverse=True)
    return out


def study_runs(store: RunStore, study_id: str) -> list[RunRecord]:
    """The runs of one study in launch order; a ValueError names a study that does not exist."""
    runs = [r for r in store.list_runs() if study_of(r) == study_id]
    if not runs:
        raise ValueError(f"no study with id {study_id!r} (`python -m trainers studies` lists them)")
    return sorted(runs, key=lambda r: (r.created_at, r.id))
