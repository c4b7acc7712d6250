"""Metric series: the rows a run logs (one value per metric, split and step), read incrementally, per metric
or as the best value of each, and superseded when a resume logs their steps again.

Metric rows get an ever-increasing ``seq``. SQLite has a single writer and commits in order, so a reader
never sees seq N+1 before N: ``metrics_after(cursor)`` reading ``seq > cursor`` gets every row exactly once.
A resume supersedes the rows its killed attempt logged past the checkpoint (``supersede_after``); no query
returns them again, and the resumed attempt logs those steps anew with later seqs (a reader keeping a cache
keyed by step sees the new value win).

NaN cannot be stored in an SQLite REAL (SQLite turns it into NULL), so NaN values are stored as NULL and
read back as ``float("nan")``; +/-inf are stored as they are.
"""

from __future__ import annotations

import math
import time as _time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from trainers.metrics import registry
from trainers.runs.database import INT64_MAX, Database
from trainers.runs.records import require_run


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


class MetricSeries(Database):
    """The ``metrics`` table: log rows, supersede them on resume, and read them back."""

    def recent_steps(self, run_id: str, n: int = 20) -> list[tuple[int, float]]:
        """(step, time) of the run's last ``n`` train/loss rows, oldest first: its current speed."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 2:
            raise ValueError(f"n must be an int >= 2, got {n!r}")
        with self._cursor() as conn:
            raw = conn.execute(
                "SELECT step, time FROM metrics WHERE run_id = ? AND split = 'train' AND name = 'loss'"
                " AND superseded = 0 ORDER BY seq DESC LIMIT ?",
                (run_id, n),
            ).fetchall()
        return [(int(step), float(t)) for step, t in reversed(raw)]

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
        if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= INT64_MAX:
            raise ValueError(f"step must be a non-negative int of at most 64 bits, got {step!r}")
        if epoch is not None and (
            isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 <= epoch <= INT64_MAX
        ):
            raise ValueError(f"epoch must be a non-negative int or None (at most 64 bits), got {epoch!r}")
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
            require_run(conn, run_id)
            conn.executemany(
                "INSERT INTO metrics (run_id, step, epoch, split, name, value, time)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )

    def supersede_after(self, run_id: str, step: int) -> int:
        """Mark the run's rows logged past `step` as superseded and return how many: a resume from a
        checkpoint at `step` makes those rows of the killed attempt again, so queries, curves and exports
        leave the old ones out. They stay in the database (nothing is deleted) but are never read back."""
        if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= INT64_MAX:
            raise ValueError(f"step must be a non-negative int of at most 64 bits, got {step!r}")
        with self._write() as conn:
            require_run(conn, run_id)
            cursor = conn.execute(
                "UPDATE metrics SET superseded = 1 WHERE run_id = ? AND step > ? AND superseded = 0",
                (run_id, step),
            )
            return int(cursor.rowcount)

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
        where = ["seq > ?", "superseded = 0"]
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

        Rows a resume superseded (``supersede_after``) are left out. ``name`` may be
        "split/name"; a bare name without ``split`` must occur in one split only.
        """
        if split is None:
            split, name = _split_key(name)
        with self._cursor() as conn:
            if split is None:
                splits = [
                    r[0]
                    for r in conn.execute(
                        "SELECT DISTINCT split FROM metrics WHERE run_id = ? AND name = ? AND superseded = 0"
                        " ORDER BY split",
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
                "SELECT step, value FROM metrics WHERE run_id = ? AND split = ? AND name = ?"
                " AND superseded = 0 ORDER BY seq",
                (run_id, split, name),
            ).fetchall()
        latest: dict[int, float] = {}
        for step, value in raw:
            latest[int(step)] = math.nan if value is None else float(value)
        return sorted(latest.items())

    def metric_names(self, run_ids: Iterable[str] | None = None) -> list[str]:
        """Distinct metric keys as "split/name" (e.g. "train/loss", "val/psnr"), sorted."""
        sql = "SELECT DISTINCT split, name FROM metrics WHERE superseded = 0"
        params: list[str] = []
        if run_ids is not None:
            params = list(run_ids)
            if not params:
                return []
            sql += f" AND run_id IN ({', '.join('?' * len(params))})"
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
                "SELECT name, value FROM metrics WHERE run_id = ? AND split = 'val' AND superseded = 0"
                " ORDER BY seq",
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
