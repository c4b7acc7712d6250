"""The Ray job backend on a real Ray cluster of three nodes on this machine (a head and two workers).

Each worker carries a custom resource ("w1", "w2"); a run is pinned to a worker by its seed (seed 1 -> w1),
so the tests know where each trainer runs and can kill its node. The trainers run the real CLI with
``--sink``: they keep their files in a node-local folder and send everything home through the studio's sink
actor. A test-only ``sitecustomize`` on the jobs' PYTHONPATH installs an audit hook that refuses and records
any file operation of a trainer under the studio's runs folder, and every test asserts there was none.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from studio.backends.base import describe_host  # noqa: E402
from studio.backends.local import _proc_state  # noqa: E402
from studio.backends.ray import GPU_MEMORY_USABLE, ray_resources  # noqa: E402
from studio.jobs import JobManager  # noqa: E402
from trainers.runs import checkpoints  # noqa: E402

HAS_RAY = find_spec("ray") is not None
needs_ray = pytest.mark.skipif(
    not HAS_RAY, reason="Ray is not installed (pip install .[ray]); Ray backend tests skipped"
)
GIB = 1 << 30
ROOT = Path(__file__).resolve().parents[1]
CONFIG = {"variant": "fragment-dae"}
TEMP_DIRS: list[str] = []
FAST = {
    "max_steps": 4,
    "epochs": 1,
    "log_every": 1,
}  # the smallest real run: a few steps, one epoch, checkpoints at its end


# --- the resource needs (a pure function) -----------------------------------------------------------------


def test_a_cpu_run_asks_for_cpus_only():
    assert ray_resources("cpu", 2) == {"entrypoint_num_cpus": 2.0}


def test_a_gpu_run_gets_a_whole_gpu_unless_packing_applies():
    assert ray_resources("cuda", 1) == {"entrypoint_num_cpus": 1.0, "entrypoint_num_gpus": 1.0}


@pytest.mark.parametrize(
    ("budget", "memory", "gpu_jobs", "fraction"),
    [
        (10 * GIB, 80 * GIB, None, 0.14),  # 10 / (80 * 0.95) = 0.1316 -> rounded up to 0.14
        (38 * GIB, 80 * GIB, None, 0.5),  # exactly half the usable memory
        (76 * GIB, 80 * GIB, None, 1.0),  # all the usable memory
        (200 * GIB, 80 * GIB, None, 1.0),  # larger than a GPU: one of its own
        (1 * GIB, 80 * GIB, 4, 0.25),  # small, but at most 4 jobs per GPU
        (40 * GIB, 80 * GIB, 4, 0.53),  # the memory asks for more than 1/4
        (0, None, 3, 0.34),  # no memory known: 1/3 rounded up
        (0, 80 * GIB, None, 0.01),  # nothing counted: the smallest share
    ],
)
def test_the_gpu_fraction_is_the_budget_share_of_usable_memory(budget, memory, gpu_jobs, fraction):
    got = ray_resources("cuda", 1, budget, memory, gpu_jobs)["entrypoint_num_gpus"]
    assert got == pytest.approx(fraction)
    if memory and gpu_jobs is None and budget <= memory * GPU_MEMORY_USABLE:
        assert got * memory * GPU_MEMORY_USABLE >= budget  # rounding never packs more than fits


@pytest.mark.parametrize(
    ("args", "message"),
    [(("cpu", 0), "cpus per job"), (("cuda", 1, 1, -5), "gpu_memory"), (("cpu", float("nan")), "cpus")],
)
def test_bad_resource_settings_raise(args, message):
    with pytest.raises(ValueError, match=message):
        ray_resources(*args)


def test_where_names_the_host_or_the_ray_node():
    assert describe_host("box") == "box"
    assert describe_host(None) is None
    assert describe_host("ray:") == "ray (waiting for a node)"
    assert describe_host("ray:", ended=True) == "ray (no node reported)"  # failed before reaching one
    assert describe_host("ray:10.0.0.7:ab12cd34") == "ray node 10.0.0.7"


def test_an_unreachable_cluster_address_fails_at_once_with_a_message():
    from studio.backends.ray import check_reachable

    port = free_port()  # nothing listens there
    started = time.monotonic()
    message = rf"could not reach the Ray cluster at 127.0.0.1:{port}.*ray start"
    with pytest.raises(RuntimeError, match=message):
        check_reachable(f"127.0.0.1:{port}", timeout_s=2.0)
    assert time.monotonic() - started < 10.0  # bounded: Ray's own retries went on for minutes
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        check_reachable(f"127.0.0.1:{listening.getsockname()[1]}")  # answers: no error
    for other in ("auto", "ray://head:10001", "local"):
        check_reachable(other)  # left to Ray


def test_ray_colour_codes_are_stripped_from_logs_and_reasons():
    from studio.backends.ray import _one_line, strip_ansi

    line = "View the dashboard at \x1b[1m\x1b[32mhttp://127.0.0.1:8265 \x1b[39m\x1b[22m"
    assert strip_ansi(line) == "View the dashboard at http://127.0.0.1:8265 "
    assert "\x1b" not in _one_line(line)


def test_the_trainer_connects_to_the_cluster_the_studio_names(monkeypatch):
    # Inside a Ray job RAY_ADDRESS is resolved with "auto", which takes any cluster on the node's host.
    import trainers.runs.ray_sink as ray_sink

    calls = []

    class FakeRay:
        @staticmethod
        def is_initialized() -> bool:
            return False

        @staticmethod
        def init(**kwargs):
            calls.append(kwargs["address"])

    monkeypatch.setattr(ray_sink, "_ray", lambda: FakeRay)
    monkeypatch.setenv(ray_sink.ADDRESS_ENV, "10.0.0.7:6379")
    ray_sink.connect()
    ray_sink.connect("10.0.0.9:6379")  # an explicit address wins
    monkeypatch.delenv(ray_sink.ADDRESS_ENV)
    ray_sink.connect()
    assert calls == ["10.0.0.7:6379", "10.0.0.9:6379", "auto"]


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(cwd), *args], check=True, capture_output=True)


def test_only_the_packages_tracked_files_travel_never_build_or_scratch(tmp_path):
    """A checkout with a wheel build, exports, TensorBoard logs, runs and an untracked file inside the
    package: the job's working_dir gets the tracked package files (as they are in the working tree) only."""
    from studio.backends.ray import package_files, stage_package

    root = tmp_path / "checkout"
    tracked = {
        "trainers/__main__.py": "print('train')\n",
        "trainers/data/spec.py": "X = 1\n",
        "models/__init__.py": "",
        "studio/app.py": "",
        "assets/speech/train/a.wav": "RIFF",
        "assets/reference/sar/model.safetensors": "big",  # the shipped references: never sent
        "README.md": "# readme\n",  # outside the package folders
    }
    for rel, text in tracked.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    _git(root.parent, "init", "-q", str(root))
    _git(root, "add", ".")
    stray = {
        "build/lib/trainers/loop.py": "x" * 1000,  # `pip wheel .` leaves this
        "exports/run.csv": "a,b\n",
        "tb/events.out": "e",
        "runs/runs.sqlite": "db",
        "trainers/scratch.py": "# an untracked experiment\n",
        "trainers/__pycache__/x.pyc": "c",
    }
    for rel, text in stray.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (root / "trainers/data/spec.py").write_text("X = 2  # an uncommitted edit travels\n")
    staged = stage_package(tmp_path / "staged", root)
    shipped = sorted(p.relative_to(staged).as_posix() for p in staged.rglob("*") if p.is_file())
    assert shipped == [
        "assets/speech/train/a.wav",
        "models/__init__.py",
        "studio/app.py",
        "trainers/__main__.py",
        "trainers/data/spec.py",
    ]
    assert (staged / "trainers/data/spec.py").read_text().startswith("X = 2")
    # This checkout: its sources, not its tests, results or references.
    here = package_files()
    assert "trainers/__main__.py" in here and "models/__init__.py" in here
    assert not [rel for rel in here if rel.startswith(("tests/", "benchmarks/", "assets/reference/"))]
    # No checkout (an installed studio): the imported packages' files, without caches.
    installed = package_files(None)
    assert "trainers/__main__.py" in installed and "studio/backends/ray.py" in installed
    assert not [rel for rel in installed if "__pycache__" in rel or rel.endswith(".pyc")]


