"""The Ray job backend: every queued run becomes a Ray job on a cluster, placed by Ray, results sent home.

Ray's own machinery does the work: the Ray Jobs API (`JobSubmissionClient`) submits each run with its
resource needs (CPUs; a GPU, or a fraction of one when jobs are packed by their memory budgets), stops it
(SIGTERM to the trainer's process group, SIGKILL after ``RAY_JOB_STOP_WAIT_TIME_S``), reports its status
(a node that dies ends the job FAILED with Ray's message) and serves its log. The code travels as the job's
``working_dir`` (a snapshot of the package's tracked files, `stage_package`), so the trainer's working
directory is on its node, never the studio's folder; the job runs with its node's own Ray Python
(`job_entrypoint`). The trainer writes no file the studio reads: with ``--sink`` it sends every store write
and every checkpoint folder to a `RunSink` actor on the studio's node (`trainers.runs.ray_sink`), which
writes them into the studio's run store as they are acknowledged (checkpoints in pieces, or through
``storage``).

``ray`` is optional: this module imports it only when a backend is made.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import os
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from studio.backends.base import RAY_HOST_PREFIX, Ended, Job, JobBackend
from studio.backends.local import LOG_NAME, PROJECT_ROOT, _tail_lines
from studio.jobs import GPU_MEMORY_USABLE  # the share of a GPU packed jobs may budget for, as locally
from trainers.runs.ray_sink import ADDRESS_ENV, ATTEMPT_ENV, STORAGE_ENV  # imports no ray

if TYPE_CHECKING:
    from trainers.runs.store import RunRecord, RunStore

log = logging.getLogger(__name__)

INSTALL_HINT = "the Ray backend needs Ray: pip install .[ray]  (or: pip install 'ray[default]')"
#: The file in a run's folder (written by the studio, on its own disk) that names the run's Ray job, so a
#: restarted studio re-attaches by submission id.
SUBMISSION_FILE = "ray-job.json"
#: Seconds between Ray's SIGTERM and SIGKILL of a stopped job: time for the trainer to save `last` and send
#: it home (passed in the job's runtime_env as RAY_JOB_STOP_WAIT_TIME_S; Ray's default is 3 s).
STOP_WAIT_S = 15.0
#: How long a submission is retried while the cluster answers "try again later" (agents still starting).
SUBMIT_RETRY_S = 30.0
#: A job's status is asked of the dashboard at most this often (the scheduler ticks faster).
POLL_EVERY_S = 1.0
CONNECT_TIMEOUT_S = 5.0
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# ray.init cannot move a local instance's dashboard agent off its fixed port (52365), which another Ray
# instance on the machine may hold; its jobs then find no agent.
AGENT_HINT = (
    " (another Ray instance on this machine holds the dashboard agent's port 52365: run the studio against "
    "that cluster with --ray-address, or stop it)"
)
# Ray logs the real cause of a refused connection (token authentication, on by default for `ray start` in
# recent Ray) but raises a generic error; the studio's message says where to look.
AUTH_HINT = (
    "; if Ray's log above says 'Unauthenticated' or 'InvalidAuthToken', the cluster uses token "
    "authentication: set RAY_AUTH_MODE=token and its token for this app, as for any Ray driver"
)
#: What a job carries as its ``working_dir``: the package's own files under these folders (assets: the presets
#: name example data by a relative path), never build/, runs/, exports/, tb/ or other scratch of the checkout.
PACKAGE_DIRS: tuple[str, ...] = ("models", "trainers", "studio", "assets")
#: Shipped nowhere: the reference checkpoints (16 MB the trainers never read).
PACKAGE_EXCLUDES: tuple[str, ...] = ("assets/reference/",)
# Hub tokens and the like never travel: a job gets only the variables named here and in `env_vars`.


def import_ray() -> Any:
    """``ray`` with its job submission client, or a RuntimeError that says how to install it."""
    try:
        import ray
        from ray.job_submission import JobSubmissionClient  # noqa: F401 - needs ray[default]
    except ImportError as exc:
        raise RuntimeError(f"{INSTALL_HINT} ({exc})") from None
    return ray


def ray_resources(
    device: str, cpus: float, budget: int = 0, gpu_memory: int | None = None, gpu_jobs: int | None = None
) -> dict[str, float]:
    """The Ray Jobs entrypoint resources of one run: ``entrypoint_num_cpus`` and, on a GPU,
    ``entrypoint_num_gpus``.

    A GPU run gets a whole GPU unless packing applies: with the GPUs' memory known (`gpu_memory`, bytes per
    GPU), the share of it that its counted `budget` takes of the usable memory (GPU_MEMORY_USABLE), and with
    `gpu_jobs` (jobs per GPU at most) at least 1/gpu_jobs. The fraction is rounded up to a hundredth, so
    Ray never packs more than fits, and is at most 1 (a job larger than a GPU gets one of its own).
    """
    if not cpus > 0 or not math.isfinite(cpus):
        raise ValueError(f"cpus per job must be a positive number, got {cpus!r}")
    out = {"entrypoint_num_cpus": float(cpus)}
    if device == "cpu":
        return out
    if gpu_memory is None and gpu_jobs is None:
        out["entrypoint_num_gpus"] = 1.0
        return out
    share = 0.0
    if gpu_memory is not None:
        if gpu_memory <= 0:
            raise ValueError(f"gpu_memory must be a number of bytes > 0, got {gpu_memory!r}")
        share = max(0, budget) / (gpu_memory * GPU_MEMORY_USABLE)
    if gpu_jobs is not None:
        share = max(share, 1.0 / gpu_jobs)
    out["entrypoint_num_gpus"] = min(1.0, max(0.01, math.ceil(share * 100 - 1e-9) / 100))
    return out


def package_files(root: Path | None = PROJECT_ROOT) -> dict[str, Path]:
    """The files a job needs, as relative POSIX path -> source file: in a git checkout (`root`), the tracked
    files under PACKAGE_DIRS (their working-tree content: an uncommitted edit travels, a stray file never);
    otherwise (an installed studio, or no git) every file of the imported packages but caches. A tracked file
    deleted from the working tree is left out."""
    tracked = _git_files(root) if root is not None else None
    if tracked is not None:
        wanted = tuple(f"{name}/" for name in PACKAGE_DIRS)
        picked = {rel: root / rel for rel in tracked if rel.startswith(wanted)}
    else:
        picked = {}
        for name in ("models", "trainers", "studio"):
            base = Path(importlib.import_module(name).__file__).resolve().parent
            for path in base.rglob("*"):
                rel = path.relative_to(base.parent).as_posix()
                if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                    picked[rel] = path
    return {
        rel: path
        for rel, path in sorted(picked.items())
        if not rel.startswith(PACKAGE_EXCLUDES) and path.is_file() and not path.is_symlink()
    }


def _git_files(root: Path) -> list[str] | None:
    """`git ls-files` of the checkout at `root` (None: not a checkout's top, or no git)."""
    if not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "ls-files", "-z"], capture_output=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return [name for name in out.decode("utf-8", "surrogateescape").split("\0") if name]


