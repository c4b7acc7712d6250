"""The studio's Gradio app: the tabs, the shared context, and the `python app.py` entry point.

Gradio, torch and the views are imported when the app is built, not with this module, so that
`python app.py --help` is instant and a bad GRADIO_SERVER_PORT (which Gradio itself reads when imported)
gets our message instead of a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import gradio as gr

    from studio.context import StudioContext

log = logging.getLogger(__name__)

TITLE = "Autoencoder Comparison Studio"
DEFAULT_PORT = 7860
DEFAULT_RUNS_DIR = "runs"
#: Where training jobs run: subprocesses of this machine, or a Ray cluster (the `ray` extra).
BACKENDS = ("local", "ray")
# Waiting events per app: enough for a few users, few enough that a flood is refused instead of queued for
# minutes. A Space's small CPU gets a shorter queue.
QUEUE_SIZE = 64
SPACE_QUEUE_SIZE = 16
# Inference handlers of the comparison tabs run a model on the CPU/GPU; two at once keeps a page responsive
# without oversubscribing a small machine. Polling handlers set their own (unlimited) limits.
DEFAULT_CONCURRENCY = 2
MAX_UPLOAD = "500mb"
#: (every, older than) in seconds: Gradio deletes cached uploads and outputs older than an hour, hourly.
DELETE_CACHE = (3600, 3600)
SPACE_MAX_UPLOAD = "50mb"

CSS = """
#train-status p { margin: 0.25em 0; }
#train-log textarea { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 12px; }
"""

INTRO = (
    f"# {TITLE}\n"
    "Train autoencoder variants for SAR images, audio and 512-byte file fragments, watch their curves, "
    "and compare the reconstructions of their checkpoints side by side."
)

# (tab label, module of studio.views with build_tab(ctx)), in page order.
TABS: tuple[tuple[str, str], ...] = (
    ("Train", "train"),
    ("SAR", "sar"),
    ("Audio", "audio"),
    ("Fragments", "fragments"),
    ("Compare", "compare"),
    ("Hub", "hub"),
)


def is_space() -> bool:
    """Whether we run on a Hugging Face Space (the platform sets SPACE_ID)."""
    return bool(os.environ.get("SPACE_ID"))


def is_temporary(folder: str | Path) -> bool:
    """Whether ``folder`` lies in the system's temporary directory (``tempfile.gettempdir()``)."""
    import tempfile

    tmp = Path(tempfile.gettempdir()).resolve()
    return Path(folder).resolve().is_relative_to(tmp)