def _fake_ray_node(tmp_path: Path, entrypoint: str) -> subprocess.CompletedProcess:
    """Run `entrypoint` as Ray runs a job's: /bin/sh under a supervisor process, itself a child of a
    "raylet" whose command line names the node's worker Python; PATH's python and python3 lack Ray."""
    fake = tmp_path / "path-bin"
    fake.mkdir(parents=True)
    for name in ("python", "python3"):
        (fake / name).write_text(
            "#!/bin/sh\necho \"ModuleNotFoundError: No module named 'torch'\" >&2\nexit 1\n"
        )
        (fake / name).chmod(0o755)
    # The node's Ray runs from a "venv" (a link to this interpreter): the launcher must use that very path.
    venv_python = tmp_path / "venv" / "bin" / "python"
    venv_python.parent.mkdir(parents=True)
    venv_python.symlink_to(sys.executable)
    supervisor = "import subprocess, sys; sys.exit(subprocess.run(sys.argv[1], shell=True).returncode)"
    raylet = "import subprocess, sys; sys.exit(subprocess.run(sys.argv[2:]).returncode)"
    worker_command = f"--python_worker_command={venv_python} setup_worker.py default_worker.py --x=1"
    env = {**os.environ, "PATH": f"{fake}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(
        [sys.executable, "-c", raylet, worker_command, sys.executable, "-c", supervisor, entrypoint],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="the launcher reads /proc (Linux)")
