"""kopf handlers: gather facts, call the pure `reconcile`, carry out its plan.

Every trigger (task created, resumed or changed, a Pod event, the periodic resync) runs the same
level-triggered reconcile under a per-task lock, so events arriving together cannot create two
Pods. Settings are parsed once by `wasinn operator` (controller/run.py) and reach every handler
in kopf's memo, as an `Operator` with the API client and the locks.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import kopf
from pydantic import ValidationError

from ..api import GROUP, PLURAL, VERSION, WasiNNTaskSpec
from ..api.lifecycle import TaskPhase
from ..api.status import described_run, requested_run
from ..api.warm import POOL_LABEL, read_report
from ..kubeclient import STALE_RETRIES, in_cluster
from . import external, metrics, warm
from .builders import TASK_UID_LABEL
from .events import EventPoster, build_event
from .kube import Kube, StaleTaskError
from .podcache import PodCache
from .pods import attempt_in_progress, current_pod, unschedulable
from .reconcile import Facts, reconcile, stopped_run
from .run import release_freed_memory
from .settings import OperatorSettings

log = logging.getLogger("wasinn.operator")
# API calls run in threads (controller/kube.py); asyncio's default pool has cpu_count + 4, which
# at 20 tasks/s (a dozen calls per task, each waiting on the API server) queues calls for
# seconds. The calls mostly wait on the network, so more threads cost little CPU.
API_THREADS = 24
EVENTS_CLOSE_SECONDS = 5.0


@dataclass
class Operator:
    """What the handlers share: the settings, the API client (made at startup), the per-task
    locks and the resync loop."""

    settings: OperatorSettings
    kube: Kube | None = None
    locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    resync: asyncio.Task[None] | None = None
    # A node change sets `wake` to resync at once; `nodes` holds what each node offered.
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    nodes: dict[str, str] = field(default_factory=dict)
    # execution: warm: the worker Pods as last seen (name -> Pod) and the attempts they hold
    # (task uid -> (worker name, namespace, task name)).
    workers: dict[str, dict[str, Any]] = field(default_factory=dict)
    assignments: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    # The resourceVersion of each task's last status write: its own echo needs no reconcile.
    written: dict[str, str] = field(default_factory=dict)
    # The task Pods as the Pod watch delivered them: an event's reconcile lists none.
    pods: PodCache = field(default_factory=PodCache)
    # The newest copy known of each unfinished task (its watch event, or the answer to the
    # operator's own status write): a Pod event's reconcile reads no task.
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    poster: EventPoster | None = None

    @property
    def api(self) -> Kube:
        """The API client; made on first use (at startup when kopf runs the handlers)."""
        if self.kube is None:
            self.kube = Kube()
        return self.kube

    @property
    def events(self) -> EventPoster:
        """Where reconciles queue their Kubernetes Events; made on first use."""
        if self.poster is None:
            self.poster = EventPoster(self.api.create_event)
        return self.poster


class NoDiffBase(kopf.DiffBaseStorage):
    """kopf's record of an object's last handled state, which change-detecting handlers
    (on.create/update/resume) compare against. The operator registers none (event handlers
    only, level-triggered on purpose), yet kopf would deep-copy every event's whole body to
    build it (py-spy at 20 tasks/s: 5% of the samples). An empty one skips that copy."""

    def build(
        self, *, body: kopf.Body, extra_fields: Iterable[Any] | None = None
    ) -> kopf.BodyEssence:
        """Nothing to compare later."""
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        """No state was stored."""
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        """Nothing is stored (no annotation written on the task)."""


def memo(settings: OperatorSettings) -> kopf.Memo:
    """kopf's memo for `kopf.run`: every handler gets the one `Operator` in it (kopf copies a
    memo per object, shallowly, so they all share it)."""
    return kopf.Memo(operator=Operator(settings))


def _operator(memo: kopf.Memo) -> Operator:
    operator: Operator = memo["operator"]
    return operator


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
    settings.posting.level = logging.WARNING  # our own Events say what happened
    settings.persistence.diffbase_storage = NoDiffBase()
    settings.watching.server_timeout = 300
    operator = _operator(memo)
    asyncio.get_running_loop().set_default_executor(
        ThreadPoolExecutor(API_THREADS, thread_name_prefix="kube")
    )
    metrics.serve(operator.settings.metrics_port)
    operator.kube = Kube()
    operator.resync = asyncio.create_task(resync_loop(operator))
    log.info("wasinn operator settings: %s", operator.settings)


@kopf.on.event(GROUP, VERSION, PLURAL)
async def wasinntask_event(
    event: kopf.RawEvent, name: str, namespace: str | None, uid: str, memo: kopf.Memo, **_: Any
) -> None:
    """Any change of a task (including the initial listing after a restart) reconciles it.

    Level-triggered on purpose: no diff-base annotation (a copy of a spec with an inline module
    would exceed the annotation size limit) and no finalizer (a stopped operator never blocks a
    deletion; the garbage collector removes the children through their owner references).
    """
    operator = _operator(memo)
    if event.get("type") == "DELETED":
        await operator.api.delete_children(namespace or "default", uid)
        _forget(operator, uid)
        return
    body: dict[str, Any] = copy.deepcopy(dict(event.get("object") or {}))  # kopf's own stays
    version = _version(body)
    if version and operator.written.get(uid) == version:
        return  # the echo of this operator's own status write: nothing new to act on
    # A task this operator never wrote to (new, or first seen since a restart), or changed since
    # its last write (the shim started or stopped it): the watch's copy is the newest known, so
    # no GET of a possibly large spec. An event older than the last write uses the copy that
    # write answered. A copy gone stale meanwhile fails the status write's resourceVersion
    # precondition, and the retry reads.
    last = operator.written.get(uid)
    seen = body if version and (last is None or _newer(version, last)) else None
    if seen is not None:
        _keep(operator, uid, seen)
    await reconcile_task(operator, namespace or "default", name, uid, seen)


def _forget(operator: Operator, uid: str) -> None:
    """Drop all the operator keeps for a task that is gone."""
    metrics.forget(uid)
    operator.locks.pop(uid, None)
    operator.assignments.pop(uid, None)
    operator.written.pop(uid, None)
    operator.pods.forget(uid)
    operator.tasks.pop(uid, None)


def _keep(operator: Operator, uid: str, task: dict[str, Any]) -> None:
    """Keep `task` as the newest copy known, unless it has settled (no Pod event of a settled
    task needs it, and a thousand finished tasks would otherwise stay in memory)."""
    if _settled(task):
        operator.tasks.pop(uid, None)
    else:
        operator.tasks[uid] = task


def _version(task: dict[str, Any]) -> str:
    return str((task.get("metadata") or {}).get("resourceVersion") or "")


def _newer(version: str, than: str) -> bool:
    """Whether resourceVersion `version` is later than `than`. They are etcd revisions,
    numbers, on every API server in use; anything else is taken as not newer, which costs a
    read and never a wrong decision."""
    return version.isdigit() and than.isdigit() and int(version) > int(than)


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
            tasks, pods = await asyncio.gather(
                operator.api.list_tasks(settings.namespaces),
                operator.api.task_pod_names(settings.namespaces),
            )
            _prune(operator, {task["metadata"]["uid"] for task in tasks})
            operator.pods.sweep(pods, since)
            for task in tasks:
                meta = task["metadata"]
                if (
                    _settled(task)
                    and (task.get("spec") or {}).get("ttlSecondsAfterFinished") is None
                ):
                    continue
                # The listing's copy, or the operator's own if it is newer: no read per task.
                kept = operator.tasks.get(meta["uid"])
                newest = kept if kept and _newer(_version(kept), _version(task)) else task
                await reconcile_task(operator, meta["namespace"], meta["name"], meta["uid"], newest)
        except Exception:  # keep resyncing whatever one round hit
            metrics.RECONCILE_ERRORS.inc()
            log.exception("resync failed")
        release_freed_memory()  # a round's garbage, and the watches', back to the system


def _prune(operator: Operator, present: set[str]) -> None:
    """Drop what is kept for tasks that are gone but whose DELETED event never came (a watch
    reconnecting), or that a late Pod event brought back after it: locks, Pods, write marks."""
    for uid in (set(operator.locks) | operator.pods.uids()) - present:
        lock = operator.locks.get(uid)
        if lock is None or not lock.locked():
            _forget(operator, uid)


@kopf.on.cleanup()
async def operator_cleanup(memo: kopf.Memo, **_: Any) -> None:
    """Stop the resync loop; post the Events still queued (for a few seconds at most)."""
    operator = _operator(memo)
    if operator.resync is not None:
        operator.resync.cancel()
        operator.resync = None
    if operator.poster is not None:
        await operator.poster.close(EVENTS_CLOSE_SECONDS)


@kopf.on.event("", "v1", "nodes")
async def node_event(event: kopf.RawEvent, name: str | None, memo: kopf.Memo, **_: Any) -> None:
    """A node came, went, or changed what it offers (labels, allocatable resources, taints,
    readiness): resync now, so tasks waiting as Unschedulable start or say what is still
    missing without waiting for the next round. Heartbeats change none of these."""
    operator = _operator(memo)
    wake, seen = operator.wake, operator.nodes
    node: dict[str, Any] = dict(event.get("object") or {})
    if name is None:
        return
    if event.get("type") == "DELETED":
        seen.pop(name, None)
        wake.set()
        return
    offer = _offer(node)
    if seen.get(name) == offer:
        return
    seen[name] = offer
    if event.get("type") is not None:  # None: the initial listing, which the resync covers
        wake.set()


def _offer(node: dict[str, Any]) -> str:
    meta: dict[str, Any] = node.get("metadata") or {}
    spec: dict[str, Any] = node.get("spec") or {}
    status: dict[str, Any] = node.get("status") or {}
    ready = [c.get("status") for c in status.get("conditions") or [] if c.get("type") == "Ready"]
    offer = [meta.get("labels"), status.get("allocatable"), spec.get("taints"),
             spec.get("unschedulable"), ready]  # fmt: skip
    return json.dumps(offer, sort_keys=True)


@kopf.on.event("", "v1", "pods", labels={TASK_UID_LABEL: kopf.PRESENT})
async def pod_event(event: kopf.RawEvent, namespace: str | None, memo: kopf.Memo, **_: Any) -> None:
    """A task's Pod changed: remember it, and move its task along."""
    operator = _operator(memo)
    pod: dict[str, Any] = dict(event.get("object") or {})
    for owner in (pod.get("metadata") or {}).get("ownerReferences") or []:
        if owner.get("kind") == "WasiNNTask" and owner.get("controller"):
            uid = str(owner["uid"])
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
    operator = _operator(memo)
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
    held = [(uid, ns, task) for uid, (w, ns, task) in operator.assignments.items() if w == name]
    for uid, ns, task in held:
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
            _keep(operator, uid, task)
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
            operator.written[uid] = _version(written)
            _keep(operator, uid, written)
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
        operator.assignments[uid] = (str(held.get("pod")), meta["namespace"], meta["name"])
    else:
        operator.assignments.pop(uid, None)
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
    if _settled(task) or suspended:
        return Facts(now=now, pods=pods)
    if attempt_in_progress(task, pods):
        pod = current_pod(pods, int(status.get("attempts", 0)))
        waiting = pod is not None and unschedulable(pod)
        return Facts(now=now, pods=pods, nodes=await kube.nodes() if waiting else None)
    try:
        spec = WasiNNTaskSpec.model_validate(task.get("spec") or {})
    except ValidationError:
        return Facts(now=now, pods=pods)  # reconcile reports the invalid spec
    claim = spec.models.claim_name or settings.models_claim
    # Independent reads: in parallel, so a start decision waits for one round trip, not three.
    claim_exists, nodes, wasm_problem = await asyncio.gather(
        kube.claim_exists(meta["namespace"], claim),
        kube.nodes(),
        kube.wasm_problem(meta["namespace"], spec),
    )
    return Facts(
        now=now, pods=pods, claim_exists=claim_exists, nodes=nodes, wasm_problem=wasm_problem
    )


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
    if _settled(task) or (task.get("spec") or {}).get("suspend"):
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
        load=warm.load_of({uid: w for uid, (w, _, _) in operator.assignments.items()}),
    )


def _settled(task: dict[str, Any]) -> bool:
    """Finished, with no new run requested and no resume of a stopped run due."""
    status = task.get("status") or {}
    if not TaskPhase(status.get("phase") or TaskPhase.PENDING).finished:
        return False
    if requested_run(task) != described_run(task):
        return False
    return bool((task.get("spec") or {}).get("suspend")) or not stopped_run(status)


def _merge_patch(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """A JSON merge patch from `before` to `after` (removed keys become null)."""
    patch = {k: v for k, v in after.items() if before.get(k) != v}
    patch.update({k: None for k in before if k not in after})
    return patch
