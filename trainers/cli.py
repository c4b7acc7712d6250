"""`python -m trainers`: train, list runs, evaluate and compare checkpoints, push/export them to the Hub."""

from __future__ import annotations

import argparse
import errno
import json
import logging
import math
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

DEFAULT_RUNS_DIR = os.environ.get("STUDIO_RUNS_DIR", "runs")


def _parse_set(items: Sequence[str]) -> dict[str, Any]:
    """`--set key=value` model overrides; values are parsed as JSON when they can be (numbers, lists)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set expects KEY=VALUE, got '{item}'")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def prog_name(module_form: str) -> str:
    """The name --help shows: the console script a user typed (``ae-train``, ``ae-studio``), else the
    ``python -m``/``python app.py`` form (argparse alone would say ``__main__.py``)."""
    invoked = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    return module_form if not invoked or invoked.endswith(".py") or invoked == "-c" else invoked


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog_name("python -m trainers"), description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub.add_parser("train", help="train one variant"))
    _add_resume(
        sub.add_parser("resume", help="continue a failed, cancelled or killed run from its last checkpoint")
    )
    _add_runs(sub.add_parser("runs", help="list runs with status and best metrics"))
    _add_eval(
        sub.add_parser("eval", help="evaluate a run's best checkpoint or a checkpoint folder on any data")
    )
    _add_compare(sub)
    _add_export(sub)
    sub.add_parser("variants", help="list the model variants")
    _add_push(sub.add_parser("push", help="push a run's best checkpoint to a Hugging Face Hub model repo"))
    _add_study(sub.add_parser("study", help="train variants x seeds (x one swept setting) as one study"))
    _add_runs(sub.add_parser("studies", help="list studies with their variants, seeds and progress"))
    return parser


def _add_train(p: argparse.ArgumentParser) -> None:
    """Options of `train`, one a line: a new option is a one-line change."""
    p.add_argument("variant", help="variant name, e.g. sar-residual (see `python -m trainers variants`)")
    p.add_argument("--preset", choices=["smoke", "reference", "full"], default="full")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--kl-weight", type=float)
    p.add_argument(
        "--data", help="data spec DOMAIN:KEY=VALUE,... e.g. sar:folder=/data/s1 (default: built-in)"
    )
    p.add_argument("--runs-dir", default=DEFAULT_RUNS_DIR)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--seed", type=int)
    p.add_argument("--max-steps", type=int)
    p.add_argument("--num-workers", type=int)
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the model (CUDA only)")
    p.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        help="bf16 autocast: auto (default) = on CUDA GPUs with bf16, off on CPU; fp32 turns it off",
    )
    p.add_argument("--resume", metavar="RUN_ID", help="continue RUN_ID from its last checkpoint")
    p.add_argument("--run-id", help="attach to a run created beforehand (the studio's job manager uses this)")
    p.add_argument(
        "--sink",
        default=os.environ.get("AE_STUDIO_SINK") or None,
        metavar="NAME",
        help="Ray: send rows, status and checkpoints to the studio's result sink actor NAME "
        "(env AE_STUDIO_SINK); files stay in a local --runs-dir (default ./runs)",
    )
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="model architecture override"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_resume(p: argparse.ArgumentParser) -> None:
    """Options of `resume`: the run's own settings are used, so there are none to give."""
    p.add_argument("run_id", metavar="RUN", help="the id of a failed, cancelled or killed run")
    p.add_argument("--runs-dir", default=DEFAULT_RUNS_DIR)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_study(p: argparse.ArgumentParser) -> None:
    p.add_argument("variants", nargs="+", metavar="VARIANT")
    p.add_argument("--seeds", type=int, default=3, help="training seeds per variant: 0..N-1 (default 3)")
    p.add_argument(
        "--sweep",
        metavar="KEY=V1,V2,...",
        help="one setting swept, e.g. lr=1e-3,3e-4 or model.base_channels=8,16",
    )
    p.add_argument("--preset", choices=["smoke", "reference", "full"], default="smoke")
    p.add_argument("--data", help="data spec; default: the preset's built-in data")
    p.add_argument("--epochs", type=int)
    p.add_argument("--max-steps", type=int)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--name", help="a display name for the study's runs")
    p.add_argument("--runs-dir", default=DEFAULT_RUNS_DIR)
    p.add_argument("--jobs", type=int, help="trainers at once (default: as the studio's slots)")
    p.add_argument("--json", action="store_true", help='print {"study": ID, "runs": [...]} as JSON')


