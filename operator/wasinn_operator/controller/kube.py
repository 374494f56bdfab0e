"""The few Kubernetes calls the controller makes, as plain-dict async wrappers.

The client (`kubeclient`, shared with the shim) is synchronous; calls run in worker threads so
kopf's event loop never blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Any

from ..api import GROUP, PLURAL, VERSION, WasiNNTaskSpec
from ..kubeclient import ConflictError, KubeClient, NotFoundError
from .builders import TASK_UID_LABEL

log = logging.getLogger("wasinn.operator")
# A list answered as PartialObjectMetadataList: names, labels and owners without specs.
METADATA_ONLY = {"Accept": "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"}
# Items per page of the resync's listings. A task can carry its module inline (up to ~1 MiB):
# fifty of them are the most a page holds in memory; metadata-only Pods are ~1 KiB each.
TASK_PAGE = 50
POD_PAGE = 500


class StaleTaskError(Exception):
    """A write's resourceVersion precondition failed: decide again on a fresh read."""


class Kube:
    """Reads and writes of tasks, Pods and the facts a reconcile needs."""

    def __init__(self) -> None:
        self.client = KubeClient()
        self.core = self.client.core
        self.custom = self.client.custom

    async def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(self.client.call, fn, *args, **kwargs)

    async def task(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The task as stored now, or None when it is gone."""
        try:
            task: dict[str, Any] = await self._call(
                self.custom.get_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, name
            )
        except NotFoundError:
            return None
        return task

    async def task_pages(
        self, namespaces: tuple[str, ...], limit: int = TASK_PAGE
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """Every task in the watched namespaces (all namespaces when none are named), a page
        of `limit` at a time: one listing of every task held them all in memory at once
        (tens of megabytes for a thousand tasks, far more with inline modules)."""
        listings = _scoped(
            namespaces,
            partial(self.custom.list_cluster_custom_object, GROUP, VERSION, PLURAL),
            lambda ns: partial(
                self.custom.list_namespaced_custom_object, GROUP, VERSION, ns, PLURAL
            ),
        )
        for listing in listings:
            async for page in self._pages(listing, limit=limit):
                yield page

    async def pods(self, namespace: str, uid: str) -> list[dict[str, Any]]:
        """The task's Pods (every attempt), found by the task-uid label."""
        found = await self._call(
            self.core.list_namespaced_pod, namespace, label_selector=f"{TASK_UID_LABEL}={uid}"
        )
        return list(found.get("items") or [])

    async def task_pod_versions(
        self, namespaces: tuple[str, ...], limit: int = POD_PAGE
    ) -> dict[tuple[str, str], str]:
        """(task uid, Pod name) -> resourceVersion of every task Pod in the watched namespaces
        (all when none are named), read as metadata only and in pages: a full listing of a
        thousand Pods is megabytes."""
        options = {"label_selector": TASK_UID_LABEL, "_headers": METADATA_ONLY}
        listings = _scoped(
            namespaces,
            self.core.list_pod_for_all_namespaces,
            lambda ns: partial(self.core.list_namespaced_pod, ns),
        )
        versions: dict[tuple[str, str], str] = {}
        for listing in listings:
            async for page in self._pages(listing, limit=limit, **options):
                for item in page:
                    meta = item.get("metadata") or {}
                    uid = (meta.get("labels") or {}).get(TASK_UID_LABEL)
                    if uid and meta.get("name"):
                        versions[(str(uid), str(meta["name"]))] = str(
                            meta.get("resourceVersion") or ""
                        )
        return versions

    async def _pages(
        self, listing: Callable[..., Any], limit: int, **kwargs: Any
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """The items of a list call, a page at a time (the API server's `limit` and `continue`:
        every page is of the same consistent snapshot). A snapshot older than the API server's
        compaction window fails with a 410 (`UnavailableError`): the caller starts again."""
        token: str | None = None
        while True:
            found = await self._call(listing, limit=limit, _continue=token, **kwargs)
            yield list(found.get("items") or [])
            token = (found.get("metadata") or {}).get("continue") or None
            if token is None:
                return

    async def claim_exists(self, namespace: str, name: str) -> bool:
        """Whether the models claim exists in the namespace."""
        return await self._exists(
            self.core.read_namespaced_persistent_volume_claim, name, namespace
        )

    async def nodes(self) -> list[dict[str, Any]]:
        """Every Node (labels, allocatable, taints, conditions): which can take a task, and
        what none has when none can, are decided from them (controller/nodes.py)."""
        found = await self._call(self.core.list_node)
        return list(found.get("items") or [])

    async def wasm_problem(self, namespace: str, spec: WasiNNTaskSpec) -> str | None:
        """Why a configMapKeyRef module cannot be mounted, if it cannot."""
        ref = None if spec.wasm is None else spec.wasm.config_map_key_ref
        if ref is None:
            return None
        try:
            configmap = await self._call(self.core.read_namespaced_config_map, ref.name, namespace)
        except NotFoundError:
            return f"ConfigMap {ref.name!r} (wasm.configMapKeyRef) not found"
        keys = {**(configmap.get("data") or {}), **(configmap.get("binaryData") or {})}
        if ref.key not in keys:
            return f"ConfigMap {ref.name!r} has no key {ref.key!r}"
        return None

    async def create(self, manifest: dict[str, Any]) -> None:
        """Create a Pod or ConfigMap; one that already exists (a retried create) is fine."""
        namespace = manifest["metadata"]["namespace"]
        create = (
            self.core.create_namespaced_pod
            if manifest["kind"] == "Pod"
            else self.core.create_namespaced_config_map
        )
        with contextlib.suppress(ConflictError):
            await self._call(create, namespace, manifest)

    async def delete_pod(self, namespace: str, name: str) -> None:
        """Delete a Pod (gone already is fine)."""
        await self._ignore_404(self.core.delete_namespaced_pod, name, namespace)

    async def patch_status(
        self, namespace: str, name: str, status: dict[str, Any], resource_version: str | None
    ) -> dict[str, Any] | None:
        """Merge-patch the status subresource of the task as read at `resource_version`;
        `StaleTaskError` when it changed since (the shim records its intents on the task). The
        task as written (None when it is gone)."""
        body: dict[str, Any] = {"status": status}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        try:
            written: dict[str, Any] = await self._call(
                self.custom.patch_namespaced_custom_object_status,
                GROUP, VERSION, namespace, PLURAL, name, body,
            )  # fmt: skip
        except NotFoundError:
            return None
        except ConflictError:
            raise StaleTaskError(f"{namespace}/{name} changed since it was read") from None
        return written

    async def create_event(self, event: dict[str, Any]) -> None:
        """Create a core/v1 Event (controller/events.py builds and queues them)."""
        await self._call(self.core.create_namespaced_event, event["metadata"]["namespace"], event)

    async def delete_task(self, namespace: str, name: str) -> None:
        """Delete the task (its TTL ran out)."""
        await self._ignore_404(
            self.custom.delete_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, name
        )

    async def _exists(self, fn: Any, *args: Any) -> bool:
        try:
            await self._call(fn, *args)
        except NotFoundError:
            return False
        return True

    async def _ignore_404(self, fn: Any, *args: Any) -> None:
        with contextlib.suppress(NotFoundError):
            await self._call(fn, *args)


def _scoped(
    namespaces: tuple[str, ...],
    everywhere: Callable[..., Any],
    within: Callable[[str], Callable[..., Any]],
) -> list[Callable[..., Any]]:
    """The list calls that cover the watched namespaces: one across all namespaces when none
    are named, else one per namespace."""
    return [within(ns) for ns in namespaces] if namespaces else [everywhere]
