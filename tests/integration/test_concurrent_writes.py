"""The shim and the operator both write WasiNNTasks: neither loses the other's write, on the
real API server.

The shim's kubernetes store writes against the version it decided on (resourceVersion
preconditions) and decides again when the operator got in first; the operator reconciles again
when its status write was refused. Each race is made deterministic by landing the other side's
write (a real write, through the API) just before a given write of the side under test; the
refusal (409 Conflict) is Kubernetes' own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from wasinn_operator.api.lifecycle import STOPPED_ERROR, TaskPhase
from wasinn_operator.controller import handlers
from wasinn_operator.controller.kube import Kube, StaleTaskError
from wasinn_operator.controller.settings import OperatorSettings
from wasinn_operator.shim import ConflictError
from wasinn_operator.shim.kubernetes import KubernetesStore

from .kubeapi import Cluster

pytestmark = pytest.mark.integration
WRITES = ("patch_namespaced_custom_object", "patch_namespaced_custom_object_status")


class Interleaved:
    """A CustomObjectsApi whose next writes are each preceded by one of `before` (someone
    else's write); counts the writes that went through and those the server refused."""

    def __init__(self, api: Any) -> None:
        self._api = api
        self.before: list[Callable[[], Any]] = []
        self.writes = 0
        self.refused = 0

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._api, name)
        return (lambda *a, **k: self._write(method, *a, **k)) if name in WRITES else method

    def _write(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self.before:
            self.before.pop(0)()
        try:
            result = method(*args, **kwargs)
        except ApiException as exc:
            self.refused += exc.status == 409
            raise
        self.writes += 1
        return result


def make_task(kube: Cluster, phase: str, suspend: bool, **status: Any) -> None:
    kube.create("wasinntasks", {
        "metadata": {
            "name": "t1",
            "labels": {"wasinn.dev/propeller-id": "t1"},
            "annotations": {"wasinn.dev/run": "1", "wasinn.dev/published-run": "1"},
        },
        "spec": {"wasm": {"url": "http://shim/artifacts/x"}, "suspend": suspend},
    })  # fmt: skip
    # (As the operator writes it: the status describes run request 1.)
    status = {"phase": phase, "run": 1, **status}
    kube.patch("wasinntasks", "t1", {"status": status}, subresource="status")


def operator_writes_status(kube: Cluster, **status: Any) -> Callable[[], Any]:
    return lambda: kube.patch("wasinntasks", "t1", {"status": status}, subresource="status")


@pytest.fixture
def store(kube: Cluster) -> Iterator[tuple[KubernetesStore, Interleaved]]:
    shim = KubernetesStore(kube.namespace, "http://shim")
    api = Interleaved(shim._custom)
    shim._custom = api  # type: ignore[assignment]
    yield shim, api


def stored(kube: Cluster) -> dict[str, Any]:
    return kube.get("wasinntasks", "t1")


def test_stop_loses_to_a_run_that_ended_first(
    kube: Cluster, store: tuple[KubernetesStore, Interleaved]
) -> None:
    shim, api = store
    make_task(kube, "Running", suspend=False)
    api.before.append(operator_writes_status(kube, phase="Completed", results="tiger cat"))
    with pytest.raises(ConflictError, match="not scheduled or running"):
        shim.stop("t1")
    assert api.refused == 1
    task = stored(kube)
    assert task["status"] == {"phase": "Completed", "run": 1, "results": "tiger cat"}
    assert task["spec"]["suspend"] is False


def test_stop_decides_again_when_the_operator_wrote_in_between(
    kube: Cluster, store: tuple[KubernetesStore, Interleaved]
) -> None:
    shim, api = store
    make_task(kube, "Scheduled", suspend=False)
    # The operator records the Pod running before the shim's suspend lands.
    api.before.append(operator_writes_status(kube, phase="Running", nodeName="n1"))
    record = shim.stop("t1")
    assert (api.refused, api.writes) == (1, 1)
    # A stop is an intent: the operator ends the run; the shim writes no status.
    assert record.phase is TaskPhase.RUNNING
    task = stored(kube)
    assert task["spec"]["suspend"] is True
    assert task["status"] == {"phase": "Running", "run": 1, "nodeName": "n1"}


def test_start_decides_again_and_keeps_one_run(
    kube: Cluster, store: tuple[KubernetesStore, Interleaved]
) -> None:
    shim, api = store
    make_task(kube, "Failed", suspend=True, error=STOPPED_ERROR)
    # The operator's late reaction to the stop lands before the shim's run request.
    suspended = [{"type": "Suspended", "status": "True"}]
    api.before.append(operator_writes_status(kube, conditions=suspended))
    record = shim.start("t1")
    assert (api.refused, api.writes) == (1, 1)
    # Queued for the operator, which resets the status when it takes the request up.
    assert record.phase is TaskPhase.SCHEDULED and record.run == 2
    assert (record.error, record.results) == ("", None)
    task = stored(kube)
    assert task["spec"]["suspend"] is False
    assert task["metadata"]["annotations"]["wasinn.dev/run"] == "2"
    assert task["status"] == {
        "phase": "Failed",
        "run": 1,
        "error": STOPPED_ERROR,
        "conditions": suspended,
    }


def test_a_start_error_is_recorded_as_intent(
    kube: Cluster, store: tuple[KubernetesStore, Interleaved]
) -> None:
    shim, _ = store
    make_task(kube, "Completed", suspend=True)
    record = shim.fail("t1", "no file and no image_url")
    assert (record.phase, record.error, record.run) == (
        TaskPhase.FAILED,
        "no file and no image_url",
        2,
    )
    assert record.unpublished
    task = stored(kube)
    notes = task["metadata"]["annotations"]
    assert (notes["wasinn.dev/run"], notes["wasinn.dev/start-error"]) == (
        "2",
        "no file and no image_url",
    )
    assert task["status"] == {"phase": "Completed", "run": 1}
    # A new start clears it: the next run request carries no error.
    shim.start("t1")
    assert "wasinn.dev/start-error" not in stored(kube)["metadata"]["annotations"]


def test_a_task_that_keeps_changing_is_a_conflict(
    kube: Cluster, store: tuple[KubernetesStore, Interleaved]
) -> None:
    shim, api = store
    make_task(kube, "Completed", suspend=True)
    api.before += [operator_writes_status(kube, observedGeneration=i) for i in range(10)]
    with pytest.raises(ConflictError, match="kept changing"):
        shim.start("t1")
    assert api.writes == 0 and api.refused == 5
    task = stored(kube)
    assert task["spec"]["suspend"] is True
    assert task["metadata"]["annotations"]["wasinn.dev/run"] == "1"


def test_the_operators_stale_status_write_is_refused(kube: Cluster) -> None:
    make_task(kube, "Running", suspend=False)
    read = stored(kube)["metadata"]["resourceVersion"]
    kube.patch("wasinntasks", "t1", {"metadata": {"annotations": {"wasinn.dev/run": "2"}}})
    operator = Kube()
    with pytest.raises(StaleTaskError):
        asyncio.run(operator.patch_status(kube.namespace, "t1", {"phase": "Completed"}, read))
    assert stored(kube)["status"]["phase"] == "Running"
    fresh = stored(kube)["metadata"]["resourceVersion"]
    asyncio.run(operator.patch_status(kube.namespace, "t1", {"phase": "Completed"}, fresh))
    assert stored(kube)["status"]["phase"] == "Completed"


def test_the_operator_reconciles_again_when_the_shim_wrote_in_between(kube: Cluster) -> None:
    """A reconcile whose status write meets the shim's write in between decides again on a
    fresh read: both writes stand."""
    kube.create("wasinntasks", {
        "metadata": {"name": "t1"},
        "spec": {"wasm": {"url": "http://shim/artifacts/x"}, "models": {"claimName": "zoo"}},
    })  # fmt: skip
    uid = stored(kube)["metadata"]["uid"]
    operator = Kube()
    api = Interleaved(operator.custom)
    operator.custom = api  # type: ignore[assignment]
    note = {"metadata": {"annotations": {"wasinn.dev/proplet-id": "shim-1"}}}
    api.before.append(lambda: kube.patch("wasinntasks", "t1", note))
    state = handlers.Operator(OperatorSettings(namespaces=(kube.namespace,)), kube=operator)
    asyncio.run(handlers.reconcile_task(state, kube.namespace, "t1", uid))
    assert (api.refused, api.writes) == (1, 1)
    task = stored(kube)
    scheduled = next(c for c in task["status"]["conditions"] if c["type"] == "Scheduled")
    assert scheduled["reason"] == "ModelClaimNotFound"
    assert task["metadata"]["annotations"]["wasinn.dev/proplet-id"] == "shim-1"
