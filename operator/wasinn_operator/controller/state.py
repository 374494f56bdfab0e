"""What the kopf handlers share: the `Operator` in kopf's memo, and the task state it keeps.

Settings are parsed once by `wasinn operator` (controller/run.py) and reach every handler in
kopf's memo, as an `Operator` with the API client, the per-task locks, the caches of tasks and
Pods, and the lanes that post Events.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import kopf

from ..api.lifecycle import TaskPhase
from ..api.status import described_run, requested_run
from . import metrics
from .events import EventPoster
from .kube import Kube
from .nodecache import NodeCache
from .podcache import PodCache
from .reconcile import stopped_run
from .settings import OperatorSettings

GONE_LIMIT = 10_000  # deleted task uids remembered


class Assignments:
    """The warm attempts held: task uid -> (worker Pod name, namespace, task name), and how
    many each worker holds, counted as they change: a start decision reads the load without a
    pass over every attempt (a burst of N tasks would cost N^2)."""

    def __init__(self) -> None:
        self._held: dict[str, tuple[str, str, str]] = {}
        self._load: dict[str, int] = {}

    def hold(self, uid: str, worker: str, namespace: str, name: str) -> None:
        """Task `uid`'s attempt is on `worker` now."""
        self.drop(uid)
        self._held[uid] = (worker, namespace, name)
        self._load[worker] = self._load.get(worker, 0) + 1

    def drop(self, uid: str) -> None:
        """Task `uid` holds no attempt on a worker (any more)."""
        held = self._held.pop(uid, None)
        if held is not None:
            left = self._load[held[0]] - 1
            if left:
                self._load[held[0]] = left
            else:
                del self._load[held[0]]

    def on(self, worker: str) -> list[tuple[str, str, str]]:
        """(uid, namespace, task name) of the attempts `worker` holds."""
        return [(uid, ns, task) for uid, (w, ns, task) in self._held.items() if w == worker]

    def load(self) -> dict[str, int]:
        """Attempts held per worker Pod name."""
        return dict(self._load)


@dataclass
class Operator:
    """What the handlers share: the settings, the API client (made at startup), the per-task
    locks, the caches of tasks and Pods, the resync loop and the lanes that post Events."""

    settings: OperatorSettings
    kube: Kube | None = None
    locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    resync: asyncio.Task[None] | None = None
    # A node change sets `wake` to resync at once; `nodes` holds what each node offers.
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    nodes: NodeCache = field(default_factory=NodeCache)
    nodes_listing: asyncio.Lock = field(default_factory=asyncio.Lock)  # the first listing
    # execution: warm: the worker Pods as last seen (name -> Pod) and the attempts they hold
    # (task uid -> (worker name, namespace, task name)).
    workers: dict[str, dict[str, Any]] = field(default_factory=dict)
    assignments: Assignments = field(default_factory=Assignments)
    # The resourceVersion of each task's last status write: its own echo needs no reconcile.
    written: dict[str, str] = field(default_factory=dict)
    # The task Pods as the Pod watch delivered them: an event's reconcile lists none.
    pods: PodCache = field(default_factory=PodCache)
    # The newest copy known of each unfinished task (its watch event, or the answer to the
    # operator's own status write): a Pod event's reconcile reads no task.
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    poster: EventPoster | None = None
    # The uids of tasks deleted lately (oldest first): their Pods' events need no reconcile.
    gone: dict[str, None] = field(default_factory=dict)
    # When each (namespace, models claim) was last read as existing (time.monotonic()).
    claims: dict[tuple[str, str], float] = field(default_factory=dict)

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


def operator_in(memo: kopf.Memo) -> Operator:
    """The `Operator` in kopf's memo."""
    operator: Operator = memo["operator"]
    return operator


def forget(operator: Operator, uid: str, deleted: bool = False) -> None:
    """Drop all the operator keeps for a task that is gone; with `deleted` (its DELETED event
    came), remember that it is. The resync's prune passes no `deleted`: a task created after
    its listing began is missing from it, and must not have its Pods' events ignored."""
    if deleted:
        operator.gone[uid] = None
        while len(operator.gone) > GONE_LIMIT:
            del operator.gone[next(iter(operator.gone))]
    metrics.forget(uid)
    operator.locks.pop(uid, None)
    operator.assignments.drop(uid)
    operator.written.pop(uid, None)
    operator.pods.forget(uid)
    operator.tasks.pop(uid, None)


def keep(operator: Operator, uid: str, task: dict[str, Any]) -> None:
    """Keep `task` as the newest copy known, unless it has settled (no Pod event of a settled
    task needs it, and a thousand finished tasks would otherwise stay in memory)."""
    if settled(task):
        operator.tasks.pop(uid, None)
    else:
        operator.tasks[uid] = task


def resource_version(task: dict[str, Any]) -> str:
    """The task's resourceVersion ("" if it has none)."""
    return str((task.get("metadata") or {}).get("resourceVersion") or "")


def newer(version: str, than: str) -> bool:
    """Whether resourceVersion `version` is later than `than`. They are etcd revisions,
    numbers, on every API server in use; anything else is taken as not newer, which costs a
    read and never a wrong decision."""
    return version.isdigit() and than.isdigit() and int(version) > int(than)


def settled(task: dict[str, Any]) -> bool:
    """Finished, with no new run requested and no resume of a stopped run due."""
    status = task.get("status") or {}
    if not TaskPhase(status.get("phase") or TaskPhase.PENDING).finished:
        return False
    if requested_run(task) != described_run(task):
        return False
    return bool((task.get("spec") or {}).get("suspend")) or not stopped_run(status)
