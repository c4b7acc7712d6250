"""The run database: its schema and the migrations of older files, and the connection policy every part of
the run store shares.

Trainer processes write while the studio reads, so the database runs in WAL mode (readers never block the
writer and see a consistent snapshot) with a busy timeout for the short moments two writers meet. Each store
owns one connection guarded by a lock, so a Gradio thread pool can share an instance; every process opens
its own (an instance notices a fork and reopens its connection). Writes take the write lock up front
(``BEGIN IMMEDIATE``).
"""

from __future__ import annotations

import math
import os
import sqlite3
import threading
import time as _time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar

DB_NAME = "runs.sqlite"
BUSY_TIMEOUT_S = 10.0

_RUN_COLUMNS: tuple[str, ...] = (
    "id",
    "variant",
    "domain",
    "config",
    "status",
    "reason",
    "created_at",
    "started_at",
    "ended_at",
    "device",
    "pid",
    "host",
    "best_checkpoint",
    "last_checkpoint",
    "step",
    "epoch",
    "log_path",
    "owner",
    "name",
    "tags",
    "note",
    "steps_per_epoch",
)
# Columns added after the first release, with their SQL types (see _add_missing_columns).
_COLUMN_TYPES: dict[str, str] = {
    "owner": "TEXT",
    "name": "TEXT",
    "tags": "TEXT",
    "note": "TEXT",
    "steps_per_epoch": "INTEGER",
}
_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    variant TEXT NOT NULL,
    domain TEXT NOT NULL,
    config TEXT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    started_at REAL,
    ended_at REAL,
    device TEXT,
    pid INTEGER,
    host TEXT,
    best_checkpoint TEXT,
    last_checkpoint TEXT,
    step INTEGER,
    epoch INTEGER,
    log_path TEXT,
    owner TEXT,
    name TEXT,
    tags TEXT,
    note TEXT,
    steps_per_epoch INTEGER
);
CREATE INDEX IF NOT EXISTS runs_created ON runs (created_at);
CREATE TABLE IF NOT EXISTS metrics (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    step INTEGER NOT NULL,
    epoch INTEGER,
    split TEXT NOT NULL,
    name TEXT NOT NULL,
    value REAL,
    time REAL NOT NULL,
    superseded INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS metrics_run_seq ON metrics (run_id, seq);
"""


def _add_missing_columns(conn: sqlite3.Connection) -> None:
    """Bring a database made by an older version up to the current columns, keeping every row."""
    present = {row[1] for row in conn.execute("PRAGMA table_info(runs)")}
    for name in _RUN_COLUMNS:
        if name not in present:
            conn.execute(f"ALTER TABLE runs ADD COLUMN {name} {_COLUMN_TYPES.get(name, 'TEXT')}")
    if "superseded" not in {row[1] for row in conn.execute("PRAGMA table_info(metrics)")}:
        conn.execute("ALTER TABLE metrics ADD COLUMN superseded INTEGER NOT NULL DEFAULT 0")


# Connections inherited through fork(); never touched again in the child (see Database._cursor).
_INHERITED: list[sqlite3.Connection | None] = []


# What SQLite's INTEGER (and orjson, which serves the studio's API) holds: a wider int is refused on write.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def check_storable(value: Any, where: str) -> None:
    """Raise a ValueError naming `where` if `value` (nested dicts and lists too) holds a number that cannot be
    written and read back: an int beyond 64 bits, or NaN/inf (JSON has no such numbers)."""
    bad = _unstorable(value)
    if bad is None:
        return
    path, item = bad
    if isinstance(item, float):
        raise ValueError(f"{where}{path} is {item}, which the run store cannot hold; give a finite number")
    raise ValueError(f"{where}{path} is {item}, beyond the 64-bit integers the run store can hold")


def check_storable_fields(values: Mapping[str, Any]) -> None:
    """``check_storable`` of each field, named by its key, in one walk (every listing checks every row)."""
    bad = _unstorable(values)
    if bad is not None:
        check_storable(bad[1], bad[0].removeprefix("."))  # raises, naming the field and the number


def _unstorable(value: Any) -> tuple[str, Any] | None:
    """(path below the value, e.g. ".model.x[2]", the offending number) or None when all of it stores.

    Every run listing checks every run's config with this (the jobs table lists 1,000 runs each poll), so
    the common leaves are told by their exact type before any isinstance against an abstract class, and
    a path is only spelled out for an offender."""
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return None
    if kind is float or (isinstance(value, float) and not isinstance(value, bool)):
        return None if math.isfinite(value) else ("", value)
    if kind is int or (isinstance(value, int) and not isinstance(value, bool)):
        return None if INT64_MIN <= value <= INT64_MAX else ("", value)
    if isinstance(value, Mapping):
        for key, item in value.items():
            if type(item) is str or item is None:  # most leaves: no call for them
                continue
            bad = _unstorable(item)
            if bad is not None:
                return f".{key}{bad[0]}", bad[1]
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            bad = _unstorable(item)
            if bad is not None:
                return f"[{i}]{bad[0]}", bad[1]
    return None


_Store = TypeVar("_Store", bound="Database")


def _is_busy(exc: sqlite3.DatabaseError) -> bool:
    """A lock held by another process: the busy timeout's business, not a problem with the file."""
    return isinstance(exc, sqlite3.OperationalError) and ("locked" in str(exc) or "busy" in str(exc))


# OperationalError texts about the file itself (others, e.g. a syntax error, are bugs and stay raw).
_FILE_PROBLEMS = ("readonly", "full", "unable to open", "disk I/O", "malformed")


def _about_the_file(exc: sqlite3.DatabaseError) -> bool:
    """A damaged, read-only or full database file (told to the user), not a constraint or a busy lock (the
    caller's business)."""
    if isinstance(exc, sqlite3.OperationalError):
        return any(word in str(exc) for word in _FILE_PROBLEMS)
    return type(exc) is sqlite3.DatabaseError  # "database disk image is malformed", "file is not a database"


def _writable(folder: Path, path: Path) -> bool:
    return os.access(folder, os.W_OK) and (not path.exists() or os.access(path, os.W_OK))


class Database:
    """One SQLite connection to ``runs_dir/runs.sqlite`` and how to use it: ``_cursor`` to read,
    ``_write`` for a transaction. The run records and the metric series build on it."""

    def __init__(self, runs_dir: str | Path = "runs") -> None:
        self.runs_dir = Path(runs_dir)
        if self.runs_dir.exists() and not self.runs_dir.is_dir():
            raise ValueError(f"runs directory {str(self.runs_dir)!r} exists and is not a directory")
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.runs_dir / DB_NAME
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._pid = os.getpid()
        self._closed = False
        self._connect()

    def _connect(self) -> None:
        # isolation_level=None: we issue BEGIN IMMEDIATE ourselves so a write transaction takes the write
        # lock up front (a deferred read->write upgrade can fail with "database is locked" at once).
        conn = sqlite3.connect(
            str(self.path), timeout=BUSY_TIMEOUT_S, check_same_thread=False, isolation_level=None
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            mode = self._retry_busy(lambda: conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
            if str(mode).lower() != "wal":
                raise ValueError(
                    f"could not switch {self.path} to WAL mode (got {mode!r}); is it on a network drive?"
                )
            conn.execute("PRAGMA synchronous = NORMAL")  # safe in WAL; a crash loses at most the last commits
            self._retry_busy(lambda: conn.executescript(_SCHEMA))
            self._retry_busy(lambda: _add_missing_columns(conn))
        except sqlite3.DatabaseError as exc:
            conn.close()
            if _is_busy(exc):
                raise
            raise self._problem(exc) from exc
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        self._pid = os.getpid()

    def _problem(self, exc: sqlite3.DatabaseError) -> ValueError:
        """What a failed SQLite call means for the user, in one sentence: a read-only folder or file, a full
        disk, or a damaged file (only the last is told to move the file aside)."""
        text = str(exc)
        folder = self.path.parent
        if "readonly" in text or "read-only" in text or not _writable(folder, self.path):
            return ValueError(
                f"the runs folder {folder} is read-only ({text}): the run store writes there even to read "
                "(WAL), so make it writable or choose another runs folder"
            )
        if "full" in text:
            return ValueError(
                f"cannot write {self.path}: the disk is full or a file-size limit was reached ({text}); "
                "free some space and run again"
            )
        if isinstance(exc, sqlite3.OperationalError) and ("unable to open" in text or "disk I/O" in text):
            return ValueError(f"cannot open {self.path} ({text})")
        return ValueError(
            f"{self.path} is not a usable run database, it is damaged ({text}); move it aside (or restore a "
            "backup) and a new one is made"
        )

    @staticmethod
    def _retry_busy(fn: Any) -> Any:
        # Journal-mode switches and schema creation can meet another process doing the same on first use;
        # the busy handler does not cover every such case, so retry briefly.
        deadline = _time.monotonic() + BUSY_TIMEOUT_S
        while True:
            try:
                return fn()
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc) or _time.monotonic() > deadline:
                    raise
                _time.sleep(0.05)

    @contextmanager
    def _cursor(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._closed:
                raise ValueError(f"RunStore for {self.path} is closed")
            if self._pid != os.getpid():  # forked: never share a connection across processes
                # Keep the parent's connection object alive: closing it here could disturb the parent's
                # locks and WAL, so it is parked rather than closed or garbage-collected.
                _INHERITED.append(self._conn)
                self._connect()
            assert self._conn is not None
            try:
                yield self._conn
            except sqlite3.DatabaseError as exc:  # a damaged file, a full disk: a message, no traceback
                if not _about_the_file(exc):
                    raise
                raise self._problem(exc) from exc

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._cursor() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                with suppress(sqlite3.Error):  # a full disk or a damaged file may refuse the rollback too
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def close(self) -> None:
        """Close the connection; later calls raise ValueError. Closing twice is fine."""
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None
            self._closed = True

    def __enter__(self: _Store) -> _Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def journal_mode(self) -> str:
        """The database's journal mode (always "wal" once opened)."""
        with self._cursor() as conn:
            return str(conn.execute("PRAGMA journal_mode").fetchone()[0])