def test_a_job_runs_with_the_python_of_the_nodes_ray_not_the_first_on_path(tmp_path):
    from studio.backends.ray import job_entrypoint

    code = "import sys, ray; print('RAN', sys.executable)"
    out = _fake_ray_node(tmp_path, job_entrypoint(None, ["-c", code]))
    assert out.returncode == 0, out.stderr
    assert f"RAN {tmp_path / 'venv' / 'bin' / 'python'}" in out.stdout, out.stdout
    assert "the node's Ray Python:" in out.stdout
    # Before: `python` on the PATH of Ray's processes, which here lacks the project's packages.
    out = _fake_ray_node(tmp_path / "before", job_entrypoint("python", ["-c", code]))
    assert out.returncode == 1 and "ModuleNotFoundError" in out.stderr
    assert job_entrypoint("/opt/py/bin/python", ["-m", "trainers"]) == "/opt/py/bin/python -m trainers"


class _FakeJobs:
    """The Ray Jobs client as poll sees it: one job with a status and a message."""

    def __init__(self, status: str, message: str) -> None:
        self.info = type("Info", (), {"status": status, "message": message})()

    def get_job_info(self, sid: str) -> object:
        return self.info

    def get_job_logs(self, sid: str) -> str:
        return "trainer log\n"


@pytest.mark.parametrize(
    ("message", "status_after"),
    [
        ("Job supervisor actor died: The actor died because its node has died. Node Id: ab12", "failed"),
        ("Job entrypoint command failed with exit code 1", "completed"),  # not a lost node: its word stands
    ],
)
def test_a_failed_job_is_fenced_and_a_completed_that_outlived_its_node_becomes_failed(
    tmp_path, monkeypatch, message, status_after
):
    from studio.backends.base import Job
    from studio.backends.ray import RayBackend
    from trainers.runs.store import RunStore

    backend = RayBackend("127.0.0.1:1", working_dir=ROOT)  # never bound: no cluster needed
    fenced: list[str] = []
    monkeypatch.setattr(backend, "_fence", fenced.append)
    with RunStore(tmp_path / "runs") as store:
        backend.runs_dir, backend.store, backend._client = (
            tmp_path / "runs",
            store,
            _FakeJobs("FAILED", message),
        )
        run_id = store.create_run("fragment-dae", "fragments", CONFIG, status="running")
        store.update_run(run_id, host="ray:10.0.0.7:ab12cd34")
        store.run_dir(run_id).mkdir(parents=True)  # made by the launch
        store.set_status(run_id, "completed", "stopped at max_steps=40")  # sent by the trainer that survived
        ended = backend.poll(Job(run_id, None, None, None, backend="ray", ref="ae-studio-x-1"))
        assert ended is not None and "failed" in ended.what
        assert fenced == ["ae-studio-x-1"]  # its later writes are refused by the sink
        run = store.get_run(run_id)
        assert run.status == status_after, run.reason
        if status_after == "failed":
            assert "node" in run.reason and "completed" in run.reason


# --- without Ray: the local manager and Ray runs ---------------------------------------------------------


def test_a_local_manager_never_touches_a_ray_run(tmp_path):
    """A run trained on a Ray node (its host says so) is neither adopted, failed nor signalled by the local
    sweep, even with a pid that is alive on this machine; cancel points at the Ray backend."""
    # A live process here, older than the run: were the host ignored, it would pass for its trainer.
    stand_in = subprocess.Popen(["sleep", "60"])
    jm = JobManager(tmp_path / "runs", cpu_slots=1, gpus=[], poll_interval=0.1)
    try:
        run_id = jm.store.create_run("fragment-dae", "fragments", CONFIG, status="queued")
        jm.store.update_run(run_id, host="ray:10.0.0.7:ab12cd34", pid=stand_in.pid)
        jm.store.set_status(run_id, "running", "", from_statuses=("queued",))
        jm._sweep(startup=True)
        time.sleep(0.3)
        assert jm.store.get_run(run_id).status == "running" and jm.running_jobs() == []
        assert "--backend ray" in jm.cancel(run_id)
        assert jm.store.get_run(run_id).status == "running" and stand_in.poll() is None
        assert {r["id"]: r["where"] for r in jm.jobs()}[run_id] == "ray node 10.0.0.7"
    finally:
        jm.shutdown()
        stand_in.kill()
        stand_in.wait()


def test_resume_refuses_runs_it_cannot_continue(tmp_path):
    jm = JobManager(tmp_path / "runs", cpu_slots=1, gpus=[], poll_interval=0.1)
    try:
        done = jm.store.create_run("fragment-dae", "fragments", CONFIG, status="completed")
        with pytest.raises(ValueError, match="only a failed or cancelled run can be resumed"):
            jm.resume(done)
        failed = jm.store.create_run("fragment-dae", "fragments", CONFIG, status="failed")
        with pytest.raises(ValueError, match="saved no 'last' checkpoint"):
            jm.resume(failed)
        with pytest.raises(ValueError, match="no run with id"):
            jm.resume("nope")
        assert jm.store.get_run(failed).status == "failed"
    finally:
        jm.shutdown()


