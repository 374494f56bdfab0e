"""kopf handlers: gather facts, call the pure `reconcile`, carry out its plan.

Every trigger (task created, resumed or changed, a Pod event, the periodic resync) runs the same
level-triggered reconcile under a per-task lock, so events arriving together cannot create two
Pods. Settings come from `WASINN_*` environment variables (set by `wasinn operator` or a chart).
"""

from __future__ import annotations

import asyncio
import logging
import os
from datetime import UTC, datetime
from typing import Any, cast

import kopf
from pydantic import ValidationError

from ..api import GROUP, PLURAL, VERSION, WasiNNTaskSpec
from . import metrics
from .builders import TASK_UID_LABEL
from .kube import Kube
from .reconcile import Facts, reconcile
from .settings import OperatorSettings

RESYNC_SECONDS = float(os.environ.get("WASINN_RESYNC_SECONDS", "10"))
log = logging.getLogger("wasinn.operator")
_locks: dict[str, asyncio.Lock] = {}
_state: dict[str, Any] = {}  # the Kube client and settings, made on first use


def _kube() -> Kube:
    kube: Kube | None = _state.get("kube")
    if kube is None:
        kube = _state["kube"] = Kube()
    return kube


def _settings() -> OperatorSettings:
    settings: OperatorSettings | None = _state.get("settings")
    if settings is None:
        settings = _state["settings"] = OperatorSettings.from_env()
    return settings


@kopf.on.startup()
async def operator_startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    """Keep kopf's bookkeeping in our own annotations and start the metrics endpoint."""
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="wasinn.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="wasinn.dev", key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING  # our own Events say what happened
    settings.watching.server_timeout = 300
    metrics.serve(int(os.environ.get("WASINN_METRICS_PORT", "0")))
    _kube()
    log.info("wasinn operator settings: %s", _settings())


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
async def wasinntask_changed(name: str, namespace: str | None, uid: str, **_: Any) -> None:
    """A task appeared, came back after an operator restart, or its spec changed."""
    await reconcile_task(namespace or "default", name, uid)


@kopf.timer(GROUP, VERSION, PLURAL, interval=RESYNC_SECONDS, initial_delay=RESYNC_SECONDS)
async def wasinntask_resync(name: str, namespace: str | None, uid: str, **_: Any) -> None:
    """Periodic re-check: labelled nodes, created claims, backoff and TTL deadlines."""
    await reconcile_task(namespace or "default", name, uid)


@kopf.on.event("", "v1", "pods", labels={TASK_UID_LABEL: kopf.PRESENT})
async def pod_event(body: kopf.Body, namespace: str | None, **_: Any) -> None:
    """A task's Pod changed: move its task along."""
    for owner in body.metadata.get("ownerReferences") or []:
        if owner.get("kind") == "WasiNNTask" and owner.get("controller"):
            await reconcile_task(namespace or "default", owner["name"], owner["uid"])


@kopf.on.delete(GROUP, VERSION, PLURAL)
async def wasinntask_delete(namespace: str | None, uid: str, **_: Any) -> None:
    """Delete the task's Pods and ConfigMap (for clusters without garbage collection)."""
    if namespace:
        await _kube().delete_children(namespace, uid)
    metrics.forget(uid)
    _locks.pop(uid, None)


async def reconcile_task(namespace: str, name: str, uid: str) -> None:
    """Reconcile one task from fresh state and apply the plan."""
    lock = _locks.setdefault(uid, asyncio.Lock())
    async with lock:
        try:
            await _reconcile(namespace, name, uid)
        except Exception:
            metrics.RECONCILE_ERRORS.inc()
            raise


async def _reconcile(namespace: str, name: str, uid: str) -> None:
    kube, settings = _kube(), _settings()
    task = await kube.task(namespace, name)
    if task is None or task["metadata"].get("deletionTimestamp"):
        return
    task["metadata"].setdefault("uid", uid)
    task["metadata"].setdefault("namespace", namespace)
    facts = await _facts(kube, settings, task)
    plan = reconcile(task, facts, settings)
    if plan.create_configmap is not None:
        await kube.create(plan.create_configmap)
    if plan.create_pod is not None:
        await kube.create(plan.create_pod)
    for pod in plan.delete_pods:
        await kube.delete_pod(namespace, pod)
    before = task.get("status") or {}
    if plan.status != before:
        await kube.patch_status(namespace, name, _merge_patch(before, plan.status))
    body = kopf.Body(cast(kopf.RawBody, task))
    for kind, reason, message in plan.events:
        kopf.event(body, type=kind, reason=reason, message=message)
    metrics.observe(uid, before, plan.status, facts.pods)
    if plan.delete_task:
        kopf.event(body, type="Normal", reason="Expired", message="ttlSecondsAfterFinished passed")
        await kube.delete_task(namespace, name)


async def _facts(kube: Kube, settings: OperatorSettings, task: dict[str, Any]) -> Facts:
    meta = task["metadata"]
    now = datetime.now(UTC)
    pods = await kube.pods(meta["namespace"], meta["uid"])
    phase = (task.get("status") or {}).get("phase")
    if phase in ("Completed", "Failed"):
        return Facts(now=now, pods=pods)
    try:
        spec = WasiNNTaskSpec.model_validate(task.get("spec") or {})
    except ValidationError:
        return Facts(now=now, pods=pods)  # reconcile reports the invalid spec
    claim = spec.models.claim_name or settings.models_claim
    return Facts(
        now=now,
        pods=pods,
        claim_exists=await kube.claim_exists(meta["namespace"], claim),
        ready_nodes=await kube.ready_nodes(
            {**spec.node_selector, settings.label[0]: settings.label[1]}
        ),
        wasm_problem=await kube.wasm_problem(meta["namespace"], spec),
    )


def _merge_patch(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """A JSON merge patch from `before` to `after` (removed keys become null)."""
    patch = {k: v for k, v in after.items() if before.get(k) != v}
    patch.update({k: None for k in before if k not in after})
    return patch
