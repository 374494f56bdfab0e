"""The local backend's task table: one SQLite file, every transition a conditional UPDATE.

The file is checked before it is used: an empty (0-byte) file, a file that is not SQLite and a
database whose `PRAGMA quick_check` fails are refused (`UnusableDatabaseError`) rather than
started from empty. At run time every SQLite failure (full disk, I/O error, corruption) is an
`UnavailableError` naming the file; `problem()` says what is wrong for `/health`, until a later
write succeeds (a full disk) or for good (corruption: a restart then refuses the file).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

from .errors import BadRequestError, ConflictError, NotFoundError, UnavailableError
from .store import Outcome, TaskRecord, TaskState, now

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
  unpublished INTEGER NOT NULL,
  results_truncated INTEGER NOT NULL DEFAULT 0
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
    "results_truncated",
)
# Listings leave the results out: a page of tasks stays small whatever the tasks printed.
LIST_COLUMNS = ", ".join(c for c in ("seq", *COLUMNS) if c != "results")
SPEC_COLUMNS = ("name", "image_url", "digest", "cli_args", "inputs", "env", "daemon", "updated_at")
JSON_COLUMNS = ("cli_args", "inputs", "env", "results")
TIME_COLUMNS = ("start_time", "finish_time", "created_at", "updated_at")
ACTIVE = (int(TaskState.SCHEDULED), int(TaskState.RUNNING))
HEADER = b"SQLite format 3\0"
CORRUPT = ("SQLITE_CORRUPT", "SQLITE_NOTADB")
OUTBOX_BATCH = 64


class UnusableDatabaseError(ValueError):
    """The database file cannot be used; the shim refuses to start on it."""


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
    row["results_truncated"] = int(record.results_truncated)
    return row


def _from_row(row: sqlite3.Row) -> TaskRecord:
    present = row.keys()
    values: dict[str, Any] = {name: row[name] for name in COLUMNS if name in present}
    for name in JSON_COLUMNS:
        if values.get(name) is not None:
            values[name] = json.loads(values[name])
    for name in TIME_COLUMNS:
        values[name] = _parse_time(values[name])
    values["state"] = TaskState(values["state"])
    values["daemon"] = bool(values["daemon"])
    values["unpublished"] = bool(values["unpublished"])
    values["results_truncated"] = bool(values["results_truncated"])
    return TaskRecord(**values)


class TaskDB:
    """Tasks in SQLite; thread-safe (one connection behind a lock, WAL journal)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = _open(path)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        self._problem: str | None = None
        self._corrupt = False

    def _exec(self, sql: str, params: Any = ()) -> sqlite3.Cursor:
        with self._lock:
            try:
                cursor = self._db.execute(sql, params)
            except sqlite3.IntegrityError:
                raise
            except sqlite3.Error as exc:
                raise self._failed(exc) from None
            except UnicodeEncodeError:  # a lone surrogate that got past the input checks
                raise BadRequestError("a string of the task is not valid Unicode") from None
            if not self._corrupt and not sql.startswith("SELECT"):
                self._problem = None  # a write went through: the disk has room again
            return cursor

    def _failed(self, exc: sqlite3.Error) -> UnavailableError:
        name = getattr(exc, "sqlite_errorname", "")
        if name in CORRUPT:
            self._corrupt = True  # for good: the file is damaged, a restart refuses it
        if self._corrupt and self._problem:
            return UnavailableError(self._problem)
        self._problem = f"the task database {self.path} failed: {exc}"
        return UnavailableError(self._problem)

    def problem(self) -> str | None:
        """Why the database is failing (its last error, until a write succeeds), or None."""
        return self._problem

    def probe(self) -> str | None:
        """Write to the database now; why it failed, or None."""
        try:
            self._exec(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('health-probe', ?)",
                (_time(now()),),
            )
        except UnavailableError as exc:
            return str(exc)
        return self._problem

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
                f"SELECT {LIST_COLUMNS} FROM tasks ORDER BY created_at, seq LIMIT ? OFFSET ?",
                (limit, offset),
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
                "results_truncated = 0, start_time = NULL, finish_time = NULL, unpublished = 0, "
                "proplet_id = ?, "
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

    def finish(self, task_id: str, run: int, outcome: Outcome, publish: bool) -> bool:
        """Record run `run`'s end, unless the run was stopped or superseded meanwhile."""
        moment = _time(now())
        cursor = self._exec(
            "UPDATE tasks SET state = ?, results = ?, results_truncated = ?, error = ?, "
            "finish_time = ?, updated_at = ?, "
            f"unpublished = ? WHERE id = ? AND run = ? AND state IN {ACTIVE}",
            (
                int(outcome.state),
                json.dumps(outcome.results),
                int(outcome.truncated),
                outcome.error,
                moment,
                moment,
                int(publish),
                task_id,
                run,
            ),
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
                "results_truncated = 0, start_time = NULL, finish_time = ?, updated_at = ?, "
                "unpublished = 1, "
                f"proplet_id = ? WHERE id = ? AND state NOT IN {ACTIVE}",
                (int(TaskState.FAILED), error, moment, moment, proplet_id, task_id),
            )
            if cursor.rowcount == 0:
                self._refuse(task_id, "is scheduled or running")
            return self.get(task_id)

    def skip(self, task_id: str, reason: str) -> TaskRecord:
        """Pending → Skipped (a dependent whose run_if condition failed); no result is
        published. `ConflictError` unless Pending."""
        with self._lock:
            moment = _time(now())
            cursor = self._exec(
                "UPDATE tasks SET state = ?, error = ?, finish_time = ?, updated_at = ? "
                "WHERE id = ? AND state = ?",
                (int(TaskState.SKIPPED), reason, moment, moment, task_id, int(TaskState.PENDING)),
            )
            if cursor.rowcount == 0:
                self._refuse(task_id, "is not pending")
            return self.get(task_id)

    def _refuse(self, task_id: str, why: str) -> None:
        self.get(task_id)  # NotFoundError first
        raise ConflictError(f"task {task_id} {why}")

    def in_state(self, state: TaskState) -> list[TaskRecord]:
        """The tasks in `state` (without their results)."""
        rows = self._exec(
            f"SELECT {LIST_COLUMNS} FROM tasks WHERE state = ? ORDER BY created_at, seq",
            (int(state),),
        ).fetchall()
        return [_from_row(r) for r in rows]

    def unpublished(self) -> list[TaskRecord]:
        """The oldest finished runs awaiting publication, at most `OUTBOX_BATCH` of them (with
        their results: a backlog is read a batch at a time, not all at once)."""
        rows = self._exec(
            "SELECT * FROM tasks WHERE unpublished = 1 ORDER BY finish_time, seq LIMIT ?",
            (OUTBOX_BATCH,),
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


def _open(path: Path) -> sqlite3.Connection:
    """A connection to the checked database at `path`, created (0600) when absent."""
    private = os.path.dirname(path) or "."
    if not os.path.isdir(private):
        os.makedirs(private, mode=0o700, exist_ok=True)
    if path.exists():
        _check_file(path)
    else:
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        except FileExistsError:
            _check_file(path)
        except OSError as exc:
            raise UnusableDatabaseError(f"cannot create the task database {path}: {exc}") from None
    try:
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        _check_contents(db, path)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")  # a finished result survives a crash
        db.executescript(SCHEMA)
        columns = {row[1] for row in db.execute("PRAGMA table_info(tasks)")}
        if "results_truncated" not in columns:  # a database of an earlier version
            db.execute("ALTER TABLE tasks ADD COLUMN results_truncated INTEGER NOT NULL DEFAULT 0")
    except sqlite3.Error as exc:
        raise UnusableDatabaseError(f"the task database {path} cannot be used: {exc}") from None
    for suffix in ("", "-wal", "-shm"):  # private, also when an earlier version made them
        try:
            os.chmod(f"{path}{suffix}", 0o600)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise UnusableDatabaseError(f"cannot make {path}{suffix} private: {exc}") from None
    return db


def _check_file(path: Path) -> None:
    """Refuse an empty file or one that is not SQLite (starting from empty would lose every
    task, and the modules they name)."""
    try:
        with path.open("rb") as f:
            head = f.read(len(HEADER))
    except OSError as exc:
        raise UnusableDatabaseError(f"cannot read the task database {path}: {exc}") from None
    if not head:
        raise UnusableDatabaseError(
            f"the task database {path} is empty (0 bytes): it was truncated or is not the "
            "shim's; move it away to start with no tasks"
        )
    if head != HEADER:
        raise UnusableDatabaseError(
            f"the task database {path} is not an SQLite database (its header is {head[:16]!r}); "
            "move it away to start with no tasks, or restore it from a backup"
        )


def _check_contents(db: sqlite3.Connection, path: Path) -> None:
    """`PRAGMA quick_check` (every page and index entry read once)."""
    try:
        problems = [str(row[0]) for row in db.execute("PRAGMA quick_check(5)")]
    except sqlite3.DatabaseError as exc:  # damage bad enough that the check itself fails
        problems = [str(exc)]
    if problems != ["ok"]:
        raise UnusableDatabaseError(
            f"the task database {path} is damaged ({'; '.join(problems)}); restore it from a "
            "backup, or move it away to start with no tasks"
        )