# --- the app's flags -------------------------------------------------------------------------------------


def test_app_takes_the_backend_from_flags_or_the_environment(monkeypatch):
    from studio.app import parse_args

    monkeypatch.delenv("AE_STUDIO_BACKEND", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    args = parse_args([])
    assert (args.backend, args.ray_address, args.ray_gpu_memory) == ("local", None, None)
    args = parse_args(["--backend", "ray", "--ray-address", "10.0.0.1:6379", "--ray-gpu-memory", "80"])
    assert (args.backend, args.ray_address, args.ray_gpu_memory) == ("ray", "10.0.0.1:6379", 80.0)
    monkeypatch.setenv("AE_STUDIO_BACKEND", "ray")
    monkeypatch.setenv("RAY_ADDRESS", "head:6379")
    assert (parse_args([]).backend, parse_args([]).ray_address) == ("ray", "head:6379")
    monkeypatch.setenv("AE_STUDIO_BACKEND", "slurm")
    with pytest.raises(SystemExit):
        parse_args([])


def _run_app_code(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GRADIO_ANALYTICS_ENABLED": "False"}
    env.pop("AE_STUDIO_BACKEND", None)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), str(tmp_path / "runs")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_the_local_backend_never_imports_ray(tmp_path):
    out = _run_app_code(
        """
        import sys
        from studio.app import make_context
        ctx = make_context(sys.argv[1], cpu_slots=1, space=False)
        ctx.jobs.shutdown()
        ctx.store.close()
        print("ray imported:", "ray" in sys.modules)
        """,
        tmp_path,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "ray imported: False" in out.stdout


def test_backend_ray_without_ray_says_how_to_install_it(tmp_path):
    out = _run_app_code(
        """
        import sys
        sys.modules["ray"] = None  # as if Ray were not installed
        from studio.app import main
        sys.exit(main(["--backend", "ray", "--runs-dir", sys.argv[1], "--port", "7999"]))
        """,
        tmp_path,
    )
    assert out.returncode == 2, (out.stdout, out.stderr[-2000:])
    error = out.stderr.strip().splitlines()[-1]
    assert error.startswith("error: the Ray backend needs Ray: pip install .[ray]"), error
    assert "Traceback" not in out.stderr


# --- the cluster ------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


GUARD = textwrap.dedent(
    '''
    """Test guard: a trainer must never touch the studio's runs folder (it sends everything to the sink)."""
    import os
    import sys

    _RUNS = os.environ.get("AE_TEST_STUDIO_RUNS", "")
    _RUNS = os.path.realpath(_RUNS) if _RUNS else ""
    _LOG = os.environ.get("AE_TEST_GUARD_LOG", "")
    _EVENTS = {"open", "os.mkdir", "os.rename", "os.replace", "os.remove", "os.rmdir", "os.listdir",
               "os.scandir", "sqlite3.connect", "shutil.rmtree", "os.symlink"}

    def _guard(event, args):
        if event not in _EVENTS or not args or not isinstance(args[0], (str, bytes, os.PathLike)):
            return
        try:
            path = os.path.realpath(os.fsdecode(args[0]))
        except Exception:
            return
        if path == _RUNS or path.startswith(_RUNS + os.sep):
            with open(_LOG, "a") as handle:
                handle.write(f"{os.getpid()} {event} {path}\\n")
            raise PermissionError(f"test guard: a trainer touched the studio's runs folder ({event} {path})")

    if _RUNS and _LOG:
        sys.addaudithook(_guard)
    '''
)


def test_the_guard_catches_a_process_touching_the_runs_folder(tmp_path):
    """The audit hook the jobs get refuses and records a store opened in the runs folder, and nothing else."""
    guard, runs, violations = tmp_path / "guard", tmp_path / "runs", tmp_path / "guard.log"
    guard.mkdir()
    runs.mkdir()
    (guard / "sitecustomize.py").write_text(GUARD)
    env = {**os.environ, "PYTHONPATH": str(guard), "AE_TEST_STUDIO_RUNS": str(runs)}
    env["AE_TEST_GUARD_LOG"] = str(violations)
    code = "import sqlite3, sys; open(sys.argv[1] + '/elsewhere.txt', 'w').write('ok')\n"
    code += "sqlite3.connect(sys.argv[2])"
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path), str(runs / "runs.sqlite")], env=env)
    assert out.returncode != 0 and (tmp_path / "elsewhere.txt").read_text() == "ok"
    assert violations.read_text().split()[1:] == ["sqlite3.connect", str(runs / "runs.sqlite")]


