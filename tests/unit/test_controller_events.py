"""Events on tasks: built at the transition, posted off the reconcile's path, in order per task,
dropped (and counted) rather than queued without bound."""

from __future__ import annotations

import asyncio
import copy
from datetime import UTC, datetime
from typing import Any, cast

import kopf
import pytest

from wasinn_operator.controller import handlers, metrics
from wasinn_operator.controller.events import EventPoster, build_event
from wasinn_operator.controller.kube import Kube
from wasinn_operator.controller.settings import OperatorSettings
from wasinn_operator.controller.state import Operator

from .test_controller_podcache import FakeKube

pytestmark = pytest.mark.unit
TASK = {"metadata": {"name": "cat", "namespace": "ml", "uid": "u1"}}
NOW = datetime(2026, 12, 6, 23, 0, 1, tzinfo=UTC)


def test_build_event_names_the_task_and_stamps_the_transition() -> None:
    event = build_event(TASK, "Warning", "Failed", "x" * 5000, NOW)
    assert event["involvedObject"] == {
        "apiVersion": "wasinn.dev/v1alpha1",
        "kind": "WasiNNTask",
        "name": "cat",
        "namespace": "ml",
        "uid": "u1",
    }
    assert event["metadata"] == {"generateName": "cat.", "namespace": "ml"}
    assert (event["type"], event["reason"]) == ("Warning", "Failed")
    assert len(event["message"]) == 1024
    assert event["firstTimestamp"] == event["lastTimestamp"] == "2026-12-06T23:00:01.000000Z"


def _task(uid: str) -> dict[str, Any]:
    return {"metadata": {"name": f"t-{uid}", "namespace": "ml", "uid": uid}}


def test_one_tasks_events_are_posted_in_order_and_a_failure_stops_nothing() -> None:
    posted: list[str] = []

    async def post(event: dict[str, Any]) -> None:
        await asyncio.sleep(0.001 * (len(posted) % 3))  # answers in varying time
        if event["reason"] == "Boom":
            raise RuntimeError("the API server said no")
        posted.append(f"{event['involvedObject']['uid']}:{event['reason']}")

    async def run() -> None:
        poster = EventPoster(post, lanes=3)
        for reason in ("Scheduled", "Boom", "Running", "Completed"):
            for uid in ("a", "b", "c", "d"):
                poster.post(build_event(_task(uid), "Normal", reason, "", NOW))
        await poster.close(5)

    asyncio.run(run())
    assert len(posted) == 12
    for uid in "abcd":
        mine = [p.split(":")[1] for p in posted if p.startswith(f"{uid}:")]
        assert mine == ["Scheduled", "Running", "Completed"]


def test_a_full_lane_drops_events_and_counts_them() -> None:
    release = asyncio.Event()
    posted: list[str] = []

    async def post(event: dict[str, Any]) -> None:
        await release.wait()  # the API server stalls
        posted.append(event["reason"])

    before = metrics.EVENTS_DROPPED._value.get()

    async def run() -> EventPoster:
        poster = EventPoster(post, lanes=1, depth=2)
        for i in range(6):
            poster.post(build_event(TASK, "Normal", f"R{i}", "", NOW))
            await asyncio.sleep(0)  # the lane takes the first one and waits on it
        release.set()
        await poster.close(5)
        return poster

    poster = asyncio.run(run())
    assert posted == ["R0", "R1", "R2"]  # one in flight, two queued
    assert poster.dropped == 3
    assert metrics.EVENTS_DROPPED._value.get() - before == 3


def test_close_gives_up_on_a_stalled_api_server() -> None:
    async def post(event: dict[str, Any]) -> None:
        await asyncio.sleep(3600)

    async def run() -> None:
        poster = EventPoster(post, lanes=2)
        poster.post(build_event(TASK, "Normal", "Scheduled", "", NOW))
        await poster.close(0.05)

    asyncio.run(asyncio.wait_for(run(), 5))


class SlowEventsKube(FakeKube):
    """A task store whose Event posts never answer: a reconcile must not wait for them."""

    def __init__(self, task: dict[str, Any]) -> None:
        super().__init__(task)
        self.events: list[str] = []

    async def create_event(self, event: dict[str, Any]) -> None:
        self.events.append(event["reason"])
        await asyncio.sleep(3600)


def test_a_reconcile_returns_before_its_events_are_posted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(handlers, "EVENTS_CLOSE_SECONDS", 0.05)
    stored = {
        "metadata": {"name": "cat", "namespace": "ml", "uid": "u1", "resourceVersion": "5"},
        "spec": {"wasm": {"url": "http://shim/artifacts/x"}},
    }
    kube = SlowEventsKube(stored)
    memo = kopf.Memo(operator=Operator(OperatorSettings(), kube=cast(Kube, kube)))

    async def run() -> None:
        added = {"type": "ADDED", "object": copy.deepcopy(stored)}
        await asyncio.wait_for(
            handlers.wasinntask_event(event=added, name="cat", namespace="ml", uid="u1", memo=memo),
            5,
        )
        await asyncio.sleep(0.01)  # the lane takes the Event up
        assert kube.events == ["Scheduled"]
        await handlers.operator_cleanup(memo=memo)

    asyncio.run(run())
    assert kube.stored["status"]["phase"] == "Scheduled"
