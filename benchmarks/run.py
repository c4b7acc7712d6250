"""Run the benchmarks and print one table (figure, value, target, met?) as the last lines.

    python benchmarks/run.py            # the full set; updates BENCHMARKS.md and benchmarks/results/*.json
    python benchmarks/run.py --quick    # every CPU benchmark in about two minutes on a quiet 2-core machine;
                                        # writes nothing
    python benchmarks/run.py --dry      # the smallest settings that run every code path (the numbers mean
                                        # nothing); writes nothing
    python benchmarks/run.py --only overhead curves

GPU figures are measured when CUDA is present and read "not measured (no CUDA)" otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import importlib
import json
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python benchmarks/run.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from benchmarks.common import REPO_ROOT, Figure, exit_cleanly_on_signals, format_table, machine_info  # noqa: E402

# Each section's measuring function as (module, name), in table order. Imported lazily: `--only curves`
# should not pay for importing the training stack's benchmarks.
RUNNERS: dict[str, tuple[str, str]] = {
    "overhead": ("benchmarks.trainer_overhead", "measure_trainer_overhead"),
    "throughput": ("benchmarks.throughput", "measure_cpu_throughput"),
    "fastpath": ("benchmarks.fastpath", "measure_fastpath_agreement"),
    "gpu": ("benchmarks.throughput", "measure_gpu_throughput"),
    "phases": ("benchmarks.phases", "measure_run_phases"),
    "packing": ("benchmarks.phases", "measure_packing"),
    "startup": ("benchmarks.studio", "measure_startup"),
    "curves": ("benchmarks.studio", "measure_curve_refresh"),
    "jobs_table": ("benchmarks.jobs_table", "measure_jobs_table"),
    "cpu_bf16": ("benchmarks.cpu_bf16", "measure_cpu_bf16"),
    "memory": ("benchmarks.studio", "measure_app_memory"),
    "data": ("benchmarks.data", "measure_sar_simulation"),
    "compare": ("benchmarks.compare_sar", "measure_compare_sar"),
}
SECTIONS: tuple[str, ...] = tuple(RUNNERS)
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
BENCHMARKS_MD = REPO_ROOT / "BENCHMARKS.md"
START_MARK = "<!-- results:start (written by benchmarks/run.py; edit outside these marks) -->"
END_MARK = "<!-- results:end -->"

# Settings per level: (full, quick, dry). Quick keeps every CPU benchmark at a size that still means
# something; dry is the least that runs every code path.
SETTINGS: dict[str, dict[str, dict[str, Any]]] = {
    "full": {
        "overhead": {"steps": 40, "repeats": 4, "control": True},
        "throughput": {"steps": 8},
        "fastpath": {"steps": 20, "compile": True},
        "gpu": {"steps": 50, "warmup": 10},
        "phases": {"preset": "auto", "epochs": 2},
        "packing": {"max_steps": 300},
        "startup": {"repeats": 3},
        "curves": {"n_runs": 20, "histories": (1_000, 10_000), "repeats": 10},
        "jobs_table": {"studies": 250, "repeats": 10},
        "cpu_bf16": {"steps": 4, "warmup": 2, "repeats": 3},
        "memory": {"n_jobs": 4, "sample_s": 20.0},
        "data": {"scenes": 12, "repeats": 5},
        "compare": {"images": 10, "size": 256, "repeats": 2},
    },
    "quick": {
        "overhead": {"steps": 15, "repeats": 1},
        "throughput": {"steps": 2},
        "fastpath": {"steps": 10},
        "gpu": {"steps": 10, "warmup": 3},
        "phases": {"preset": "auto", "epochs": 1, "variants": ("sar-baseline", "fragment-dae")},
        "packing": {"max_steps": 50},
        "startup": {"repeats": 1},
        "curves": {"n_runs": 20, "histories": (1_000, 10_000), "repeats": 3},
        "jobs_table": {"studies": 250, "repeats": 3},
        "cpu_bf16": {
            "steps": 3,
            "warmup": 1,
            "repeats": 1,
            "variants": ("sar-baseline", "audio-vae-mel", "fragment-dae"),
            "sizes": ("reference",),
            "sections": ("forced-off", "train"),
        },
        "memory": {"n_jobs": 4, "sample_s": 4.0},
        "data": {"scenes": 6, "repeats": 2},
        "compare": {"images": 4, "size": 128, "repeats": 1},
    },
    "dry": {
        "overhead": {"steps": 10, "repeats": 1, "variants": ("fragment-dae",)},
        "throughput": {"steps": 1, "variants": ("sar-baseline", "fragment-dae"), "batch_size": 2},
        "fastpath": {"steps": 2, "n_batches": 1, "variants": ("fragment-dae",)},
        "gpu": {"steps": 2, "warmup": 1, "variants": ("fragment-dae",)},
        "phases": {"preset": "smoke", "epochs": 1, "max_steps": 2, "variants": ("fragment-dae",)},
        "packing": {"max_steps": 2, "variants": ("sar-baseline",)},
        "startup": {"repeats": 1},
        "curves": {"n_runs": 3, "histories": (20, 200), "repeats": 2},
        "jobs_table": {"studies": 2, "repeats": 3},
        "cpu_bf16": {
            "steps": 1,
            "warmup": 1,
            "repeats": 1,
            "variants": ("fragment-dae",),
            "sizes": ("reference",),
            "sections": ("forced-off", "train"),
        },
        "memory": {"n_jobs": 1, "sample_s": 1.0},
        "data": {"scenes": 2, "repeats": 1, "image_size": 64},
        "compare": {"images": 2, "size": 64, "repeats": 1},
    },
}


def _runner(section: str) -> Callable[..., tuple[list[Figure], dict[str, Any]]]:
    if section not in RUNNERS:
        raise ValueError(f"unknown benchmark section '{section}'; choose from: {', '.join(SECTIONS)}")
    module, name = RUNNERS[section]
    return getattr(importlib.import_module(module), name)


def run_sections(
    sections: Sequence[str], level: str, log: Callable[[str], None] = print
) -> tuple[list[Figure], dict[str, Any]]:
    """Run ``sections`` at ``level`` ("full", "quick" or "dry"); a failing section gives one row saying so."""
    if level not in SETTINGS:
        raise ValueError(f"unknown level '{level}'; choose from: {', '.join(SETTINGS)}")
    figures: list[Figure] = []
    raw: dict[str, Any] = {}
    for section in sections:
        measure = _runner(section)
        kwargs = SETTINGS[level][section]
        log(f"[bench] {section} {kwargs} ...")
        t0 = time.perf_counter()
        try:
            section_figures, section_raw = measure(**kwargs)
        except Exception as exc:  # noqa: BLE001 - one broken benchmark must not hide the others' figures
            message = f"failed: {type(exc).__name__}: {exc}"
            log(f"[bench] {section} {message}")
            section_figures = [
                Figure(f"{section}/error", f"{section} benchmark", None, "", note=message[:300])
            ]
            section_raw = {"error": message}
        took = time.perf_counter() - t0
        log(f"[bench] {section} done in {took:.1f} s")
        figures += section_figures
        raw[section] = {
            "settings": kwargs,
            "seconds": took,
            "figures": [f.to_dict() for f in section_figures],
            "raw": section_raw,
        }
    return figures, raw


def render_results(sections: dict[str, dict[str, Any]]) -> str:
    """The generated part of BENCHMARKS.md: for each run that measured some of ``sections`` its machine,
    date, command and load, then one table of every section's figures in `SECTIONS` order."""
    runs: dict[str, tuple[dict[str, Any], list[str]]] = {}
    for name, payload in sections.items():
        measured = payload["measured"]
        key = json.dumps(measured, sort_keys=True, default=str)
        runs.setdefault(key, (measured, []))[1].append(name)
    lines = [START_MARK, ""]
    for measured, names in runs.values():
        info = measured["machine"]
        gpu = info.get("gpu", "none (CUDA not available)")
        load = info.get("load_average")
        lines += [
            f"Measured {measured['date']} with `{measured['command']}`"
            + ("" if len(runs) == 1 else f" ({', '.join(names)})")
            + ":",
            "",
            f"- CPU: {info['cpu']}, {info['cpu_cores']} cores ({info['torch_threads']} torch threads), "
            f"{info['memory_gib']} GiB RAM",
            f"- GPU: {gpu}",
            f"- Python {info['python']}, torch {info['torch']}, {info['platform']}",
            f"- Load average at the start and end (1/5/15 min): {load} / {info.get('load_average_end')}",
        ]
        if load and load[0] > 0.5:  # measured before the benchmarks start: that load is someone else's
            lines.append(
                "- Other processes shared the CPU cores during this run: timings are noisier than on a "
                "quiet machine (the ratios, measured side by side, less so than absolute times)."
            )
        lines.append("")
    figures = [figure_from_dict(f) for payload in sections.values() for f in payload["figures"]]
    lines += [
        format_table(figures),
        "",
        "Notes on each figure, and every raw timing, are in `benchmarks/results/*.json`.",
        "",
        END_MARK,
    ]
    return "\n".join(lines)