def add_worker(cluster, name: str):
    """A one-CPU worker node carrying the resource `name`, with a temp dir of its own (short, for the
    socket paths; removed with the cluster)."""
    temp = tempfile.mkdtemp(prefix=f"ray{name}-")
    TEMP_DIRS.append(temp)
    # A job's entrypoint finds its cluster through this file of its node's temp dir (`ray start` writes it);
    # without it Ray falls back on any cluster running on the machine, such as another test's.
    Path(temp, "ray_current_cluster").write_text(cluster.address)
    return cluster.add_node(
        num_cpus=1, resources={name: 1}, temp_dir=temp, dashboard_agent_listen_port=free_port()
    )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A head node (with the dashboard, no CPU for jobs) and two one-CPU workers with resources w1 and w2."""
    if not HAS_RAY:
        pytest.skip("Ray is not installed (pip install .[ray]); Ray backend tests skipped")
    from ray.cluster_utils import Cluster

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Every port chosen free: other Ray clusters may run on this machine (the agents' default is fixed).
    head = {
        "num_cpus": 0,
        "include_dashboard": True,
        "dashboard_port": free_port(),
        "dashboard_agent_listen_port": free_port(),
    }
    made = Cluster(initialize_head=True, head_node_args=head)
    try:
        # Each worker keeps its own temp dir, as separate machines do: nodes sharing one would unpack the
        # jobs' working_dir into the same folder, and one node's unpacking would pull it from under the other.
        nodes = {name: add_worker(made, name) for name in ("w1", "w2")}
        made.wait_for_nodes()
        root = tmp_path_factory.mktemp("studio")
        guard = root / "guard"
        guard.mkdir()
        (guard / "sitecustomize.py").write_text(GUARD)
        # The first python and python3 on the jobs' PATH lack the project (issue 19: jobs failed with
        # "ModuleNotFoundError: torch"); every job must run with its node's own Ray Python regardless.
        wrong = root / "wrong-python"
        wrong.mkdir()
        for name in ("python", "python3"):
            (wrong / name).write_text(
                "#!/bin/sh\necho \"ModuleNotFoundError: No module named 'torch'\" >&2\nexit 1\n"
            )
            (wrong / name).chmod(0o755)
        yield {"cluster": made, "nodes": nodes, "root": root, "guard": guard, "wrong": wrong}
    finally:
        import ray

        ray.shutdown()
        made.shutdown()
        time.sleep(1.0)  # a removed node's last processes may still write into its session folder
        for temp in TEMP_DIRS:
            shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture
def studio(cluster: dict, tmp_path: Path) -> Iterator[Callable[..., JobManager]]:
    """Makes job managers on the Ray backend over one runs folder; at the end cancels what they still run
    and checks that no trainer touched the runs folder."""
    from studio.backends.ray import RayBackend

    runs = tmp_path / "runs"
    violations = tmp_path / "guard.log"
    made: list[JobManager] = []

    def pinned(run) -> dict[str, float]:
        return {f"w{run.config['seed']}": 1.0}

    def make(storage: str | None = None) -> JobManager:
        backend = RayBackend(
            cluster["cluster"].address,
            resources=pinned,
            storage=storage,
            env_vars={
                "PATH": f"{cluster['wrong']}{os.pathsep}${{PATH}}",  # Ray expands ${PATH} on the node
                "PYTHONPATH": str(cluster["guard"]),
                "AE_TEST_STUDIO_RUNS": str(runs),
                "AE_TEST_GUARD_LOG": str(violations),
                "OMP_NUM_THREADS": "1",
            },
            stop_wait_s=15,
        )
        jm = JobManager(runs, cpu_slots=1, gpus=[], poll_interval=0.2, backend=backend)
        made.append(jm)
        return jm

    yield make
    for jm in made:
        jm.shutdown(cancel_running=True)
    assert not violations.exists(), f"a trainer touched the studio's runs folder:\n{violations.read_text()}"


def wait_for(
    predicate: Callable[[], object], timeout: float, what: str, detail: Callable[[], str] = str
) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}: {detail()}")


def first_step(jm: JobManager, run_id: str) -> None:
    wait_for(
        lambda: jm.store.metric_series(run_id, "train/loss") or jm.store.get_run(run_id).is_terminal,
        90,
        "the first step to arrive",
        lambda: f"{jm.store.get_run(run_id)} {jm.log_tail(run_id)}",
    )
    run = jm.store.get_run(run_id)
    assert not run.is_terminal, (run.status, run.reason)


def ended(jm: JobManager, run_id: str, timeout: float = 120) -> object:
    run = wait_for(
        lambda: (r := jm.store.get_run(run_id)) is not None and r.is_terminal and r, timeout, "the end"
    )
    return run


def node_of(cluster: dict, jm: JobManager, run_id: str) -> str:
    """Which worker ("w1"/"w2") ran the run's Ray job (its entrypoint: the trainer), as Ray reports it."""
    sid = json.loads((jm.store.run_dir(run_id) / "ray-job.json").read_text())["submission_id"]
    node_id = jm.backend._client.get_job_info(sid).driver_node_id
    return next(name for name, node in cluster["nodes"].items() if node.node_id == node_id)


