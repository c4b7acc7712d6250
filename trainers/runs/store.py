"""The run store: runs and their metrics in one SQLite database (WAL) under the runs directory.

Trainer processes write while the studio reads, so the database runs in WAL mode (readers never block the
writer and see a consistent snapshot) with a busy timeout for the short moments two writers meet. Each
``RunStore`` owns one connection guarded by a lock, so a Gradio thread pool can share an instance; every
process opens its own (an instance notices a fork and reopens its connection).

Metric rows get an ever-increasing ``seq``. SQLite has a single writer and commits in order, so a reader
never sees seq N+1 before N: ``metrics_after(cursor)`` reading ``seq > cursor`` gets every row exactly once.

NaN cannot be stored in an SQLite REAL (SQLite turns it into NULL), so NaN values are stored as NULL and
read back as ``float("nan")``; +/-inf are stored as they are. Runs are never deleted by this API: nothing
a user trained is lost.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import sqlite3
import threading
import time as _time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainers.metrics import registry

STATUSES: tuple[str, ...] = ("queued", "running", "completed", "failed", "cancelled", "diverged")
TERMINAL: frozenset[str] = frozenset({"completed", "failed", "cancelled", "diverged"})

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
UPDATABLE_COLUMNS: frozenset[str] = frozenset(_RUN_COLUMNS) - {"id"}

# Columns added after the first release, with their SQL types (see _add_missing_columns).
_COLUMN_TYPES: dict[str, str] = {
    "owner": "TEXT",
    "name": "TEXT",
    "tags": "TEXT",
    "note": "TEXT",
    "steps_per_epoch": "INTEGER",
}
# A person's labels for a run (see RunStore.set_labels): short enough for a table cell and a legend.
NAME_MAX_CHARS = 80
TAG_MAX_CHARS = 32
MAX_TAGS = 16
NOTE_MAX_CHARS = 2000
_TAG = re.compile(r"^[^\s,]+$")

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
    time REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS metrics_run_seq ON metrics (run_id, seq);
"""

# Run ids and variant names end up in folder names, so keep them to a filesystem-safe alphabet.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# Keys/values that would put a Hub token into a run config (a token is never written to disk).
_TOKEN_KEYS = frozenset({"token", "hf_token", "hub_token", "use_auth_token", "huggingface_token"})
_HF_TOKEN_VALUE = re.compile(r"^hf_[A-Za-z0-9]{20,}$")


def _add_missing_columns(conn: sqlite3.Connection) -> None:
    """Bring a database made by an older version up to the current `runs` columns, keeping every row."""
    present = {row[1] for row in conn.execute("PRAGMA table_info(runs)")}
    for name in _RUN_COLUMNS:
        if name not in present:
            conn.execute(f"ALTER TABLE runs ADD COLUMN {name} {_COLUMN_TYPES.get(name, 'TEXT')}")


# Connections inherited through fork(); never touched again in the child (see RunStore._cursor).
_INHERITED: list[sqlite3.Connection | None] = []


@dataclass
class RunRecord:
    """One row of ``runs``; ``config`` is the parsed JSON dict."""

    id: str
    variant: str
    domain: str
    config: dict[str, Any]
    status: str
    reason: str
    created_at: float
    started_at: float | None = None
    ended_at: float | None = None
    device: str | None = None
    pid: int | None = None
    host: str | None = None
    best_checkpoint: str | None = None
    last_checkpoint: str | None = None
    step: int | None = None
    epoch: int | None = None
    log_path: str | None = None
    # Who launched it from the studio (a browser session on a public Space); None from the CLI.
    owner: str | None = None
    # A person's labels (RunStore.set_labels): a display name, tags and a free-text note.
    name: str | None = None
    tags: list[str] = field(default_factory=list)
    note: str | None = None
    # Optimiser steps in one epoch, recorded by the trainer once its data is built (progress and ETA).
    steps_per_epoch: int | None = None

    @property
    def label(self) -> str:
        """The run's name where it has one, else its id."""
        return self.name or self.id

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL


@dataclass(frozen=True)
class MetricRow:
    """One logged metric value; ``value`` is NaN where NaN was logged."""

    seq: int
    run_id: str
    step: int
    epoch: int | None
    split: str
    name: str
    value: float
    time: float = field(compare=False)

    @property
    def key(self) -> str:
        """The "split/name" form used by ``metric_names`` and the studio's metric chooser."""
        return f"{self.split}/{self.name}"


def lower_is_better(name: str) -> bool:
    """True where the metric registry says lower is better; False for the rest, unknown names included."""
    return registry.direction(name) == "min"


