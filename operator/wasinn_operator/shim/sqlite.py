"""The local backend's task table: one SQLite file, every transition a conditional UPDATE."""

from __future__ import annotations

import json
import sqlite3
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

from .errors import ConflictError, NotFoundError
from .store import TaskRecord, TaskState, now

SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  id TEXT NOT NULL UNIQUE,
  name TEXT NOT NULL,
  state INTEGER NOT NULL,
  image_url TEXT NOT NULL,
  digest TEXT NOT NULL,
  cli_args TEXT,
  inputs TEXT NOT NULL,
  env TEXT NOT NULL,
  daemon INTEGER NOT NULL,
  proplet_id TEXT NOT NULL,
  results TEXT,
  error TEXT NOT NULL,
  start_time TEXT,
  finish_time TEXT,
  created_at TEXT NOT NULL,
  updated_at TEXT NOT NULL,
  run INTEGER NOT NULL,
  unpublished INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS tasks_order ON tasks (created_at, seq);
CREATE INDEX IF NOT EXISTS tasks_outbox ON tasks (unpublished) WHERE unpublished = 1;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
COLUMNS = (
    "id",
    "name",
    "state",
    "image_url",
    "digest",
    "cli_args",
    "inputs",
    "env",
    "daemon",
    "proplet_id",
    "results",
    "error",
    "start_time",
    "finish_time",
    "created_at",
    "updated_at",
    "run",
    "unpublished",
)
SPEC_COLUMNS = ("name", "image_url", "digest", "cli_args", "inputs", "env", "daemon", "updated_at")
JSON_COLUMNS = ("cli_args", "inputs", "env", "results")
TIME_COLUMNS = ("start_time", "finish_time", "created_at", "updated_at")
ACTIVE = (int(TaskState.SCHEDULED), int(TaskState.RUNNING))


