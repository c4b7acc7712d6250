"""The run store: runs and their metrics in one SQLite database (WAL) under the runs directory.

``RunStore`` is the one object callers use. It is made of three parts, each in its own module:

- ``trainers.runs.database``: the schema, the migrations of older files and the connection policy (one
  connection per instance and process, WAL, a busy timeout, ``BEGIN IMMEDIATE`` writes) that the two others
  share;
- ``trainers.runs.records``: the run records (the ``runs`` table: config, status, labels);
- ``trainers.runs.series``: the metric series (the ``metrics`` table: rows, queries, supersede on resume).

The names callers import from here (``RunStore``, ``RunRecord``, ``MetricRow``, ``STATUSES``...) stay here.
"""

from __future__ import annotations

from trainers.runs.database import BUSY_TIMEOUT_S, DB_NAME, INT64_MAX, INT64_MIN, Database, check_storable
from trainers.runs.records import (
    MAX_TAGS,
    NAME_MAX_CHARS,
    NOTE_MAX_CHARS,
    STATUSES,
    TAG_MAX_CHARS,
    TERMINAL,
    UPDATABLE_COLUMNS,
    RunRecord,
    RunRecords,
    check_tags,
)
from trainers.runs.series import MetricRow, MetricSeries, lower_is_better

__all__ = [
    "BUSY_TIMEOUT_S",
    "DB_NAME",
    "INT64_MAX",
    "INT64_MIN",
    "MAX_TAGS",
    "NAME_MAX_CHARS",
    "NOTE_MAX_CHARS",
    "STATUSES",
    "TAG_MAX_CHARS",
    "TERMINAL",
    "UPDATABLE_COLUMNS",
    "Database",
    "MetricRow",
    "RunRecord",
    "RunStore",
    "check_storable",
    "check_tags",
    "lower_is_better",
]


class RunStore(RunRecords, MetricSeries):
    """Runs and metrics in ``runs_dir/runs.sqlite``; safe to share between threads and processes."""
