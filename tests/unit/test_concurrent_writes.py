"""The shim and the operator both write WasiNNTasks: neither loses the other's write.

The shim's kubernetes store writes against the version it decided on (resourceVersion
preconditions) and decides again when the operator got in first; the operator reconciles again
when its status write was refused. The API server here is a fake that does what the real one
does with a merge patch naming a stale resourceVersion: 409.
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from wasinn_operator.controller import handlers
from wasinn_operator.controller.kube import StaleTaskError
from wasinn_operator.shim import ConflictError
from wasinn_operator.shim import kubernetes as shim_kubernetes
from wasinn_operator.shim.kubernetes import KubernetesStore
from wasinn_operator.shim.store import TaskState

pytestmark = pytest.mark.unit


@dataclass
class Response:
    data: bytes


def merge(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """RFC 7386 JSON merge patch."""
    out = dict(target)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


class FakeTasks:
    """One WasiNNTask behind the CustomObjectsApi calls the shim makes."""

    def __init__(self, obj: dict[str, Any]) -> None:
        self.obj = obj
        self.obj["metadata"]["resourceVersion"] = "1"
        self.writes = 0
        self.refused = 0
        # Writes by someone else (the operator) that land just before the shim's next writes.
        self.interleaved: list[Callable[[], None]] = []

    def operator_writes_status(self, **status: Any) -> Callable[[], None]:
        return lambda: self._apply({"status": status}, status_only=True)

    def get_namespaced_custom_object(self, *_: Any, **__: Any) -> Response:
        return Response(json.dumps(self.obj).encode())

    def patch_namespaced_custom_object(self, *args: Any, **_: Any) -> Response:
        return self._patch(args[-1], status_only=False)

    def patch_namespaced_custom_object_status(self, *args: Any, **_: Any) -> Response:
        return self._patch(args[-1], status_only=True)

    def _patch(self, body: dict[str, Any], status_only: bool) -> Response:
        if self.interleaved:
            self.interleaved.pop(0)()
        wanted = (body.get("metadata") or {}).get("resourceVersion")
        if wanted is not None and wanted != self.obj["metadata"]["resourceVersion"]:
            self.refused += 1
            raise ApiException(status=409, reason="Conflict: the object has been modified")
        self._apply(body, status_only)
        self.writes += 1
        return Response(json.dumps(self.obj).encode())

    def _apply(self, body: dict[str, Any], status_only: bool) -> None:
        if status_only:
            self.obj["status"] = merge(self.obj.get("status") or {}, body["status"])
        else:  # the main resource ignores status, as the status subresource makes it
            meta = {k: v for k, v in (body.get("metadata") or {}).items() if k != "resourceVersion"}
            spec_patch = {k: v for k, v in body.items() if k != "status"}
            self.obj = merge(self.obj, {**spec_patch, "metadata": meta})
        version = int(self.obj["metadata"]["resourceVersion"]) + 1
        self.obj["metadata"]["resourceVersion"] = str(version)


def task(phase: str, suspend: bool, **status: Any) -> dict[str, Any]:
    return {
        "apiVersion": "wasinn.dev/v1alpha1",
        "kind": "WasiNNTask",
        "metadata": {
            "name": "t1",
            "namespace": "ml",
            "labels": {"wasinn.dev/propeller-id": "t1"},
            "annotations": {"wasinn.dev/run": "1", "wasinn.dev/published-run": "1"},
        },
        "spec": {"wasm": {"url": "http://shim/artifacts/x"}, "suspend": suspend},
        "status": {"phase": phase, **status},
    }


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch) -> KubernetesStore:
    monkeypatch.setattr(shim_kubernetes, "load_config", lambda: None)
    return KubernetesStore("ml", "http://shim")


def test_stop_loses_to_a_run_that_ended_first(store: KubernetesStore) -> None:
    fake = FakeTasks(task("Running", suspend=False))
    fake.interleaved.append(fake.operator_writes_status(phase="Completed", results="tiger cat"))
    store._custom = fake  # type: ignore[assignment]
    with pytest.raises(ConflictError, match="not scheduled or running"):
        store.stop("t1")
    assert fake.obj["status"] == {"phase": "Completed", "results": "tiger cat"}
    assert fake.obj["spec"]["suspend"] is False


def test_stop_decides_again_when_the_operator_wrote_in_between(store: KubernetesStore) -> None:
    fake = FakeTasks(task("Scheduled", suspend=False))
    # After the suspend lands, the operator records the Pod running before the shim's status write.
    fake.interleaved += [lambda: None, fake.operator_writes_status(phase="Running", nodeName="n1")]
    store._custom = fake  # type: ignore[assignment]
    record = store.stop("t1")
    assert fake.refused == 1
    assert (record.state, record.error) == (TaskState.INTERRUPTED, "stopped")
    assert fake.obj["spec"]["suspend"] is True
    assert fake.obj["status"]["nodeName"] == "n1"  # the operator's write is kept


def test_start_decides_again_and_keeps_one_run(store: KubernetesStore) -> None:
    fake = FakeTasks(task("Interrupted", suspend=True, error="stopped"))
    # The operator's late reaction to the stop lands before the shim's reset.
    fake.interleaved.append(fake.operator_writes_status(conditions=[{"type": "Suspended"}]))
    store._custom = fake  # type: ignore[assignment]
    record = store.start("t1")
    assert fake.refused == 1
    assert record.state == TaskState.PENDING and record.run == 2
    assert fake.obj["spec"]["suspend"] is False
    assert fake.obj["metadata"]["annotations"]["wasinn.dev/run"] == "2"
    assert "error" not in fake.obj["status"]


def test_a_task_that_keeps_changing_is_a_conflict(store: KubernetesStore) -> None:
    fake = FakeTasks(task("Completed", suspend=True))
    fake.interleaved += [fake.operator_writes_status(observedGeneration=i) for i in range(10)]
    store._custom = fake  # type: ignore[assignment]
    with pytest.raises(ConflictError, match="kept changing"):
        store.start("t1")
    assert fake.obj["spec"]["suspend"] is True and fake.writes == 0


def test_the_operator_reconciles_again_after_a_refused_status_write(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []

    async def reconcile_once(namespace: str, name: str, uid: str) -> None:
        calls.append(name)
        if len(calls) < 3:
            raise StaleTaskError(f"{namespace}/{name} changed since it was read")

    monkeypatch.setattr(handlers, "_reconcile", reconcile_once)
    asyncio.run(handlers.reconcile_task("ml", "t1", "uid-1"))
    assert calls == ["t1"] * 3

    async def always_stale(namespace: str, name: str, uid: str) -> None:
        calls.append(name)
        raise StaleTaskError("changed")

    calls.clear()
    monkeypatch.setattr(handlers, "_reconcile", always_stale)
    with pytest.raises(StaleTaskError):
        asyncio.run(handlers.reconcile_task("ml", "t1", "uid-1"))
    assert len(calls) == handlers.STALE_RETRIES
