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


def test_a_checkout_ships_its_code_an_installed_studio_ships_an_empty_folder(tmp_path):
    from studio.backends.ray import default_working_dir

    assert default_working_dir() == ROOT  # this checkout
    site = tmp_path / "site-packages"  # an installed studio: trainers/ etc. beside other packages
    (site / "trainers").mkdir(parents=True)
    (site / "trainers" / "__main__.py").write_text("")
    shipped = default_working_dir(site)
    assert shipped != site and shipped.is_dir() and [p.name for p in shipped.iterdir()] == ["README"]


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
        yield {"cluster": made, "nodes": nodes, "root": root, "guard": guard}
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

    def make() -> JobManager:
        backend = RayBackend(
            cluster["cluster"].address,
            python=sys.executable,
            resources=pinned,
            env_vars={
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
def test_cancel_stops_the_ray_job_and_last_comes_home(cluster, studio):
    jm = studio()
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
