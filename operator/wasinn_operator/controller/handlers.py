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
from pathlib import Path
from typing import Any

import kopf
from pydantic import ValidationError

from ..api import GROUP, PLURAL, VERSION, WasiNNTaskSpec
from . import metrics
from .builders import TASK_UID_LABEL
from .kube import Kube, StaleTaskError
from .pods import attempt_in_progress
from .reconcile import Facts, reconcile
from .settings import OperatorSettings

log = logging.getLogger("wasinn.operator")
_locks: dict[str, asyncio.Lock] = {}
STALE_RETRIES = 5
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


SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


@kopf.on.login()
def operator_login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In a Pod, the ServiceAccount at the API server's service address; else the kubeconfig
    that $KUBECONFIG names now. (kopf's own in-cluster login assumes cluster DNS for
    kubernetes.default.svc, which not every cluster runs.)"""
    host = os.environ.get("KUBERNETES_SERVICE_HOST")
    if host and (SERVICE_ACCOUNT / "token").is_file():
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        server = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
        namespace = SERVICE_ACCOUNT / "namespace"
        return kopf.ConnectionInfo(
            server=server,
            ca_path=str(SERVICE_ACCOUNT / "ca.crt"),
            token=(SERVICE_ACCOUNT / "token").read_text().strip(),
            default_namespace=namespace.read_text().strip() if namespace.is_file() else None,
        )
    return kopf.login_with_kubeconfig(**kwargs)


@kopf.on.startup()
async def operator_startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    """Tune kopf and start the metrics endpoint."""
    settings.posting.level = logging.WARNING  # our own Events say what happened
    settings.watching.server_timeout = 300
    metrics.serve(int(os.environ.get("WASINN_METRICS_PORT", "0")))
    _state.clear()  # a fresh client and settings for every run (tests run several in a process)
    _locks.clear()
    _kube()
    _state["resync"] = asyncio.create_task(resync_loop())
    log.info("wasinn operator settings: %s", _settings())


@kopf.on.event(GROUP, VERSION, PLURAL)
async def wasinntask_event(
    event: kopf.RawEvent, name: str, namespace: str | None, uid: str, **_: Any
) -> None:
    """Any change of a task (including the initial listing after a restart) reconciles it.

    Level-triggered on purpose: no diff-base annotation (a copy of a spec with an inline module
    would exceed the annotation size limit) and no finalizer (a stopped operator never blocks a
    deletion; the garbage collector removes the children through their owner references).
    """
    if event.get("type") == "DELETED":
        await _kube().delete_children(namespace or "default", uid)
        metrics.forget(uid)
        _locks.pop(uid, None)
        return
    await reconcile_task(namespace or "default", name, uid)


async def resync_loop() -> None:
    """Re-check every unfinished (or TTL-bound) task periodically: labelled nodes, created
    claims, backoff and TTL deadlines. One loop for all tasks rather than a kopf timer each,
    because kopf guards per-object timers with a finalizer, and a finalizer would block
    deletions whenever the operator is down or uninstalled."""
    settings = _settings()
    while True:
        await asyncio.sleep(settings.resync_seconds)
        try:
            for task in await _kube().list_tasks(settings.namespaces):
                meta, status = task["metadata"], task.get("status") or {}
                finished = status.get("phase") in ("Completed", "Failed")
                if finished and (task.get("spec") or {}).get("ttlSecondsAfterFinished") is None:
                    continue
                await reconcile_task(meta["namespace"], meta["name"], meta["uid"])
        except Exception:  # keep resyncing whatever one round hit
            metrics.RECONCILE_ERRORS.inc()
            log.exception("resync failed")


@kopf.on.cleanup()
async def operator_cleanup(**_: Any) -> None:
    """Stop the resync loop."""
    loop_task = _state.pop("resync", None)
    if loop_task is not None:
        loop_task.cancel()


@kopf.on.event("", "v1", "pods", labels={TASK_UID_LABEL: kopf.PRESENT})
async def pod_event(body: kopf.Body, namespace: str | None, **_: Any) -> None:
    """A task's Pod changed: move its task along."""
    for owner in body.metadata.get("ownerReferences") or []:
        if owner.get("kind") == "WasiNNTask" and owner.get("controller"):
            await reconcile_task(namespace or "default", owner["name"], owner["uid"])


async def reconcile_task(namespace: str, name: str, uid: str) -> None:
    """Reconcile one task from fresh state and apply the plan; when the task changed between
    the read and the status write (the shim starts and stops runs), decide again."""
    lock = _locks.setdefault(uid, asyncio.Lock())
    async with lock:
        try:
            for attempt in range(1, STALE_RETRIES + 1):
                try:
                    await _reconcile(namespace, name, uid)
                    return
                except StaleTaskError:
                    if attempt == STALE_RETRIES:
                        raise
                    log.info("%s/%s changed during a reconcile; again", namespace, name)
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
        version = task["metadata"].get("resourceVersion")
        await kube.patch_status(namespace, name, _merge_patch(before, plan.status), version)
    for kind, reason, message in plan.events:
        await kube.post_event(task, kind, reason, message)
    metrics.observe(uid, before, plan.status, facts.pods)
    if plan.delete_task:
        await kube.post_event(task, "Normal", "Expired", "ttlSecondsAfterFinished passed")
        await kube.delete_task(namespace, name)


async def _facts(kube: Kube, settings: OperatorSettings, task: dict[str, Any]) -> Facts:
    meta = task["metadata"]
    now = datetime.now(UTC)
    pods = await kube.pods(meta["namespace"], meta["uid"])
    phase = (task.get("status") or {}).get("phase")
    # Only a start decision reads the other facts; a suspended task (the shim creates every
    # task suspended) makes none.
    suspended = bool((task.get("spec") or {}).get("suspend"))
    if phase in ("Completed", "Failed") or suspended or attempt_in_progress(task, pods):
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
