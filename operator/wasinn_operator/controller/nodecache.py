"""The Nodes as the node watch last delivered them, for start decisions.

A start decision (and a Pod the scheduler cannot place) reads every Node, to say by name what
none of them has (controller/nodes.py). Listing them for each decision was a round trip and a
decode of every Node per task: at 20 tasks/s on a cluster of a hundred nodes, megabytes a
second. The node watch keeps this cache; the resync's listing once per round refreshes it (a
Node deleted while the watch was reconnecting sends no DELETED event), and until that first
listing the cache answers None and the caller lists.

Only what a decision reads is kept: name, labels, taints, cordon, allocatable resources and
the Ready condition's status (not its heartbeats, so a kept Node changes only when what it
offers does, which is when waiting tasks are worth another look).
"""

from __future__ import annotations

import time
from typing import Any


def slim_node(node: dict[str, Any]) -> dict[str, Any]:
    """What a start decision reads of a Node."""
    meta = node.get("metadata") or {}
    spec = node.get("spec") or {}
    status = node.get("status") or {}
    ready = [
        {"type": "Ready", "status": c.get("status")}
        for c in status.get("conditions") or []
        if c.get("type") == "Ready"
    ]
    return {
        "metadata": {"name": meta.get("name"), "labels": dict(meta.get("labels") or {})},
        "spec": {
            "taints": list(spec.get("taints") or []),
            "unschedulable": bool(spec.get("unschedulable")),
        },
        "status": {"allocatable": dict(status.get("allocatable") or {}), "conditions": ready},
    }


class NodeCache:
    """Node name -> what it offers (`slim_node`), and when the watch or a listing said so."""

    def __init__(self) -> None:
        self._nodes: dict[str, tuple[float, dict[str, Any]]] = {}
        self._listed = False

    def put(self, node: dict[str, Any]) -> bool:
        """A Node as a watch event delivered it; whether what it offers changed."""
        slim = slim_node(node)
        name = slim["metadata"]["name"]
        if not name:
            return False
        before = self._nodes.get(name)
        self._nodes[name] = (time.monotonic(), slim)
        return before is None or before[1] != slim

    def remove(self, name: str) -> bool:
        """A Node the watch says is deleted; whether it was here."""
        return self._nodes.pop(name, None) is not None

    def refresh(self, listed: list[dict[str, Any]], since: float) -> None:
        """Take a listing begun at `since` (monotonic): its Nodes replace those last seen
        before it, and Nodes seen before it that it lacks are gone. What the watch delivered
        after `since` is as new as the listing or newer, and stays."""
        names = set()
        for node in listed:
            slim = slim_node(node)
            name = slim["metadata"]["name"]
            names.add(name)
            kept = self._nodes.get(name)
            if kept is None or kept[0] < since:
                self._nodes[name] = (since, slim)
        for name in [n for n, (at, _) in self._nodes.items() if at < since and n not in names]:
            del self._nodes[name]
        self._listed = True

    def nodes(self) -> list[dict[str, Any]] | None:
        """Every Node (copies), or None before the first listing made the cache complete."""
        if not self._listed:
            return None
        return [dict(node) for _, node in self._nodes.values()]

    def __len__(self) -> int:
        return len(self._nodes)