def stage_package(dest: Path, root: Path | None = PROJECT_ROOT) -> Path:
    """Copy the package's files (`package_files`) into the empty folder `dest`: the job's ``working_dir``.
    A snapshot: nothing that changes in the checkout during a submission reaches Ray's upload."""
    for rel, source in package_files(root).items():
        target = dest.joinpath(*rel.split("/"))
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    return dest


# The interpreter of a job: the one Ray runs its workers with on that node (the raylet's
# --python_worker_command, i.e. the sys.executable of `ray start` there, venv included), then the binary of
# the job's supervisor (Ray's own worker process), then python3/python on PATH; the first that imports ray
# wins.
# POSIX sh: Ray runs the entrypoint with /bin/sh, whose parent is the job's supervisor.
_NODE_PYTHON_SH = r"""ae_ok() { [ -n "$1" ] && [ -x "$1" ] && "$1" -c 'import importlib.util as u, sys
sys.exit(u.find_spec("ray") is None)' 2>/dev/null; }
ae_py=; ae_p=$PPID; ae_i=0
while [ -z "$ae_py" ] && [ "$ae_i" -lt 4 ] && [ -r "/proc/$ae_p/cmdline" ]; do
  ae_c=$(tr '\0' '\n' < "/proc/$ae_p/cmdline" |
    sed -n 's/^--python_worker_command=\([^ ]*\).*/\1/p' | head -n 1)
  ae_ok "$ae_c" && ae_py=$ae_c
  ae_p=$(sed -n 's/^PPid:[[:space:]]*//p' "/proc/$ae_p/status"); ae_i=$((ae_i + 1))
done
[ -n "$ae_py" ] || { ae_c=$(readlink "/proc/$PPID/exe" 2>/dev/null); ae_ok "$ae_c" && ae_py=$ae_c; }
for ae_c in python3 python; do
  [ -n "$ae_py" ] && break; ae_c=$(command -v "$ae_c") && ae_ok "$ae_c" && ae_py=$ae_c
done
echo "[ae-studio] the node's Ray Python: ${ae_py:-none found, trying python}"
exec "${ae_py:-python}" """


