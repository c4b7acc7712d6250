"""Shared fixtures: a running studio (`python app.py` on a free port with a temporary runs folder), a
gradio_client for it, checkpoints trained through the CLI, and a headless Chromium driven by playwright."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
SERVER_START_TIMEOUT_S = 120.0


@pytest.fixture(scope="session", autouse=True)
def _no_shipped_reference_checkpoints(tmp_path_factory):
    """In-process studio contexts list only what a test made: the shipped reference checkpoints
    (assets/reference) would add entries to every checkpoint list. `python app.py` started by a test still
    has them, as a user's studio does; a test about them names their folder itself."""
    import studio.context

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(studio.context, "REFERENCE_DIR", tmp_path_factory.mktemp("no-references"))
        yield


# Tiny CLI runs that give each comparison tab a checkpoint: one epoch, a few steps, little data.
CLI_RUNS: dict[str, list[str]] = {
    "sar": ["sar-baseline", "--max-steps", "2", "--data", "sar:synthetic,n=16,size=64,val=4"],
    "audio": ["audio-vae", "--max-steps", "2", "--data", "audio:synthetic,n=12,val=4"],
    "fragments": ["fragment-dae", "--max-steps", "3", "--data", "fragments:python,max_files=12"],
}


def free_port() -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def child_env(**extra: str) -> dict[str, str]:
    """Environment for processes the tests start: no analytics, unbuffered logs, the project importable."""
    env = dict(os.environ)
    env.update(
        GRADIO_ANALYTICS_ENABLED="False",
        PYTHONUNBUFFERED="1",
        PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p),
        OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"),
    )
    env.pop("SPACE_ID", None)
    env.update(extra)
    return env


@dataclass
class StudioServer:
    url: str
    port: int
    runs_dir: Path
    log_path: Path
    process: subprocess.Popen

    def log_tail(self, n: int = 40) -> str:
        lines = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(lines[-n:])


