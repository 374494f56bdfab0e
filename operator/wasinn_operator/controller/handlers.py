"""kopf handlers: gather facts, call the pure `reconcile`, carry out its plan.

Every trigger (task created, resumed or changed, a Pod event, the periodic resync) runs the same
level-triggered reconcile under a per-task lock, so events arriving together cannot create two
Pods. What the handlers share reaches them in kopf's memo, as the `Operator` of
controller/state.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import kopf
from pydantic import ValidationError

from ..api import GROUP, PLURAL, VERSION, WasiNNTaskSpec
from ..api.warm import POOL_LABEL, read_report
from ..kubeclient import STALE_RETRIES, in_cluster
from . import external, metrics, warm
from .builders import PART_OF, TASK_UID_LABEL
from .events import build_event
from .kube import Kube, StaleTaskError
from .pods import current_pod, start_decision_due, unschedulable
from .reconcile import Facts, reconcile
from .run import release_freed_memory
from .settings import OperatorSettings
from .state import (
    NoDiffBase,
    Operator,
    forget,
    keep,
    newer,
    operator_in,
    resource_version,
    settled,
)

log = logging.getLogger("wasinn.operator")
# API calls run in threads (controller/kube.py); asyncio's default pool has cpu_count + 4, which
# at 20 tasks/s (a dozen calls per task, each waiting on the API server) queues calls for
# seconds. The calls mostly wait on the network, so more threads cost little CPU.
API_THREADS = 24
POD_SELECTOR = "=".join(PART_OF)
EVENTS_CLOSE_SECONDS = 5.0  # at shutdown, for the queued Events


@kopf.on.login()
def operator_login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """The same login as the API client's (`kubeclient`): in a Pod, the ServiceAccount at the
    API server's service address; else the kubeconfig that $KUBECONFIG names now. (kopf's own
    in-cluster login assumes cluster DNS for kubernetes.default.svc, which not every cluster
    runs.)"""
    cluster = in_cluster()
    if cluster is not None:
        return kopf.ConnectionInfo(
            server=cluster.server,
            ca_path=str(cluster.ca_path),
            token=cluster.token,
            default_namespace=cluster.namespace,
        )
    return kopf.login_with_kubeconfig(**kwargs)


@kopf.on.startup()
async def operator_startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Tune kopf, log in and start the metrics endpoint and the resync loop."""
    tune(settings)
    operator = operator_in(memo)
    asyncio.get_running_loop().set_default_executor(
        ThreadPoolExecutor(API_THREADS, thread_name_prefix="kube")
    )
    metrics.serve(operator.settings.metrics_port)
    operator.kube = Kube()
    operator.resync = asyncio.create_task(resync_loop(operator))
    log.info("wasinn operator settings: %s", operator.settings)


def tune(settings: kopf.OperatorSettings) -> None:
    """kopf's settings for this operator."""
    settings.posting.level = logging.WARNING  # our own Events say what happened
    settings.persistence.diffbase_storage = NoDiffBase()
    settings.watching.server_timeout = 300
    # Only the Pods of tasks and warm workers reach kopf: a cluster's other Pods (thousands,
    # churning) would each be decoded and filtered client-side.
    settings.watching.label_selectors["", "v1", "pods"] = POD_SELECTOR