def _time(moment: datetime | None) -> str | None:
    # Fixed width with microseconds, so text order is time order (the page order).
    return None if moment is None else moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_time(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def _to_row(record: TaskRecord) -> dict[str, Any]:
    row: dict[str, Any] = {name: getattr(record, name) for name in COLUMNS}
    for name in JSON_COLUMNS:
        row[name] = None if row[name] is None else json.dumps(row[name])
    for name in TIME_COLUMNS:
        row[name] = _time(row[name])
    row["state"] = int(record.state)
    row["daemon"] = int(record.daemon)
    row["unpublished"] = int(record.unpublished)
    return row


def _from_row(row: sqlite3.Row) -> TaskRecord:
    values: dict[str, Any] = {name: row[name] for name in COLUMNS}
    for name in JSON_COLUMNS:
        values[name] = None if values[name] is None else json.loads(values[name])
    for name in TIME_COLUMNS:
        values[name] = _parse_time(values[name])
    values["state"] = TaskState(values["state"])
    values["daemon"] = bool(values["daemon"])
    values["unpublished"] = bool(values["unpublished"])
    return TaskRecord(**values)


class TaskDB:
    """Tasks in SQLite; thread-safe (one connection behind a lock, WAL journal)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")  # a finished result survives a crash
            self._db.executescript(SCHEMA)

    def _exec(self, sql: str, params: Any = ()) -> sqlite3.Cursor:
        with self._lock:
            return self._db.execute(sql, params)

    def meta(self, key: str, default: str) -> str:
        """A persistent setting, stored as `default` on first use."""
        with self._lock:
            self._exec("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", (key, default))
            return str(self._exec("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()[0])

    def add(self, record: TaskRecord) -> None:
        row = _to_row(record)
        names = ", ".join(COLUMNS)
        marks = ", ".join(f":{n}" for n in COLUMNS)
        try:
            self._exec(f"INSERT INTO tasks ({names}) VALUES ({marks})", row)
        except sqlite3.IntegrityError:
            raise ConflictError(f"task {record.id} already exists") from None

    def get(self, task_id: str) -> TaskRecord:
        row = self._exec("SELECT * FROM tasks WHERE id = ?", (task_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"task {task_id} not found")
        return _from_row(row)

    def page(self, offset: int, limit: int) -> tuple[list[TaskRecord], int]:
        with self._lock:
            total = int(self._exec("SELECT COUNT(*) FROM tasks").fetchone()[0])
            rows = self._exec(
                "SELECT * FROM tasks ORDER BY created_at, seq LIMIT ? OFFSET ?", (limit, offset)
            ).fetchall()
        return [_from_row(r) for r in rows], total

    def save(self, record: TaskRecord) -> None:
        row = _to_row(record)
        sets = ", ".join(f"{n} = :{n}" for n in SPEC_COLUMNS)
        with self._lock:
            cursor = self._exec(
                f"UPDATE tasks SET {sets} WHERE id = :id AND state NOT IN {ACTIVE}", row
            )
            if cursor.rowcount == 0:
                self._refuse(record.id, "cannot be changed while it is scheduled or running")

    def delete(self, task_id: str) -> TaskRecord:
        with self._lock:
            record = self.get(task_id)
            self._exec("DELETE FROM tasks WHERE id = ?", (task_id,))
            return record

    def start(self, task_id: str, proplet_id: str) -> TaskRecord:
        with self._lock:
            cursor = self._exec(
                "UPDATE tasks SET state = ?, run = run + 1, results = NULL, error = '', "
                "start_time = NULL, finish_time = NULL, unpublished = 0, proplet_id = ?, "
                f"updated_at = ? WHERE id = ? AND state NOT IN {ACTIVE}",
                (int(TaskState.SCHEDULED), proplet_id, _time(now()), task_id),
            )
            if cursor.rowcount == 0:
                self._refuse(task_id, "is already scheduled or running")
            return self.get(task_id)

    def claim(self, task_id: str, run: int) -> TaskRecord | None:
        """Scheduled → Running for run `run`; None when it was stopped, deleted or re-run."""
        with self._lock:
            moment = _time(now())
            cursor = self._exec(
                "UPDATE tasks SET state = ?, start_time = ?, updated_at = ? "
                "WHERE id = ? AND run = ? AND state = ?",
                (int(TaskState.RUNNING), moment, moment, task_id, run, int(TaskState.SCHEDULED)),
            )
            return self.get(task_id) if cursor.rowcount else None

    def finish(
        self, task_id: str, run: int, state: TaskState, results: Any, error: str, publish: bool
    ) -> bool:
        """Record run `run`'s end, unless the run was stopped or superseded meanwhile."""
        moment = _time(now())
        cursor = self._exec(
            "UPDATE tasks SET state = ?, results = ?, error = ?, finish_time = ?, updated_at = ?, "
            f"unpublished = ? WHERE id = ? AND run = ? AND state IN {ACTIVE}",
            (int(state), json.dumps(results), error, moment, moment, int(publish), task_id, run),
        )
        return cursor.rowcount > 0

    def stop(self, task_id: str) -> TaskRecord:
        with self._lock:
            moment = _time(now())
            cursor = self._exec(
                "UPDATE tasks SET state = ?, error = 'stopped', finish_time = ?, updated_at = ? "
                f"WHERE id = ? AND state IN {ACTIVE}",
                (int(TaskState.INTERRUPTED), moment, moment, task_id),
            )
            if cursor.rowcount == 0:
                self._refuse(task_id, "is not scheduled or running")
            return self.get(task_id)

    def fail(self, task_id: str, error: str, proplet_id: str) -> TaskRecord:
        with self._lock:
            moment = _time(now())
            cursor = self._exec(
                "UPDATE tasks SET state = ?, run = run + 1, results = NULL, error = ?, "
                "start_time = NULL, finish_time = ?, updated_at = ?, unpublished = 1, "
                f"proplet_id = ? WHERE id = ? AND state NOT IN {ACTIVE}",
                (int(TaskState.FAILED), error, moment, moment, proplet_id, task_id),
            )
            if cursor.rowcount == 0:
                self._refuse(task_id, "is scheduled or running")
            return self.get(task_id)

    def _refuse(self, task_id: str, why: str) -> None:
        self.get(task_id)  # NotFoundError first
        raise ConflictError(f"task {task_id} {why}")

    def in_state(self, state: TaskState) -> list[TaskRecord]:
        rows = self._exec(
            "SELECT * FROM tasks WHERE state = ? ORDER BY created_at, seq", (int(state),)
        ).fetchall()
        return [_from_row(r) for r in rows]

    def unpublished(self) -> list[TaskRecord]:
        rows = self._exec(
            "SELECT * FROM tasks WHERE unpublished = 1 ORDER BY finish_time, seq"
        ).fetchall()
        return [_from_row(r) for r in rows]

    def mark_published(self, task_id: str, run: int) -> None:
        self._exec("UPDATE tasks SET unpublished = 0 WHERE id = ? AND run = ?", (task_id, run))

    def digests(self) -> set[str]:
        rows = self._exec("SELECT DISTINCT digest FROM tasks WHERE digest != ''").fetchall()
        return {str(r[0]) for r in rows}

    def counts(self) -> dict[TaskState, int]:
        rows = self._exec("SELECT state, COUNT(*) FROM tasks GROUP BY state").fetchall()
        return {TaskState(r[0]): int(r[1]) for r in rows}

    def close(self) -> None:
        with self._lock:
            self._db.close()