def figure_from_dict(data: dict[str, Any]) -> Figure:
    fields = {k: data.get(k) for k in ("key", "label", "value", "unit", "bound", "goal")}
    return Figure(**fields, note=data.get("note") or "")


def merged_sections(results_dir: Path, fresh: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """This run's sections plus those an earlier run left in ``results_dir``, in `SECTIONS` order.

    So `--only gpu` on a GPU machine adds its rows beside the CPU rows measured elsewhere instead of
    replacing them; each section keeps the machine and command it was measured with.
    """
    previous: dict[str, Any] = {}
    summary = results_dir / "summary.json"
    if summary.exists():  # sections written before they carried `measured` were measured by that run
        with contextlib.suppress(ValueError, OSError):
            old = json.loads(summary.read_text(encoding="utf-8"))
            previous = {k: old[k] for k in ("command", "date", "machine") if k in old}
    out: dict[str, dict[str, Any]] = {}
    for name in SECTIONS:
        if name in fresh:
            out[name] = fresh[name]
            continue
        path = results_dir / f"{name}.json"
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if "measured" not in payload and len(previous) == 3:
            payload["measured"] = previous
        if "measured" in payload and isinstance(payload.get("figures"), list):
            out[name] = payload
    return out


def update_markdown(path: Path, block: str) -> None:
    """Replace the generated block of ``path`` (between the marks), or append it if there is none."""
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    if START_MARK in text and END_MARK in text:
        head, rest = text.split(START_MARK, 1)
        _, tail = rest.split(END_MARK, 1)
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def write_results(results_dir: Path, raw: dict[str, Any], summary: dict[str, Any]) -> list[Path]:
    """One JSON per section plus summary.json, each written atomically."""
    results_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, payload in [*raw.items(), ("summary", summary)]:
        path = results_dir / f"{name}.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(payload, indent=1, default=_json_default) + "\n", encoding="utf-8")
        tmp.replace(path)
        written.append(path)
    return written


def _json_default(value: Any) -> Any:
    if isinstance(value, float):
        return None  # NaN / inf
    if isinstance(value, Path):
        return str(value)
    return str(value)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/run.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    level = parser.add_mutually_exclusive_group()
    level.add_argument("--quick", action="store_true", help="CPU benchmarks at small sizes; writes nothing")
    level.add_argument(
        "--dry", action="store_true", help="smallest settings, every code path; writes nothing"
    )
    parser.add_argument(
        "--only", nargs="+", choices=SECTIONS, metavar="SECTION", help=f"some of: {', '.join(SECTIONS)}"
    )
    parser.add_argument("--no-write", action="store_true", help="full run without updating the results")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help=argparse.SUPPRESS)
    parser.add_argument("--markdown", type=Path, default=BENCHMARKS_MD, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    exit_cleanly_on_signals()  # a `timeout` stops the sections through their finally blocks
    chosen = "dry" if args.dry else "quick" if args.quick else "full"
    sections = list(dict.fromkeys(args.only or SECTIONS))
    command = "python benchmarks/run.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    info = machine_info()
    started = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    t0 = time.perf_counter()
    figures, raw = run_sections(sections, chosen, log=lambda m: print(m, file=sys.stderr, flush=True))
    info["load_average_end"] = machine_info()["load_average"]
    summary = {
        "command": command.strip(),
        "date": started,
        "level": chosen,
        "seconds": time.perf_counter() - t0,
        "machine": info,
        "figures": [f.to_dict() for f in figures],
    }
    if chosen == "full" and not args.no_write:
        measured = {"command": command.strip(), "date": started, "machine": info}
        fresh = {name: {**payload, "measured": measured} for name, payload in raw.items()}
        sections = merged_sections(args.results_dir, fresh)
        summary["figures"] = [f for payload in sections.values() for f in payload["figures"]]
        written = write_results(args.results_dir, sections, summary)
        update_markdown(args.markdown, render_results(sections))
        print(f"wrote {args.markdown} and {len(written)} files in {args.results_dir}", file=sys.stderr)
    print(
        f"\n{chosen} run of {', '.join(sections)} in {summary['seconds']:.0f} s on {info['cpu']} "
        f"({info['cpu_cores']} cores, load {info['load_average']} -> {info['load_average_end']})"
    )
    print(format_table(figures))
    return 1 if any(f.value is None and f.key.endswith("/error") for f in figures) else 0


if __name__ == "__main__":
    raise SystemExit(main())