@kopf.on.event(GROUP, VERSION, PLURAL)
async def wasinntask_event(
    event: kopf.RawEvent, name: str, namespace: str | None, uid: str, memo: kopf.Memo, **_: Any
) -> None:
    """Any change of a task (including the initial listing after a restart) reconciles it.

    Level-triggered on purpose: no diff-base annotation (a copy of a spec with an inline module
    would exceed the annotation size limit) and no finalizer (a stopped operator never blocks a
    deletion; the garbage collector removes the children through their owner references).
    """
    operator = operator_in(memo)
    if event.get("type") == "DELETED":
        # Its Pod and ConfigMap are the garbage collector's (background propagation), or
        # kept without an owner when the deletion said Orphan.
        forget(operator, uid, deleted=True)
        return
    version = resource_version(dict(event.get("object") or {}))
    if version and operator.written.get(uid) == version:
        return  # the echo of this operator's own status write: nothing new to act on
    body: dict[str, Any] = copy.deepcopy(dict(event.get("object") or {}))  # kopf's own stays
    # A task this operator never wrote to (new, or first seen since a restart), or changed since
    # its last write (the shim started or stopped it): the watch's copy is the newest known, so
    # no GET of a possibly large spec. For an event older than the last write, reconcile_task
    # takes the copy that write answered. A copy gone stale meanwhile fails the status write's
    # resourceVersion precondition, and the retry reads.
    last = operator.written.get(uid)
    if version and (last is None or newer(version, last)):
        keep(operator, uid, body)
    await reconcile_task(operator, namespace or "default", name, uid, body if version else None)


async def resync_loop(operator: Operator) -> None:
    """Re-check every unfinished (or TTL-bound) task periodically: labelled nodes, created
    claims, backoff and TTL deadlines. One loop for all tasks rather than a kopf timer each,
    because kopf guards per-object timers with a finalizer, and a finalizer would block
    deletions whenever the operator is down or uninstalled."""
    settings = operator.settings
    wake = operator.wake
    while True:
        with contextlib.suppress(TimeoutError):  # a node change wakes it early
            await asyncio.wait_for(wake.wait(), settings.resync_seconds)
        wake.clear()
        try:
            since = time.monotonic()
            # The Pods first: a reconcile below must not trust a cached Pod that is gone.
            pods = await operator.api.task_pod_versions(settings.namespaces)
            operator.pods.sweep(pods, since)
            operator.nodes.refresh(await operator.api.nodes(), since)
            present: set[str] = set()
            async for page in operator.api.task_pages(settings.namespaces):
                for task in page:
                    present.add(task["metadata"]["uid"])
                    await _resync_task(operator, task)
            _prune(operator, present)
        except Exception:  # keep resyncing whatever one round hit
            metrics.RECONCILE_ERRORS.inc()
            log.exception("resync failed")
        release_freed_memory()  # a round's garbage, and the watches', back to the system


async def _resync_task(operator: Operator, task: dict[str, Any]) -> None:
    """Reconcile a listed task unless it is finished for good (settled, no TTL to keep)."""
    meta = task["metadata"]
    if settled(task) and (task.get("spec") or {}).get("ttlSecondsAfterFinished") is None:
        return
    # The listing's copy (reconcile_task takes the operator's own if newer): no read per task.
    await reconcile_task(operator, meta["namespace"], meta["name"], meta["uid"], task)


def _prune(operator: Operator, present: set[str]) -> None:
    """Drop what is kept for tasks that are gone but whose DELETED event never came (a watch
    reconnecting), or that a late Pod event brought back after it: locks, Pods, write marks."""
    for uid in (set(operator.locks) | operator.pods.uids()) - present:
        lock = operator.locks.get(uid)
        if lock is None or not lock.locked():
            forget(operator, uid)


@kopf.on.cleanup()
async def operator_cleanup(memo: kopf.Memo, **_: Any) -> None:
    """Stop the resync loop; finish posting the Events still queued (a few seconds at most)."""
    operator = operator_in(memo)
    if operator.resync is not None:
        operator.resync.cancel()
        operator.resync = None
    if operator.poster is not None:
        await operator.poster.close(EVENTS_CLOSE_SECONDS)


@kopf.on.event("", "v1", "nodes")
async def node_event(event: kopf.RawEvent, name: str | None, memo: kopf.Memo, **_: Any) -> None:
    """A node came, went, or changed what it offers (labels, allocatable resources, taints,
    readiness): remember it, and resync now, so tasks waiting as Unschedulable start or say
    what is still missing without waiting for the next round. Heartbeats change none of
    these."""
    operator = operator_in(memo)
    if name is None:
        return
    if event.get("type") == "DELETED":
        operator.nodes.remove(name)
        operator.wake.set()
        return
    changed = operator.nodes.put(dict(event.get("object") or {}))
    if changed and event.get("type") is not None:  # None: the initial listing
        operator.wake.set()


