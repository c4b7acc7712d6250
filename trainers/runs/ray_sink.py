"""Results of trainers on other Ray nodes come home through a sink actor, with no shared filesystem.

The studio starts one detached, named ``RunSink`` actor pinned to its own node (:func:`start_sink`); it owns
a ``RunStore`` on the studio's runs folder. A trainer started with ``python -m trainers train ... --sink
NAME`` keeps a node-local ``RunStore`` (``./runs`` under its working directory) wrapped in a
:class:`SinkStore`: every write goes to the local store first and then, in order and asynchronously, to the
sink. Checkpoint folders (``best``/``last`` with their manifest) are pushed when the run row starts pointing
at them, files before the row; the run's other files (media, ``phases.json``) with each checkpoint and at the
end. A sink call returns after its rows are committed, so an acknowledged write survives the trainer's node.
Checkpoints and large media go by a `FileSender` of their own, in CHUNK_BYTES pieces through the sink's
"files" concurrency group (or through a ``--ray-storage`` URI), so metric rows never wait behind them. Once
the studio gives up on a job's attempt (Ray says FAILED), the sink refuses its writes (`RunSink.fence`).

Ray is optional: this module imports it only inside functions, so the studio and the trainers work without
it (``pip install 'autoencoder-comparison-studio[ray]'`` or ``ray[default]`` adds it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import secrets
import shutil
import signal
import tempfile
import threading
import time as _time
from collections import deque
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from trainers.runs.atomic import point_link, write_synced
from trainers.runs.store import TERMINAL, RunStore

log = logging.getLogger(__name__)

SINK_NAMESPACE = "ae-studio"
SINK_ENV = "AE_STUDIO_SINK"
# Run columns that hold paths on the writer's machine; the sink rewrites them into the studio's runs folder.
PATH_FIELDS: tuple[str, ...] = ("best_checkpoint", "last_checkpoint", "log_path")
CHECKPOINT_FIELDS: dict[str, str] = {"best_checkpoint": "best", "last_checkpoint": "last"}
# Operations a trainer may batch into RunSink.apply (reads and admin calls are not among them).
WRITE_OPS: frozenset[str] = frozenset(
    {"create_run", "update_run", "set_status", "log_metrics", "supersede_after", "put_files", "sync_files"}
)
CONNECT_TIMEOUT_S = 60.0
FLUSH_TIMEOUT_S = 120.0
RECONNECT_TIMEOUT_S = 30.0
MARKER_NAME = ".ae-studio-sink"  # in the studio's runs folder: see RunSink.__init__
FENCE_NAME = ".ae-studio-fenced"  # in the studio's runs folder: the attempts whose writes the sink refuses
#: Files travel in pieces of this size through the sink's "files" concurrency group, beside (never ahead of)
#: the trainers' metric rows, which the default group commits one batch at a time.
CHUNK_BYTES = 8 * 2**20
FILES_GROUP = "files"
FILES_CONCURRENCY = 2
CHUNKS_IN_FLIGHT = 2
#: The job's attempt (its Ray submission id), set by the studio in each job's environment.
ATTEMPT_ENV = "AE_STUDIO_ATTEMPT"
#: With `--ray-storage URI`: checkpoints and media go through this storage (pyarrow.fs), not the actor.
STORAGE_ENV = "AE_STUDIO_STORAGE"
FENCED = "fenced:"  # the start of the sink's answer to a write of an attempt the studio gave up on


def sink_name(runs_dir: str | Path) -> str:
    """The sink actor's name for a studio runs folder: two studios on one cluster never share a sink."""
    digest = hashlib.sha1(str(Path(runs_dir).resolve()).encode("utf-8")).hexdigest()[:12]
    return f"ae-studio-sink-{digest}"


def _ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ValueError(
            "Ray is not installed: install the studio's `ray` extra "
            "(pip install 'autoencoder-comparison-studio[ray]', or pip install 'ray[default]')"
        ) from exc
    return ray


# ------------------------------------------------------------------------------------------------ files
def _safe_rel(path: str, what: str = "path", allow_empty: bool = False) -> PurePosixPath:
    """A relative path inside a run folder; '..', absolute paths and empty names are refused."""
    if not isinstance(path, str):
        raise ValueError(f"{what} must be text, got {type(path).__name__}")
    rel = PurePosixPath(path.replace("\\", "/"))
    if rel.is_absolute() or any(part in ("..", "") for part in rel.parts):
        raise ValueError(f"{what} {path!r} must be a relative path inside the run folder, without '..'")
    if not allow_empty and rel.parts in ((), (".",)):
        raise ValueError(f"{what} must name a file or folder inside the run folder, got {path!r}")
    return rel