def default_cpu_slots(space: bool) -> int:
    """CPU training jobs at once: one on a Space; else a job per 4 cores (each job uses its share of them)."""
    if space:
        return 1
    return max(1, min(4, (os.cpu_count() or 1) // 4))


def make_context(
    runs_dir: str | Path = DEFAULT_RUNS_DIR,
    cpu_slots: int | None = None,
    space: bool | None = None,
    gpu_jobs: int | None = None,
    backend: str = "local",
    ray_address: str | None = None,
    ray_gpu_memory_gib: float | None = None,
    ray_python: str | None = None,
    ray_storage: str | None = None,
) -> StudioContext:
    """Open the run store in `runs_dir` and start the job manager; `space=None` detects a Space.

    `gpu_jobs` caps the training jobs per GPU; None packs as many as fit in its memory. `backend` "ray"
    sends the jobs to the Ray cluster at `ray_address` (None: a local Ray instance started for the app), with
    `ray_gpu_memory_gib` per GPU for packing (None: detected), `ray_python` as the nodes' interpreter (None:
    each node's own Ray Python) and `ray_storage` for checkpoints and media (None: through the sink actor);
    a RuntimeError says what is wrong (Ray not installed, cluster unreachable)."""
    from studio.context import StudioContext
    from studio.jobs import JobManager, SpaceLimits
    from trainers.runs.store import RunStore

    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    space = is_space() if space is None else bool(space)
    slots = default_cpu_slots(space) if cpu_slots is None else cpu_slots
    folder = Path(runs_dir).expanduser().resolve()
    store = RunStore(folder)
    try:
        runner = None
        if backend == "ray":  # imported only here: without --backend ray the studio never imports Ray
            from studio.backends.ray import RayBackend, import_ray

            import_ray()  # not installed: the one-line install hint
            memory = None if ray_gpu_memory_gib is None else int(ray_gpu_memory_gib * (1 << 30))
            runner = RayBackend(
                ray_address, python=ray_python, gpu_memory=memory, gpu_jobs=gpu_jobs, storage=ray_storage
            )
        limits = SpaceLimits() if space else None  # what a stranger may ask of a public Space
        jobs = JobManager(
            folder, store=store, cpu_slots=slots, gpu_jobs=gpu_jobs, space_limits=limits, backend=runner
        )
    except BaseException:
        store.close()
        raise
    return StudioContext(runs_dir=folder, store=store, jobs=jobs, space=space)


def build_app(ctx: StudioContext) -> gr.Blocks:
    """The studio page: Train, SAR, Audio, Fragments, Compare and Hub tabs over one shared context."""
    import gradio as gr

    from studio.views import audio, compare, fragments, hub, sar, train

    views = {
        "train": train,
        "sar": sar,
        "audio": audio,
        "fragments": fragments,
        "compare": compare,
        "hub": hub,
    }
    # Uploads stay in Gradio's cache until deleted: every hour, remove those older than an hour.
    with gr.Blocks(title=TITLE, delete_cache=DELETE_CACHE) as demo:
        gr.Markdown(INTRO)
        limits = getattr(ctx.jobs, "space_limits", None)
        if ctx.space and limits is not None:  # the enforced limits, stated where a visitor starts
            gr.Markdown(f"**Space limits.** {limits.describe()}", elem_id="space-limits")
        from studio.views.common import visitor_state

        visitor_state(ctx)  # a Space visitor's id, kept in the browser: their jobs survive a reload
        with gr.Tabs():
            for label, name in TABS:
                with gr.Tab(label, id=name, elem_id=f"tab-{name}") as tab:
                    refresher = views[name].build_tab(ctx)
                if refresher is not None:
                    # Opening a tab refreshes its checkpoint picker, so runs finished meanwhile are listed.
                    refresh_fn, picker = refresher
                    tab.select(refresh_fn, inputs=picker, outputs=picker, api_visibility="private")
    demo.queue(
        max_size=SPACE_QUEUE_SIZE if ctx.space else QUEUE_SIZE,
        default_concurrency_limit=DEFAULT_CONCURRENCY,
    )
    return demo


def launch_kwargs(ctx: StudioContext) -> dict[str, Any]:
    """Settings for ``Blocks.launch`` besides host and port (Gradio 6 takes theme and css here)."""
    import gradio as gr

    from studio.views.common import TABLE_CSS

    return {
        "theme": gr.themes.Soft(),
        "css": CSS + TABLE_CSS,
        # Handlers turn bad input into messages; an unexpected error shows its message, never a traceback.
        "show_error": True,
        "max_file_size": SPACE_MAX_UPLOAD if ctx.space else MAX_UPLOAD,
        "footer_links": ["api", "gradio", "settings"],
    }


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"port must be a number in 1-65535, got {value!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be a number in 1-65535, got {port}")
    return port


def _checked(kind: str, value: str) -> Any:
    """An argparse type's value, checked by the one validation layer in its words (imported only when a
    flag is given: it brings torch)."""
    from trainers import settings

    try:
        if kind == "whole":
            return settings.whole("value", value, minimum=1)
        return settings.real("value", value, positive=True)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(value: str) -> int:
    """--cpu-slots, --gpu-jobs."""
    return _checked("whole", value)


def _positive_float(value: str) -> float:
    """--ray-gpu-memory."""
    return _checked("real", value)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command line of `python app.py`; environment variables give the defaults (see --help)."""
    space = is_space()
    env_port = os.environ.get("GRADIO_SERVER_PORT")
    from trainers.cli import prog_name

    parser = argparse.ArgumentParser(prog=prog_name("python app.py"), description=f"Serve the {TITLE}.")
    parser.add_argument(
        "--host",
        default=os.environ.get("GRADIO_SERVER_NAME") or ("0.0.0.0" if space else "127.0.0.1"),
        help="address to listen on (default 127.0.0.1, this machine only; 0.0.0.0 on a Space; "
        "env GRADIO_SERVER_NAME)",
    )
    parser.add_argument(
        "--port",
        type=_port,
        default=None,
        help=f"port (default: env GRADIO_SERVER_PORT, else {DEFAULT_PORT})",
    )
    parser.add_argument(
        "--runs-dir",
        default=os.environ.get("STUDIO_RUNS_DIR") or DEFAULT_RUNS_DIR,
        help="folder of the run store, checkpoints and logs (default: env STUDIO_RUNS_DIR, else ./runs)",
    )
    parser.add_argument(
        "--cpu-slots",
        type=_positive,
        default=None,
        help="training jobs that may run at once on the CPU (default: 1 on a Space, else cores/4, at most 4)",
    )
    parser.add_argument(
        "--gpu-jobs",
        type=_positive,
        default=None,
        help="training jobs that may share one GPU at most (default: as many as fit in its memory, by each "
        "job's counted memory budget; 1 = one job per GPU)",
    )
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default=os.environ.get("AE_STUDIO_BACKEND") or "local",
        help="where training jobs run: local subprocesses, or ray = a Ray cluster (pip install .[ray]) "
        "(default: env AE_STUDIO_BACKEND, else local)",
    )
    parser.add_argument(
        "--ray-address",
        default=os.environ.get("RAY_ADDRESS") or None,
        help="with --backend ray: the cluster's address, e.g. HEAD_IP:6379 (default: env RAY_ADDRESS; "
        "neither: start a local Ray instance for this app)",
    )
    parser.add_argument(
        "--ray-gpu-memory",
        type=_positive_float,
        default=None,
        metavar="GIB",
        help="with --backend ray: memory of each GPU of the cluster in GiB, to pack several jobs on one GPU "
        "(default: read once from a GPU node; whole GPUs per job when that fails)",
    )
    parser.add_argument(
        "--ray-python",
        default=os.environ.get("AE_STUDIO_RAY_PYTHON") or None,
        help="with --backend ray: the Python interpreter on the nodes (default: the one each node runs Ray "
        "with; env AE_STUDIO_RAY_PYTHON)",
    )
    parser.add_argument(
        "--ray-storage",
        default=os.environ.get("AE_STUDIO_RAY_STORAGE") or None,
        metavar="URI",
        help="with --backend ray: storage every node reaches (a shared path, s3://..., gs://...; as Ray "
        "Train's storage_path) for checkpoints and media (default: sent through the studio's sink; env "
        "AE_STUDIO_RAY_STORAGE)",
    )
    args = parser.parse_args(argv)
    if args.backend not in BACKENDS:  # from the environment: argparse checks only the command line
        parser.error(f"AE_STUDIO_BACKEND must be one of {', '.join(BACKENDS)}, got {args.backend!r}")
    if args.port is None:
        args.port = _port(env_port) if env_port else DEFAULT_PORT
    return args


def _interrupt(signum: int, frame: Any) -> None:  # noqa: ARG001
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Serve the studio until Ctrl-C or SIGTERM; training jobs keep running and are re-attached next time."""
    from studio.context import space_runs_dir

    runs = space_runs_dir()  # a Space with persistent storage: /data/runs, unless STUDIO_RUNS_DIR is set
    if runs is not None:
        os.environ["STUDIO_RUNS_DIR"] = str(runs)  # also inherited by the training job processes
    try:
        args = parse_args(argv)
    except argparse.ArgumentTypeError as exc:  # an invalid GRADIO_SERVER_PORT
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # Gradio parses GRADIO_SERVER_PORT when imported; make it the (checked) port we serve on.
    os.environ["GRADIO_SERVER_PORT"] = str(args.port)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        ctx = make_context(
            args.runs_dir,
            args.cpu_slots,
            gpu_jobs=args.gpu_jobs,
            backend=args.backend,
            ray_address=args.ray_address,
            ray_gpu_memory_gib=args.ray_gpu_memory,
            ray_python=args.ray_python,
            ray_storage=args.ray_storage,
        )
    except RuntimeError as exc:  # the Ray backend: Ray not installed, the cluster unreachable
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, OSError) as exc:
        print(f"error: cannot open the runs folder {args.runs_dir}: {exc}", file=sys.stderr)
        return 2
    # SIGTERM (a service manager, a test fixture) takes the same clean path as Ctrl-C.
    signal.signal(signal.SIGTERM, _interrupt)
    demo = None
    try:
        demo = build_app(ctx)
        demo.launch(server_name=args.host, server_port=args.port, **launch_kwargs(ctx))
    except KeyboardInterrupt:
        pass
    except OSError as exc:  # port in use, address not available
        print(f"error: cannot serve on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 2
    finally:
        if demo is not None:
            demo.close()
        if ctx.jobs is not None:
            # Jobs outlive the app (a later one re-attaches), except in a temporary runs folder (a test, a
            # benchmark): nothing will ever read it again, so its jobs are cancelled rather than orphaned.
            # So are the jobs of a local Ray instance: it stops with the app, and they would die unsaved.
            local_ray = getattr(ctx.jobs.backend, "started_local", False)
            ctx.jobs.shutdown(cancel_running=is_temporary(ctx.runs_dir) or local_ray)
        ctx.store.close()
    return 0
