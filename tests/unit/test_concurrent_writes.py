"""The operator's retry of a reconcile whose status write was refused as stale.

The races themselves (the shim and the operator writing the same WasiNNTask, 409 from the API
server) run on the real API server in tests/integration/test_concurrent_writes.py.
"""

from __future__ import annotations

import asyncio
import copy
from typing import Any, cast

import pytest

from wasinn_operator.controller import OperatorSettings, handlers
from wasinn_operator.controller.kube import Kube, StaleTaskError

from .test_controller_podcache import FakeKube, stored_task

pytestmark = pytest.mark.unit


def test_the_operator_reconciles_again_after_a_refused_status_write(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []
    bodies: list[Any] = []
    operator = handlers.Operator(OperatorSettings())

    async def reconcile_once(
        _: handlers.Operator, namespace: str, name: str, uid: str, seen: Any
    ) -> None:
        calls.append(name)
        bodies.append(seen)
        if len(calls) < 3:
            raise StaleTaskError(f"{namespace}/{name} changed since it was read")

    monkeypatch.setattr(handlers, "_reconcile", reconcile_once)
    event_body = {"metadata": {"name": "t1", "resourceVersion": "7"}}
    asyncio.run(handlers.reconcile_task(operator, "ml", "t1", "uid-1", event_body))
    assert calls == ["t1"] * 3
    # The watch's copy serves the first try only; a refused write reads the task afresh.
    assert bodies == [event_body, None, None]

    async def always_stale(
        _: handlers.Operator, namespace: str, name: str, uid: str, seen: Any
    ) -> None:
        calls.append(name)
        raise StaleTaskError("changed")

    calls.clear()
    monkeypatch.setattr(handlers, "_reconcile", always_stale)
    with pytest.raises(StaleTaskError):
        asyncio.run(handlers.reconcile_task(operator, "ml", "t1", "uid-1"))
    assert len(calls) == handlers.STALE_RETRIES


class PodsKube(FakeKube):
    """Lists the Pods it created (Pending: the kubelet has not started them)."""

    def __init__(self, task: dict[str, Any]) -> None:
        super().__init__(task)
        self.created: list[dict[str, Any]] = []

    async def create(self, manifest: dict[str, Any]) -> None:
        await super().create(manifest)
        self.created.append({**copy.deepcopy(manifest), "status": {"phase": "Pending"}})

    async def pods(self, namespace: str, uid: str) -> list[dict[str, Any]]:
        await super().pods(namespace, uid)
        return copy.deepcopy(self.created)


def test_a_copy_read_before_another_reconciles_write_is_not_decided_on() -> None:
    """The resync's listing (or a queued watch event) may carry a task as it was before a
    reconcile that held the task's lock wrote its status: the copy that write answered is
    the one to decide on, so no write is refused as stale and nothing is done twice."""
    stored = stored_task()
    kube = PodsKube(stored)
    operator = handlers.Operator(OperatorSettings(), kube=cast(Kube, kube))
    listed = copy.deepcopy(stored)  # read at resourceVersion 5, before the start

    async def run() -> None:
        await handlers.reconcile_task(operator, "ml", "cat", "u1", copy.deepcopy(stored))
        assert kube.calls == ["read claim", "create Pod", "write status"]
        kube.calls.clear()
        await handlers.reconcile_task(operator, "ml", "cat", "u1", listed)

    asyncio.run(run())
    assert kube.calls == ["list pods"]  # no second Pod, no write on the old copy, no read
    assert kube.stored["status"]["phase"] == "Scheduled"


def test_a_copy_older_than_the_write_that_settled_the_task_is_left_alone() -> None:
    stored = stored_task()
    stored["metadata"]["resourceVersion"] = "9"
    stored["status"] = {"phase": "Completed", "state": 3, "attempts": 1}
    kube = FakeKube(stored)
    operator = handlers.Operator(OperatorSettings(), kube=cast(Kube, kube))
    operator.written["u1"] = "9"  # the operator's write that ended the run (its copy not kept)
    older = copy.deepcopy(stored)
    older["metadata"]["resourceVersion"] = "7"
    older["status"] = {"phase": "Scheduled", "state": 1, "attempts": 1}
    asyncio.run(handlers.reconcile_task(operator, "ml", "cat", "u1", older))
    assert kube.calls == []
    assert kube.stored["status"]["phase"] == "Completed"
