"""The operator's retry of a reconcile whose status write was refused as stale.

The races themselves (the shim and the operator writing the same WasiNNTask, 409 from the API
server) run on the real API server in tests/integration/test_concurrent_writes.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from wasinn_operator.controller import OperatorSettings, handlers
from wasinn_operator.controller.kube import StaleTaskError

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