@kopf.on.event("", "v1", "pods", labels={TASK_UID_LABEL: kopf.PRESENT})
async def pod_event(event: kopf.RawEvent, namespace: str | None, memo: kopf.Memo, **_: Any) -> None:
    """A task's Pod changed: remember it, and move its task along."""
    operator = operator_in(memo)
    pod: dict[str, Any] = dict(event.get("object") or {})
    for owner in (pod.get("metadata") or {}).get("ownerReferences") or []:
        if owner.get("kind") == "WasiNNTask" and owner.get("controller"):
            uid = str(owner["uid"])
            if uid in operator.gone:
                return  # its task was deleted: the garbage collector's; nothing to decide
            # Under the task's lock: a live listing in flight for the task would otherwise
            # overwrite this newer copy with the older one it read.
            async with operator.locks.setdefault(uid, asyncio.Lock()):
                if event.get("type") == "DELETED":
                    operator.pods.remove(pod)
                else:
                    operator.pods.put(pod)
            await reconcile_task(operator, namespace or "default", owner["name"], uid)


@kopf.on.event("", "v1", "pods", labels={POOL_LABEL: kopf.PRESENT})
async def worker_event(
    event: kopf.RawEvent, name: str | None, namespace: str | None, memo: kopf.Memo, **_: Any
) -> None:
    """A warm worker Pod changed: remember it; a worker that went, or that restarted, fails the
    attempts it held (reconciled now); a worker that became ready takes waiting tasks."""
    operator = operator_in(memo)
    if name is None or namespace != operator.settings.warm_namespace:
        return
    pod: dict[str, Any] = dict(event.get("object") or {})
    before = operator.workers.get(name)
    if event.get("type") == "DELETED":
        operator.workers.pop(name, None)
    else:
        operator.workers[name] = pod
    after = operator.workers.get(name)
    was_ready = before is not None and warm.ready(before)
    is_ready = after is not None and warm.ready(after)
    if is_ready and not was_ready:
        operator.wake.set()
    if after is not None and is_ready and warm.restarts(after) == warm.restarts(before or after):
        return
    for uid, ns, task in operator.assignments.on(name):
        await reconcile_task(operator, ns, task, uid)


async def reconcile_task(
    operator: Operator,
    namespace: str,
    name: str,
    uid: str,
    seen: dict[str, Any] | None = None,
) -> None:
    """Reconcile one task from fresh state (`seen`: the newest copy of the task known, from
    its watch event or the resync's listing, used for the first try) and apply the plan; when
    the task changed between the read and the status write (the shim starts and stops runs),
    decide again on a fresh read."""
    lock = operator.locks.setdefault(uid, asyncio.Lock())
    async with lock:
        # Chosen under the lock: a reconcile that held it may have written since `seen` was
        # read, and deciding on the older copy would only fail its write's precondition.
        if seen is not None:
            version, kept = resource_version(seen), operator.tasks.get(uid)
            if kept is not None and newer(resource_version(kept), version):
                seen = kept
            elif kept is None and newer(operator.written.get(uid, ""), version):
                # Older than this operator's own last write, whose answer is not kept: it
                # settled the task (a later change comes as a newer event or listing).
                return
        try:
            for attempt in range(1, STALE_RETRIES + 1):
                try:
                    await _reconcile(operator, namespace, name, uid, seen)
                    return
                except StaleTaskError:
                    seen = None
                    operator.tasks.pop(uid, None)  # it was stale: read afresh
                    if attempt == STALE_RETRIES:
                        raise
                    log.info("%s/%s changed during a reconcile; again", namespace, name)
        except Exception:
            metrics.RECONCILE_ERRORS.inc()
            raise


