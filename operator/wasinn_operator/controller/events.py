"""Kubernetes Events on tasks, posted beside the reconciles rather than inside them.

Events are best effort: a task's status conditions are its record, and a lost Event fails
nothing. A reconcile that awaited its Events held the task's next watch event behind them (a
warm task's hand-off paid ~9 ms per phase change on the test control plane). So a reconcile
queues its Events here, built at once (their timestamps are the transition's), and lanes of
their own post them (controller/lanes.py); one task's Events land in the order they happened.
A full lane drops the Event, counted in `wasinn_events_dropped_total`, rather than hold
reconciles back or grow without bound while the API server is slow.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from ..api import GROUP, VERSION
from ..api.times import format_time
from . import metrics
from .lanes import Lanes

log = logging.getLogger("wasinn.operator")
LANES = 4
DEPTH = 2000  # Events waiting per lane
MESSAGE_LIMIT = 1024

Post = Callable[[dict[str, Any]], Awaitable[None]]


def build_event(
    task: dict[str, Any], kind: str, reason: str, message: str, now: datetime
) -> dict[str, Any]:
    """A core/v1 Event on `task` (kind Normal or Warning), stamped `now`."""
    meta = task["metadata"]
    stamp = format_time(now)
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name'][:200]}.", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "WasiNNTask",
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta["uid"],
        },
        "type": kind,
        "reason": reason,
        "message": message[:MESSAGE_LIMIT],
        "source": {"component": "wasinn-operator"},
        "reportingComponent": "wasinn.dev/operator",
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


class EventPoster:
    """Posts queued Events with `post`, from lanes of their own (controller/lanes.py)."""

    def __init__(self, post: Post, lanes: int = LANES, depth: int = DEPTH) -> None:
        self._lanes = Lanes(post, "post an Event", lanes, depth)
        self.dropped = 0

    def post(self, event: dict[str, Any]) -> None:
        """Queue `event` (never waits); a full lane drops it."""
        uid = str(event["involvedObject"].get("uid") or "")
        if self._lanes.put(uid, event):
            return
        self.dropped += 1
        metrics.EVENTS_DROPPED.inc()
        if self.dropped == 1 or self.dropped % 1000 == 0:
            log.warning(
                "%d Events dropped so far: the API server takes them slower than tasks "
                "change (status conditions still record every transition)",
                self.dropped,
            )

    async def close(self, timeout: float) -> None:
        """Post what is queued, for at most `timeout` seconds, then stop."""
        await self._lanes.close(timeout)