def _add_runs(p: argparse.ArgumentParser) -> None:
    """Options of `runs`."""
    p.add_argument("--runs-dir", default=DEFAULT_RUNS_DIR)
    p.add_argument("--json", action="store_true")


def _add_eval(p: argparse.ArgumentParser) -> None:
    """Options of `eval`."""
    p.add_argument("source", metavar="RUN_ID|CHECKPOINT_DIR")
    p.add_argument("--data", help="data spec; default: the domain's built-in data")
    _add_model_options(p)
    p.add_argument("--json", action="store_true")


def _add_model_options(p: argparse.ArgumentParser) -> None:
    """Where `eval` and `compare` find a run's checkpoint, and what they run it on."""
    p.add_argument("--runs-dir", default=DEFAULT_RUNS_DIR)
    p.add_argument("--kind", choices=["best", "last"], default="best", help="which checkpoint of a run")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=8)


def _add_compare(sub: Any) -> None:
    """The `compare` subcommand and its options."""
    p = sub.add_parser(
        "compare",
        help="leaderboard: several runs/checkpoints (and classic codecs) on the same examples",
        description="Evaluate every model on the same examples of one domain: per metric the mean with a "
        "95 percent bootstrap interval over independent units (images, recordings, files), paired "
        "differences between models, rates from real entropy-coded bytes with an R-D curve per model, plus "
        "parameters and inference time. See docs/leaderboard.md.",
    )
    p.add_argument("sources", nargs="*", metavar="RUN_OR_CHECKPOINT", help="run ids or checkpoint folders")
    p.add_argument(
        "--study",
        metavar="ID",
        help="the study leaderboard: every run of study ID, means over seeds, paired differences, claims",
    )
    p.add_argument(
        "--claim",
        action="append",
        default=[],
        metavar="'A - B >= D on METRIC'",
        help="with --study: a claim to answer besides the design's (repeatable)",
    )
    p.add_argument(
        "--data",
        help="data spec, e.g. sar:folder=PATH, audio:folder=PATH, fragments:folder=PATH or a built-in one "
        "such as sar:synthetic,n=16 (default: the models' domain's built-in data)",
    )
    p.add_argument(
        "--baselines",
        action="store_true",
        help="add classic codecs (SAR: JPEG, JPEG 2000, WebP; "
        "audio: feature round trip and Opus; fragments: the identity baseline)",
    )
    p.add_argument("--json", action="store_true", help="print the leaderboard as JSON")
    p.add_argument(
        "--out",
        metavar="DIR",
        help="also write compare.md, compare.json, rd.html and rd.png there (--study: study.md, study.json)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the bootstrap resampling (built-in data takes its own seed= key)",
    )
    _add_model_options(p)


def _add_export(sub: Any) -> None:
    """The `export` subcommand and its options."""
    p = sub.add_parser(
        "export",
        help="every logged point of runs as CSV (Trackio's import layout), JSONL or TensorBoard event files",
        description="Write one file (csv, jsonl) or folder (tensorboard) per run into --out. See README, "
        "'Export, TensorBoard and Trackio'.",
    )
    p.add_argument("run_ids", nargs="+", metavar="RUN_ID")
    p.add_argument("--format", choices=["csv", "jsonl", "tensorboard"], required=True)
    p.add_argument("--out", default="exports", metavar="DIR", help="output folder (default: ./exports)")
    p.add_argument("--no-media", action="store_true", help="tensorboard: scalars only, no images/audio/text")
    p.add_argument("--runs-dir", default=DEFAULT_RUNS_DIR)