def assert_home(jm: JobManager, run_id: str, kinds: tuple[str, ...] = ("best", "last")) -> None:
    """The run's checkpoints are in the studio's runs folder, complete (manifest) and loadable."""
    from models import load_pretrained

    folder = jm.store.run_dir(run_id)
    for kind in kinds:
        path = checkpoints.checkpoint_path(folder, kind)
        assert path is not None and path.resolve().is_relative_to(jm.runs_dir), (kind, path)
        assert (path / checkpoints.MANIFEST).is_file()
        run = jm.store.get_run(run_id)
        assert load_pretrained(path, expected_variant=run.variant) is not None


# --- the behaviour ----------------------------------------------------------------------------------------


@needs_ray
def test_two_jobs_on_two_nodes_at_once_curves_and_checkpoints_come_home(cluster, studio):
    jm = studio()
    sar = jm.submit("sar-baseline", "smoke", seed=1, **FAST)
    audio = jm.submit("audio-vae", "smoke", seed=2, **FAST)
    for run_id in (sar, audio):
        run = ended(jm, run_id)
        assert run.status == "completed", (run.status, run.reason, jm.log_tail(run_id))
    runs = {i: jm.store.get_run(i) for i in (sar, audio)}
    assert (node_of(cluster, jm, sar), node_of(cluster, jm, audio)) == ("w1", "w2")
    # each job is told which cluster is the studio's, whatever else runs on its node's host
    from trainers.runs.ray_sink import ADDRESS_ENV

    assert jm.backend._runtime_env()["env_vars"][ADDRESS_ENV] == cluster["cluster"].address
    # both trained at the same time: each started before the other ended
    assert max(r.started_at for r in runs.values()) < min(r.ended_at for r in runs.values())
    for run_id in (sar, audio):
        steps = [s for s, _ in jm.store.metric_series(run_id, "train/loss")]
        assert steps == [1, 2, 3, 4], steps
        assert jm.store.best_metrics(run_id), "no validation metrics came home"
        assert_home(jm, run_id)
    rows = {row["id"]: row for row in jm.jobs()}
    assert rows[sar]["where"].startswith("ray node ")
    from studio.views.train import JOB_HEADERS, job_row

    assert job_row(rows[sar])[JOB_HEADERS.index("where")] == rows[sar]["where"]
    assert "Ray job" in jm.log_tail(sar, 200)


@needs_ray
def test_cancel_stops_the_ray_job_and_last_comes_home(cluster, studio, tmp_path):
    storage = tmp_path / "storage"  # --ray-storage: a path every node reaches (one machine here)
    jm = studio(storage=str(storage))
    run_id = jm.submit("fragment-dae", "smoke", seed=1, max_steps=2000, epochs=10, log_every=1)
    first_step(jm, run_id)
    # The live log is Ray's (get_job_logs), not the run folder's job.log (whose first line is the studio's).
    # On one machine Ray serves only the head's part of it: every node's agent here has its own port, and
    # the job records the default one for the trainer's node.
    live = jm.log_tail(run_id, 500)
    assert live and "[studio" not in live, live
    message = jm.cancel(run_id)
    assert "asked Ray to stop" in message
    run = ended(jm, run_id, 60)
    assert run.status == "cancelled", (run.reason, jm.log_tail(run_id))
    assert run.reason.startswith("cancelled at step"), run.reason  # the trainer's words: it stopped cleanly
    assert_home(jm, run_id, ("last",))
    # The checkpoint went through the storage, which keeps the newest copy of each kind.
    stored = [p for p in storage.rglob("manifest.json") if f"/{run_id}/checkpoints/last/" in p.as_posix()]
    assert len(stored) == 1, stored
    home = checkpoints.checkpoint_path(jm.store.run_dir(run_id), "last")
    assert (stored[0].parent / "manifest.json").read_bytes() == (home / "manifest.json").read_bytes()
    wait_for(lambda: jm.running_jobs() == [], 30, "the Ray job to end after its trainer")


