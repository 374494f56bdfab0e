"""The task Pods as the operator's Pod watch last delivered them, by task uid.

A reconcile triggered by a Pod or task event reads its task's Pods from here instead of listing
them from the API server: at 20 tasks/s that list was a round trip on every event of every task.
The cache is only trusted when it holds the Pod the task's status names (`status.podName`): a
Pod created by a reconcile whose watch event has not arrived yet, or one gone while the watch
was down, makes `pods` answer None, and the caller lists (and refreshes the cache). A Pod
deleted or changed while no watch delivered it (the watch reconnecting, or a Pod made before
the operator's Pod watch selected it by label) is swept out by the periodic resync, which
lists the names and resourceVersions of all task Pods once per round (`sweep`).

Only the fields the reconcile reads are kept (metadata, node, status), so a thousand Pods in
flight cost little memory.
"""

from __future__ import annotations

import time
from typing import Any

from .builders import TASK_UID_LABEL

_METADATA = (
    "name",
    "namespace",
    "uid",
    "labels",
    "ownerReferences",
    "creationTimestamp",
    "deletionTimestamp",
    "resourceVersion",
)


def slim(pod: dict[str, Any]) -> dict[str, Any]:
    """The parts of a Pod a reconcile reads: metadata, `spec.nodeName` and the status."""
    meta = pod.get("metadata") or {}
    node = (pod.get("spec") or {}).get("nodeName")
    return {
        "metadata": {k: meta[k] for k in _METADATA if meta.get(k) is not None},
        "spec": {"nodeName": node} if node else {},
        "status": dict(pod.get("status") or {}),
    }


def task_uid(pod: dict[str, Any]) -> str | None:
    """The uid of the task a Pod belongs to (its task-uid label), if it carries one."""
    uid = ((pod.get("metadata") or {}).get("labels") or {}).get(TASK_UID_LABEL)
    return str(uid) if uid else None


def _version(pod: dict[str, Any]) -> str:
    return str((pod.get("metadata") or {}).get("resourceVersion") or "")


class PodCache:
    """Task uid -> Pod name -> the Pod as last seen (and when, on the monotonic clock)."""

    def __init__(self) -> None:
        self._tasks: dict[str, dict[str, tuple[float, dict[str, Any]]]] = {}

    def put(self, pod: dict[str, Any]) -> None:
        """A Pod as a watch event delivered it (added, changed, or in a listing)."""
        uid = task_uid(pod)
        name = (pod.get("metadata") or {}).get("name")
        if uid is None or not name:
            return
        self._tasks.setdefault(uid, {})[str(name)] = (time.monotonic(), slim(pod))

    def remove(self, pod: dict[str, Any]) -> None:
        """A Pod the watch says is deleted."""
        uid = task_uid(pod)
        if uid is None or uid not in self._tasks:
            return
        pods = self._tasks[uid]
        pods.pop(str((pod.get("metadata") or {}).get("name")), None)
        if not pods:
            del self._tasks[uid]

    def refresh(self, uid: str, pods: list[dict[str, Any]]) -> None:
        """Replace a task's Pods with a fresh listing of them."""
        now = time.monotonic()
        if pods:
            self._tasks[uid] = {str(p["metadata"]["name"]): (now, slim(p)) for p in pods}
        else:
            self._tasks.pop(uid, None)

    def forget(self, uid: str) -> None:
        """The task is gone: drop its Pods."""
        self._tasks.pop(uid, None)

    def pods(self, uid: str, expected: str | None) -> list[dict[str, Any]] | None:
        """The task's Pods, or None when the cache cannot be trusted for it: the Pod its
        status names (`expected`) is not here."""
        pods = self._tasks.get(uid) or {}
        if expected and expected not in pods:
            return None
        return [dict(pod) for _, pod in pods.values()]

    def sweep(self, listed: dict[tuple[str, str], str], since: float) -> int:
        """Drop the Pods seen before `since` that a listing made after it (task uid, Pod
        name -> resourceVersion) lacks or has at another version: deleted or changed while
        no watch delivered it; the task's next reconcile lists its Pods afresh. Pods seen
        later are kept (created after the listing). How many were dropped."""
        dropped = 0
        for uid in list(self._tasks):
            pods = self._tasks[uid]
            stale = [
                name
                for name, (at, pod) in pods.items()
                if at < since and listed.get((uid, name)) != _version(pod)
            ]
            for name in stale:
                del pods[name]
                dropped += 1
            if not pods:
                del self._tasks[uid]
        return dropped

    def uids(self) -> set[str]:
        """The tasks with Pods here."""
        return set(self._tasks)

    def __len__(self) -> int:
        return sum(len(pods) for pods in self._tasks.values())