async def _reconcile(
    operator: Operator,
    namespace: str,
    name: str,
    uid: str,
    seen: dict[str, Any] | None,
) -> None:
    kube, settings = operator.api, operator.settings
    # (`reconcile` builds its plan from the task without changing it: a kept copy is used as is.)
    task = seen if seen is not None else operator.tasks.get(uid)
    if task is None:
        task = await kube.task(namespace, name)
        if task is not None:
            keep(operator, uid, task)
    if task is None or task["metadata"].get("deletionTimestamp"):
        return
    task["metadata"].setdefault("uid", uid)
    task["metadata"].setdefault("namespace", namespace)
    facts = await _facts(kube, settings, task, operator)
    plan = reconcile(task, facts, settings)
    if plan.create_configmap is not None:
        await kube.create(plan.create_configmap)
    if plan.create_pod is not None:
        await kube.create(plan.create_pod)
    for pod in plan.delete_pods:
        await kube.delete_pod(namespace, pod)
    before = task.get("status") or {}
    if plan.status != before:
        version = task["metadata"].get("resourceVersion")
        written = await kube.patch_status(
            namespace, name, _merge_patch(before, plan.status), version
        )
        if written is not None:
            operator.written[uid] = resource_version(written)
            keep(operator, uid, written)
        else:
            operator.tasks.pop(uid, None)  # gone
    # Queued, not awaited: the task's next watch event need not wait for its Events.
    for event in plan.events:
        operator.events.post(build_event(task, *event, facts.now))
    metrics.observe(uid, before, plan.status, facts.pods)
    _track_warm(operator, task, plan.status)
    if plan.delete_task:
        expired = "ttlSecondsAfterFinished passed"
        operator.events.post(build_event(task, "Normal", "Expired", expired, facts.now))
        await kube.delete_task(namespace, name)


def _warm(task: dict[str, Any], settings: OperatorSettings) -> bool:
    execution = (task.get("spec") or {}).get("execution") or settings.default_execution
    return bool(execution == "warm")


def _track_warm(operator: Operator, task: dict[str, Any], status: dict[str, Any]) -> None:
    """Keep the worker load and the warm queue metric up to date with the task's new status."""
    meta = task["metadata"]
    uid = meta["uid"]
    held = status.get("worker") if status.get("phase") in ("Scheduled", "Running") else None
    if isinstance(held, dict):
        operator.assignments.hold(uid, str(held.get("pod")), meta["namespace"], meta["name"])
    else:
        operator.assignments.drop(uid)
    if not _warm(task, operator.settings):
        metrics.WARM.tasks.pop(uid, None)
        return
    pool = str(held.get("pool")) if isinstance(held, dict) else _pool(task, operator.settings)
    metrics.WARM.track(uid, pool, warm.queue_state(status))


def _pool(task: dict[str, Any], settings: OperatorSettings) -> str:
    try:
        spec = WasiNNTaskSpec.model_validate(task.get("spec") or {})
    except ValidationError:
        return settings.warm_pools[0][0]
    return warm.pool_for(spec, settings) or settings.warm_pools[0][0]