@needs_ray
def test_a_killed_worker_node_fails_the_run_keeps_what_came_home_and_it_resumes(cluster, studio):
    jm = studio()
    run_id = jm.submit("fragment-dae", "smoke", seed=2, max_steps=2000, epochs=10)
    run = wait_for(
        lambda: (r := jm.store.get_run(run_id)).last_checkpoint and r, 90, "the first epoch's checkpoint"
    )
    home_step = checkpoints.resume_state(checkpoints.checkpoint_path(jm.store.run_dir(run_id), "last"))[
        "step"
    ]
    rows_before = len(jm.store.metric_series(run_id, "train/loss"))
    assert node_of(cluster, jm, run_id) == "w2"
    cluster["cluster"].remove_node(cluster["nodes"].pop("w2"))
    run = ended(jm, run_id, 90)
    assert run.status == "failed"
    assert "node" in run.reason and "died" in run.reason, run.reason
    # The node's processes died with it, the trainer too: nothing more arrives for the failed run.
    assert run.pid is not None, "the trainer recorded no pid"
    wait_for(lambda: _proc_state(run.pid) != "alive", 20, f"the trainer (pid {run.pid}) to die with its node")
    assert len(jm.store.metric_series(run_id, "train/loss")) >= rows_before  # nothing acknowledged is lost
    cluster["nodes"]["w2"] = add_worker(cluster["cluster"], "w2")
    jm.store.update_run(run_id, config={**run.config, "epochs": run.epoch + 1 if run.epoch else 2})
    assert "resume" in jm.resume(run_id)
    run = ended(jm, run_id, 120)
    assert run.status == "completed", (run.reason, jm.log_tail(run_id))
    steps = [s for s, _ in jm.store.metric_series(run_id, "train/loss")]
    assert steps[-1] > home_step and steps == sorted(set(steps)), steps


@needs_ray
def test_a_restarted_studio_reattaches_and_the_job_completes(cluster, studio):
    first = studio()
    run_id = first.submit("fragment-dae", "smoke", seed=1, max_steps=40, epochs=2, log_every=1)
    first_step(first, run_id)
    first.shutdown()  # the app stops; its job keeps training on the cluster
    second = studio()
    assert second.running_jobs() == [run_id]
    run = ended(second, run_id, 120)
    assert run.status == "completed", (run.reason, second.log_tail(run_id))
    assert_home(second, run_id)
    with contextlib.suppress(Exception):
        json.loads((second.store.run_dir(run_id) / "ray-job.json").read_text())


def _send_big_checkpoint(sink: str, run_id: str, size: int, rows: int, storage: str | None) -> dict:
    """On a worker node: a trainer's SinkStore saves a `size`-byte checkpoint, then logs `rows` metric rows
    every 50 ms while the checkpoint travels home."""
    import hashlib
    import tempfile

    from trainers.runs.ray_sink import SinkStore, get_sink

    work = Path(tempfile.mkdtemp(prefix="ae-big-"))
    store = SinkStore(work / "runs", get_sink(sink, 10.0), sink_name=sink, host="ray:test", storage=storage)
    try:
        store.pull_run(run_id)
        folder = work / "runs" / run_id / "checkpoints" / "last"
        folder.mkdir(parents=True)
        blob = os.urandom(size)
        (folder / "model.safetensors").write_bytes(blob)
        (folder / "manifest.json").write_text("{}")
        pushed = time.time()
        store.update_run(run_id, last_checkpoint=str(folder))
        queued = time.time() - pushed
        for step in range(1, rows + 1):
            store.log_metrics(run_id, step, 0, "train", {"loss": 1.0 / step})
            time.sleep(0.05)
    finally:
        store.close()
    return {"sha": hashlib.sha256(blob).hexdigest(), "queued_s": queued, "pieces": store.files.sent}


@needs_ray
@pytest.mark.parametrize("via_storage", [False, True], ids=["through-the-sink", "through-storage"])
def test_metric_rows_arrive_while_a_large_checkpoint_travels_home(cluster, studio, tmp_path, via_storage):
    """Issue 19 item 7: a checkpoint of 96 MB goes home in pieces (or through --ray-storage) while the
    trainer's metric rows keep arriving; before, one call carried it and every row waited behind it."""
    import hashlib

    import ray

    storage = str(tmp_path / "storage") if via_storage else None
    jm = studio(storage=storage)
    run_id = jm.store.create_run("fragment-dae", "fragments", CONFIG, status="running")
    task = ray.remote(_send_big_checkpoint).options(
        num_cpus=0,
        resources={"w1": 1},
        runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}},
    )
    ref = task.remote(jm.backend.sink, run_id, 96 * 2**20, 60, jm.backend.storage)
    seen: dict[int, float] = {}
    landed = None
    while not ray.wait([ref], timeout=0.02)[0]:
        now = time.time()
        for step, _ in jm.store.metric_series(run_id, "train/loss"):
            seen.setdefault(step, now)
        if landed is None and jm.store.get_run(run_id).last_checkpoint:
            landed = now
    out = ray.get(ref)
    assert out["queued_s"] < 2.0, out  # the trainer hands the checkpoint over and goes on at once
    assert landed is not None and sorted(seen) == list(range(1, 61))
    during = [step for step, at in seen.items() if at < landed]
    home = jm.store.run_dir(run_id) / "checkpoints" / "last"  # a stand-in checkpoint: no real manifest
    assert (
        home.is_symlink()
        and hashlib.sha256((home / "model.safetensors").read_bytes()).hexdigest() == out["sha"]
    )
    print(
        f"rows home before the checkpoint landed: {len(during)} of 60 ({'storage' if storage else 'pieces'})"
    )
    if storage:
        stored = list(Path(storage).rglob("model.safetensors"))
        assert len(stored) == 1 and stored[0].stat().st_size == 96 * 2**20
    else:
        assert len(during) >= 3, (during, landed)