def _write_bytes(path: Path, data: bytes) -> None:
    """Write a file atomically (a temporary sibling, fsync, os.replace)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{secrets.token_hex(4)}"
    try:
        write_synced(tmp, data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _check_files(files: Mapping[str, bytes]) -> list[tuple[PurePosixPath, bytes]]:
    if not isinstance(files, Mapping):
        raise ValueError(f"files must be a dict of relative path -> bytes, got {type(files).__name__}")
    out = []
    for name, data in files.items():
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ValueError(f"file {name!r} must be bytes, got {type(data).__name__}")
        out.append((_safe_rel(name, "file name"), bytes(data)))
    return out


def replace_folder(run_folder: str | Path, folder: str, files: Mapping[str, bytes]) -> Path:
    """Make ``run_folder/folder`` hold exactly ``files``, atomically: the files go into a fresh sibling
    folder ``<name>-put-<token>``, then ``folder`` becomes a relative symlink to it (``os.replace``, as
    trainers.runs.checkpoints points ``best``/``last``) and the previous content is removed. A reader sees the
    old folder or the new one, never a mix. Returns the new data folder."""
    rel = _safe_rel(folder, "folder")
    checked = _check_files(files)  # every name is checked before anything is written
    target = Path(run_folder).joinpath(*rel.parts)
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(4)
    data = parent / f"{target.name}-put-{token}"
    data.mkdir()
    try:
        for name, blob in checked:
            path = data.joinpath(*name.parts)
            path.parent.mkdir(parents=True, exist_ok=True)
            write_synced(path, blob)
    except BaseException:
        shutil.rmtree(data, ignore_errors=True)
        raise
    if target.exists() and not target.is_dir() and not target.is_symlink():
        shutil.rmtree(data, ignore_errors=True)
        raise ValueError(f"{target} exists and is not a folder")
    old = target.resolve() if target.is_symlink() else None
    old = point_link(parent, target.name, data.name) or old  # a real folder (an older copy) is moved aside
    if old is not None and old != data and old.parent == parent.resolve() and old.is_dir():
        shutil.rmtree(old, ignore_errors=True)
    return data


def write_files(
    run_folder: str | Path, folder: str, files: Mapping[str, bytes], removed: Iterable[str] = ()
) -> None:
    """Write each file under ``run_folder/folder`` atomically (in the given order) and delete ``removed``:
    incremental updates of folders that grow along a run (media, phases.json)."""
    base = Path(run_folder).joinpath(*_safe_rel(folder, "folder", allow_empty=True).parts)
    checked = _check_files(files)
    gone = [_safe_rel(name, "removed file") for name in removed]
    for name, blob in checked:
        _write_bytes(base.joinpath(*name.parts), blob)
    for name in gone:
        path = base.joinpath(*name.parts)
        if path.is_file() or path.is_symlink():
            path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # an emptied folder (a thinned media step) goes too
                path.parent.rmdir()


def read_folder(folder: str | Path) -> dict[str, bytes]:
    """Every file under ``folder`` (symlinks followed at the top only) as relative POSIX path -> bytes;
    {} when there is no such folder."""
    root = Path(folder)
    if not root.is_dir():
        return {}
    root = root.resolve()
    out: dict[str, bytes] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if name.startswith(".") and ".tmp-" in name:
                continue  # a write in progress
            out[path.relative_to(root).as_posix()] = path.read_bytes()
    return out


def _home_path(run_folder: Path, run_id: str, value: str) -> str:
    """A trainer-side path under its own run folder, as the same place under the studio's run folder."""
    parts = PurePosixPath(str(value).replace("\\", "/")).parts
    rel = parts[len(parts) - 1 - parts[::-1].index(run_id) + 1 :] if run_id in parts else parts[-1:]
    rel_path = _safe_rel("/".join(rel) or ".", "path", allow_empty=True)
    return str(run_folder.joinpath(*rel_path.parts))


