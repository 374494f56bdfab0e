"""The operator's Pod cache: what the Pod watch delivered, trusted only when it holds the Pod
the task's status names; and the handlers' bookkeeping around it."""

from __future__ import annotations

import asyncio
import copy
import time
from pathlib import Path
from typing import Any, cast

import kopf
import pytest

from wasinn_operator.controller import builders, handlers, state
from wasinn_operator.controller.builders import TASK_UID_LABEL
from wasinn_operator.controller.handlers import _prune
from wasinn_operator.controller.kube import Kube, StaleTaskError
from wasinn_operator.controller.podcache import PodCache, slim
from wasinn_operator.controller.settings import OperatorSettings
from wasinn_operator.controller.state import Operator, newer
from wasinn_operator.kubeclient import POOL_SIZE, KubeClient

pytestmark = pytest.mark.unit


def pod(name: str, uid: str = "u1", phase: str = "Pending", **meta: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": "ns",
            "labels": {TASK_UID_LABEL: uid, "wasinn.dev/attempt": name[-1]},
            "managedFields": [{"manager": "kubelet"}],
            **meta,
        },
        "spec": {"nodeName": "n1", "containers": [{"name": "proplet", "env": [{"x": "y" * 100}]}]},
        "status": {"phase": phase},
    }


def test_an_empty_cache_answers_no_pods_for_a_task_that_names_none() -> None:
    assert PodCache().pods("u1", None) == []


def test_a_task_whose_pod_is_not_cached_is_not_trusted() -> None:
    cache = PodCache()
    assert cache.pods("u1", "t-1") is None
    cache.put(pod("t-1"))
    assert [p["metadata"]["name"] for p in cache.pods("u1", "t-1") or []] == ["t-1"]
    assert cache.pods("u1", "t-2") is None  # a newer attempt not seen yet


def test_put_keeps_the_latest_copy_and_remove_drops_it() -> None:
    cache = PodCache()
    cache.put(pod("t-1"))
    cache.put(pod("t-1", phase="Running"))
    assert [p["status"]["phase"] for p in cache.pods("u1", "t-1") or []] == ["Running"]
    cache.remove(pod("t-1"))
    assert cache.pods("u1", "t-1") is None
    assert cache.pods("u1", None) == []
    assert len(cache) == 0 and cache.uids() == set()


def test_pods_of_different_tasks_are_kept_apart() -> None:
    cache = PodCache()
    cache.put(pod("a-1", uid="a"))
    cache.put(pod("b-1", uid="b"))
    cache.put(pod("b-2", uid="b"))
    assert len(cache.pods("a", None) or []) == 1
    assert len(cache.pods("b", "b-2") or []) == 2
    cache.forget("b")
    assert cache.uids() == {"a"} and len(cache) == 1


def test_a_pod_without_the_task_label_or_a_name_is_ignored() -> None:
    cache = PodCache()
    unlabelled = pod("x-1")
    del unlabelled["metadata"]["labels"][TASK_UID_LABEL]
    cache.put(unlabelled)
    cache.put({"metadata": {"labels": {TASK_UID_LABEL: "u1"}}})
    cache.remove(unlabelled)  # removing what was never there is fine
    assert len(cache) == 0


def test_refresh_replaces_a_tasks_pods_with_the_listing() -> None:
    cache = PodCache()
    cache.put(pod("t-1"))
    cache.put(pod("t-2"))
    cache.refresh("u1", [pod("t-2", phase="Succeeded")])
    assert [
        (p["metadata"]["name"], p["status"]["phase"]) for p in cache.pods("u1", "t-2") or []
    ] == [("t-2", "Succeeded")]
    cache.refresh("u1", [])
    assert cache.uids() == set()


def test_slim_keeps_what_a_reconcile_reads_and_drops_the_rest() -> None:
    full = pod("t-1", phase="Failed", deletionTimestamp="2026-12-06T00:00:00Z")
    full["status"]["containerStatuses"] = [{"name": "proplet", "state": {"terminated": {}}}]
    kept = slim(full)
    assert kept["spec"] == {"nodeName": "n1"}
    assert kept["status"] == full["status"]
    assert kept["metadata"]["deletionTimestamp"] == "2026-12-06T00:00:00Z"
    assert "managedFields" not in kept["metadata"]
    assert kept["metadata"]["labels"] == full["metadata"]["labels"]
    assert slim({"metadata": {"name": "p"}})["spec"] == {}


def test_a_caller_changing_its_copy_does_not_change_the_cache() -> None:
    cache = PodCache()
    cache.put(pod("t-1"))
    (got,) = cache.pods("u1", "t-1") or []
    got["metadata"] = {}
    assert cache.pods("u1", "t-1") is not None


def test_resource_versions_compare_as_numbers_and_anything_else_is_not_newer() -> None:
    assert newer("10", "9")
    assert not newer("9", "10")
    assert not newer("10", "10")
    assert not newer("abc", "9") and not newer("10", "")


