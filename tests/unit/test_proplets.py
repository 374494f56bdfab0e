"""The proplet registry: the backend's own workers plus external proplets (shim/proplets.py),
with Propeller's liveness (manager/service.go, pkg/proplet/proplet.go: AliveTimeout 10 s) and
DeleteProplet's 409 while a proplet runs tasks."""

from __future__ import annotations

from datetime import timedelta

import pytest

from wasinn_operator.shim.errors import ConflictError, NotFoundError
from wasinn_operator.shim.proplets import PropletRegistry
from wasinn_operator.shim.store import PropletRecord, now

OWN = "6f0c1a3e-0000-4000-8000-000000000001"
EDGE = "6f0c1a3e-0000-4000-8000-000000000002"


def _registry() -> PropletRegistry:
    return PropletRegistry(lambda: [PropletRecord(OWN, "local", 0, True, [now()])])


def test_register_lists_external_after_own_with_metadata() -> None:
    registry = _registry()
    registry.register(EDGE, "edge-1", "ns", {"os": "linux"})
    listed = registry.list()
    assert [p.id for p in listed] == [OWN, EDGE]
    edge = registry.get(EDGE)
    assert (edge.name, edge.namespace, edge.metadata, edge.alive, edge.external) == (
        "edge-1",
        "ns",
        {"os": "linux"},
        True,
        True,
    )
    assert registry.is_external(EDGE) and not registry.is_external(OWN)
    assert [p.id for p in registry.external()] == [EDGE]


def test_heartbeat_registers_unknown_and_liveness_follows_the_last_one() -> None:
    registry = _registry()
    registry.heartbeat(EDGE, at=now() - timedelta(seconds=30))
    assert registry.get(EDGE).name == EDGE
    assert not registry.get(EDGE).alive
    assert [p.id for p in registry.list(alive=False)] == [EDGE]
    registry.heartbeat(EDGE)
    assert registry.get(EDGE).alive
    assert [p.id for p in registry.list(alive=True)] == [OWN, EDGE]
    beats, total = registry.alive_history(EDGE, 0, 1)
    assert total == 2 and beats[0] > now() - timedelta(seconds=5)  # newest first


def test_delete_refuses_busy_and_own_and_unknown() -> None:
    registry = _registry()
    registry.register(EDGE, "edge")
    registry.set_task_count(EDGE, 2)
    with pytest.raises(ConflictError, match="2 active tasks"):
        registry.delete(EDGE)
    with pytest.raises(ConflictError, match="own backend"):
        registry.delete(OWN)
    registry.set_task_count(EDGE, 0)
    registry.delete(EDGE)
    with pytest.raises(NotFoundError):
        registry.get(EDGE)
    with pytest.raises(NotFoundError):
        registry.delete(EDGE)


def test_metrics_pages_newest_first_and_empty_for_unknown() -> None:
    registry = _registry()
    for i in range(3):
        registry.record_metrics(OWN, {"n": i})
    samples, total = registry.metrics(OWN, 0, 2)
    assert total == 3 and [s["n"] for s in samples] == [2, 1]
    assert registry.metrics(EDGE, 0, 10) == ([], 0)
