"""The Ray job backend: every queued run becomes a Ray job on a cluster, placed by Ray, results sent home.

Ray's own machinery does the work: the Ray Jobs API (`JobSubmissionClient`) submits each run with its
resource needs (CPUs; a GPU, or a fraction of one when jobs are packed by their memory budgets), stops it
(SIGTERM to the trainer's process group, SIGKILL after ``RAY_JOB_STOP_WAIT_TIME_S``), reports its status
(a node that dies ends the job FAILED with Ray's message) and serves its log. The code travels as the job's
``working_dir`` (the project folder without runs, checkpoints, references or .git), so the trainer's working
directory is on its node, never the studio's folder. The trainer writes no file the studio reads: with
``--sink`` it sends every store write and every checkpoint folder to a `RunSink` actor on the studio's node
(`trainers.runs.ray_sink`), which writes them into the studio's run store as they are acknowledged.

``ray`` is optional: this module imports it only when a backend is made.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shlex
import socket
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from studio.backends.base import RAY_HOST_PREFIX, Ended, Job, JobBackend
from studio.backends.local import LOG_NAME, PROJECT_ROOT, _tail_lines
from studio.jobs import GPU_MEMORY_USABLE  # the share of a GPU packed jobs may budget for, as locally
from trainers.runs.ray_sink import ADDRESS_ENV  # imports no ray

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
#: Never sent with a job: run folders, checkpoints, the shipped references, caches, the git history.
#: Patterns as in .gitignore, relative to the project folder (Ray also honours the project's .gitignore).
WORKING_DIR_EXCLUDES: tuple[str, ...] = (
    "/.git/",
    "/runs/",
    "/test-artifacts/",
    "/assets/reference/",
    "/benchmarks/results/",
    "__pycache__/",
    "/.ruff_cache/",
    "/.pytest_cache/",
    "*.egg-info/",
    "/.venv/",
)
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


def default_working_dir(root: Path = PROJECT_ROOT) -> Path:
    """What a job carries as its ``working_dir``: the checkout the studio runs from (its code travels), or,
    for an installed studio (no checkout: the code is in site-packages, which must never be shipped), an
    empty folder of its own, so each job still works in a folder of its node; the nodes then need the
    package installed."""
    if (root / "pyproject.toml").is_file() and (root / "trainers" / "__main__.py").is_file():
        return root
    empty = Path(tempfile.gettempdir()) / "ae-studio-ray-job"
    empty.mkdir(exist_ok=True)
    (empty / "README").write_text("The working directory of the studio's Ray jobs (an installed studio).\n")
    return empty


def submission_id(runs_dir: Path, run_id: str, attempt: int) -> str:
    """Ray's job id of a run's `attempt`: tied to the studio's runs folder (two studios on one cluster never
    collide) and unique per launch (a resumed run is a new Ray job)."""
    from trainers.runs.ray_sink import sink_name

    tag = sink_name(runs_dir).rsplit("-", 1)[-1]
    return f"ae-studio-{tag}-{run_id}-{attempt}"


class RayBackend(JobBackend):
    """Ray jobs on the cluster at `address` (a GCS address "HOST:6379", "auto" or "ray://..."; None starts
    a local Ray instance, stopped again at `close`).

    `python`: the interpreter on the nodes (default "python" on their PATH). `cpus_per_job`: each job's
    ``entrypoint_num_cpus`` (also its OpenMP threads). `gpu_memory`: bytes per GPU of the cluster for packing
    (None: detected once from a GPU node; whole GPUs when that fails), `gpu_jobs`: at most that many jobs per
    GPU. `resources`: extra custom resources a run's job needs (a function of the run, e.g. to pin jobs to
    nodes that carry a resource). `env_vars`: more environment variables for the jobs. `working_dir`: the
    folder shipped as the job's code and working directory (default: `default_working_dir`).
    """

    name = "ray"
    places_jobs = True

    def __init__(
        self,
        address: str | None = None,
        python: str = "python",
        cpus_per_job: float = 1.0,
        gpu_memory: int | None = None,
        gpu_jobs: int | None = None,
        resources: Callable[[RunRecord], Mapping[str, float]] | None = None,
        env_vars: Mapping[str, str] | None = None,
        working_dir: str | Path | None = None,
        stop_wait_s: float = STOP_WAIT_S,
    ) -> None:
        ray_resources("cpu", cpus_per_job)  # checks the number
        if gpu_memory is not None and (isinstance(gpu_memory, bool) or int(gpu_memory) <= 0):
            raise ValueError(f"gpu_memory must be a number of bytes > 0 or None, got {gpu_memory!r}")
        if gpu_jobs is not None and (isinstance(gpu_jobs, bool) or int(gpu_jobs) < 1):
            raise ValueError(f"gpu_jobs must be a positive int or None, got {gpu_jobs!r}")
        working_dir = default_working_dir() if working_dir is None else working_dir
        if not Path(working_dir).is_dir():
            raise ValueError(f"working_dir {working_dir} is not a folder")
        self.address = address
        self.python = python
        self.cpus_per_job = float(cpus_per_job)
        self.gpu_memory = None if gpu_memory is None else int(gpu_memory)
        self._gpu_memory_probed = gpu_memory is not None
        self.gpu_jobs = gpu_jobs
        self.resources = resources
        self.env_vars = dict(env_vars or {})
        self.working_dir = Path(working_dir).resolve()
        self.stop_wait_s = float(stop_wait_s)
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
        """Stop the sink when none of this studio's jobs still runs, and what this backend started."""
        try:
            if not jobs_left and self.runs_dir is not None and self._connected:
                from trainers.runs.ray_sink import stop_sink

                stop_sink(self.runs_dir)
        except Exception:
            log.warning("could not stop the Ray sink", exc_info=True)
        if self._connected:
            import ray

            ray.shutdown()  # a local instance this backend started stops with it
            self._connected = False

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
        cmd = [self.python, "-m", "trainers", "train", run.variant, attach, run.id, "--sink", self.sink]
        cmd += ["--no-progress", "--device", device]
        entrypoint = shlex.join(cmd)
        sid = submission_id(self.runs_dir, run.id, int(time.time() * 1000))
        folder = self.store.run_dir(run.id)
        folder.mkdir(parents=True, exist_ok=True)
        log_path = folder / LOG_NAME
        # Named before it is submitted: a studio stopped right after the submission still finds the job.
        _write_json(folder / SUBMISSION_FILE, {"submission_id": sid, "dashboard": self.dashboard})
        with open(log_path, "a") as handle:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            handle.write(f"[studio {stamp}] Ray job {sid} ({needs} {extra or ''}): {entrypoint}\n")
        # "ray:" marks it as a Ray run at once: no local sweep takes it for a vanished process of this host.
        self.store.update_run(run.id, host=RAY_HOST_PREFIX, pid=None, device=device, log_path=str(log_path))
        deadline = time.monotonic() + SUBMIT_RETRY_S
        while True:
            try:
                self._client.submit_job(
                    entrypoint=entrypoint,
                    submission_id=sid,
                    runtime_env=self._runtime_env(),
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
        log.info("submitted run %s as Ray job %s (%s)", run.id, sid, needs)
        return Job(run.id, None, None, log_path, backend=self.name, ref=sid)

    def _runtime_env(self) -> dict[str, Any]:
        threads = str(max(1, int(self.cpus_per_job)))
        env = {
            "PYTHONUNBUFFERED": "1",
            "OMP_NUM_THREADS": threads,
            "MKL_NUM_THREADS": threads,
            "RAY_JOB_STOP_WAIT_TIME_S": f"{self.stop_wait_s:g}",
            "AE_STUDIO_SINK": self.sink,
            ADDRESS_ENV: self.gcs_address,  # this cluster, whatever else runs on the node's host
            **self.env_vars,
        }
        excludes = list(WORKING_DIR_EXCLUDES)
        if self.runs_dir is not None and self.runs_dir.resolve().is_relative_to(self.working_dir):
            excludes.append("/" + self.runs_dir.resolve().relative_to(self.working_dir).as_posix() + "/")
        return {"working_dir": str(self.working_dir), "excludes": excludes, "env_vars": env}

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
                return Ended(f"the Ray cluster at {self.dashboard} does not know job {job.ref} (restarted?)")
            log.warning("cannot read the status of Ray job %s: %s", job.ref, text)
            return None  # the dashboard hiccups; the job may well run on
        status = str(info.status)
        if status in ("PENDING", "RUNNING"):
            return None
        self._polled.pop(job.ref or "", None)
        self._save_log(job, info.message if status == "FAILED" else "")
        message = _one_line(info.message or "", 700)
        if status == "STOPPED":
            return Ended(f"Ray job {job.ref} stopped" + (f": {message}" if message else ""), stopped=True)
        if status == "SUCCEEDED":
            return Ended(f"Ray job {job.ref} succeeded, but its trainer reported no end status", code=0)
        return Ended(f"Ray job {job.ref} failed: {message or 'no message from Ray'}")

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