@needs_ray
def test_closing_after_the_cluster_died_does_not_wait_for_rays_timeout(tmp_path):
    """The studio exits promptly when its cluster is gone (Ray waits 60 s for its control store, then
    ends the process)."""
    code = """
        import socket, sys, tempfile, time
        from ray.cluster_utils import Cluster
        from studio.backends.ray import RayBackend
        from trainers.runs.store import RunStore

        def free():
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                return s.getsockname()[1]

        head = {"num_cpus": 0, "include_dashboard": True, "dashboard_port": free(),
                "dashboard_agent_listen_port": free()}
        cluster = Cluster(initialize_head=True, head_node_args=head)
        store = RunStore(sys.argv[1])
        backend = RayBackend(cluster.address)
        backend.bind(sys.argv[1], store)
        for node in cluster.list_all_nodes():
            node.kill_all_processes(check_alive=False, allow_graceful=False)
        started = time.monotonic()
        backend.close(jobs_left=False)
        print(f"closed in {time.monotonic() - started:.1f} s", flush=True)
        """
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), str(tmp_path / "runs")],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )
    closed = [line for line in out.stdout.splitlines() if line.startswith("closed in")]
    assert out.returncode == 0 and closed, (out.stdout[-1000:], out.stderr[-3000:])
    # Ray's own wait is 60 s; ~6 s measured idle, 24 s on a loaded 2-core CI run: the bound says "not Ray's".
    assert float(closed[0].split()[2]) < 45.0, closed


# --- python -m trainers resume -----------------------------------------------------------------------------


def _cli(runs: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "trainers", *args, "--runs-dir", str(runs)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )


def test_resume_continues_a_killed_run_and_a_ray_run_whose_node_died(tmp_path):
    """`python -m trainers resume RUN`: a run killed on this host (still `running`, its pid gone) and a Ray
    run whose node died (`failed`, its checkpoint at home) go on from their `last` checkpoint with their own
    settings; a completed, a live or a Ray-running run is refused in one sentence."""
    from trainers.runs.store import RunStore

    runs = tmp_path / "runs"
    # Fixed files, not the checkout's own (their count and sizes change with the code and its __pycache__).
    files = tmp_path / "data"
    files.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        (files / f"f{i:02d}.bin").write_bytes(rng.integers(0, 256, 10 * 1024, dtype=np.uint8).tobytes())
    data = f"fragments:folder={files},max_files=12"
    train = ["train", "fragment-dae", "--preset", "smoke", "--no-progress", "--data", data]
    out = _cli(runs, *train, "--epochs", "1", "--max-steps", "3")
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    with RunStore(runs) as store:
        (run,) = store.list_runs()
    resume = ["resume", run.id, "--no-progress"]

    def refused(match: str) -> None:
        got = _cli(runs, *resume)
        assert got.returncode == 2 and match in got.stderr and "Traceback" not in got.stderr, got.stderr

    refused("is completed; only a failed, cancelled or killed run can be resumed")
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "trainers"])
    gone = subprocess.Popen(["true"])
    gone.wait()
    try:
        with RunStore(runs) as store:
            store.set_status(run.id, "running", "")
            store.update_run(run.id, host="ray:10.0.0.7:ab12cd34")
        refused("on the Ray cluster")
        with RunStore(runs) as store:
            store.update_run(run.id, host=socket.gethostname(), pid=live.pid)
        refused(f"still running (pid {live.pid})")
        # Killed: SIGKILL left it `running`; 3 more steps from its step-3 checkpoint.
        with RunStore(runs) as store:
            store.update_run(
                run.id, pid=gone.pid, config={**run.config, "max_steps": 6, "epochs": 2, "log_every": 1}
            )
    finally:
        live.kill()
        live.wait()
    out = _cli(runs, *resume)
    assert out.returncode == 0 and f"run {run.id}: completed after 6 steps" in out.stdout, out.stderr[-2000:]
    # A Ray run whose node died: the studio marked it failed; its `last` came home before.
    with RunStore(runs) as store:
        store.set_status(run.id, "failed", "Ray job x failed: The actor died because its node has died")
        store.update_run(
            run.id,
            host="ray:10.0.0.7:ab12cd34",
            config={**run.config, "max_steps": 9, "epochs": 3, "log_every": 1},
        )
    out = _cli(runs, *resume)
    assert out.returncode == 0 and f"run {run.id}: completed after 9 steps" in out.stdout, out.stderr[-2000:]
    with RunStore(runs) as store:
        steps = [step for step, _ in store.metric_series(run.id, "train/loss")]
        assert steps == list(range(3, 10)), steps  # each resume went on from its checkpoint's step
        assert store.get_run(run.id).host == socket.gethostname()  # trained here now