# ------------------------------------------------------------------------------------------------ sink
class RunSink:
    """The studio side: writes what trainers send into the studio's RunStore and runs folder.

    Run as a Ray actor (``start_sink``); every write returns after it is committed (rows) or on disk
    (files), so a resolved ObjectRef means the write survives the trainer. A plain instance works without
    Ray (the tests use both).
    """

    def __init__(self, runs_dir: str) -> None:
        self.runs_dir = Path(runs_dir).resolve()
        self.store = RunStore(self.runs_dir)
        self.started_at = _time.time()
        self.counts = {"calls": 0, "batches": 0, "ops": 0, "rows": 0, "files": 0, "bytes": 0, "errors": 0}
        self.busy_s = 0.0
        self.last_error = ""
        # A marker only this sink knows: a trainer that finds it in its own runs folder is writing into the
        # studio's (same node, or a shared filesystem) and must not (open_sink_store).
        self.token = secrets.token_hex(16)
        _write_bytes(self.runs_dir / MARKER_NAME, self.token.encode("ascii"))
        try:  # kept on disk: a restarted sink still refuses the attempts the studio gave up on
            self.fenced = set((self.runs_dir / FENCE_NAME).read_text().split())
        except OSError:
            self.fenced = set()

    # -- reads and admin
    def ping(self) -> dict[str, Any]:
        node_id = ""
        with contextlib.suppress(Exception):
            import ray

            node_id = ray.get_runtime_context().get_node_id()
        return {"node_id": node_id, "runs_dir": str(self.runs_dir), "pid": os.getpid(), "token": self.token}

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        record = self.store.get_run(run_id)
        return None if record is None else dataclasses.asdict(record)

    def get_files(self, run_id: str, folder: str) -> dict[str, bytes]:
        """The files under the run's ``folder`` (e.g. "checkpoints/last"), {} when it does not exist."""
        rel = _safe_rel(folder, "folder")
        return read_folder(self.store.run_dir(run_id).joinpath(*rel.parts))

    def stats(self) -> dict[str, Any]:
        return {
            **self.counts,
            "busy_s": round(self.busy_s, 3),
            "uptime_s": round(_time.time() - self.started_at, 3),
            "last_error": self.last_error,
            "runs_dir": str(self.runs_dir),
        }

    # -- writes (RunStore's argument names)
    def create_run(
        self, variant: str, domain: str, config: dict, status: str = "queued", run_id: str | None = None
    ) -> str:
        """As RunStore.create_run; a run that is already here is kept (a trainer's resent create)."""
        self.counts["calls"] += 1
        if run_id is not None and self.store.get_run(run_id) is not None:
            return run_id
        return self.store.create_run(variant, domain, config, status=status, run_id=run_id)

    def update_run(self, run_id: str, **fields: Any) -> None:
        self.counts["calls"] += 1
        folder = self.store.run_dir(run_id)
        for key in PATH_FIELDS:
            if fields.get(key):
                fields[key] = _home_path(folder, run_id, fields[key])
        self.store.update_run(run_id, **fields)

    def set_status(
        self, run_id: str, status: str, reason: str = "", from_statuses: Iterable[str] | None = None
    ) -> bool:
        self.counts["calls"] += 1
        return self.store.set_status(run_id, status, reason, from_statuses=from_statuses)

    def log_metrics(
        self,
        run_id: str,
        step: int,
        epoch: int | None,
        split: str,
        values: Mapping[str, float],
        time: float | None = None,
    ) -> None:
        self.counts["calls"] += 1
        self.store.log_metrics(run_id, step, epoch, split, values, time=time)
        self.counts["rows"] += len(values)

    def supersede_after(self, run_id: str, step: int) -> int:
        """As RunStore.supersede_after: a resumed trainer's rows past its checkpoint go out of every read."""
        self.counts["calls"] += 1
        return self.store.supersede_after(run_id, step)

    def put_files(self, run_id: str, folder: str, files: Mapping[str, bytes]) -> dict[str, Any]:
        """Atomically replace ``runs_dir/run_id/folder`` by ``files`` (see replace_folder)."""
        self.counts["calls"] += 1
        data = replace_folder(self.store.run_dir(run_id), folder, files)
        self.counts["files"] += len(files)
        self.counts["bytes"] += sum(len(b) for b in files.values())
        return {"folder": str(data), "files": len(files)}

    def sync_files(
        self, run_id: str, folder: str, files: Mapping[str, bytes], removed: Iterable[str] = ()
    ) -> None:
        """Write files one by one (each atomically) under ``runs_dir/run_id/folder``, delete ``removed``."""
        self.counts["calls"] += 1
        write_files(self.store.run_dir(run_id), folder, files, removed)
        self.counts["files"] += len(files)
        self.counts["bytes"] += sum(len(b) for b in files.values())

    def apply(self, ops: list[tuple[str, tuple, dict]], attempt: str = "") -> list[str]:
        """Run a trainer's batch of writes in order; returns one message per write that failed (a bad
        write is reported, not allowed to drop the writes after it). Consecutive metric rows are committed
        in one transaction: with 20 trainers logging every step, a commit per row is most of the sink's
        time. The writes of a fenced `attempt` are all refused, with one message that starts with FENCED."""
        if attempt and attempt in self.fenced:
            self.counts["errors"] += len(ops)
            gave_up = f"the studio gave up on attempt {attempt} (its Ray job ended)"
            return [f"{FENCED} {gave_up}; {len(ops)} writes refused"]
        start = _time.perf_counter()
        self.counts["batches"] += 1
        errors: list[str] = []
        i = 0
        while i < len(ops):
            j = i
            while j < len(ops) and ops[j][0] == "log_metrics":
                j += 1
            if j - i > 1 and self._log_many(ops[i:j]):
                i = j
                continue
            for name, args, kwargs in ops[i : max(j, i + 1)]:
                self._apply_one(name, args, kwargs, errors)
            i = max(j, i + 1)
        self.busy_s += _time.perf_counter() - start
        return errors

    def _apply_one(self, name: str, args: tuple, kwargs: dict, errors: list[str]) -> None:
        self.counts["ops"] += 1
        try:
            if name not in WRITE_OPS:
                raise ValueError(f"unknown sink write {name!r}")
            getattr(self, name)(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - reported back to the trainer, which logs it
            self.counts["errors"] += 1
            self.last_error = f"{name}: {type(exc).__name__}: {exc}"
            errors.append(self.last_error)

    def _log_many(self, group: list[tuple[str, tuple, dict]]) -> bool:
        """Several log_metrics in one transaction, each checked by RunStore.log_metrics itself (its own
        transaction joined into the open one); False, with nothing written, when any of them fails."""
        store, counts = self.store, dict(self.counts)
        try:
            with store._write() as conn:
                store._write = lambda: contextlib.nullcontext(conn)  # type: ignore[method-assign]
                try:
                    for _, args, kwargs in group:
                        self.log_metrics(*args, **kwargs)
                finally:
                    del store._write  # the class's method again
        except Exception:  # noqa: BLE001 - the caller redoes them one by one and reports the bad one
            self.counts = counts
            return False
        self.counts["ops"] += len(group)
        return True

    # -- fencing: an attempt the studio gave up on (its Ray job failed) writes nothing more
    def fence(self, attempt: str) -> None:
        """Refuse every later write of `attempt` (a Ray submission id). Runs in the default group, so a
        batch of that attempt already running lands whole and none after it does."""
        if attempt and attempt not in self.fenced:
            self.fenced.add(attempt)
            with open(self.runs_dir / FENCE_NAME, "a") as handle:
                handle.write(attempt + "\n")

    def _check_fence(self, attempt: str) -> None:
        if attempt and attempt in self.fenced:
            raise PermissionError(f"{FENCED} the studio gave up on attempt {attempt} (its Ray job ended)")

    # -- files in pieces (the "files" concurrency group: metric rows never wait behind them)
    def _upload_dir(self, run_id: str, folder: str, token: str, mode: str) -> Path:
        if not token.isalnum() or len(token) > 32:
            raise ValueError(f"upload token must be short and alphanumeric, got {token!r}")
        run_folder = self.store.run_dir(run_id)
        if mode == "replace":  # the new data folder itself, beside the link `folder` will become
            target = run_folder.joinpath(*_safe_rel(folder, "folder").parts)
            return target.parent / f"{target.name}-put-{token}"
        if mode == "sync":
            return run_folder / f".upload-{token}"
        raise ValueError(f"upload mode must be 'replace' or 'sync', got {mode!r}")

    def put_chunk(
        self,
        run_id: str,
        folder: str,
        token: str,
        mode: str,
        rel: str,
        offset: int,
        data: bytes,
        attempt: str = "",
    ) -> None:
        """Write `data` at `offset` of file `rel` of an upload (pieces may arrive in any order)."""
        self._check_fence(attempt)
        path = self._upload_dir(run_id, folder, token, mode).joinpath(*_safe_rel(rel, "file name").parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)  # no truncation: another piece may be in
        try:
            os.pwrite(fd, data, int(offset))
        finally:
            os.close(fd)
        self.counts["bytes"] += len(data)

    def commit_upload(
        self,
        run_id: str,
        folder: str,
        token: str,
        mode: str,
        sizes: Mapping[str, int],
        removed: Iterable[str] = (),
        attempt: str = "",
    ) -> dict[str, Any]:
        """Make an upload visible once every file has its full size: `replace` points `folder` at it (as
        replace_folder), `sync` moves each file into place under `folder` and deletes `removed`."""
        self._check_fence(attempt)
        staged = self._upload_dir(run_id, folder, token, mode)
        staged.mkdir(parents=True, exist_ok=True)  # an upload of no files
        for rel, size in sizes.items():
            path = staged.joinpath(*_safe_rel(rel, "file name").parts)
            if not path.is_file() or path.stat().st_size != int(size):
                raise ValueError(f"upload {token} of run {run_id}: {rel} is incomplete; not committed")
            with open(path, "rb+") as handle:
                os.fsync(handle.fileno())
        run_folder = self.store.run_dir(run_id)
        if mode == "replace":
            parent, name = staged.parent, staged.name.rsplit("-put-", 1)[0]
            link = parent / name
            old = link.resolve() if link.is_symlink() else None
            moved = point_link(parent, name, staged.name)
            # The previous copy, a real folder moved aside, and uploads of this folder that never finished.
            for stale in [moved, old, *parent.glob(f"{name}-put-*")]:
                if stale is not None and stale != staged and stale.resolve().parent == parent.resolve():
                    shutil.rmtree(stale, ignore_errors=True)
        else:
            base = run_folder.joinpath(*_safe_rel(folder, "folder", allow_empty=True).parts)
            for rel in sorted(sizes, key=lambda r: (r.endswith("index.json"), r)):
                target = base.joinpath(*_safe_rel(rel, "file name").parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(staged.joinpath(*PurePosixPath(rel).parts), target)
            write_files(run_folder, folder, {}, removed)
            shutil.rmtree(staged, ignore_errors=True)
        self.counts["files"] += len(sizes)
        return {"folder": str(staged), "files": len(sizes)}

    def fetch_upload(
        self,
        run_id: str,
        folder: str,
        token: str,
        mode: str,
        storage: str,
        key: str,
        sizes: Mapping[str, int],
        removed: Iterable[str] = (),
        attempt: str = "",
    ) -> dict[str, Any]:
        """An upload the trainer put into the shared storage under `key`: copied into the runs folder here
        (the studio reads runs from its own disk), then committed as `commit_upload`."""
        self._check_fence(attempt)
        import pyarrow.fs as pafs

        fs, base = open_storage(storage)
        staged = self._upload_dir(run_id, folder, token, mode)
        staged.mkdir(parents=True, exist_ok=True)
        if sizes:
            pafs.copy_files(f"{base}/{_safe_rel(key, 'storage key')}", str(staged), source_filesystem=fs)
        return self.commit_upload(run_id, folder, token, mode, sizes, removed, attempt)

    def list_files(self, run_id: str, folder: str) -> dict[str, int]:
        """Relative path -> size of every file under the run's `folder` ({} when there is none)."""
        root = self.store.run_dir(run_id).joinpath(*_safe_rel(folder, "folder").parts)
        if not root.is_dir():
            return {}
        root = root.resolve()
        return {
            path.relative_to(root).as_posix(): path.stat().st_size
            for path in sorted(root.rglob("*"))
            if path.is_file() and not (path.name.startswith(".") and ".tmp-" in path.name)
        }

    def read_chunk(self, run_id: str, folder: str, rel: str, offset: int, size: int) -> bytes:
        """`size` bytes from `offset` of a file under the run's `folder` (a resume pulls checkpoints so)."""
        root = self.store.run_dir(run_id).joinpath(*_safe_rel(folder, "folder").parts)
        with open(root.joinpath(*_safe_rel(rel, "file name").parts), "rb") as handle:
            handle.seek(int(offset))
            return handle.read(min(int(size), CHUNK_BYTES))


def open_storage(uri: str) -> tuple[Any, str]:
    """(pyarrow filesystem, base path) of a storage URI, as Ray Train's ``storage_path``: a local or
    shared path (NFS), ``file://``, ``s3://``, ``gs://`` or any scheme pyarrow.fs knows."""
    try:
        import pyarrow.fs as pafs
    except ImportError as exc:
        raise ValueError(
            "a Ray storage URI needs pyarrow: pip install pyarrow (Ray Train's own need)"
        ) from exc
    if "://" not in uri:
        return pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve())
    try:
        fs, path = pafs.FileSystem.from_uri(uri)
    except (ValueError, OSError) as exc:  # pyarrow.ArrowInvalid is a ValueError
        raise ValueError(f"cannot open the storage {uri!r}: {exc}") from exc
    return fs, path.rstrip("/")


_REMOTE: dict[str, Any] = {}


def _actor_class() -> Any:
    if "cls" not in _REMOTE:
        # Checkpoint and media pieces get threads of their own: metric rows never queue behind them.
        _REMOTE["cls"] = _ray().remote(concurrency_groups={FILES_GROUP: FILES_CONCURRENCY})(RunSink)
    return _REMOTE["cls"]


def _call(method: Any, *args: Any, timeout_s: float = CONNECT_TIMEOUT_S) -> Any:
    """``ray.get`` of one actor call, retried while the actor restarts (ActorUnavailableError)."""
    ray = _ray()
    unavailable = getattr(ray.exceptions, "ActorUnavailableError", ())
    deadline = _time.monotonic() + timeout_s
    while True:
        try:
            return ray.get(method.remote(*args), timeout=timeout_s)
        except unavailable:
            if _time.monotonic() > deadline:
                raise
            _time.sleep(0.2)


def get_sink(name: str, timeout_s: float = 0.0) -> Any:
    """The live sink actor called ``name`` (namespace SINK_NAMESPACE), waiting up to ``timeout_s`` for it
    to appear; ValueError naming the sink when there is none."""
    ray = _ray()
    deadline = _time.monotonic() + timeout_s
    while True:
        try:
            return ray.get_actor(name, namespace=SINK_NAMESPACE)
        except ValueError:
            if _time.monotonic() >= deadline:
                raise ValueError(
                    f"no result sink {name!r} on this Ray cluster (namespace {SINK_NAMESPACE!r}): the studio "
                    "starts it when it uses the Ray backend; is the studio running against this cluster?"
                ) from None
            _time.sleep(0.5)


def start_sink(runs_dir: str | Path) -> Any:
    """Get or create the studio's detached sink actor, pinned to this driver's node (where ``runs_dir``
    is). Idempotent: a restarted studio gets the same live actor back. Needs ``ray.init`` done."""
    ray = _ray()
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if not ray.is_initialized():
        raise ValueError("start_sink needs a Ray connection: call ray.init(..., namespace=SINK_NAMESPACE)")
    folder = Path(runs_dir).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    RunStore(folder).close()  # a bad runs folder fails here, in the studio, not inside the actor
    name = sink_name(folder)
    node_id = ray.get_runtime_context().get_node_id()
    code = str(Path(__file__).resolve().parents[2])
    paths = [code, *(p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != code)]
    actor = (
        _actor_class()
        .options(
            name=name,
            namespace=SINK_NAMESPACE,
            lifetime="detached",
            get_if_exists=True,
            num_cpus=0,
            max_restarts=-1,
            max_concurrency=1,  # one writer, calls from each trainer run in the order it sent them
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=False),
            # The actor runs on this node: its worker imports this checkout of trainers, installed or not.
            runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(paths)}},
        )
        .remote(str(folder))
    )
    try:
        info = _call(actor.ping)
    except ray.exceptions.RayActorError:
        # The named actor died for good (its node went away): replace it with one on this node.
        ray.kill(actor, no_restart=True)
        return start_sink(folder)
    if Path(info["runs_dir"]) != folder:  # cannot happen unless two folders' hashes collide
        raise ValueError(f"sink {name!r} writes to {info['runs_dir']}, not {folder}")
    return actor