def _wait_until_serving(server: StudioServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"the studio exited with code {server.process.returncode}:\n{server.log_tail()}"
            )
        try:
            with urllib.request.urlopen(server.url + "/gradio_api/info", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the studio did not answer within {timeout:.0f} s:\n{server.log_tail()}")


def stop_runs(runs_dir: Path) -> None:
    """SIGTERM the trainer process groups of runs still active in `runs_dir` (started by these tests)."""
    from trainers.runs.store import RunStore

    if not (runs_dir / "runs.sqlite").exists():
        return
    with RunStore(runs_dir) as store:
        for run in store.list_runs(statuses=["queued", "running"]):
            if run.pid:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(run.pid, signal.SIGTERM)


def stop_process(process: subprocess.Popen, timeout: float = 20.0) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


@pytest.fixture(scope="session")
def studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StudioServer]:
    """`python app.py` serving a fresh runs folder on a free port, one CPU training slot."""
    base = tmp_path_factory.mktemp("studio")
    runs_dir = base / "runs"
    log_path = base / "studio.log"
    port = free_port()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "app.py", "--port", str(port), "--runs-dir", str(runs_dir), "--cpu-slots", "1"],
            cwd=ROOT,
            env=child_env(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = StudioServer(f"http://127.0.0.1:{port}", port, runs_dir, log_path, process)
    try:
        _wait_until_serving(server, SERVER_START_TIMEOUT_S)
        yield server
    finally:
        stop_runs(runs_dir)
        stop_process(process)


@pytest.fixture
def client(studio: StudioServer):
    """A gradio_client session of the running studio (its own per-session state)."""
    from gradio_client import Client

    client = Client(studio.url, verbose=False)
    yield client
    client.close()  # ends its heartbeat stream, which would otherwise hold up the server's shutdown


@dataclass
class CliRuns:
    """Trainer processes started in the background; `wait()` collects them."""

    processes: dict[str, subprocess.Popen]
    runs_dir: Path

    def log(self, domain: str) -> str:
        return (self.runs_dir.parent / f"cli-{domain}.log").read_text(errors="replace")

    def wait(self, timeout: float = 240.0) -> None:
        """Wait for every run; one that fails or hangs fails the test with its log."""
        deadline = time.monotonic() + timeout
        for domain, process in self.processes.items():
            try:
                code = process.wait(max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pytest.fail(f"the {domain} CLI training did not finish within {timeout:.0f} s")
            if code != 0:
                pytest.fail(f"the {domain} CLI training failed with code {code}:\n{self.log(domain)[-3000:]}")


@pytest.fixture(scope="session")
def cli_checkpoints(studio: StudioServer) -> Iterator[CliRuns]:
    """Start one tiny `python -m trainers train` per entry of CLI_RUNS into the studio's runs folder.

    They write the same store the studio reads, as a terminal user's runs would, and train while the test
    does other things.
    """
    processes: dict[str, subprocess.Popen] = {}
    for domain, (variant, *options) in CLI_RUNS.items():
        with open(studio.runs_dir.parent / f"cli-{domain}.log", "wb") as log:
            processes[domain] = subprocess.Popen(
                [sys.executable, "-m", "trainers", "train", variant, "--preset", "smoke", "--epochs", "1"]
                + ["--runs-dir", str(studio.runs_dir), "--no-progress", "--device", "cpu", *options],
                cwd=ROOT,
                env=child_env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
    try:
        yield CliRuns(processes, studio.runs_dir)
    finally:
        for process in processes.values():
            stop_process(process)


@pytest.fixture(scope="session")
def browser():
    """Headless Debian Chromium through playwright (never a downloaded browser)."""
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing: the browser tests need the distribution's Chromium"
        if os.environ.get("STUDIO_REQUIRE_BROWSER"):  # set by .ci/run, which installs it
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser):
    """A fresh 1400x1000 page; console errors are collected on `page.console_errors`."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.console_errors = []  # type: ignore[attr-defined]
    page.on("console", lambda msg: msg.type == "error" and page.console_errors.append(msg.text))
    page.set_default_timeout(30_000)
    try:
        yield page
    finally:
        context.close()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Keep each phase's report on the test item (rep_setup, rep_call), for fixtures that act on failure."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """test-artifacts/ at the repository root, for screenshots."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture
def seeded() -> None:
    """Same random weights and inputs on every run (for the model tests)."""
    import torch

    torch.manual_seed(0)


@pytest.fixture(scope="module")
def single_thread():
    """One intra-op thread: on the shared 2-core CI box two threads contend and run ~3x slower."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def managers() -> Iterator[list]:
    """Job managers a test makes; at teardown every job they still run is cancelled (SIGKILL if stubborn)."""
    from studio.backends.local import _cmdline

    made: list = []
    yield made
    started: list[tuple[int, str]] = []
    for manager in made:
        with manager._lock:
            started += [(job.pid, job.run_id) for job in manager._jobs.values()]
        manager.cancel_grace = min(manager.cancel_grace, 2.0)
        manager.shutdown(cancel_running=True)
    for pid, run_id in started:  # belt and braces: never leave one of our process groups behind
        if run_id in (_cmdline(pid) or []):  # still ours, not a recycled pid
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)


@pytest.fixture(scope="session")
def asset_maker():
    """assets/make_assets.py, the script that made the shipped example files, imported as a module."""
    sys.path.insert(0, str(ROOT / "assets"))
    try:
        import make_assets
    finally:
        sys.path.remove(str(ROOT / "assets"))
    return make_assets


@contextlib.contextmanager
def space_server(base: Path) -> Iterator[StudioServer]:
    """`python app.py` as on a public Space (SPACE_ID set), on a runs folder under `base` and a port of its
    own; stopped on exit (a temporary runs folder: the app cancels its jobs as it stops)."""
    port = free_port()
    runs_dir, log_path = base / "runs", base / "studio.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "app.py", "--port", str(port), "--runs-dir", str(runs_dir)],
            cwd=ROOT,
            env=child_env(SPACE_ID="test/studio"),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = StudioServer(f"http://127.0.0.1:{port}", port, runs_dir, log_path, process)
    try:
        _wait_until_serving(server, 120.0)
        yield server
    finally:
        stop_process(process)