def _add_push(p: argparse.ArgumentParser) -> None:
    """Options of `push`."""
    p.add_argument("run_id")
    p.add_argument("--repo-id", help="e.g. user/sar-residual (required unless --to-folder)")
    p.add_argument("--to-folder", help="export the same folder locally instead of pushing")
    p.add_argument("--private", action="store_true")
    p.add_argument("--branch")
    p.add_argument("--commit-message")
    p.add_argument(
        "--source-url",
        help='the studio\'s source repository that the model card installs from (pip install "git+URL"); '
        "default: the Space on a Space, else pyproject's [project.urls] Source",
    )
    p.add_argument("--kind", choices=["best", "last"], default="best")
    p.add_argument("--runs-dir", default=DEFAULT_RUNS_DIR)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    warnings.simplefilter("default")
    try:
        return _COMMANDS[args.command](args)
    except (ValueError, FileNotFoundError, PermissionError) as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk (ENOSPC), a file-size limit (EFBIG), an I/O error: a message
        if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            where = f" while writing {exc.filename}" if exc.filename else ""
            print(
                f"error: the disk is full or a file-size limit was reached{where} "
                f"({exc.strerror or _one_line(exc)}); free some space and run again",
                file=sys.stderr,
            )
        else:
            print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 2


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _cmd_train(args: argparse.Namespace) -> int:
    import torch

    from trainers.runs.store import RunStore
    from trainers.settings import parse_run_settings, validate_run
    from trainers.training.loop import cpu_threads, resume_config, train

    # A trainer process computes on the cores it may use (the studio's share of them, the CPUs it is pinned
    # to, a container's quota), shared by the ranks torchrun starts on this host.
    torch.set_num_threads(cpu_threads(int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))

    overrides = {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "kl_weight": args.kl_weight,
        "data": args.data,
        "device": args.device if args.device != "auto" else None,
        "seed": args.seed,
        "max_steps": args.max_steps,
        "num_workers": args.num_workers,
        "compile": args.compile,
        "precision": args.precision,
    }
    model_overrides = _parse_set(args.set)
    # The flags go through the one validation layer before any store is opened: a refused value leaves
    # no database or runs folder behind (a resumed or attached run is checked again with its config).
    parse_run_settings(args.variant, args.preset, model=model_overrides or None, **overrides)
    # on a Ray node: a local store whose writes go home to the studio (trainers/runs/ray_sink.py)
    if args.sink:
        from trainers.runs.ray_sink import open_sink_store

        local = None if args.runs_dir == DEFAULT_RUNS_DIR else args.runs_dir
        opened = open_sink_store(args.sink, local, run_id=args.run_id, resume=args.resume)
    else:
        opened = RunStore(args.runs_dir)
    with opened as store:
        attach = store.get_run(args.run_id) if args.run_id else None
        if args.resume or (attach is not None and attach.config):
            # Resuming, or attaching to a run the studio queued: its stored config is the base, so settings
            # that have no flag (patience, grad_clip, ...) survive; explicit flags still win.
            cfg = resume_config(store, args.resume or args.run_id, **overrides)
            cfg.model.update(model_overrides)
        else:  # the one validation layer, as for the studio: a bad value fails before a run is created
            cfg = validate_run(args.variant, args.preset, model=model_overrides, **overrides)
        result = train(cfg, store, run_id=args.run_id, resume=args.resume, progress=not args.no_progress)
    metrics = ", ".join(f"{k}={v:.4g}" for k, v in sorted(result.val_metrics.items()) if _finite(v))
    print(
        f"run {result.run_id}: {result.status} after {result.step} steps / {result.epoch} epochs."
        f" {result.reason}"
    )
    if metrics:
        print(f"final val: {metrics}")
    return 0 if result.status in ("completed", "cancelled") else 1


def _cmd_resume(args: argparse.Namespace) -> int:
    """`train VARIANT --resume RUN` for the run's own variant, after checking it can be resumed: failed,
    cancelled, or `running` with its trainer gone from this host (killed); a Ray run whose node died (the
    studio marks it failed) continues here from the checkpoint that came home."""
    from trainers.runs import checkpoints
    from trainers.runs.store import RunStore

    if not Path(args.runs_dir).is_dir():
        raise FileNotFoundError(f"runs folder not found: {args.runs_dir}")
    with RunStore(args.runs_dir) as store:
        run = store.get_run(args.run_id)
        if run is None:
            raise ValueError(f"no run with id {args.run_id!r} in {args.runs_dir}")
        if run.status == "running":
            where = _still_running(run)
            if where:
                raise ValueError(f"run {run.id} is still running ({where}); cancel it before resuming it")
            reason = f"killed: its trainer process {run.pid} is gone (found by `resume`)"
            store.set_status(run.id, "failed", reason, from_statuses=("running",))
        elif run.status not in ("failed", "cancelled"):
            raise ValueError(
                f"run {run.id} is {run.status}; only a failed, cancelled or killed run can be resumed"
            )
        if checkpoints.checkpoint_path(store.run_dir(run.id), "last") is None:
            raise ValueError(f"run {run.id} saved no 'last' checkpoint, so there is nothing to resume from")
    argv = ["train", run.variant, "--resume", run.id, "--runs-dir", args.runs_dir]
    return _cmd_train(build_parser().parse_args(argv + (["--no-progress"] if args.no_progress else [])))


