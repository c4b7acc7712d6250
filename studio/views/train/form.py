"""The launch form: variants, preset, device/precision, the number settings and the data spec, and the pure
handlers behind Launch (every setting checked first, so bad input launches nothing)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from types import SimpleNamespace
from typing import Any

import gradio as gr

from models import VARIANTS
from studio.context import StudioContext
from studio.curves import is_finite_number
from studio.jobs import check_labels
from studio.views.train.session import _blank, job_rows
from studio.views.train.table import format_elapsed
from trainers.config import PRESETS
from trainers.data.spec import parse_data_spec
from trainers.settings import REAL_POSITIVE, make_config, real, whole
from trainers.training.fastpath import PRECISIONS

# A Space is a small shared CPU: smoke preset only, bounded runs, built-in data only (no server folders).
SPACE_MAX_EPOCHS = 10


def variant_choices() -> list[tuple[str, str]]:
    """(label, value) of every variant for the checkbox group: the name and its one-line description."""
    return [(f"{name} — {info.description}", name) for name, info in VARIANTS.items()]


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
    address: str | None = None,
    name: Any = "",
    tags: Any = "",
    note: Any = "",
    seeds: Any = 1,
    sweep: Any = "",
) -> list[str]:
    """Queue one run per chosen variant; every setting is checked first, so bad input launches nothing.

    With ``seeds`` > 1 or a ``sweep`` ("lr=1e-3,3e-4") it is a study: variants × sweep values × seeds
    from the seed given, queued under one study id (trainers.runs.studies), tagged with it.

    `owner` (the visitor, on a public Space) is recorded: the runs are theirs alone to see and act on;
    `address` (their client address) counts them against the Space's per-address cap too. `name`, `tags`
    and `note` are stored with the runs (with several variants each name is followed by its variant).
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
    plans = study_plans(chosen, settings, seeds, sweep)
    limits = getattr(ctx.jobs, "space_limits", None)
    if ctx.space and limits is not None and len(plans) > limits.max_jobs_per_visitor:
        raise ValueError(
            f"this launch is {len(plans)} runs, but a visitor of this demo Space may hold "
            f"{limits.max_jobs_per_visitor} at once: use fewer variants, seeds or sweep values"
        )
    for variant, per_run in plans:  # every run's settings are checked before the first one is queued
        ctx.jobs.check(variant, preset, **per_run)
    labels = check_labels(name, tags, note)
    extra = {"owner": owner} if owner is not None else {}
    if address:
        extra["address"] = address
    queued: list[str] = []
    for variant, per_run in plans:
        try:
            named = dict(labels)
            if per_run.get("study"):
                named["tags"] = [*named.get("tags", []), per_run["study"]]
            if "name" in named and len(plans) > 1:
                named["name"] = f"{named['name']} · {variant}" + _study_suffix(
                    per_run, len(plans) > len(chosen)
                )
            queued.append(ctx.jobs.submit(variant, preset, **per_run, **extra, **named))
        except (ValueError, FileNotFoundError) as exc:  # checked above, so only a change meanwhile gets here
            done = f" (already queued: {', '.join(queued)})" if queued else ""
            raise type(exc)(f"{variant}: {exc}{done}") from exc
    return queued


def study_plans(
    variants: Sequence[str], settings: dict[str, Any], seeds: Any, sweep: Any
) -> list[tuple[str, dict[str, Any]]]:
    """(variant, settings) of each run a launch queues: one per variant, or with several seeds or a sweep a
    study of variants × sweep values × seeds (from the seed given), each carrying the study id."""
    from trainers.runs.studies import new_study_id, parse_sweep, seed_count

    count = seed_count(1 if seeds in (None, "", 0) else seeds)
    swept = parse_sweep(sweep if isinstance(sweep, str) else None)
    if count == 1 and swept is None:
        return [(variant, dict(settings)) for variant in variants]
    study = new_study_id()
    first = int(settings.get("seed") or 0)
    plans = []
    for variant in variants:
        for value in swept.values if swept else (None,):
            for k in range(count):
                per_run = {**settings, "seed": first + k, "study": study}
                if swept is not None:
                    change = swept.overrides(value)
                    if "model" in change:
                        per_run["model"] = {**per_run.get("model", {}), **change.pop("model")}
                    per_run.update(change)
                plans.append((variant, per_run))
    return plans


def _study_suffix(per_run: dict[str, Any], study: bool) -> str:
    return f" · seed {per_run['seed']}" if study else ""


def queue_note(ctx: StudioContext, run_ids: Sequence[str]) -> str:
    """ " · #3 in line, wait ≤ ~15m 00s (an estimate: ...)" for the first still-queued run of `run_ids` on a
    public Space, where every job has a time limit; "" elsewhere or when none waits."""
    if not ctx.space or ctx.jobs is None:
        return ""
    rows = {row["id"]: row for row in job_rows(ctx) if row.get("id") in run_ids}
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
                    info="smoke: small and quick on a CPU"
                    + ("" if ctx.space else "; full: the full-size models and batch sizes"),
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
            # A study: several seeds (and one setting swept) launched as one, grouped by its id.
            with gr.Row():
                ui.seeds = gr.Number(
                    1,
                    label="Seeds",
                    info="runs per variant: seed, seed+1, ...; >1 makes a study",
                    elem_id="train-seeds",
                )
                ui.sweep = gr.Textbox(
                    "",
                    label="Sweep",
                    info="optional, one setting: KEY=V1,V2",
                    placeholder="e.g. lr=1e-3,3e-4",
                    elem_id="train-sweep",
                )
            ui.data = gr.Textbox(
                "",
                label="Data spec",
                info="blank: the preset's built-in data",
                placeholder=(  # a Space reads no server folder (SpaceLimits.apply)
                    "e.g. sar:synthetic,n=200 or fragments:python,max_files=50"
                    if ctx.space
                    else "e.g. sar:folder=/data/s1 or fragments:folder=/data/files,max_files=500"
                ),
                elem_id="train-data",
            )
            # The person's labels, stored with the runs at launch (W&B's init(name, tags, notes)).
            with gr.Row():
                ui.run_name = gr.Textbox(
                    "", label="Name", placeholder="e.g. lr sweep 3e-4", elem_id="train-launch-name"
                )
                ui.run_tags = gr.Textbox(
                    "", label="Tags", placeholder="e.g. sweep, baseline", elem_id="train-launch-tags"
                )
            ui.run_note = gr.Textbox(
                "", label="Note", placeholder="what these runs try", elem_id="train-launch-note"
            )
            ui.launch = gr.Button("Launch", variant="primary", elem_id="train-launch")
            ui.status = gr.Markdown(label="Status", elem_id="train-status")
    return ui