def test_prune_drops_what_is_kept_for_gone_tasks_but_not_for_a_task_being_reconciled() -> None:
    async def run() -> Operator:
        operator = Operator(OperatorSettings())
        for uid in ("gone", "busy", "here"):
            operator.locks[uid] = asyncio.Lock()
            operator.written[uid] = "1"
            operator.pods.put(pod(f"{uid}-1", uid=uid))
        operator.pods.put(pod("orphan-1", uid="orphan"))  # a late Pod event of a deleted task
        await operator.locks["busy"].acquire()
        _prune(operator, {"here"})
        return operator

    operator = asyncio.run(run())
    assert set(operator.locks) == {"busy", "here"}
    assert set(operator.written) == {"busy", "here"}
    assert operator.pods.uids() == {"busy", "here"}


def stored_task() -> dict[str, Any]:
    """A task as the API server stores it, before the operator's first write."""
    return {
        "metadata": {"name": "cat", "namespace": "ml", "uid": "u1", "resourceVersion": "5"},
        "spec": {"wasm": {"url": "http://shim/artifacts/x"}},
    }


class FakeKube:
    """The API calls a reconcile makes, recorded; the task store is one dict."""

    def __init__(self, task: dict[str, Any]) -> None:
        self.stored = task
        self.calls: list[str] = []
        self.stale_writes = 0
        self.claim = True

    async def task(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.calls.append("get task")
        return copy.deepcopy(self.stored)

    async def pods(self, namespace: str, uid: str) -> list[dict[str, Any]]:
        self.calls.append("list pods")
        return []

    async def claim_exists(self, namespace: str, name: str) -> bool:
        self.calls.append("read claim")
        return self.claim

    async def nodes(self) -> list[dict[str, Any]]:
        ready = {"conditions": [{"type": "Ready", "status": "True"}]}
        return [
            {"metadata": {"name": "n1", "labels": {"wasinn.dev/openvino": "true"}}, "status": ready}
        ]

    async def wasm_problem(self, namespace: str, spec: Any) -> None:
        return None

    async def create(self, manifest: dict[str, Any]) -> None:
        self.calls.append(f"create {manifest['kind']}")

    async def delete_pod(self, namespace: str, name: str) -> None:
        self.calls.append("delete pod")

    async def create_event(self, event: dict[str, Any]) -> None:
        return None

    async def patch_status(
        self, namespace: str, name: str, status: dict[str, Any], version: str | None
    ) -> dict[str, Any]:
        self.calls.append("write status")
        if self.stale_writes:
            self.stale_writes -= 1
            self.stored["metadata"]["resourceVersion"] = str(int(version or 0) + 1)
            raise StaleTaskError("changed")
        assert version == self.stored["metadata"]["resourceVersion"]
        merged = {**(self.stored.get("status") or {}), **status}
        self.stored["status"] = {k: v for k, v in merged.items() if v is not None}
        self.stored["metadata"]["resourceVersion"] = str(int(version or 0) + 1)
        return copy.deepcopy(self.stored)


def test_a_pod_events_reconcile_reads_neither_the_task_nor_its_pods() -> None:
    """The task's watch event and the answer to the operator's own status write are the newest
    copies there are; the Pod watch keeps the Pods: following an attempt costs writes only."""
    stored = stored_task()
    kube = FakeKube(stored)
    memo = kopf.Memo(operator=Operator(OperatorSettings(), kube=cast(Kube, kube)))
    added = {"type": "ADDED", "object": copy.deepcopy(stored)}

    async def run() -> None:
        await handlers.wasinntask_event(
            event=added, name="cat", namespace="ml", uid="u1", memo=memo
        )
        running = owned(pod("cat-1", phase="Running"))
        await handlers.pod_event(
            event={"type": "MODIFIED", "object": running}, namespace="ml", memo=memo
        )

    asyncio.run(run())
    assert kube.calls == ["read claim", "create Pod", "write status", "write status"]
    assert kube.stored["status"]["phase"] == "Running"


def owned(pod_body: dict[str, Any], task: str = "cat", uid: str = "u1") -> dict[str, Any]:
    pod_body["metadata"]["ownerReferences"] = [
        {"kind": "WasiNNTask", "name": task, "uid": uid, "controller": True}
    ]
    return pod_body


def test_an_attempts_end_reads_no_start_facts() -> None:
    """The reconcile that records a Pod's end starts nothing (a retry starts in a later one):
    it reads no claim, Node or ConfigMap."""
    stored = stored_task()
    kube = FakeKube(stored)
    operator = Operator(OperatorSettings(), kube=cast(Kube, kube))
    memo = kopf.Memo(operator=operator)
    summary = '{"state": "Completed", "exitCode": 0, "stdout": "ok"}'
    done = pod("cat-1", phase="Succeeded")
    done["status"]["containerStatuses"] = [
        {"name": "proplet", "state": {"terminated": {"exitCode": 0, "message": summary}}}
    ]

    async def run() -> None:
        await handlers.reconcile_task(operator, "ml", "cat", "u1", copy.deepcopy(stored))
        for phase, body in (("Running", pod("cat-1", phase="Running")), ("Succeeded", done)):
            event = {"type": "MODIFIED", "object": owned(body)}
            await handlers.pod_event(event=event, namespace="ml", memo=memo)
            assert kube.stored["status"]["phase"] == ("Completed" if phase != "Running" else phase)

    asyncio.run(run())
    assert kube.calls.count("read claim") == 1


def test_a_models_claim_seen_lately_is_not_read_again_and_a_missing_one_is() -> None:
    kube = FakeKube({})
    operator = Operator(OperatorSettings(resync_seconds=60), kube=cast(Kube, kube))

    async def decide() -> bool:
        return await handlers._claim_exists(operator, "ml", "models")

    assert asyncio.run(decide()) and asyncio.run(decide())
    assert kube.calls == ["read claim"]
    kube.claim = False
    operator.claims[("ml", "models")] -= 60  # older than a resync interval: read again
    assert not asyncio.run(decide()) and not asyncio.run(decide())
    assert kube.calls == ["read claim"] * 3  # a missing claim is read at every decision
    kube.claim = True
    assert asyncio.run(decide())
    assert kube.calls == ["read claim"] * 4


def test_a_refused_status_write_drops_the_kept_copy_and_reads_the_task() -> None:
    stored = stored_task()
    kube = FakeKube(stored)
    kube.stale_writes = 1
    operator = Operator(OperatorSettings(), kube=cast(Kube, kube))
    operator.tasks["u1"] = copy.deepcopy(stored)
    asyncio.run(handlers.reconcile_task(operator, "ml", "cat", "u1"))
    assert kube.calls == [
        *("read claim", "create Pod", "write status"),
        *("get task", "create Pod", "write status"),  # (the claim was read just now)
    ]
    assert operator.tasks["u1"]["metadata"]["resourceVersion"] == "7"
    assert operator.written["u1"] == "7"


def test_a_settled_task_is_not_kept() -> None:
    operator = Operator(OperatorSettings())
    done = {"metadata": {"uid": "u1"}, "spec": {}, "status": {"phase": "Completed"}}
    operator.tasks["u1"] = {"metadata": {"uid": "u1"}}
    state.keep(operator, "u1", done)
    assert "u1" not in operator.tasks
    state.keep(operator, "u1", {"metadata": {"uid": "u1"}, "spec": {}, "status": {}})
    assert "u1" in operator.tasks


def test_sweep_drops_pods_a_later_listing_lacks_or_has_changed_and_keeps_newer_ones() -> None:
    cache = PodCache()
    cache.put(pod("t-1"))  # deleted while the watch was away
    cache.put(pod("u-1", uid="u2", resourceVersion="7"))  # still there, unchanged
    cache.put(pod("v-1", uid="u3", resourceVersion="8"))  # changed unseen: listed at 9
    since = time.monotonic()
    cache.put(pod("t-2"))  # created after the listing began: not in it, kept
    assert cache.sweep({("u2", "u-1"): "7", ("u3", "v-1"): "9"}, since) == 2
    assert [p["metadata"]["name"] for p in cache.pods("u1", "t-2") or []] == ["t-2"]
    assert cache.pods("u1", "t-1") is None and cache.pods("u3", "v-1") is None
    assert cache.uids() == {"u1", "u2"}
    assert cache.sweep({}, time.monotonic()) == 2 and len(cache) == 0


def test_kopf_builds_no_diff_base_the_operator_would_not_use() -> None:
    """kopf deep-copies every event's body into a diff base for change-detecting handlers;
    the operator registers none, so it stores none."""
    changing = kopf.get_default_registry()._changing
    assert not any(changing.get_all_handlers())
    storage = handlers.NoDiffBase()
    body = kopf.Body({"metadata": {"name": "x"}, "spec": {"big": "y" * 1000}})
    assert storage.build(body=body) == {}
    assert storage.fetch(body=body) is None


def test_the_pod_watch_selects_the_task_pods_on_the_api_server() -> None:
    """kopf asks the API server for the labelled Pods only; every task Pod carries the label."""
    settings = kopf.OperatorSettings()
    handlers.tune(settings)
    core_pods = kopf.Resource("", "v1", "pods", namespaced=True)
    assert list(settings.watching.label_selectors.collect(core_pods)) == [handlers.POD_SELECTOR]
    task = {"metadata": {"name": "cat", "namespace": "ml", "uid": "u1"}, "spec": {}}
    key, value = handlers.POD_SELECTOR.split("=")
    assert builders.task_labels(task)[key] == value
    nodes = kopf.Resource("", "v1", "nodes", namespaced=False)
    assert list(settings.watching.label_selectors.collect(nodes)) == []


def test_the_client_keeps_a_connection_per_api_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Calls beyond the pool's size open and drop a TLS connection each."""
    config = tmp_path / "kubeconfig"
    config.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: k, cluster: {server: 'https://127.0.0.1:1'}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: c, context: {cluster: k, user: u}}]\n"
    )
    monkeypatch.setenv("KUBECONFIG", str(config))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    client = KubeClient()
    pool = client.core.api_client.rest_client.pool_manager
    assert pool.connection_pool_kw["maxsize"] == POOL_SIZE >= handlers.API_THREADS
