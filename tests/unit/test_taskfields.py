"""Propeller's task fields: cron schedules, defaults and checks, metadata matching, the redacted
file, priority order in the local pool and the database migration."""

from __future__ import annotations

import base64
import io
import sqlite3
import threading
from datetime import UTC, datetime, time
from pathlib import Path

import pytest

from wasinn_operator.api import cron
from wasinn_operator.api.propeller import TaskInput
from wasinn_operator.api.times import parse_time
from wasinn_operator.shim.errors import BadRequestError
from wasinn_operator.shim.pool import Pool
from wasinn_operator.shim.sqlite import TaskDB
from wasinn_operator.shim.store import TaskRecord
from wasinn_operator.shim.taskfields import Redactor, apply, go_text, matches, redact

pytestmark = pytest.mark.unit
MONDAY = datetime(2026, 12, 7, 10, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("expression", "timezone", "expected"),
    [
        ("*/15 * * * *", "", datetime(2026, 12, 7, 10, 45, tzinfo=UTC)),
        ("0 9 * * MON-FRI", "", datetime(2026, 12, 8, 9, 0, tzinfo=UTC)),
        ("0 9 * * MON-FRI", "Europe/Paris", datetime(2026, 12, 8, 8, 0, tzinfo=UTC)),
        ("0 0 1 jan *", "", datetime(2027, 1, 1, tzinfo=UTC)),
        ("30 10 * * *", "Nowhere/Unknown", datetime(2026, 12, 8, 10, 30, tzinfo=UTC)),  # UTC
        ("5/20 * * * *", "", datetime(2026, 12, 7, 10, 45, tzinfo=UTC)),
        ("0 0 13 * 5", "", datetime(2026, 12, 11, tzinfo=UTC)),  # either day field (robfig)
        ("0 0 13 * *", "", datetime(2026, 12, 13, tzinfo=UTC)),
        ("CRON_TZ=Asia/Tokyo 0 0 * * *", "", datetime(2026, 12, 7, 15, 0, tzinfo=UTC)),
        ("0 0 30 2 *", "", None),
    ],
)
def test_next_run(expression: str, timezone: str, expected: datetime | None) -> None:
    assert cron.next_run(expression, MONDAY, timezone) == expected


@pytest.mark.parametrize(
    ("expression", "why"),
    [
        ("* * * *", "expected 5 fields"),
        ("* * * * * *", "expected 5 fields"),
        ("60 * * * *", "minute: 60 is outside 0-59"),
        ("* 24 * * *", "hour: 24"),
        ("* * 0 * *", "day of month: 0"),
        ("* * * 13 *", "month: 13"),
        ("* * * * 7", "day of week: 7"),
        ("@daily", "descriptors"),
        ("*/0 * * * *", "bad step"),
        ("5-1 * * * *", "ends before"),
        ("x * * * *", "not a number"),
        ("TZ=Mars/Base * * * * *", "unknown time zone"),
    ],
)
def test_bad_cron(expression: str, why: str) -> None:
    with pytest.raises(cron.CronError, match=why):
        cron.validate(expression)


def _apply(body: dict[str, object], extra: dict[str, object] | None = None,
           creating: bool = True, proplet_id: str = "") -> dict[str, object]:  # fmt: skip
    found = dict(extra or {})
    apply(found, TaskInput.model_validate(body), proplet_id, creating=creating)
    return found


def test_defaults_and_update_rules() -> None:
    # manager/service.go CreateTask / UpdateTask.
    assert _apply({}) == {"kind": "standard", "priority": 50}
    assert _apply({"priority": 0})["priority"] == 50
    assert _apply({"priority": 0}, {"priority": 70}, creating=False)["priority"] == 70
    assert _apply({"priority": 100}, {"priority": 70}, creating=False)["priority"] == 100
    kept = _apply({"name": "x"}, {"schedule": "0 * * * *", "timezone": "UTC"}, creating=False)
    assert kept == {"schedule": "0 * * * *", "timezone": "UTC"}  # not cleared (documented)
    cleared = _apply({"schedule": ""}, {"schedule": "0 * * * *", "timezone": "UTC",
                                        "next_run": "x", "is_recurring": True},
                     creating=False)  # fmt: skip
    assert cleared == {"timezone": "UTC"}  # UpdateTask ends recurrence, keeps the zone
    # CreateTask stores timezone and is_recurring as sent, also without a schedule.
    unscheduled = _apply({"timezone": "Europe/Paris", "is_recurring": True, "kind": "x"})
    assert unscheduled == {"kind": "x", "priority": 50, "timezone": "Europe/Paris",
                           "is_recurring": True}  # fmt: skip
    scheduled = _apply({"schedule": "0 3 * * *"})
    assert scheduled["timezone"] == "UTC"
    assert parse_time(str(scheduled["next_run"])).time() == time(3, 0)
    assert _apply({"latent": False, "metadata": {}}) == {"kind": "standard", "priority": 50}