def stop_sink(runs_dir: str | Path) -> bool:
    """Kill the studio's sink actor; returns whether there was one."""
    ray = _ray()
    try:
        actor = ray.get_actor(sink_name(runs_dir), namespace=SINK_NAMESPACE)
    except ValueError:
        return False
    ray.kill(actor, no_restart=True)
    return True


# ------------------------------------------------------------------------------------------------ trainer
@dataclasses.dataclass
class Upload:
    """Files of one run on their way home: a snapshot folder `src` (hard links: the trainer's next save
    never changes it) with the files' sizes; `replace` makes them the run's `folder` (a checkpoint), `sync`
    writes them under it and deletes `removed` (media). `row`: the run fields sent once they are home."""

    run_id: str
    folder: str
    mode: str
    src: Path
    sizes: dict[str, int]
    removed: list[str] = dataclasses.field(default_factory=list)
    row: dict[str, Any] | None = None
    token: str = dataclasses.field(default_factory=lambda: secrets.token_hex(8))


def snapshot(files: Mapping[str, Path], dest: Path, link: bool = True) -> dict[str, int]:
    """Hard-link (or copy) `files` (relative path -> file) into `dest`; returns relative path -> size."""
    sizes: dict[str, int] = {}
    for rel, source in files.items():
        target = dest.joinpath(*_safe_rel(rel, "file name").parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            if not link:
                raise OSError("copy")
            os.link(source, target)
        except OSError:
            shutil.copyfile(source, target)
        sizes[rel] = target.stat().st_size
    return sizes


class FileSender:
    """Sends a trainer's checkpoints and media home, one upload after the other, on a thread of its own:
    in pieces of CHUNK_BYTES through the sink's "files" concurrency group, or, with a `storage` URI, into
    that storage (pyarrow.fs), from which the sink copies them. The metric rows go on meanwhile; an upload
    whose successor (same run and folder) is queued before it started is dropped (only the newest counts).
    The owner's `upload_done(upload)` follows each commit (it sends the row), `upload_failed` a failure."""

    def __init__(self, owner: SinkStore, outbox: Path, storage: str | None) -> None:
        self.owner = owner
        self.outbox = outbox
        self.storage = storage
        self.stored: dict[tuple[str, str], str] = {}  # (run, folder) -> its newest copy's key in storage
        self.sent = 0
        self._cond = threading.Condition()
        self._queue: deque[Upload] = deque()
        self._busy = False
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="ray-sink-files", daemon=True)
        self._thread.start()

    def submit(self, upload: Upload) -> None:
        with self._cond:
            same = (upload.run_id, upload.folder, "replace")
            superseded = [u for u in self._queue if (u.run_id, u.folder, u.mode) == same]
            for old in superseded if upload.mode == "replace" else []:
                self._queue.remove(old)  # superseded before it left
                shutil.rmtree(old.src, ignore_errors=True)
            self._queue.append(upload)
            self._cond.notify_all()

    def wait(self, timeout_s: float) -> bool:
        """Until every upload queued so far is home (or failed); False on timeout."""
        deadline = _time.monotonic() + timeout_s
        with self._cond:
            while (self._queue or self._busy) and self._thread.is_alive():
                left = deadline - _time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.1))
        return True

    def close(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait(0.5)
                if not self._queue:
                    return
                upload = self._queue.popleft()
                self._busy = True
            try:
                self._send(upload)
                self.sent += 1
                self.owner.upload_done(upload)
            except Exception as exc:  # noqa: BLE001 - reported; the run goes on without this copy at home
                self.owner.upload_failed(upload, f"{type(exc).__name__}: {exc}")
            finally:
                shutil.rmtree(upload.src, ignore_errors=True)
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _send(self, upload: Upload) -> None:
        ray = _ray()
        for attempt in range(3):
            sink = self.owner.sink
            try:
                if self.storage:
                    return self._via_storage(ray, sink, upload)
                return self._in_pieces(ray, sink, upload)
            except ray.exceptions.RayActorError:
                if attempt == 2 or not self.owner._reconnect(ray):
                    raise
        return None

    def _group(self, method: Any) -> Any:
        return method.options(concurrency_group=FILES_GROUP) if hasattr(method, "options") else method

    def _in_pieces(self, ray: Any, sink: Any, upload: Upload) -> None:
        attempt = self.owner.attempt
        head = (upload.run_id, upload.folder, upload.token, upload.mode)
        pending: deque[Any] = deque()
        for rel in sorted(upload.sizes):
            with open(upload.src.joinpath(*PurePosixPath(rel).parts), "rb") as handle:
                for offset in range(0, max(upload.sizes[rel], 1), CHUNK_BYTES):  # an empty file: one piece
                    data = handle.read(CHUNK_BYTES)
                    pending.append(self._group(sink.put_chunk).remote(*head, rel, offset, data, attempt))
                    while len(pending) >= CHUNKS_IN_FLIGHT:
                        ray.get(pending.popleft(), timeout=FLUSH_TIMEOUT_S)
        while pending:
            ray.get(pending.popleft(), timeout=FLUSH_TIMEOUT_S)
        commit = self._group(sink.commit_upload).remote(*head, upload.sizes, upload.removed, attempt)
        ray.get(commit, timeout=FLUSH_TIMEOUT_S)

    def _via_storage(self, ray: Any, sink: Any, upload: Upload) -> None:
        import pyarrow.fs as pafs

        fs, base = open_storage(self.storage)
        key = f"{self.owner.sink_name or 'sink'}/{upload.run_id}/{upload.folder or 'files'}/{upload.token}"
        if upload.sizes:
            fs.create_dir(f"{base}/{key}", recursive=True)
            pafs.copy_files(str(upload.src), f"{base}/{key}", destination_filesystem=fs)
        head = (upload.run_id, upload.folder, upload.token, upload.mode, self.storage, key)
        call = self._group(sink.fetch_upload).remote(*head, upload.sizes, upload.removed, self.owner.attempt)
        ray.get(call, timeout=FLUSH_TIMEOUT_S)
        # The storage keeps the newest checkpoint of each kind (a node-independent copy); media once home.
        if upload.mode == "replace":
            previous = self.stored.get((upload.run_id, upload.folder))
            self.stored[(upload.run_id, upload.folder)] = key
        else:
            previous = key if upload.sizes else None
        if previous:
            with contextlib.suppress(OSError):
                fs.delete_dir(f"{base}/{previous}")


class SinkStore(RunStore):
    """A node-local RunStore that forwards every write to a RunSink, in order, without waiting for it.

    Writes are queued and sent by one thread as batches (``RunSink.apply``), at most ``max_in_flight``
    batches unacknowledged; the queue holds at most ``max_queue`` writes / ``max_queue_bytes`` bytes, beyond
    which a write waits (back-pressure from a slow sink instead of growing memory). ``flush()`` waits until
    everything written so far is acknowledged; ``close()`` pushes the run files and flushes first.
    """

    def __init__(
        self,
        runs_dir: str | Path,
        sink: Any,
        *,
        sink_name: str | None = None,
        host: str | None = None,
        max_queue: int = 2000,
        max_queue_bytes: int = 512 * 2**20,
        max_in_flight: int = 4,
        max_batch: int = 500,
        flush_timeout_s: float = FLUSH_TIMEOUT_S,
        storage: str | None = None,
        attempt: str | None = None,
    ) -> None:
        super().__init__(runs_dir)
        self.attempt = os.environ.get(ATTEMPT_ENV, "") if attempt is None else attempt
        self.fenced = False
        self.sink = sink
        self.sink_name = sink_name
        self.host = host
        self.max_queue = max_queue
        self.max_queue_bytes = max_queue_bytes
        self.max_in_flight = max_in_flight
        self.max_batch = max_batch
        self.flush_timeout_s = flush_timeout_s
        self._cond = threading.Condition()
        self._queue: deque[tuple[int, int, tuple[str, tuple, dict]]] = deque()  # (seq, bytes, op)
        self._queued_bytes = 0
        self._pending: list[tuple[Any, list[tuple[int, int, tuple[str, tuple, dict]]]]] = []
        self._seq = 0  # last write queued
        self._acked = 0  # every write up to this seq is acknowledged (or reported lost)
        self._stopping = False
        self.sent_batches = 0
        self.lost = 0  # writes that never reached the sink (sink gone for good)
        self.sink_errors: list[str] = []
        self._runs: set[str] = set()
        self._file_state: dict[str, dict[str, tuple[int, int]]] = {}
        self._thread = threading.Thread(target=self._sender, name="ray-sink-sender", daemon=True)
        self._thread.start()
        outbox = Path(self.runs_dir) / ".ae-outbox"  # snapshots of files on their way home
        shutil.rmtree(outbox, ignore_errors=True)
        self.files = FileSender(self, outbox, storage or os.environ.get(STORAGE_ENV) or None)

    # -- forwarding
    def create_run(
        self,
        variant: str,
        domain: str,
        config: dict[str, Any],
        status: str = "queued",
        run_id: str | None = None,
    ) -> str:
        new_id = super().create_run(variant, domain, config, status=status, run_id=run_id)
        self._send("create_run", (variant, domain, dict(config)), {"status": status, "run_id": new_id})
        return new_id

    def update_run(self, run_id: str, **fields: Any) -> None:
        if "host" in fields and self.host:
            fields["host"] = self.host  # never the bare hostname: a local job manager must not adopt it
        super().update_run(run_id, **fields)
        sent = {k: (str(v) if isinstance(v, Path) else v) for k, v in fields.items()}
        kinds = [(k, v) for k, v in sent.items() if k in CHECKPOINT_FIELDS and v]
        if kinds:
            self.push_run_files(run_id)  # media of the validation that made this checkpoint
            for (
                key,
                value,
            ) in kinds:  # the folder goes home first, then (FileSender) the row that points at it
                self._push_checkpoint(run_id, CHECKPOINT_FIELDS[key], Path(value), {key: value})
            sent = {k: v for k, v in sent.items() if k not in dict(kinds)}
            if not sent:
                return
        self._send("update_run", (run_id,), sent)

    def set_status(
        self, run_id: str, status: str, reason: str = "", from_statuses: Iterable[str] | None = None
    ) -> bool:
        allowed = None if from_statuses is None else list(from_statuses)
        if status in TERMINAL:  # the end status after the checkpoints: the studio never sees one without them
            self.files.wait(self.flush_timeout_s)
        changed = super().set_status(run_id, status, reason, from_statuses=allowed)
        if changed:
            self._send("set_status", (run_id, status, reason), {"from_statuses": allowed})
        return changed

    def log_metrics(
        self,
        run_id: str,
        step: int,
        epoch: int | None,
        split: str,
        values: Mapping[str, float],
        time: float | None = None,
    ) -> None:
        stamp = _time.time() if time is None else float(time)
        super().log_metrics(run_id, step, epoch, split, values, time=stamp)
        plain = {str(k): float(v) for k, v in values.items()}  # tensors and numpy scalars as floats
        self._send("log_metrics", (run_id, step, epoch, split, plain), {"time": stamp})

    def supersede_after(self, run_id: str, step: int) -> int:
        # In order with the rows: the killed attempt's rows reached the studio before this resume's.
        dropped = super().supersede_after(run_id, step)
        self._send("supersede_after", (run_id, int(step)), {})
        return dropped

    def _push_checkpoint(self, run_id: str, kind: str, path: Path, row: dict[str, Any]) -> None:
        local = (path if path.is_absolute() else Path.cwd() / path).resolve()
        files = {p.relative_to(local).as_posix(): p for p in sorted(local.rglob("*")) if p.is_file()}
        files = {rel: p for rel, p in files.items() if ".tmp-" not in rel}
        if not files:
            log.warning("run %s: checkpoint %s has no files; not sent to the studio", run_id, path)
            return
        src = self.files.outbox / secrets.token_hex(8)
        sizes = snapshot(files, src)  # links, taken now: the next save of this kind replaces the folder
        self.files.submit(Upload(run_id, f"checkpoints/{kind}", "replace", src, sizes, row=row))

    def upload_done(self, upload: Upload) -> None:
        """FileSender: an upload is home; the row that points at it follows in the ordered queue."""
        if upload.row:
            self._send("update_run", (upload.run_id,), upload.row)

    def upload_failed(self, upload: Upload, message: str) -> None:
        self._note_error(f"run {upload.run_id}: {upload.folder or 'files'} not sent home: {message}")
        if FENCED in message:
            self._on_fenced(message)

    def _on_fenced(self, message: str) -> None:
        """The studio gave up on this attempt (its Ray job failed while this trainer ran on): stop training
        (SIGTERM, as a cancel) instead of going on unseen."""
        if self.fenced:
            return
        self.fenced = True
        log.error("result sink: %s; stopping this trainer", message)
        with contextlib.suppress(OSError):
            os.kill(os.getpid(), signal.SIGTERM)

    def push_run_files(self, run_id: str, send: bool = True) -> int:
        """Send the run folder's files (except checkpoints) that changed since the last push, and the
        deletion of those that went; returns how many files were sent. ``send=False`` only takes the
        current files as already home (after pulling them from the sink)."""
        folder = self.run_dir(run_id)
        known = self._file_state.setdefault(run_id, {})
        now: dict[str, tuple[int, int]] = {}
        if folder.is_dir():
            for dirpath, dirnames, filenames in os.walk(folder):
                if Path(dirpath) == folder and "checkpoints" in dirnames:
                    dirnames.remove("checkpoints")
                for name in filenames:
                    if ".tmp-" in name:
                        continue
                    path = Path(dirpath) / name
                    with contextlib.suppress(OSError):
                        st = path.stat()
                        now[path.relative_to(folder).as_posix()] = (st.st_size, st.st_mtime_ns)
        changed = sorted(
            (rel for rel, sig in now.items() if known.get(rel) != sig),
            key=lambda rel: (rel.endswith("index.json"), rel),  # an index after the files it lists
        )
        removed = sorted(rel for rel in known if rel not in now)
        big = sum(now[rel][0] for rel in changed) > CHUNK_BYTES
        if send and (changed or removed) and (big or self.files.storage):
            src = self.files.outbox / secrets.token_hex(8)
            with contextlib.suppress(OSError):  # copies: these files may be rewritten in place
                sizes = snapshot({rel: folder / rel for rel in changed}, src, link=False)
                self.files.submit(Upload(run_id, "", "sync", src, sizes, removed=removed))
                self._file_state[run_id] = now
            return len(changed)
        files: dict[str, bytes] = {}
        for rel in changed:
            with contextlib.suppress(OSError):
                files[rel] = (folder / rel).read_bytes()
        if send and (files or removed):
            self._send("sync_files", (run_id, "", files, removed), {})
        self._file_state[run_id] = now
        return len(files)

    # -- the queue
    def _send(self, name: str, args: tuple, kwargs: dict) -> None:
        size = _op_bytes(args, kwargs)
        if args and isinstance(args[0], str) and name != "create_run":
            self._runs.add(args[0])
        elif name == "create_run":
            self._runs.add(kwargs["run_id"])
        with self._cond:
            while (
                self._queue
                and (len(self._queue) >= self.max_queue or self._queued_bytes + size > self.max_queue_bytes)
                and self._thread.is_alive()
            ):
                self._cond.wait(0.5)  # back-pressure: the sink is slower than this trainer writes
            self._seq += 1
            self._queue.append((self._seq, size, (name, args, kwargs)))
            self._queued_bytes += size
            self._cond.notify_all()

    def _sender(self) -> None:
        ray = _ray()
        while True:
            with self._cond:
                if not self._queue and not self._pending and self._stopping:
                    return
                if not self._queue and not self._pending:
                    self._cond.wait(0.5)
                batch = []
                size = 0
                while self._queue and len(self._pending) < self.max_in_flight and len(batch) < self.max_batch:
                    if batch and size + self._queue[0][1] > 64 * 2**20:
                        break
                    item = self._queue.popleft()
                    batch.append(item)
                    size += item[1]
                    self._queued_bytes -= item[1]
                if batch:
                    self._cond.notify_all()
            if batch:
                self._submit(ray, batch)
            if self._pending:
                # Block only when nothing else can be sent: the in-flight window is full, or the queue empty.
                block = len(self._pending) >= self.max_in_flight or not self._queue
                self._prune(ray, 0.05 if block else 0)

    def _submit(self, ray: Any, batch: list) -> None:
        ops = [op for _, _, op in batch]
        # The attempt only when there is one: a trainer outside a studio's Ray job has none.
        ref = self.sink.apply.remote(ops, self.attempt) if self.attempt else self.sink.apply.remote(ops)
        self._pending.append((ref, batch))
        self.sent_batches += 1

    def _prune(self, ray: Any, timeout: float) -> None:
        refs = [ref for ref, _ in self._pending]
        ready, _ = ray.wait(refs, num_returns=1, timeout=timeout)  # returns as soon as one is done
        if not ready:
            return
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        ready_set = set(ready)
        failed_actor = False
        keep = []
        for ref, batch in self._pending:
            if ref not in ready_set or failed_actor:
                keep.append((ref, batch))
                continue
            try:
                for message in ray.get(ref):
                    self._note_error(message)
                    if message.startswith(FENCED):
                        self._on_fenced(message)
            except ray.exceptions.RayActorError as exc:
                log.warning("result sink unreachable (%s); reconnecting", type(exc).__name__)
                failed_actor = True
                keep.append((ref, batch))
            except Exception as exc:  # noqa: BLE001 - the batch is lost; the run goes on
                self._note_error(f"batch of {len(batch)} writes failed: {type(exc).__name__}: {exc}")
                self.lost += len(batch)
        if failed_actor:
            # The batch that failed and every later one (same dead actor): resent, in order, to the live one.
            resend = [batch for _, batch in keep]
            self._pending = []
            if self._reconnect(ray):
                for batch in resend:
                    self._submit(ray, batch)
            else:
                lost = sum(len(b) for b in resend)
                self.lost += lost
                self._note_error(f"result sink {self.sink_name!r} is gone; {lost} writes not delivered")
        else:
            self._pending = keep
        with self._cond:
            first = [self._pending[0][1][0][0]] if self._pending else []
            if self._queue:
                first.append(self._queue[0][0])
            self._acked = min(first) - 1 if first else self._seq
            self._cond.notify_all()

    def _reconnect(self, ray: Any) -> bool:
        if not self.sink_name:
            return False
        deadline = _time.monotonic() + RECONNECT_TIMEOUT_S
        while _time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                actor = ray.get_actor(self.sink_name, namespace=SINK_NAMESPACE)
                _call(actor.ping, timeout_s=5)
                self.sink = actor
                return True
            _time.sleep(0.5)
        return False

    def _note_error(self, message: str) -> None:
        if len(self.sink_errors) < 100:
            self.sink_errors.append(message)
        log.warning("result sink: %s", message)

    @property
    def unacknowledged(self) -> int:
        """Writes queued or in flight, not yet acknowledged by the sink."""
        with self._cond:
            return self._seq - self._acked

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until every write made so far is acknowledged by the sink (or reported lost); False on
        timeout."""
        deadline = _time.monotonic() + (self.flush_timeout_s if timeout_s is None else timeout_s)
        if not self.files.wait(deadline - _time.monotonic()):  # their rows join the queue when they land
            return False
        with self._cond:
            target = self._seq
            while self._acked < target:
                left = deadline - _time.monotonic()
                if left <= 0 or not self._thread.is_alive():
                    return False
                self._cond.wait(min(left, 0.1))
        return True

    def close(self) -> None:
        """Push the runs' remaining files (phases.json, media), wait for the sink's acknowledgements, stop
        the sender and close the local store."""
        if self._closed:
            return
        with contextlib.suppress(Exception):
            for run_id in sorted(self._runs):
                self.push_run_files(run_id)
        previous = None
        if threading.current_thread() is threading.main_thread():
            # A job stop that comes after the run ended must not cut off its last acknowledgements (the
            # loop has already turned the first SIGTERM into `cancelled`); SIGKILL still ends the process.
            with contextlib.suppress(ValueError, OSError):
                previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            done = self.flush()
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout=5)
        self.files.close()
        if not done:
            log.error(
                "result sink %s: %d writes not acknowledged after %.0f s; the studio may miss the run's end",
                self.sink_name,
                self.unacknowledged,
                self.flush_timeout_s,
            )
        elif self.lost:
            log.error("result sink %s: %d writes were lost", self.sink_name, self.lost)
        super().close()

    # -- pulling a run from the studio
    def pull_run(self, run_id: str, checkpoints: bool = False) -> bool:
        """Copy the studio's record of ``run_id`` into the local store (and, for a resume, its best/last
        checkpoints and media into the local run folder); False when the studio has no such run."""
        from trainers.runs.checkpoints import KINDS

        record = _call(self.sink.get_run, run_id)
        if record is None:
            return False
        if RunStore.get_run(self, run_id) is None:
            RunStore.create_run(
                self, record["variant"], record["domain"], record["config"], record["status"], run_id=run_id
            )
        keys = ("config", "status", "reason", "step", "epoch", "steps_per_epoch", "owner", "name", "note")
        fields = {k: record[k] for k in keys}
        fields["tags"] = record.get("tags") or []
        if checkpoints:
            folder = self.run_dir(run_id)
            for kind in KINDS:
                files = _fetch_folder_from(self.sink, run_id, f"checkpoints/{kind}")
                if files:
                    replace_folder(folder, f"checkpoints/{kind}", files)
                    fields[f"{kind}_checkpoint"] = str(folder / "checkpoints" / kind)
            media = _fetch_folder_from(self.sink, run_id, "media")
            if media:
                write_files(folder, "media", media)
            self._file_state.pop(run_id, None)
            self.push_run_files(run_id, send=False)
        RunStore.update_run(self, run_id, **fields)
        return True


def _fetch_folder_from(sink: Any, run_id: str, folder: str) -> dict[str, bytes]:
    """Every file of the studio's run `folder`, read in pieces through the sink's "files" group (a 290 MB
    checkpoint in one call would hold every trainer's rows back for its whole transfer)."""
    group = FILES_GROUP

    def call(method: Any, *args: Any) -> Any:
        return _call(method.options(concurrency_group=group) if hasattr(method, "options") else method, *args)

    out: dict[str, bytes] = {}
    for rel, size in call(sink.list_files, run_id, folder).items():
        parts = [
            call(sink.read_chunk, run_id, folder, rel, off, CHUNK_BYTES)
            for off in range(0, size, CHUNK_BYTES)
        ]
        out[rel] = b"".join(parts)
        if len(out[rel]) != size:
            raise ValueError(f"run {run_id}: {folder}/{rel} changed while it was read; try the resume again")
    return out


def _op_bytes(args: tuple, kwargs: dict) -> int:
    size = 200
    for value in (*args, *kwargs.values()):
        if isinstance(value, Mapping):
            size += sum(len(v) for v in value.values() if isinstance(v, (bytes, bytearray)))
    return size


def _is_studio_folder(folder: Path, token: str) -> bool:
    try:
        return (folder / MARKER_NAME).read_bytes().decode("ascii", "replace") == token
    except OSError:
        return False


def node_host() -> str:
    """``ray:<node_ip>:<node_id[:8]>``: where a Ray trainer runs, as the run's ``host``."""
    ray = _ray()
    return f"ray:{ray.util.get_node_ip_address()}:{ray.get_runtime_context().get_node_id()[:8]}"


#: The GCS address of the studio's cluster, set by the studio in each job's environment. Ray's own
#: RAY_ADDRESS inside a job is resolved with "auto", which picks any cluster running on the node's host.
ADDRESS_ENV = "AE_STUDIO_RAY_ADDRESS"


def connect(address: str | None = "auto") -> Any:
    """Connect this process to the Ray cluster it runs in: the one the studio named (ADDRESS_ENV), else
    ``address`` ("auto": the RAY_ADDRESS of a Ray job)."""
    ray = _ray()
    if address == "auto" and os.environ.get(ADDRESS_ENV):
        address = os.environ[ADDRESS_ENV]
    if not ray.is_initialized():
        try:
            ray.init(address=address, namespace=SINK_NAMESPACE, log_to_driver=False)
        except ConnectionError as exc:
            raise ValueError(
                f"--sink needs a running Ray cluster, and none was found at {address!r} ({exc}); "
                "run the trainer as a Ray job, or set RAY_ADDRESS"
            ) from exc
    return ray


def open_sink_store(
    name: str,
    runs_dir: str | Path | None = None,
    run_id: str | None = None,
    resume: str | None = None,
    address: str | None = "auto",
) -> SinkStore:
    """The trainer's store for ``--sink NAME``: a SinkStore on ``runs_dir`` (default ``./runs``) forwarding
    to the sink ``name``, with ``run_id``'s record and, for ``resume``, that run's checkpoints pulled from
    the studio first."""
    connect(address)
    sink = get_sink(name, timeout_s=10.0)
    info = _call(sink.ping)
    local = Path("runs" if runs_dir is None else runs_dir).resolve()
    if _is_studio_folder(local, info["token"]):
        if runs_dir is not None:
            raise ValueError(
                f"--runs-dir {runs_dir} is the studio's own runs folder; with --sink the trainer keeps its "
                "files in a folder of its own (default ./runs under its working directory)"
            )
        # A job on the studio's node starts in the studio's working folder (Ray's default): keep the
        # trainer's files beside it, never in it.
        local = Path(tempfile.gettempdir()) / "ae-studio-ray" / "runs"
        log.info("the studio's runs folder is ./runs here; this trainer keeps its files in %s", local)
    store = SinkStore(local, sink, sink_name=name, host=node_host())
    try:
        if resume and not store.pull_run(resume, checkpoints=True):
            raise ValueError(f"cannot resume run {resume!r}: the studio's run store has no such run")
        if run_id and run_id != resume:
            store.pull_run(run_id)
    except BaseException:
        store.close()
        raise
    return store