async def _facts(
    kube: Kube, settings: OperatorSettings, task: dict[str, Any], operator: Operator
) -> Facts:
    meta = task["metadata"]
    now = datetime.now(UTC)
    if external.current(task) is not None:
        return Facts(now=now, pods=[])  # no Pod: its run is on external proplets
    if _warm(task, settings):
        return _warm_facts(settings, task, operator, now)
    status = task.get("status") or {}
    pods = operator.pods.pods(meta["uid"], status.get("podName"))
    if pods is None:
        pods = await kube.pods(meta["namespace"], meta["uid"])
        operator.pods.refresh(meta["uid"], pods)
    # Only a start decision reads the other facts; a suspended task (the shim creates every
    # task suspended) makes none. A Pod the scheduler cannot place needs the nodes alone, to
    # say what none of them has.
    suspended = bool((task.get("spec") or {}).get("suspend"))
    if settled(task) or suspended:
        return Facts(now=now, pods=pods)
    if not start_decision_due(task, pods):
        pod = current_pod(pods, int(status.get("attempts", 0)))
        waiting = pod is not None and unschedulable(pod)
        return Facts(now=now, pods=pods, nodes=await _nodes(operator) if waiting else None)
    try:
        spec = WasiNNTaskSpec.model_validate(task.get("spec") or {})
    except ValidationError:
        return Facts(now=now, pods=pods)  # reconcile reports the invalid spec
    claim = spec.models.claim_name or settings.models_claim
    # Independent reads: in parallel, so a start decision waits for one round trip, not three.
    claim_exists, nodes, wasm_problem = await asyncio.gather(
        _claim_exists(operator, meta["namespace"], claim),
        _nodes(operator),
        kube.wasm_problem(meta["namespace"], spec),
    )
    return Facts(
        now=now, pods=pods, claim_exists=claim_exists, nodes=nodes, wasm_problem=wasm_problem
    )


async def _claim_exists(operator: Operator, namespace: str, claim: str) -> bool:
    """Whether the models claim exists: read at most once per resync interval while it does
    (every start decision read it: one GET per task). A claim deleted since it was read gives
    a Pod the scheduler cannot place, which the task then reports; a missing one is read
    again at each decision, so a task waiting for it starts as soon as it is created."""
    key = (namespace, claim)
    seen = operator.claims.get(key)
    if seen is not None and time.monotonic() - seen < operator.settings.resync_seconds:
        return True
    exists = await operator.api.claim_exists(namespace, claim)
    if exists:
        operator.claims[key] = time.monotonic()
    else:
        operator.claims.pop(key, None)
    return exists


async def _nodes(operator: Operator) -> list[dict[str, Any]]:
    """Every Node, from the node watch's cache; listed once (the cache made complete) if the
    resync has not listed them yet: the decisions of the tasks found at start-up wait for
    that one listing rather than each making its own."""
    nodes = operator.nodes.nodes()
    if nodes is not None:
        return nodes
    async with operator.nodes_listing:
        nodes = operator.nodes.nodes()
        if nodes is None:
            since = time.monotonic()
            operator.nodes.refresh(await operator.api.nodes(), since)
            nodes = operator.nodes.nodes() or []
        return nodes


def _warm_facts(
    settings: OperatorSettings, task: dict[str, Any], operator: Operator, now: datetime
) -> Facts:
    """A warm task's facts: its attempt from its worker's report and the worker Pod as last
    seen; for a start decision the pool's workers and their load (no Pods, no Nodes)."""
    status = task.get("status") or {}
    pods: list[dict[str, Any]] = []
    ref = status.get("worker")
    if isinstance(ref, dict) and status.get("phase") in ("Scheduled", "Running"):
        timeout = (task.get("spec") or {}).get("timeoutSeconds") or settings.proplet_timeout_seconds
        worker = operator.workers.get(str(ref.get("pod")))
        record = warm.attempt_record(status, worker, read_report(task), now, timeout)
        if record is not None:
            pods.append(record)
        return Facts(now=now, pods=pods)
    if settled(task) or (task.get("spec") or {}).get("suspend"):
        return Facts(now=now, pods=pods)
    pool = _pool(task, settings)
    workers = [
        w
        for w in operator.workers.values()
        if (w["metadata"].get("labels") or {}).get(POOL_LABEL) == pool
    ]
    # (The workers mount the models claim: no claim, node or ConfigMap of the task is read.)
    return Facts(
        now=now,
        pods=pods,
        workers=workers,
        load=operator.assignments.load(),
    )


def _merge_patch(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """A JSON merge patch from `before` to `after` (removed keys become null)."""
    patch = {k: v for k, v in after.items() if before.get(k) != v}
    patch.update({k: None for k in before if k not in after})
    return patch
