"""Run records: a run's id, config, status with its reason, and a person's labels (name, tags, note).

Runs are never deleted by this API: nothing a user trained is lost. A stored row that cannot be read back
(written by an older version or by hand) is skipped, and logged, by a listing, so one bad row never takes
the jobs list down; the writers refuse what they could not read back.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import sqlite3
import time as _time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainers.runs.database import _RUN_COLUMNS, Database, check_storable, check_storable_fields

log = logging.getLogger(__name__)

STATUSES: tuple[str, ...] = ("queued", "running", "completed", "failed", "cancelled", "diverged")
TERMINAL: frozenset[str] = frozenset({"completed", "failed", "cancelled", "diverged"})

UPDATABLE_COLUMNS: frozenset[str] = frozenset(_RUN_COLUMNS) - {"id"}

# A person's labels for a run (see RunRecords.set_labels): short enough for a table cell and a legend.
NAME_MAX_CHARS = 80
TAG_MAX_CHARS = 32
MAX_TAGS = 16
NOTE_MAX_CHARS = 2000
_TAG = re.compile(r"^[^\s,]+$")

# Run ids and variant names end up in folder names, so keep them to a filesystem-safe alphabet.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# Keys/values that would put a Hub token into a run config (a token is never written to disk).
_TOKEN_KEYS = frozenset({"token", "hf_token", "hub_token", "use_auth_token", "huggingface_token"})
_HF_TOKEN_VALUE = re.compile(r"^hf_[A-Za-z0-9]{20,}$")


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
    # A person's labels (RunRecords.set_labels): a display name, tags and a free-text note.
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
    check_storable(config, "config")
    try:
        return json.dumps(dict(config), sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"run config must be JSON-serialisable (str, int, float, bool, list, dict): {exc}"
        ) from exc


def require_run(conn: sqlite3.Connection, run_id: str) -> str:
    """The run's status, or a ValueError when there is no such run (inside a store transaction)."""
    row = conn.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()
    if row is None:
        raise ValueError(f"no run with id {run_id!r}")
    return str(row[0])


class RunRecords(Database):
    """The ``runs`` table: create, read, list, update, set the status and the labels of runs."""

    def run_dir(self, run_id: str) -> Path:
        """Where a run keeps its checkpoints and log: ``runs_dir/<run_id>`` (not created here)."""
        return self.runs_dir / _check_name("run id", run_id)

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
        if row is None:
            return None
        try:
            return self._record(row)
        except ValueError as exc:
            raise ValueError(f"run {run_id!r} has a stored record that cannot be read: {exc}") from None

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
        records = []
        for row in rows:
            # One bad row (written by an older version, or by hand) must not take every listing down.
            try:
                records.append(self._record(row))
            except ValueError as exc:
                log.warning(
                    "skipping run %r in %s: its stored record cannot be read (%s)", row[0], self.path, exc
                )
        return records

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
            else:
                check_storable(value, f"run column {key}")
        with self._write() as conn:
            require_run(conn, run_id)
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
            current = require_run(conn, run_id)
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

    @staticmethod
    def _record(row: tuple[Any, ...]) -> RunRecord:
        """The row as a RunRecord; a ValueError where it holds what the store would refuse to write."""
        values = dict(zip(_RUN_COLUMNS, row, strict=True))
        try:
            config = json.loads(values["config"]) if values["config"] else {}
        except ValueError as exc:
            raise ValueError(f"its config is not JSON ({exc})") from None
        if not isinstance(config, dict):
            raise ValueError(f"its config is a {type(config).__name__}, not a dict")
        values["config"] = config
        values["tags"] = _parse_tags_column(values["tags"])
        check_storable_fields(values)
        return RunRecord(**values)