def _check_status(status: object) -> str:
    if status not in STATUSES:
        raise ValueError(f"invalid run status {status!r}; expected one of {', '.join(STATUSES)}")
    return str(status)


def _check_name(what: str, value: object) -> str:
    if not isinstance(value, str) or not _SAFE_NAME.match(value):
        raise ValueError(
            f"invalid {what} {value!r}; expected 1-128 characters of letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return value


def _check_label(what: str, value: object, max_chars: int, one_line: bool) -> str:
    if not isinstance(value, str):
        raise ValueError(f"the run's {what} must be text, got {type(value).__name__}")
    text = value.strip()
    if one_line and ("\n" in text or "\r" in text):
        raise ValueError(f"the run's {what} must be one line")
    if len(text) > max_chars:
        raise ValueError(f"the run's {what} is {len(text)} characters long; at most {max_chars}")
    return text


def check_tags(tags: Iterable[str] | str | None) -> list[str]:
    """Tags as a list: from a list, or from text separated by commas ("lr-sweep, baseline"); duplicates and
    blanks dropped, order kept. A tag is one word of at most TAG_MAX_CHARS characters."""
    if tags is None:
        return []
    if isinstance(tags, str):
        items = tags.split(",")
    elif isinstance(tags, Iterable):
        items = list(tags)
    else:
        raise ValueError(f"tags must be a list or comma-separated text, got {type(tags).__name__}")
    out: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"each tag must be text, got {item!r}")
        tag = item.strip()
        if not tag:
            continue
        if not _TAG.match(tag) or len(tag) > TAG_MAX_CHARS:
            raise ValueError(
                f"invalid tag {tag!r}: a tag is one word (no spaces or commas) of at most {TAG_MAX_CHARS} "
                "characters; separate tags with commas"
            )
        if tag not in out:
            out.append(tag)
    if len(out) > MAX_TAGS:
        raise ValueError(f"a run takes at most {MAX_TAGS} tags, got {len(out)}")
    return out


def _parse_tags_column(text: Any) -> list[str]:
    if not text:
        return []
    try:
        tags = json.loads(text)
    except ValueError:
        return []
    return [str(t) for t in tags] if isinstance(tags, list) else []


def _find_token(obj: Any, path: str = "config") -> str | None:
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            if isinstance(key, str) and key.lower() in _TOKEN_KEYS:
                return f"{path}.{key}"
            found = _find_token(value, f"{path}.{key}")
            if found:
                return found
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            found = _find_token(value, f"{path}[{i}]")
            if found:
                return found
    elif isinstance(obj, str) and _HF_TOKEN_VALUE.match(obj):
        return path
    return None


def _config_json(config: object) -> str:
    if not isinstance(config, Mapping):
        raise ValueError(f"run config must be a dict, got {type(config).__name__}")
    where = _find_token(config)
    if where:
        raise ValueError(
            f"run config must not contain a Hub token (found one at {where}); pass it at push time"
        )
    try:
        return json.dumps(dict(config), sort_keys=True, allow_nan=True)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"run config must be JSON-serialisable (str, int, float, bool, list, dict): {exc}"
        ) from exc


def _metric_value(name: str, value: object) -> float | None:
    if isinstance(value, bool) or (not isinstance(value, (int, float)) and not hasattr(value, "__float__")):
        raise ValueError(f"metric {name!r} must be a real number, got {type(value).__name__}")
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"metric {name!r} must be a real number (a 1-element tensor at most): {exc}"
        ) from exc
    return None if math.isnan(number) else number


def _split_key(key: str) -> tuple[str | None, str]:
    """ "val/psnr" -> ("val", "psnr"); "psnr" -> (None, "psnr"). Splits never contain '/'."""
    if "/" in key:
        split, name = key.split("/", 1)
        return split, name
    return None, key