@pytest.mark.parametrize(
    ("body", "proplet_id", "why"),
    [
        ({"priority": 101}, "", "priority"),
        ({"priority": -5}, "", "priority"),
        ({"broadcast": True}, "p1", "mutually exclusive"),
        ({"run_if": "maybe"}, "", "run_if"),
        ({"schedule": "nope"}, "", "cron"),
        ({"depends_on": ["a"]}, "", "workflow_id"),
        ({"metadata": {"big": "x" * (1 << 20)}}, "", "1 MiB"),
        ({"metadata": {"n": float("inf")}}, "", "out of range"),
    ],
)
def test_field_checks(body: dict[str, object], proplet_id: str, why: str) -> None:
    with pytest.raises(BadRequestError, match=why):
        _apply(body, proplet_id=proplet_id)


def test_metadata_matches_as_go_prints_values() -> None:
    # pkg/storage/memory_adapter.go metaValueStr: fmt.Sprint of the decoded value.
    extra = {"metadata": {"team": "x", "n": 3, "ok": True, "f": 1.5}}
    assert matches(extra, None) and matches(extra, {})
    assert matches(extra, {"team": "x", "n": "3"})
    assert matches(extra, {"n": 3.0, "ok": "true", "f": "1.5"})
    assert not matches(extra, {"team": "y"})
    assert not matches(extra, {"missing": "x"})
    assert not matches({}, {"team": "x"})
    printed = [go_text(v) for v in (None, 1e21, 1e20, -0.5)]
    assert printed == ["<nil>", "1e+21", "100000000000000000000", "-0.5"]


@pytest.mark.parametrize("size", [0, 1, 8, 15, 16, 17, 18, 100, 1001])
def test_redacted_file_is_propellers(size: int) -> None:
    # manager/api/redact.go: first and last 10 base64 characters around <REDACTED>.
    data = bytes(range(256)) * 4
    module = data[:size]
    encoded = base64.b64encode(module).decode()
    expected = "" if not module else redact(encoded)
    if len(encoded) > 20:
        assert expected == encoded[:10] + "<REDACTED>" + encoded[-10:]
    got = Redactor()("sha256:x", lambda _digest: io.BytesIO(module)) if module else ""
    assert got == expected


def test_pool_runs_higher_priority_first() -> None:
    order: list[str] = []
    gate = threading.Event()
    done = threading.Semaphore(0)

    def handle(job: str) -> None:
        if job == "blocker":
            gate.wait(10)
        order.append(job)
        done.release()

    pool: Pool[str] = Pool(handle, 1, 0, 60)
    try:
        pool.put("blocker")
        while pool.running() == 0:  # the one slot is taken: the rest queue
            threading.Event().wait(0.01)
        for job, priority in (("low", 10), ("mid-1", 50), ("high", 90), ("mid-2", 50)):
            pool.put(job, priority)
        gate.set()
        for _ in range(5):
            assert done.acquire(timeout=10)
    finally:
        pool.close()
    assert order == ["blocker", "high", "mid-1", "mid-2", "low"]


def test_database_of_an_earlier_version_gains_the_extra_column(tmp_path: Path) -> None:
    path = tmp_path / "tasks.db"
    TaskDB(path).close()
    with sqlite3.connect(path) as db:  # as an earlier version made it: no `extra`
        db.execute("ALTER TABLE tasks DROP COLUMN extra")
        db.execute(
            "INSERT INTO tasks (id, name, state, image_url, digest, inputs, env, daemon, "
            "proplet_id, error, created_at, updated_at, run, unpublished) VALUES ('old', 'o', 0, "
            "'', '', '[7]', '{}', 0, '', '', '2026-01-01T00:00:00.000000Z', "
            "'2026-01-01T00:00:00.000000Z', 0, 0)"
        )
    tasks = TaskDB(path)
    try:
        old = tasks.get("old")
        assert old.extra == {} and old.to_task().inputs == ["7"]
        tasks.add(TaskRecord(id="new", name="n", extra={"metadata": {"a": "1"}, "priority": 9}))
        assert tasks.get("new").extra == {"metadata": {"a": "1"}, "priority": 9}
        page, total = tasks.page(0, 10, {"a": "1"})
        assert ([r.id for r in page], total) == (["new"], 1)
        assert [r.id for r in tasks.page(0, 10)[0]] == ["new", "old"]  # newest first
    finally:
        tasks.close()