def job_entrypoint(python: str | None, args: list[str]) -> str:
    """The job's shell command: `python` with `args`, or (None) the node's own Ray Python with them, found on
    the node when the job starts (nodes may differ; `python` on the PATH of Ray's processes often is not
    the one Ray, torch and the project's dependencies are installed in)."""
    if python:
        return shlex.join([python, *args])
    return _NODE_PYTHON_SH + shlex.join(args)


def submission_id(runs_dir: Path, run_id: str, attempt: int) -> str:
    """Ray's job id of a run's `attempt`: tied to the studio's runs folder (two studios on one cluster never
    collide) and unique per launch (a resumed run is a new Ray job)."""
    from trainers.runs.ray_sink import sink_name

    tag = sink_name(runs_dir).rsplit("-", 1)[-1]
    return f"ae-studio-{tag}-{run_id}-{attempt}"


class RayBackend(JobBackend):
    """Ray jobs on the cluster at `address` (a GCS address "HOST:6379", "auto" or "ray://..."; None starts
    a local Ray instance, stopped again at `close`).

    `python`: one interpreter for every node (default None: each node's own Ray Python, `job_entrypoint`).
    `cpus_per_job`: each job's
    ``entrypoint_num_cpus`` (also its OpenMP threads). `gpu_memory`: bytes per GPU of the cluster for packing
    (None: detected once from a GPU node; whole GPUs when that fails), `gpu_jobs`: at most that many jobs per
    GPU. `resources`: extra custom resources a run's job needs (a function of the run, e.g. to pin jobs to
    nodes that carry a resource). `env_vars`: more environment variables for the jobs. `working_dir`: the
    checkout whose package files travel (default: this one; not a checkout: the installed packages).
    `storage`: a URI every node reaches (path, s3://, gs://) for checkpoints and media (None: the sink).
    """

    name = "ray"
    places_jobs = True

    def __init__(
        self,
        address: str | None = None,
        python: str | None = None,
        cpus_per_job: float = 1.0,
        gpu_memory: int | None = None,
        gpu_jobs: int | None = None,
        resources: Callable[[RunRecord], Mapping[str, float]] | None = None,
        env_vars: Mapping[str, str] | None = None,
        working_dir: str | Path | None = None,
        stop_wait_s: float = STOP_WAIT_S,
        storage: str | None = None,
    ) -> None:
        ray_resources("cpu", cpus_per_job)  # checks the number
        if gpu_memory is not None and (isinstance(gpu_memory, bool) or int(gpu_memory) <= 0):
            raise ValueError(f"gpu_memory must be a number of bytes > 0 or None, got {gpu_memory!r}")
        if gpu_jobs is not None and (isinstance(gpu_jobs, bool) or int(gpu_jobs) < 1):
            raise ValueError(f"gpu_jobs must be a positive int or None, got {gpu_jobs!r}")
        if working_dir is not None and not Path(working_dir).is_dir():
            raise ValueError(f"working_dir {working_dir} is not a folder")
        self.address = address
        self.python = python
        self.cpus_per_job = float(cpus_per_job)
        self.gpu_memory = None if gpu_memory is None else int(gpu_memory)
        self._gpu_memory_probed = gpu_memory is not None
        self.gpu_jobs = gpu_jobs
        self.resources = resources
        self.env_vars = dict(env_vars or {})
        self.working_dir = PROJECT_ROOT if working_dir is None else Path(working_dir).resolve()
        self.stop_wait_s = float(stop_wait_s)
        self.storage = storage or None
        self.runs_dir: Path | None = None
        self.store: RunStore | None = None
        self.sink: str = ""
        self.dashboard = ""
        self.gcs_address = ""
        self._client: Any = None
        self._connected = False  # this backend called ray.init (and so calls ray.shutdown)
        self._started_local = False
        self._polled: dict[str, float] = {}
        self._saved: set[str | None] = set()  # jobs whose log was copied into the run's folder
        self._gpus: tuple[float, bool] | None = None  # (when read, the cluster has GPUs)

    # -- connection ---------------------------------------------------------------------------------------

    def bind(self, runs_dir: Path, store: RunStore) -> None:
        """Connect to the cluster (or start a local instance) and start the studio's sink on this node."""
        ray = import_ray()
        from ray.job_submission import JobSubmissionClient

        try:
            from trainers.runs.ray_sink import SINK_NAMESPACE, sink_name, start_sink
        except ImportError as exc:
            raise RuntimeError(f"the Ray backend needs trainers.runs.ray_sink ({exc})") from None
        self.runs_dir, self.store = Path(runs_dir), store
        if self.storage:
            self.storage = check_storage(self.storage)
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"namespace": SINK_NAMESPACE, "log_to_driver": False}
            if self.address is None:
                # "local": a new instance of this app's own, never a cluster someone else runs on this host.
                kwargs.update(address="local", include_dashboard=True)  # the dashboard serves the Jobs API
                self._started_local = True
            else:
                check_reachable(self.address)  # Ray itself retries an unreachable address for minutes
                kwargs["address"] = self.address
            try:
                context = ray.init(**kwargs)
            except Exception as exc:
                where = "start a local Ray instance" if self.address is None else f"reach {self.address}"
                raise RuntimeError(f"could not {where}: {' '.join(str(exc).split())}{AUTH_HINT}") from None
            self._connected = True
            webui = context.address_info.get("webui_url") or context.dashboard_url
        else:
            webui = ray._private.worker._global_node.webui_url
        self.gcs_address = ray.get_runtime_context().gcs_address
        if not webui:
            self.close(jobs_left=True)
            raise RuntimeError(f"the Ray cluster at {self.address or 'local'} serves no dashboard (Jobs API)")
        self.dashboard = webui if webui.startswith("http") else f"http://{webui}"
        try:
            self._client = JobSubmissionClient(self.dashboard)
        except Exception as exc:
            self.close(jobs_left=True)
            raise RuntimeError(
                f"the Ray Jobs API at {self.dashboard} does not answer: {_one_line(exc)}"
            ) from None
        try:
            start_sink(self.runs_dir)
        except Exception as exc:
            self.close(jobs_left=True)
            raise RuntimeError(f"could not start the studio's result sink on Ray: {_one_line(exc)}") from None
        self.sink = sink_name(self.runs_dir)
        log.info("Ray backend: jobs API at %s, sink %s", self.dashboard, self.sink)

    def close(self, jobs_left: bool) -> None:
        """Stop the sink when none of this studio's jobs still runs, and what this backend started. With the
        cluster gone, no call waits on it: Ray retries its control store for 60 s, then ends the process."""
        alive = self._cluster_alive()
        try:
            if alive and not jobs_left and self.runs_dir is not None and self._connected:
                from trainers.runs.ray_sink import stop_sink

                stop_sink(self.runs_dir)
        except Exception:
            log.warning("could not stop the Ray sink", exc_info=True)
        if self._connected:
            import ray

            ray.shutdown()  # a local instance this backend started stops with it
            self._connected = False

    def _cluster_alive(self) -> bool:
        if not self.gcs_address:
            return True
        try:
            check_reachable(self.gcs_address, timeout_s=2.0)
        except RuntimeError:
            log.warning("the Ray cluster at %s is gone; closing without it", self.gcs_address)
            return False
        return True

    @property
    def started_local(self) -> bool:
        """Whether this backend started a local Ray instance (it stops at `close`, with its jobs)."""
        return self._started_local and self._connected

    # -- placement ----------------------------------------------------------------------------------------

    def has_gpu(self) -> bool:
        """Whether the cluster has GPUs (read at most every 30 s: nodes come and go)."""
        now = time.monotonic()
        if self._gpus is None or now - self._gpus[0] > 30.0:
            import ray

            try:
                has = ray.cluster_resources().get("GPU", 0) > 0
            except Exception:
                has = self._gpus[1] if self._gpus else False
            self._gpus = (now, has)
        return self._gpus[1]

    def _gpu_memory(self) -> int | None:
        """Bytes per GPU of the cluster: the setting, else read once by a task on a GPU node."""
        if not self._gpu_memory_probed:
            self._gpu_memory_probed = True
            import ray

            @ray.remote(num_gpus=1, num_cpus=0)
            def total_memory() -> int:
                import torch

                return int(torch.cuda.get_device_properties(0).total_memory)

            try:
                self.gpu_memory = int(ray.get(total_memory.remote(), timeout=60))
            except Exception:
                log.warning("could not read the Ray cluster's GPU memory; one job per GPU", exc_info=True)
        return self.gpu_memory

    def owns(self, run: RunRecord) -> bool:
        return bool(run.host) and run.host.startswith(RAY_HOST_PREFIX)

    def launch(self, run: RunRecord, slot: str, budget: int = 0, resume: bool = False) -> Job:
        assert self.runs_dir is not None and self.store is not None and self._client is not None
        device = "cpu" if slot == "cpu" else "cuda"
        memory = self._gpu_memory() if device == "cuda" and (self.gpu_jobs or budget) else None
        needs = ray_resources(device, self.cpus_per_job, budget, memory, self.gpu_jobs)
        extra = dict(self.resources(run)) if self.resources is not None else {}
        attach = "--resume" if resume else "--run-id"
        args = ["-m", "trainers", "train", run.variant, attach, run.id, "--sink", self.sink]
        args += ["--no-progress", "--device", device]
        entrypoint = job_entrypoint(self.python, args)
        sid = submission_id(self.runs_dir, run.id, int(time.time() * 1000))
        folder = self.store.run_dir(run.id)
        folder.mkdir(parents=True, exist_ok=True)
        log_path = folder / LOG_NAME
        # Named before it is submitted: a studio stopped right after the submission still finds the job.
        _write_json(folder / SUBMISSION_FILE, {"submission_id": sid, "dashboard": self.dashboard})
        with open(log_path, "a") as handle:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            shown = shlex.join([self.python or "<the node's Ray Python>", *args])
            handle.write(f"[studio {stamp}] Ray job {sid} ({needs} {extra or ''}): {shown}\n")
        # "ray:" marks it as a Ray run at once: no local sweep takes it for a vanished process of this host.
        self.store.update_run(run.id, host=RAY_HOST_PREFIX, pid=None, device=device, log_path=str(log_path))
        with tempfile.TemporaryDirectory(prefix="ae-studio-job-") as staged:
            # A snapshot of the package's own files: Ray zips and uploads it inside submit_job.
            runtime_env = self._runtime_env(stage_package(Path(staged), self.working_dir), sid)
            self._submit(entrypoint, sid, runtime_env, run, extra, needs)
        log.info("submitted run %s as Ray job %s (%s)", run.id, sid, needs)
        return Job(run.id, None, None, log_path, backend=self.name, ref=sid)

    def _submit(
        self,
        entrypoint: str,
        sid: str,
        runtime_env: dict[str, Any],
        run: RunRecord,
        extra: dict[str, float],
        needs: dict[str, float],
    ) -> None:
        deadline = time.monotonic() + SUBMIT_RETRY_S
        while True:
            try:
                self._client.submit_job(
                    entrypoint=entrypoint,
                    submission_id=sid,
                    runtime_env=runtime_env,
                    metadata={"ae_studio_run": run.id, "ae_studio_sink": self.sink},
                    entrypoint_resources=extra or None,
                    **needs,
                )
                break
            except Exception as exc:
                text = _one_line(exc)
                # A cluster whose nodes' dashboard agents are still starting answers "try again later".
                if "try again later" not in text or time.monotonic() > deadline:
                    if "No available agent" in text and self._started_local:
                        text += AGENT_HINT
                    raise RuntimeError(f"Ray job submission to {self.dashboard} failed: {text}") from None
                time.sleep(1.0)

    def _runtime_env(self, working_dir: Path | None = None, sid: str = "") -> dict[str, Any]:
        """The job's runtime_env: its `working_dir` (the staged package) and the only variables it gets."""
        threads = str(max(1, int(self.cpus_per_job)))
        env = {
            "PYTHONUNBUFFERED": "1",
            "OMP_NUM_THREADS": threads,
            "MKL_NUM_THREADS": threads,
            "RAY_JOB_STOP_WAIT_TIME_S": f"{self.stop_wait_s:g}",
            "AE_STUDIO_SINK": self.sink,
            ADDRESS_ENV: self.gcs_address,  # this cluster, whatever else runs on the node's host
            ATTEMPT_ENV: sid,  # the sink refuses this attempt's writes once the studio gave up on it
            **self.env_vars,
        }
        if self.storage:
            env[STORAGE_ENV] = self.storage
        out: dict[str, Any] = {"env_vars": env}
        if working_dir is not None:
            out["working_dir"] = str(working_dir)
        return out

    # -- watching -----------------------------------------------------------------------------------------

    def stop(self, job: Job) -> None:
        try:
            self._client.stop_job(job.ref)
        except Exception as exc:
            log.warning("could not stop Ray job %s of run %s: %s", job.ref, job.run_id, _one_line(exc))

    def kill(self, job: Job) -> None:
        self.stop(job)  # Ray sends SIGKILL itself after RAY_JOB_STOP_WAIT_TIME_S

    def describe_stop(self, job: Job, grace: float) -> str:
        return (
            f"Cancelling {job.run_id}: asked Ray to stop its job {job.ref}; the trainer stops after the "
            f"current step and sends its last checkpoint home, or Ray kills it after {self.stop_wait_s:g} s."
        )

    def poll(self, job: Job) -> Ended | None:
        now = time.monotonic()
        if now - self._polled.get(job.ref or "", -math.inf) < POLL_EVERY_S:
            return None
        self._polled[job.ref or ""] = now
        try:
            info = self._client.get_job_info(job.ref)
        except Exception as exc:
            text = _one_line(exc)
            if "404" in text or "does not exist" in text:
                self._polled.pop(job.ref or "", None)
                self._give_up(job, "")
                return Ended(f"the Ray cluster at {self.dashboard} does not know job {job.ref} (restarted?)")
            log.warning("cannot read the status of Ray job %s: %s", job.ref, text)
            return None  # the dashboard hiccups; the job may well run on
        status = str(info.status)
        if status in ("PENDING", "RUNNING"):
            return None
        self._polled.pop(job.ref or "", None)
        self._save_log(job, info.message if status == "FAILED" else "")
        message = _one_line(info.message or "", 700)
        if status == "FAILED":
            self._give_up(job, message)
        if status == "STOPPED":
            return Ended(f"Ray job {job.ref} stopped" + (f": {message}" if message else ""), stopped=True)
        if status == "SUCCEEDED":
            return Ended(f"Ray job {job.ref} succeeded, but its trainer reported no end status", code=0)
        return Ended(f"Ray job {job.ref} failed: {message or 'no message from Ray'}")

    def _give_up(self, job: Job, message: str) -> None:
        """Ray ended the job FAILED: the sink refuses every later write of this attempt (a trainer that
        outlived its node, or its job, can no longer change the run), and a `completed` the trainer sent
        before Ray lost its node becomes `failed`, as Ray says (the manager keeps a terminal status)."""
        try:
            self._fence(job.ref or "")
        except Exception as exc:
            log.warning("could not fence Ray job %s of run %s: %s", job.ref, job.run_id, _one_line(exc))
        run = self.store.get_run(job.run_id) if self.store is not None else None
        if run is not None and run.status == "completed" and node_died(message):
            reason = (
                f"Ray job {job.ref} failed: {message}; its trainer had reported 'completed' while Ray lost "
                "its node (resume continues from its last checkpoint)"
            )
            self.store.set_status(job.run_id, "failed", reason, from_statuses=("completed",))

    def _fence(self, attempt: str) -> None:
        import ray

        from trainers.runs.ray_sink import get_sink

        ray.get(get_sink(self.sink).fence.remote(attempt), timeout=CONNECT_TIMEOUT_S * 2)

    def _save_log(self, job: Job, message: str = "") -> None:
        """Keep the ended job's log in the run's folder: it stays readable when the cluster is gone. Ray's
        message of a failed job (it ends with the entrypoint's last output) is kept after it."""
        if job.ref in self._saved:
            return
        try:
            text = strip_ansi(self._client.get_job_logs(job.ref))
        except Exception:
            text = ""
        self._saved.add(job.ref)
        if message:
            text = f"{text.rstrip()}\n[ray] {strip_ansi(message).strip()}\n"
        if text and self.store is not None:
            path = self.store.run_dir(job.run_id) / LOG_NAME
            with open(path, "a") as handle:
                handle.write(text if text.endswith("\n") else text + "\n")

    def adopt(self, run: RunRecord) -> Job | None:
        """Watch the Ray job of a running run, found by the submission id its launch recorded."""
        sid = self._submission(run)
        if sid is None:
            return None
        log.info("re-attached to run %s (Ray job %s)", run.id, sid)
        path = Path(run.log_path) if run.log_path else None
        return Job(run.id, None, None, path, backend=self.name, ref=sid)

    def _submission(self, run: RunRecord) -> str | None:
        if self.store is None:
            return None
        try:
            data = json.loads((self.store.run_dir(run.id) / SUBMISSION_FILE).read_text())
        except (OSError, ValueError):
            return None
        sid = data.get("submission_id") if isinstance(data, dict) else None
        return sid if isinstance(sid, str) and sid else None

    def log_lines(self, run: RunRecord, n: int) -> list[str]:
        """The live log from Ray while the job runs; the copy kept in the run's folder once it ended."""
        sid = self._submission(run) if not run.is_terminal else None
        if sid is not None and self._client is not None:
            try:
                return strip_ansi(self._client.get_job_logs(sid)).splitlines()[-n:]
            except Exception:
                pass
        path = Path(run.log_path) if run.log_path else (self.store.run_dir(run.id) / LOG_NAME)
        return _tail_lines(path, n)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def check_reachable(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """A RuntimeError that says so when nothing answers at a "host:port" cluster address (others, such as
    "auto" or "ray://...", are left to Ray)."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or "/" in address:
        return
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise RuntimeError(
            f"could not reach the Ray cluster at {address}: {exc.strerror or exc} (is `ray start --head "
            f"--port {port}` running on {host}, and is the port open to this machine?)"
        ) from None


def node_died(message: str) -> bool:
    """Whether Ray's message of a failed job says its node died (Ray: "...because its node has died")."""
    return bool(re.search(r"\bnode\b.*\b(died|dead)\b|\b(died|dead)\b.*\bnode\b", message, re.IGNORECASE))


def check_storage(uri: str) -> str:
    """The storage URI of `--ray-storage`, checked (a local path made absolute, its folder created); a
    RuntimeError that says what is wrong otherwise."""
    from trainers.runs.ray_sink import open_storage

    try:
        fs, base = open_storage(uri)
        fs.create_dir(base, recursive=True)
    except (ValueError, OSError) as exc:
        raise RuntimeError(f"the Ray storage {uri!r} cannot be used: {_one_line(exc)}") from None
    return uri if "://" in uri else base


def strip_ansi(text: str) -> str:
    """Ray's own log lines carry terminal colour codes; a log tail in a browser shows them as junk."""
    return _ANSI.sub("", text)


def _one_line(value: object, limit: int = 600) -> str:
    """``value`` on one line, at most `limit` characters: its start and its end (where a log's error is)."""
    text = " ".join(strip_ansi(str(value)).split())
    if len(text) <= limit:
        return text
    head = limit // 3
    return text[:head] + " ... " + text[-(limit - head - 5) :]
