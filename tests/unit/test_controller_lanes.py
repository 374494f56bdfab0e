"""Work handed off by the handlers (the lanes that post Events), and what a deleted task
costs: its Pods' later events make no API call."""

from __future__ import annotations

import asyncio
import copy
from typing import cast

import kopf
import pytest

from wasinn_operator.controller import handlers
from wasinn_operator.controller.kube import Kube
from wasinn_operator.controller.lanes import Lanes
from wasinn_operator.controller.settings import OperatorSettings
from wasinn_operator.controller.state import Operator

from .test_controller_podcache import FakeKube, owned, pod, stored_task

pytestmark = pytest.mark.unit


def test_lanes_run_items_in_order_and_refuse_when_full() -> None:
    done: list[str] = []
    gate = asyncio.Event()

    async def work(item: str) -> None:
        await gate.wait()
        if item == "b0":
            raise RuntimeError("the API server said no")  # logged; the lane goes on
        done.append(item)

    async def run() -> list[bool]:
        lanes: Lanes[str] = Lanes(work, "work", count=1, depth=3)
        accepted = [lanes.put(key, f"{key}{i}") for i in range(3) for key in ("a", "b")]
        await asyncio.sleep(0)  # the lane takes a0 and waits on the gate: room for one
        accepted += [lanes.put(key, f"{key}3") for key in ("a", "b")]
        gate.set()
        await lanes.close(5)
        return accepted

    accepted = asyncio.run(run())
    assert accepted == [True, True, True, False, False, False, True, False]
    assert done == ["a0", "a1", "a3"]


def test_a_deleted_tasks_pods_need_no_reconcile_and_no_api_call() -> None:
    """Its Pod and ConfigMap are the garbage collector's: the deletion and its Pods' later
    events cost the operator no API call."""
    stored = stored_task()
    kube = FakeKube(stored)
    operator = Operator(OperatorSettings(), kube=cast(Kube, kube))
    memo = kopf.Memo(operator=operator)

    async def run() -> None:
        added = {"type": "ADDED", "object": copy.deepcopy(stored)}
        await handlers.wasinntask_event(
            event=added, name="cat", namespace="ml", uid="u1", memo=memo
        )
        assert "u1" in operator.tasks
        kube.calls.clear()
        deleted = {"type": "DELETED", "object": copy.deepcopy(stored)}
        await handlers.wasinntask_event(
            event=deleted, name="cat", namespace="ml", uid="u1", memo=memo
        )
        assert "u1" not in operator.tasks and "u1" not in operator.locks
        mine = owned(pod("cat-1", phase="Running"))
        await handlers.pod_event(
            event={"type": "DELETED", "object": mine}, namespace="ml", memo=memo
        )
        assert kube.calls == []  # no read of the task that is gone, no write, no deletion
        assert "u1" not in operator.locks
        await handlers.operator_cleanup(memo=memo)

    asyncio.run(run())


def test_the_resyncs_prune_does_not_mark_a_task_deleted() -> None:
    """A task created after the resync's listing began is missing from it: pruning drops what
    is kept for it, but its Pods' events must still reconcile it."""
    operator = Operator(OperatorSettings())
    operator.locks["new"] = asyncio.Lock()
    handlers._prune(operator, present=set())
    assert "new" not in operator.locks
    assert "new" not in operator.gone
