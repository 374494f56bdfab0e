"""The local backend's task table: one SQLite file; every change of a task's phase is
`api.lifecycle.transition` applied inside one transaction (read, decide, write).

The file is checked before it is used: an empty (0-byte) file, a file that is not SQLite and a
database whose `PRAGMA quick_check` fails are refused (`UnusableDatabaseError`) rather than
started from empty. At run time every SQLite failure (full disk, I/O error, corruption) is an
`UnavailableError` naming the file; `problem()` says what is wrong for `/health`, until a later
write succeeds (a full disk) or for good (corruption: a restart then refuses the file).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from ..api.lifecycle import STOPPED_ERROR, Event, Refusal, TaskPhase, transition
from ..api.times import format_time, maybe_time
from . import taskfields
from .errors import BadRequestError, ConflictError, NotFoundError, UnavailableError
from .store import Outcome, TaskRecord, now

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
  results_truncated INTEGER NOT NULL DEFAULT 0,
  extra TEXT NOT NULL DEFAULT '{}'
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
    "extra",
)
# Scans by state need no results; a page carries them, as Propeller's listings do.
LIST_COLUMNS = ", ".join(c for c in ("seq", *COLUMNS) if c != "results")
PAGE_COLUMNS = ", ".join(("seq", *COLUMNS))
SPEC_COLUMNS = (
    "name",
    "image_url",
    "digest",
    "cli_args",
    "inputs",
    "env",
    "daemon",
    "proplet_id",
    "extra",
    "updated_at",
)
JSON_COLUMNS = ("cli_args", "inputs", "env", "results", "extra")
# Newest first, as Propeller lists tasks; `seq` orders tasks created in the same microsecond.
NEWEST_FIRST = "ORDER BY created_at DESC, seq DESC"
TIME_COLUMNS = ("start_time", "finish_time", "created_at", "updated_at")
HEADER = b"SQLite format 3\0"
CORRUPT = ("SQLITE_CORRUPT", "SQLITE_NOTADB")
OUTBOX_BATCH = 64


class UnusableDatabaseError(ValueError):
    """The database file cannot be used; the shim refuses to start on it."""


def _time(moment: datetime | None) -> str | None:
    # Fixed width with microseconds, so text order is time order (the page order).
    return None if moment is None else format_time(moment)


def _to_row(record: TaskRecord) -> dict[str, Any]:
    row: dict[str, Any] = {name: getattr(record, name) for name in COLUMNS if name != "state"}
    for name in JSON_COLUMNS:
        row[name] = None if row[name] is None else json.dumps(row[name])
    for name in TIME_COLUMNS:
        row[name] = _time(row[name])
    row["state"] = record.phase.state
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
        values[name] = maybe_time(values[name])
    values["phase"] = TaskPhase.of_state(values.pop("state"))
    values["daemon"] = bool(values["daemon"])
    values["unpublished"] = bool(values["unpublished"])
    values["results_truncated"] = bool(values["results_truncated"])
    values.setdefault("extra", {})
    return TaskRecord(**values)


def _metadata_matches(extra: str, wanted: str) -> bool:
    return taskfields.matches(json.loads(extra), json.loads(wanted))


class TaskDB:
    """Tasks in SQLite; thread-safe (one connection behind a lock, WAL journal, commits kept
    across a crash of the process, not a power failure: `_open`)."""

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

    def page(
        self, offset: int, limit: int, metadata: dict[str, Any] | None = None
    ) -> tuple[list[TaskRecord], int]:
        where, params = "", tuple[str, ...]()
        if metadata:
            where, params = "WHERE metadata_matches(extra, ?)", (json.dumps(metadata),)
        with self._lock:
            total = int(self._exec(f"SELECT COUNT(*) FROM tasks {where}", params).fetchone()[0])
            rows = self._exec(
                f"SELECT {PAGE_COLUMNS} FROM tasks {where} {NEWEST_FIRST} LIMIT ? OFFSET ?",
                (*params, limit, offset),
            ).fetchall()
        return [_from_row(r) for r in rows], total

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """One read-decide-write, atomic (the lock orders this process's threads; the
        transaction makes the write all or nothing)."""
        with self._lock:
            self._exec("BEGIN IMMEDIATE")
            try:
                yield
                self._exec("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        self._db.rollback()
                raise

    def _move(self, task_id: str, *events: Event) -> tuple[TaskRecord, TaskPhase]:
        """The task and its phase after `events` (in a transaction); `ConflictError` with the
        lifecycle's reason when its phase refuses one of them."""
        record = self.get(task_id)
        phase = record.phase
        try:
            for event in events:
                phase = transition(phase, event)
        except Refusal as exc:
            raise ConflictError(exc.about(task_id)) from None
        return record, phase

    def _update(self, task_id: str, **values: Any) -> None:
        sets = ", ".join(f"{name} = :{name}" for name in values)
        self._exec(f"UPDATE tasks SET {sets} WHERE id = :id", {**values, "id": task_id})

    def save(self, record: TaskRecord) -> None:
        row = _to_row(record)
        with self._transaction():
            self._move(record.id, Event.UPDATE)
            self._update(record.id, **{n: row[n] for n in SPEC_COLUMNS})

    def delete(self, task_id: str) -> TaskRecord:
        with self._lock:
            record = self.get(task_id)
            self._exec("DELETE FROM tasks WHERE id = ?", (task_id,))
            return record

    def start(self, task_id: str, proplet_id: str) -> TaskRecord:
        """A new run, queued for a worker: START then SCHEDULE."""
        return self._new_run(task_id, proplet_id, running=False)

    def dispatch(self, task_id: str, proplet_id: str) -> TaskRecord:
        """A new run that an external proplet executes: START, SCHEDULE and RUN at once (the
        start message is its placement), so it is Running until the proplet reports."""
        return self._new_run(task_id, proplet_id, running=True)

    def _new_run(self, task_id: str, proplet_id: str, *, running: bool) -> TaskRecord:
        events = (Event.START, Event.SCHEDULE, *((Event.RUN,) if running else ()))
        with self._transaction():
            record, phase = self._move(task_id, *events)
            moment = _time(now())
            self._update(
                task_id,
                state=phase.state,
                run=record.run + 1,
                results=None,
                error="",
                results_truncated=0,
                start_time=moment if running else None,
                finish_time=None,
                unpublished=0,
                proplet_id=proplet_id,
                updated_at=moment,
            )
        return self.get(task_id)

    def claim(self, task_id: str, run: int) -> TaskRecord | None:
        """Scheduled → Running for run `run`; None when it was stopped, deleted or re-run."""
        with self._transaction():
            try:
                record, phase = self._move(task_id, Event.RUN)
            except (NotFoundError, ConflictError):
                return None
            if record.run != run:
                return None
            moment = now()
            self._update(
                task_id,
                state=phase.state,
                start_time=_time(moment),
                updated_at=_time(moment),
            )
        return record.copy(phase=phase, start_time=moment, updated_at=moment)

    def finish(self, task_id: str, run: int, outcome: Outcome, publish: bool) -> bool:
        """Record run `run`'s end, unless the run was stopped or superseded meanwhile."""
        event = Event.SUCCEED if outcome.phase is TaskPhase.COMPLETED else Event.FAIL
        with self._transaction():
            try:
                record, phase = self._move(task_id, event)
            except (NotFoundError, ConflictError):
                return False
            if record.run != run:
                return False
            moment = _time(now())
            self._update(
                task_id,
                state=phase.state,
                results=json.dumps(outcome.results),
                results_truncated=int(outcome.truncated),
                error=outcome.error,
                finish_time=moment,
                updated_at=moment,
                unpublished=int(publish),
            )
        return True

    def stop(self, task_id: str) -> TaskRecord:
        """The run ends Failed with `STOPPED_ERROR` and empty results, published like any
        other end (a daemon's excepted), as Propeller's proplet reports a stopped task."""
        with self._transaction():
            record, phase = self._move(task_id, Event.STOP)
            moment = _time(now())
            self._update(
                task_id,
                state=phase.state,
                results=json.dumps(""),
                results_truncated=0,
                error=STOPPED_ERROR,
                finish_time=moment,
                updated_at=moment,
                unpublished=int(not record.daemon),
            )
        return self.get(task_id)

    def fail(self, task_id: str, error: str, proplet_id: str) -> TaskRecord:
        """A new run that could not start: START then FAIL, its result published."""
        with self._transaction():
            record, phase = self._move(task_id, Event.START, Event.FAIL)
            moment = _time(now())
            self._update(
                task_id,
                state=phase.state,
                run=record.run + 1,
                results=None,
                error=error,
                results_truncated=0,
                start_time=None,
                finish_time=moment,
                updated_at=moment,
                unpublished=1,
                proplet_id=proplet_id,
            )
        return self.get(task_id)

    def skip(self, task_id: str, reason: str) -> TaskRecord:
        """Pending → Skipped with `reason` as its error (a dependent whose run_if condition
        failed): it never ran, so nothing is published."""
        with self._transaction():
            _, phase = self._move(task_id, Event.SKIP)
            moment = _time(now())
            self._update(task_id, state=phase.state, error=reason, finish_time=moment)
        return self.get(task_id)

    def in_phase(self, phase: TaskPhase) -> list[TaskRecord]:
        """The tasks in `phase` (without their results)."""
        rows = self._exec(
            f"SELECT {LIST_COLUMNS} FROM tasks WHERE state = ? ORDER BY created_at, seq",
            (phase.state,),
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

    def counts(self) -> dict[TaskPhase, int]:
        rows = self._exec("SELECT state, COUNT(*) FROM tasks GROUP BY state").fetchall()
        return {TaskPhase.of_state(r[0]): int(r[1]) for r in rows}

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
        # A commit is in the WAL file (the OS's page cache) when it returns: it survives the
        # shim's crash or kill, not a power failure, which may roll back the last commits
        # (never corrupt the file); an fsync per commit (FULL) cost ~1-2 ms of each request.
        # The WAL is synced at each checkpoint. See docs/security.md, "A killed shim".
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(SCHEMA)
        columns = {row[1] for row in db.execute("PRAGMA table_info(tasks)")}
        if "results_truncated" not in columns:  # a database of an earlier version
            db.execute("ALTER TABLE tasks ADD COLUMN results_truncated INTEGER NOT NULL DEFAULT 0")
        if "extra" not in columns:  # before Propeller's other task fields were kept
            db.execute("ALTER TABLE tasks ADD COLUMN extra TEXT NOT NULL DEFAULT '{}'")
        db.create_function("metadata_matches", 2, _metadata_matches, deterministic=True)
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
