"""Kubernetes Events on tasks, posted beside the reconciles rather than inside them.

Events are best effort: a task's status conditions are its record, and a lost Event fails
nothing. A reconcile that awaited its Events held the task's next watch event behind them (a
warm task's hand-off paid ~9 ms per phase change on the test control plane). So a reconcile
queues its Events here, built at once (their timestamps are the transition's), and lanes of
their own post them; one task's Events share a lane, so they land in the order they happened.
A full lane drops the Event, counted in `wasinn_events_dropped_total`, rather than hold
reconciles back or grow without bound while the API server is slow.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import zlib
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from ..api import GROUP, VERSION
from ..api.times import format_time
from . import metrics

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
    """Posts queued Events with `post` from `lanes` tasks of its own (started on first use)."""

    def __init__(self, post: Post, lanes: int = LANES, depth: int = DEPTH) -> None:
        self._post = post
        self._queues: list[asyncio.Queue[dict[str, Any]]] = [
            asyncio.Queue(depth) for _ in range(lanes)
        ]
        self._lanes: list[asyncio.Task[None]] = []
        self.dropped = 0

    def post(self, event: dict[str, Any]) -> None:
        """Queue `event` (never waits); a full lane drops it."""
        if not self._lanes:
            self._lanes = [asyncio.create_task(self._send_all(q)) for q in self._queues]
        uid = str(event["involvedObject"].get("uid") or "")
        queue = self._queues[zlib.crc32(uid.encode()) % len(self._queues)]
        try:
            queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1
            metrics.EVENTS_DROPPED.inc()
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning(
                    "%d Events dropped so far: the API server takes them slower than tasks "
                    "change (status conditions still record every transition)",
                    self.dropped,
                )

    async def _send_all(self, queue: asyncio.Queue[dict[str, Any]]) -> None:
        while True:
            event = await queue.get()
            try:
                await self._post(event)
            except Exception as exc:  # one Event lost must not stop the lane
                log.warning("cannot post event %s: %s", event.get("reason"), exc)
            finally:
                queue.task_done()

    async def close(self, timeout: float) -> None:
        """Post what is queued, for at most `timeout` seconds, then stop the lanes."""
        if self._lanes:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*(q.join() for q in self._queues)), timeout)
        for lane in self._lanes:
            lane.cancel()
        await asyncio.gather(*self._lanes, return_exceptions=True)
        self._lanes = []
