"""The task state machine (api/lifecycle.py) and the one time format (api/times.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from wasinn_operator.api.lifecycle import (
    PROPELLER_STATES,
    Event,
    Refusal,
    TaskPhase,
    transition,
)
from wasinn_operator.api.times import GO_ZERO, format_time, maybe_time, parse_time, propeller_time

P = TaskPhase
IDLE = [P.PENDING, P.COMPLETED, P.FAILED, P.SKIPPED, P.INTERRUPTED]
ACTIVE = [P.SCHEDULED, P.RUNNING]
# Every legal move, written out by hand: the table must be exactly this.
EXPECTED: dict[tuple[Event, TaskPhase], TaskPhase] = {
    **{(Event.START, p): P.PENDING for p in IDLE},
    (Event.SCHEDULE, P.PENDING): P.SCHEDULED,
    (Event.RUN, P.SCHEDULED): P.RUNNING,
    (Event.SUCCEED, P.SCHEDULED): P.COMPLETED,
    (Event.SUCCEED, P.RUNNING): P.COMPLETED,
    **{(Event.FAIL, p): P.FAILED for p in (P.PENDING, *ACTIVE)},
    **{(Event.RETRY, p): P.PENDING for p in (P.PENDING, *ACTIVE)},
    **{(Event.STOP, p): P.FAILED for p in ACTIVE},
    (Event.SKIP, P.PENDING): P.SKIPPED,
    # Propeller's UpdateTask changes a task in any state (its running attempt goes on).
    **{(Event.UPDATE, p): p for p in P},
}
REFUSED = {
    Event.START: "is already scheduled or running",
    Event.SCHEDULE: "is not pending",
    Event.RUN: "is not scheduled",
    Event.SUCCEED: "is not scheduled or running",
    Event.FAIL: "has finished already",
    Event.RETRY: "has finished already",
    Event.STOP: "is not scheduled or running",
    Event.SKIP: "is not pending",
    Event.UPDATE: "cannot be changed",
}


@pytest.mark.parametrize("event", list(Event))
@pytest.mark.parametrize("phase", list(TaskPhase))
def test_every_phase_and_event(phase: TaskPhase, event: Event) -> None:
    expected = EXPECTED.get((event, phase))
    if expected is not None:
        assert transition(phase, event) is expected
        return
    with pytest.raises(Refusal) as refused:
        transition(phase, event)
    assert (refused.value.phase, refused.value.event) == (phase, event)
    assert refused.value.about("t-1") == f"task t-1 {REFUSED[event]}"


def test_propellers_numbers() -> None:
    assert [(p.value, p.state) for p in TaskPhase] == [
        ("Pending", 0),
        ("Scheduled", 1),
        ("Running", 2),
        ("Completed", 3),
        ("Failed", 4),
        ("Skipped", 5),
        ("Interrupted", 6),
    ]
    assert len(set(PROPELLER_STATES.values())) == len(TaskPhase)
    assert all(TaskPhase.of_state(p.state) is p for p in TaskPhase)
    with pytest.raises(ValueError, match="7 is not a Propeller task state"):
        TaskPhase.of_state(7)


def test_active_and_finished_split_the_phases() -> None:
    assert [p for p in TaskPhase if p.active] == ACTIVE
    assert [p for p in TaskPhase if p.finished] == IDLE[1:]
    assert not (P.PENDING.active or P.PENDING.finished)


def test_a_stop_ends_the_run_failed_as_propeller_records_it() -> None:
    assert transition(P.RUNNING, Event.STOP).state == 4


def test_one_time_format() -> None:
    moment = datetime(2026, 1, 2, 3, 4, 5, 120, tzinfo=UTC)
    assert format_time(moment) == "2026-01-02T03:04:05.000120Z"
    assert format_time(moment.replace(microsecond=0)) == "2026-01-02T03:04:05.000000Z"
    east = moment.astimezone(timezone(timedelta(hours=2)))
    assert format_time(east) == "2026-01-02T03:04:05.000120Z"
    assert format_time(datetime(2026, 1, 2, 3, 4, 5)) == "2026-01-02T03:04:05.000000Z"
    assert parse_time(format_time(moment)) == moment
    assert parse_time("2026-01-02T03:04:05Z") == moment.replace(microsecond=0)
    assert parse_time("2026-01-02T05:04:05.000120+02:00") == moment
    assert maybe_time(None) is None and maybe_time("") is None
    assert maybe_time("2026-01-02T03:04:05Z") == moment.replace(microsecond=0)
    # Fixed width: text order is time order.
    times = [moment + timedelta(microseconds=n * 999_999) for n in range(20)]
    assert sorted(map(format_time, times)) == list(map(format_time, times))


def test_propeller_times() -> None:
    assert propeller_time(None) == GO_ZERO == "0001-01-01T00:00:00Z"
    assert propeller_time(datetime(1, 1, 1, tzinfo=UTC)) == GO_ZERO
    assert propeller_time(datetime(2026, 1, 2, tzinfo=UTC)) == "2026-01-02T00:00:00.000000Z"