def _still_running(run: Any) -> str:
    """Where a `running` run's trainer still runs ("" when it is gone from this host)."""
    import socket

    if (run.host or "").startswith("ray:"):
        return "on the Ray cluster: cancel it from the studio, which marks it failed if its node died"
    if run.host and run.host != socket.gethostname():
        return f"on host {run.host}"
    if run.pid is None:  # a trainer records its pid as it starts: none here means it never ran on
        return ""
    try:
        os.kill(run.pid, 0)
    except ProcessLookupError:
        return ""
    except PermissionError:
        pass
    try:  # a recycled pid is some other program
        cmdline = Path(f"/proc/{run.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        cmdline = "trainers"  # no procfs: the live pid is all there is to go on
    return f"pid {run.pid}" if "trainers" in cmdline or "ae-train" in cmdline else ""


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def _cmd_runs(args: argparse.Namespace) -> int:
    from trainers.runs.store import RunStore

    if not Path(args.runs_dir).exists():
        raise FileNotFoundError(f"runs folder not found: {args.runs_dir}")
    with RunStore(args.runs_dir) as store:
        _fail_vanished_runs(store)
        rows = []
        for run in store.list_runs():
            rows.append(
                {
                    "id": run.id,
                    "variant": run.variant,
                    "status": run.status,
                    "reason": run.reason,
                    "step": run.step,
                    "epoch": run.epoch,
                    "device": run.device,
                    "best": store.best_metrics(run.id),
                    "best_checkpoint": run.best_checkpoint,
                }
            )
    if args.json:
        print(json.dumps(rows, indent=2, default=_json_default))
        return 0
    if not rows:
        print(f"no runs in {args.runs_dir}")
        return 0
    for r in rows:
        best = ", ".join(f"{k}={v:.4g}" for k, v in sorted(r["best"].items()) if _finite(v))
        print(f"{r['id']}  {r['variant']:<20} {r['status']:<10} epoch {r['epoch'] or 0:<3} {best}")
        if r["reason"]:
            print(f"    {r['reason']}")
    return 0


# A trainer's process starts before it records the run as running; this covers clock ticks and slow starts.
PROCESS_START_SLACK_S = 5.0


def _trainer_alive(pid: int, run_id: str, started_at: float | None) -> bool:
    """Whether process `pid` is alive and still the one training `run_id` (not a recycled pid): its command
    line names the run, or it started before the run did. Without procfs a live pid is all there is."""
    proc = Path(f"/proc/{pid}")
    if not Path("/proc").is_dir():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    try:
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        args = (proc / "cmdline").read_bytes().split(b"\0")
        boot = next(
            float(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime")
        )
    except (OSError, IndexError, ValueError, StopIteration):
        return False
    if state[0] in ("Z", "X"):
        return False
    if run_id.encode() in args:
        return True
    start = boot + int(state[19]) / os.sysconf("SC_CLK_TCK")  # field 22 of stat: start time in clock ticks
    return started_at is not None and start <= started_at + PROCESS_START_SLACK_S


def _fail_vanished_runs(store: Any) -> None:
    """Runs of this host recorded as `running` whose trainer process is gone (SIGKILL, a crash, a reboot) are
    marked failed with the reason, as the studio does when it opens the folder."""
    import socket

    host = socket.gethostname()
    for run in store.list_runs(statuses="running"):
        if run.pid is None or run.host not in (None, host) or run.pid == os.getpid():
            continue
        if _trainer_alive(run.pid, run.id, run.started_at):
            continue
        hint = (
            f"; `python -m trainers train {run.variant} --resume {run.id}` continues it"
            if run.last_checkpoint
            else ""
        )
        reason = f"trainer process {run.pid} is gone (killed or crashed) at step {run.step or 0}{hint}"
        store.set_status(run.id, "failed", reason, from_statuses=("running",))


def _json_default(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return str(v)


def resolve_checkpoint(source: str, runs_dir: str | Path, kind: str = "best") -> Path:
    """A run id (its `best`, else `last`, checkpoint) or a checkpoint folder, as a folder path."""
    from trainers.runs import checkpoints

    path = Path(source)
    if path.is_dir():
        return path
    run_folder = Path(runs_dir) / source
    if not run_folder.is_dir():
        raise FileNotFoundError(f"'{source}' is neither a checkpoint folder nor a run id in {runs_dir}")
    for k in (kind, "last"):
        found = checkpoints.checkpoint_path(run_folder, k)
        if found is not None:
            return found
    raise FileNotFoundError(f"run '{source}' has no checkpoint yet")


def evaluate_checkpoint(folder: Path, data: str | None, device: str = "auto", batch_size: int = 8) -> dict:
    """Metrics of the checkpoint in `folder` on the data spec (default: the domain's built-in data)."""
    import torch
    from torch.utils.data import DataLoader

    from models import load_pretrained
    from trainers.data.spec import default_data_spec, parse_data_spec
    from trainers.training.loop import resolve_device
    from trainers.training.progress import bar
    from trainers.training.tasks import AudioTask, task_for

    model = load_pretrained(folder)
    config = json.loads((Path(folder) / "config.json").read_text())
    task = task_for(model.VARIANT)
    spec = parse_data_spec(data) if data else default_data_spec(task.domain)
    if spec.domain != task.domain:
        raise ValueError(
            f"checkpoint is a {task.domain} model ({model.VARIANT}); data spec '{data}' is {spec.domain}"
        )
    dev = resolve_device(device)
    model.to(dev).eval()
    dataset = task.dataset_for_eval(spec, dict(model.preprocessing), config)
    loader = bar(DataLoader(dataset, batch_size=batch_size, shuffle=False), "eval", unit="batch")
    with torch.no_grad():
        if isinstance(task, AudioTask):
            metrics = task.evaluate(model, loader, dev, dataset=dataset)
        else:
            metrics = task.evaluate(model, loader, dev)
    return {
        "variant": model.VARIANT,
        "checkpoint": str(folder),
        "data": str(spec),
        "n": len(dataset),
        **metrics,
    }


def _cmd_eval(args: argparse.Namespace) -> int:
    folder = resolve_checkpoint(args.source, args.runs_dir, args.kind)
    result = evaluate_checkpoint(folder, args.data, args.device, args.batch_size)
    if args.json:
        print(json.dumps(result, indent=2, default=_json_default))
    else:
        print(f"{result['variant']} from {result['checkpoint']} on {result['data']} ({result['n']} samples)")
        for k, v in result.items():
            if k not in ("variant", "checkpoint", "data", "n"):
                print(f"  {k:<32} {v:.5g}" if isinstance(v, float) else f"  {k:<32} {v}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from trainers.evaluation.compare import markdown_report, run_compare, to_json, write_outputs
    from trainers.settings import whole
    from trainers.training.progress import terminal_progress

    whole("seed", args.seed)  # the bootstrap's generator takes seeds in [0, 2**32 - 1]
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.study:
        return _compare_study(args)
    if args.claim:
        raise ValueError("--claim needs --study: a claim is answered over a study's seeds")
    try:
        with terminal_progress("compare") as progress:
            result = run_compare(
                args.sources,
                args.data,
                baselines=args.baselines,
                seed=args.seed,
                runs_dir=args.runs_dir,
                kind=args.kind,
                device=args.device,
                batch_size=args.batch_size,
                progress=progress,
            )
    except (FileNotFoundError, PermissionError):
        raise  # their messages name the missing run, folder or file
    except OSError as exc:  # an unreadable file or folder surfaced by a library
        raise ValueError(f"cannot read the data: {exc}") from exc
    for skipped in result.get("skipped_files", []):
        print(f"warning: skipped {skipped['file']}: {skipped['reason']}", file=sys.stderr)
    print(to_json(result) if args.json else markdown_report(result), end="" if not args.json else "\n")
    if args.out:
        paths = write_outputs(result, args.out)
        print(f"wrote {', '.join(str(p) for p in paths)}", file=sys.stderr)
    return 0


def _compare_study(args: argparse.Namespace) -> int:
    from trainers.evaluation.claims import parse_claim
    from trainers.evaluation.study import compare_study, study_markdown
    from trainers.training.progress import terminal_progress

    if args.sources:
        raise ValueError("give either run ids / checkpoints or --study, not both")
    if args.baselines:
        raise ValueError("--baselines is for a leaderboard of runs; a study compares its own runs")
    claims = [parse_claim(text) for text in args.claim]
    with terminal_progress("study") as progress:
        result = compare_study(
            args.study,
            args.runs_dir,
            args.data,
            claims,
            seed=args.seed,
            device=args.device,
            batch_size=args.batch_size,
            progress=progress,
        )
    as_json, as_markdown = json.dumps(result, allow_nan=False), study_markdown(result)
    print(as_json if args.json else as_markdown, end="" if not args.json else "\n")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "study.json").write_text(as_json + "\n")
        (out / "study.md").write_text(as_markdown)
        print(f"wrote {out / 'study.md'} and {out / 'study.json'}", file=sys.stderr)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from trainers.runs.export import export_runs

    paths = export_runs(args.run_ids, args.format, args.out, args.runs_dir, with_media=not args.no_media)
    for path in paths:
        print(path)
    if args.format == "tensorboard":
        print(f"view with: tensorboard --logdir {args.out}", file=sys.stderr)
    return 0


def _cmd_variants(args: argparse.Namespace) -> int:  # noqa: ARG001
    from models import VARIANTS

    for name, info in VARIANTS.items():
        print(f"{name:<20} {info.domain:<10} {info.description}")
    return 0


def _cmd_push(args: argparse.Namespace) -> int:
    from trainers.hub import push as hub

    return hub.cli_push(args)


def _cmd_study(args: argparse.Namespace) -> int:
    from trainers.runs.store import RunStore
    from trainers.runs.studies import create_study_runs, parse_sweep, plan_study
    from trainers.training.study import default_jobs, run_study

    settings = {"data": args.data, "epochs": args.epochs, "max_steps": args.max_steps}
    settings["device"] = args.device if args.device != "auto" else None
    # Every run is checked before any exists, so a typo in one setting leaves nothing behind.
    configs = plan_study(args.variants, args.seeds, parse_sweep(args.sweep), preset=args.preset, **settings)
    jobs = args.jobs if args.jobs is not None else default_jobs()
    if jobs < 1:
        raise ValueError(f"--jobs must be at least 1, got {jobs}")
    with RunStore(args.runs_dir) as store:
        run_ids = create_study_runs(store, configs, name=args.name)
        study = configs[0].study
        if not args.json:
            print(f"study {study}: {len(run_ids)} runs, {jobs} at once (Ctrl-C cancels the rest)", flush=True)
        say = (lambda line: None) if args.json else (lambda line: print(line, flush=True))
        try:
            statuses = run_study(store, run_ids, jobs, on_event=say)
        except KeyboardInterrupt:
            statuses = {run_id: store.get_run(run_id).status for run_id in run_ids}
            _print_study(args.json, study, statuses)
            return 130
    _print_study(args.json, study, statuses)
    return 0 if all(s == "completed" for s in statuses.values()) else 1


def _print_study(as_json: bool, study: str, statuses: dict[str, str]) -> None:
    if as_json:
        runs = [{"id": run_id, "status": status} for run_id, status in statuses.items()]
        print(json.dumps({"study": study, "runs": runs}))
        return
    done = sum(s == "completed" for s in statuses.values())
    print(f"study {study}: {done} of {len(statuses)} runs completed")


def _cmd_studies(args: argparse.Namespace) -> int:
    from trainers.runs.store import RunStore
    from trainers.runs.studies import list_studies

    if not Path(args.runs_dir).exists():
        raise FileNotFoundError(f"runs folder not found: {args.runs_dir}")
    with RunStore(args.runs_dir) as store:
        studies = [s.to_dict() for s in list_studies(store)]
    if args.json:
        print(json.dumps(studies, indent=2))
        return 0
    if not studies:
        print(f"no studies in {args.runs_dir}")
    for s in studies:
        sweep = "; ".join(f"{k}={','.join(map(str, v))}" for k, v in s["sweep"].items())
        print(
            f"{s['study']}  {', '.join(s['variants'])}  seeds {s['seeds']}  {s['done']}/{len(s['runs'])} done"
            + (f"  sweep {sweep}" if sweep else "")
        )
    return 0


_COMMANDS = {
    "train": _cmd_train,
    "resume": _cmd_resume,
    "study": _cmd_study,
    "studies": _cmd_studies,
    "runs": _cmd_runs,
    "eval": _cmd_eval,
    "compare": _cmd_compare,
    "export": _cmd_export,
    "variants": _cmd_variants,
    "push": _cmd_push,
}
