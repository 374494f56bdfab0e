"""`shim.waits.EndWaits`: who wakes a waiter, when it reads again, and what it leaves behind."""

from __future__ import annotations

import asyncio
import threading

import pytest
from prometheus_client import CollectorRegistry

from wasinn_operator.api.lifecycle import TaskPhase
from wasinn_operator.api.propeller import Task
from wasinn_operator.shim.waits import EndWaits

pytestmark = pytest.mark.unit
TASK = "0b4f3c1e-0000-4000-8000-000000000001"


class Reads:
    """A task whose phase the test sets; counts the reads."""

    def __init__(self, phase: TaskPhase) -> None:
        self.phase, self.count = phase, 0

    async def __call__(self) -> Task:
        self.count += 1
        return Task(id=TASK, name="t", state=self.phase.state)


def test_a_finished_or_pending_task_is_answered_at_once() -> None:
    for phase in (TaskPhase.PENDING, TaskPhase.COMPLETED, TaskPhase.FAILED):
        reads, waits = Reads(phase), EndWaits(recheck=60)
        task = asyncio.run(waits.task(TASK, 60, reads))
        assert (task.state, reads.count, waits.waiting()) == (phase.state, 1, 0)


def test_an_end_heard_from_another_thread_wakes_the_waiter() -> None:
    reads, waits = Reads(TaskPhase.RUNNING), EndWaits(recheck=60)

    async def main() -> Task:
        waiter = asyncio.create_task(waits.task(TASK, 60, reads))
        while reads.count == 0:
            await asyncio.sleep(0.001)
        assert waits.waiting() == 1
        waits.ended("another-task")  # not this one's: no read
        await asyncio.sleep(0.05)
        assert reads.count == 1
        reads.phase = TaskPhase.COMPLETED
        threading.Thread(target=waits.ended, args=(TASK,)).start()  # as a pool thread does
        return await asyncio.wait_for(waiter, 30)  # long before the recheck, 60 s away

    task = asyncio.run(main())
    assert (task.state, reads.count, waits.waiting()) == (TaskPhase.COMPLETED.state, 2, 0)


def test_an_end_between_the_read_and_the_wait_is_not_missed() -> None:
    waits = EndWaits(recheck=60)

    class EndsWhileRead(Reads):
        async def __call__(self) -> Task:
            task = await super().__call__()
            if self.count == 1:  # the run ends just after this read saw it running
                self.phase = TaskPhase.FAILED
                waits.ended(TASK)
                await asyncio.sleep(0)  # the loop runs the wake-up before the read returns
            return task

    reads = EndsWhileRead(TaskPhase.RUNNING)
    task = asyncio.run(asyncio.wait_for(waits.task(TASK, 60, reads), 30))
    assert (task.state, reads.count) == (TaskPhase.FAILED.state, 2)


def test_without_a_word_it_reads_again_and_gives_up_at_the_deadline() -> None:
    # Nothing calls `ended` (the kubernetes backend's runs end in the operator).
    reads, waits = Reads(TaskPhase.SCHEDULED), EndWaits(recheck=0.01)
    task = asyncio.run(waits.task(TASK, 0.2, reads))
    assert task.state == TaskPhase.SCHEDULED.state  # as it is when the wait passed
    assert reads.count > 2
    assert waits.waiting() == 0


def test_a_failing_read_leaves_no_waiter_behind() -> None:
    waits = EndWaits(recheck=60)

    async def gone() -> Task:
        raise LookupError("deleted")

    with pytest.raises(LookupError):
        asyncio.run(waits.task(TASK, 60, gone))
    assert waits.waiting() == 0
    waits.ended(TASK)  # nothing left to wake


def test_the_gauge_counts_the_waiters() -> None:
    registry = CollectorRegistry()
    reads, waits = Reads(TaskPhase.RUNNING), EndWaits(registry, recheck=60)

    def gauge() -> float | None:
        return registry.get_sample_value("wasinn_shim_waiting_requests")

    async def main() -> None:
        waiters = [asyncio.create_task(waits.task(TASK, 60, reads)) for _ in range(3)]
        while reads.count < 3:
            await asyncio.sleep(0.001)
        assert gauge() == 3
        reads.phase = TaskPhase.COMPLETED
        waits.ended(TASK)
        await asyncio.wait_for(asyncio.gather(*waiters), 30)

    asyncio.run(main())
    assert gauge() == 0