class RunStore:
    """Runs and metrics in ``runs_dir/runs.sqlite``; safe to share between threads and processes."""

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

    # -- connection ---------------------------------------------------------------------------------------

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
            if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
                raise
            raise ValueError(f"{self.path} is not a usable run database ({exc}); move it aside") from exc
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        self._pid = os.getpid()

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
            yield self._conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._cursor() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
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

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def journal_mode(self) -> str:
        """The database's journal mode (always "wal" once opened)."""
        with self._cursor() as conn:
            return str(conn.execute("PRAGMA journal_mode").fetchone()[0])

    def run_dir(self, run_id: str) -> Path:
        """Where a run keeps its checkpoints and log: ``runs_dir/<run_id>`` (not created here)."""
        return self.runs_dir / _check_name("run id", run_id)

    # -- runs ---------------------------------------------------------------------------------------------

    def create_run(
        self,
        variant: str,
        domain: str,
        config: dict[str, Any],
        status: str = "queued",
        run_id: str | None = None,
    ) -> str:
        """Insert a run and return its id, e.g. "20261121-041502-sar-residual-3fa2".

        Ids start with the UTC creation time so that they sort chronologically, then the variant, then a
        random suffix; a collision (same second, same suffix) is retried with a new suffix.
        """
        _check_name("variant", variant)
        _check_name("domain", domain)
        _check_status(status)
        config_text = _config_json(config)
        if run_id is not None:
            _check_name("run id", run_id)
        now = _time.time()
        started = now if status == "running" else None
        ended = now if status in TERMINAL else None
        for _ in range(64):
            new_id = (
                run_id
                or f"{_time.strftime('%Y%m%d-%H%M%S', _time.gmtime(now))}-{variant}-{secrets.token_hex(2)}"
            )
            try:
                with self._write() as conn:
                    conn.execute(
                        "INSERT INTO runs (id, variant, domain, config, status, reason, created_at,"
                        " started_at, ended_at) VALUES (?, ?, ?, ?, ?, '', ?, ?, ?)",
                        (new_id, variant, domain, config_text, status, now, started, ended),
                    )
                return new_id
            except sqlite3.IntegrityError:
                if run_id is not None:
                    raise ValueError(f"a run with id {run_id!r} already exists") from None
        raise RuntimeError("could not find a free run id")  # 64 collisions in one second: not reachable

    def get_run(self, run_id: str) -> RunRecord | None:
        """The run with this id, or None."""
        with self._cursor() as conn:
            row = conn.execute(
                f"SELECT {', '.join(_RUN_COLUMNS)} FROM runs WHERE id = ?", (run_id,)
            ).fetchone()
        return None if row is None else self._record(row)

    def list_runs(
        self, statuses: Iterable[str] | str | None = None, variant: str | None = None
    ) -> list[RunRecord]:
        """Runs, newest first, optionally only those with one of ``statuses`` and/or of one ``variant``."""
        where: list[str] = []
        params: list[Any] = []
        if statuses is not None:
            wanted = [statuses] if isinstance(statuses, str) else list(statuses)
            for status in wanted:
                _check_status(status)
            if not wanted:
                return []
            where.append(f"status IN ({', '.join('?' * len(wanted))})")
            params.extend(wanted)
        if variant is not None:
            where.append("variant = ?")
            params.append(variant)
        sql = f"SELECT {', '.join(_RUN_COLUMNS)} FROM runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, id DESC"
        with self._cursor() as conn:
            rows = conn.execute(sql, params).fetchall()
        return [self._record(row) for row in rows]

    def update_run(self, run_id: str, **fields: Any) -> None:
        """Set columns of a run; names are checked against the schema, ``status`` against STATUSES.

        ``set_status`` is the usual way to change the status (it keeps started_at/ended_at right).
        """
        unknown = sorted(set(fields) - UPDATABLE_COLUMNS)
        if unknown:
            raise ValueError(
                f"unknown run column(s) {', '.join(unknown)}; "
                f"expected some of {', '.join(sorted(UPDATABLE_COLUMNS))}"
            )
        values = dict(fields)
        if "status" in values:
            _check_status(values["status"])
        if "config" in values:
            values["config"] = _config_json(values["config"])
        for key in ("variant", "domain"):
            if key in values:
                _check_name(key, values[key])
        if "tags" in values:
            values["tags"] = json.dumps(check_tags(values["tags"]))
        if values.get("reason") is None and "reason" in values:
            values["reason"] = ""
        for key, value in values.items():
            if isinstance(value, Path):
                values[key] = str(value)
            elif value is not None and not isinstance(values[key], (str, int, float)):
                raise ValueError(f"run column {key} takes a str or number, got {type(value).__name__}")
        with self._write() as conn:
            self._require_run(conn, run_id)
            if values:
                assignments = ", ".join(f"{key} = ?" for key in values)
                conn.execute(f"UPDATE runs SET {assignments} WHERE id = ?", (*values.values(), run_id))

    def set_status(
        self, run_id: str, status: str, reason: str = "", from_statuses: Iterable[str] | None = None
    ) -> bool:
        """Change a run's status and reason; returns whether it changed.

        "running" stamps started_at (first start only) and clears ended_at (a resumed run); a terminal
        status stamps ended_at. With ``from_statuses`` the change happens only if the current status is one
        of them (compare-and-set, so e.g. a cancel cannot overwrite a run that just completed).
        """
        _check_status(status)
        allowed = None if from_statuses is None else [_check_status(s) for s in from_statuses]
        now = _time.time()
        with self._write() as conn:
            current = self._require_run(conn, run_id)
            if allowed is not None and current not in allowed:
                return False
            if status == "running":
                conn.execute(
                    "UPDATE runs SET status = ?, reason = ?, started_at = COALESCE(started_at, ?),"
                    " ended_at = NULL WHERE id = ?",
                    (status, reason, now, run_id),
                )
            elif status in TERMINAL:
                conn.execute(
                    "UPDATE runs SET status = ?, reason = ?, ended_at = ? WHERE id = ?",
                    (status, reason, now, run_id),
                )
            else:
                conn.execute(
                    "UPDATE runs SET status = ?, reason = ?, ended_at = NULL WHERE id = ?",
                    (status, reason, run_id),
                )
        return True

    def set_labels(
        self,
        run_id: str,
        name: str | None = None,
        tags: Iterable[str] | str | None = None,
        note: str | None = None,
    ) -> RunRecord:
        """Give a run a display name, tags and a note (None leaves one as it is; "" clears it) and return
        the updated run. Names need not be unique: the id stays the run's key."""
        fields: dict[str, Any] = {}
        if name is not None:
            fields["name"] = _check_label("name", name, NAME_MAX_CHARS, one_line=True) or None
        if tags is not None:
            fields["tags"] = check_tags(tags)
        if note is not None:
            fields["note"] = _check_label("note", note, NOTE_MAX_CHARS, one_line=False) or None
        if fields:
            self.update_run(run_id, **fields)
        record = self.get_run(run_id)
        if record is None:
            raise ValueError(f"no run with id {run_id!r}")
        return record

    def recent_steps(self, run_id: str, n: int = 20) -> list[tuple[int, float]]:
        """(step, time) of the run's last ``n`` train/loss rows, oldest first: its current speed."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 2:
            raise ValueError(f"n must be an int >= 2, got {n!r}")
        with self._cursor() as conn:
            raw = conn.execute(
                "SELECT step, time FROM metrics WHERE run_id = ? AND split = 'train' AND name = 'loss'"
                " ORDER BY seq DESC LIMIT ?",
                (run_id, n),
            ).fetchall()
        return [(int(step), float(t)) for step, t in reversed(raw)]

    @staticmethod
    def _require_run(conn: sqlite3.Connection, run_id: str) -> str:
        row = conn.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise ValueError(f"no run with id {run_id!r}")
        return str(row[0])

    @staticmethod
    def _record(row: tuple[Any, ...]) -> RunRecord:
        values = dict(zip(_RUN_COLUMNS, row, strict=True))
        values["config"] = json.loads(values["config"]) if values["config"] else {}
        values["tags"] = _parse_tags_column(values["tags"])
        return RunRecord(**values)

    # -- metrics ------------------------------------------------------------------------------------------

    def log_metrics(
        self,
        run_id: str,
        step: int,
        epoch: int | None,
        split: str,
        values: Mapping[str, float],
        time: float | None = None,
    ) -> None:
        """Append one value per metric name, in one transaction (NaN is stored as NULL)."""
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be a non-negative int, got {step!r}")
        if epoch is not None and (isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0):
            raise ValueError(f"epoch must be a non-negative int or None, got {epoch!r}")
        if not isinstance(split, str) or not split or "/" in split:
            raise ValueError(
                f"split must be a non-empty name without '/', e.g. 'train' or 'val'; got {split!r}"
            )
        if not isinstance(values, Mapping):
            raise ValueError(f"values must be a dict of metric name -> number, got {type(values).__name__}")
        rows = []
        stamp = _time.time() if time is None else float(time)
        for name, value in values.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"metric names must be non-empty strings, got {name!r}")
            rows.append((run_id, step, epoch, split, name, _metric_value(name, value), stamp))
        with self._write() as conn:
            self._require_run(conn, run_id)
            conn.executemany(
                "INSERT INTO metrics (run_id, step, epoch, split, name, value, time)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )

    def metrics_after(
        self,
        cursor: int = 0,
        run_ids: Iterable[str] | None = None,
        names: Iterable[str] | None = None,
        limit: int | None = None,
    ) -> tuple[list[MetricRow], int]:
        """Rows with seq > cursor in seq order, and the cursor to pass next time.

        ``names`` entries are "split/name" (that split only) or a bare name (any split). The new cursor is
        the last returned seq (the old one when nothing new), so polling reads only new points.
        """
        if isinstance(cursor, bool) or not isinstance(cursor, int) or cursor < 0:
            raise ValueError(f"cursor must be a non-negative int, got {cursor!r}")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise ValueError(f"limit must be a positive int or None, got {limit!r}")
        where = ["seq > ?"]
        params: list[Any] = [cursor]
        if run_ids is not None:
            ids = list(run_ids)
            if not ids:
                return [], cursor
            where.append(f"run_id IN ({', '.join('?' * len(ids))})")
            params.extend(ids)
        if names is not None:
            clauses = []
            for key in names:
                split, name = _split_key(key)
                if split is None:
                    clauses.append("name = ?")
                    params.append(name)
                else:
                    clauses.append("(split = ? AND name = ?)")
                    params.extend((split, name))
            if not clauses:
                return [], cursor
            where.append("(" + " OR ".join(clauses) + ")")
        sql = (
            "SELECT seq, run_id, step, epoch, split, name, value, time FROM metrics WHERE "
            + " AND ".join(where)
            + " ORDER BY seq"
        )
        if limit is not None:
            sql += f" LIMIT {limit}"
        with self._cursor() as conn:
            raw = conn.execute(sql, params).fetchall()
        rows = [
            MetricRow(seq, run, step, epoch, split, name, math.nan if value is None else float(value), t)
            for seq, run, step, epoch, split, name, value, t in raw
        ]
        return rows, (rows[-1].seq if rows else cursor)

    def metric_series(self, run_id: str, name: str, split: str | None = None) -> list[tuple[int, float]]:
        """(step, value) pairs of one metric, sorted by step; the latest value wins where a step repeats.

        Steps repeat when a run resumes from a checkpoint older than its last logged step. ``name`` may be
        "split/name"; a bare name without ``split`` must occur in one split only.
        """
        if split is None:
            split, name = _split_key(name)
        with self._cursor() as conn:
            if split is None:
                splits = [
                    r[0]
                    for r in conn.execute(
                        "SELECT DISTINCT split FROM metrics WHERE run_id = ? AND name = ? ORDER BY split",
                        (run_id, name),
                    )
                ]
                if len(splits) > 1:
                    raise ValueError(
                        f"metric {name!r} is logged in several splits ({', '.join(splits)}); "
                        f"pass split= or use e.g. '{splits[0]}/{name}'"
                    )
                split = splits[0] if splits else ""
            raw = conn.execute(
                "SELECT step, value FROM metrics WHERE run_id = ? AND split = ? AND name = ? ORDER BY seq",
                (run_id, split, name),
            ).fetchall()
        latest: dict[int, float] = {}
        for step, value in raw:
            latest[int(step)] = math.nan if value is None else float(value)
        return sorted(latest.items())

    def metric_names(self, run_ids: Iterable[str] | None = None) -> list[str]:
        """Distinct metric keys as "split/name" (e.g. "train/loss", "val/psnr"), sorted."""
        sql = "SELECT DISTINCT split, name FROM metrics"
        params: list[str] = []
        if run_ids is not None:
            params = list(run_ids)
            if not params:
                return []
            sql += f" WHERE run_id IN ({', '.join('?' * len(params))})"
        with self._cursor() as conn:
            raw = conn.execute(sql, params).fetchall()
        return sorted(f"{split}/{name}" for split, name in raw)

    def best_metrics(self, run_id: str) -> dict[str, float]:
        """Best value of each "val" metric over the run, as the metric registry ranks it: the max, the min,
        or the value closest to the target band (ENL ratio). NaN values are ignored; a metric that was only
        ever NaN reads NaN. Metrics without a better side (baselines, KL) and unknown ones are left out:
        there is no "best" of them to show."""
        with self._cursor() as conn:
            if conn.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone() is None:
                raise ValueError(f"no run with id {run_id!r}")
            raw = conn.execute(
                "SELECT name, value FROM metrics WHERE run_id = ? AND split = 'val' ORDER BY seq",
                (run_id,),
            ).fetchall()
        values: dict[str, list[float | None]] = {}
        for name, value in raw:
            values.setdefault(name, []).append(value)
        best: dict[str, float] = {}
        for name, vals in values.items():
            if registry.direction(name) in (None, "info"):
                continue
            value = registry.best_value(name, vals)
            best[name] = math.nan if value is None else float(value)
        return dict(sorted(best.items()))
