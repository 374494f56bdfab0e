"""The kubernetes backend: each Propeller task is a WasiNNTask; the objects are the truth.

The shim keeps no task state: a task is the object named after its Propeller id, labelled
`wasinn.dev/propeller-id` (the mapping is in `kubemap`). The operator is the only writer of
`status`; the shim records intent and decides it with `api.lifecycle` on the task as it reads:
a task is created suspended (Propeller's Pending), `start` is a run request (`wasinn.dev/run`
bumped, `spec.suspend: false`), `stop` suspends the task (the operator deletes the Pod and ends
the run Failed, `task was stopped before completion`), and a start that could not happen is
recorded as a run request with `wasinn.dev/start-error`, which the operator turns into a Failed
run. Modules live in the shim's artifact store and reach Pods by URL, with their digest checked.
In manager mode a run may go to external proplets instead (`dispatch`, `report`): the shim writes
the dispatch with the run request and the proplet's result as a report, and the operator records
both in status (api/external.py).

The operator writes the same objects, so every read-decide-write here carries the
resourceVersion it decided on and is decided again on a fresh read when the API server refuses
it (409): no write of either side is lost, and a stop that loses the race to a finishing run
says so (409 to the REST client) instead of ending it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

from .. import kubeclient
from ..api import GROUP, PLURAL, PROPELLER_ID_LABEL, VERSION
from ..api.lifecycle import Event, Refusal, TaskPhase, transition
from ..api.status import requested_run
from ..api.times import maybe_time
from ..kubeclient import STALE_RETRIES, KubeClient
from . import kubeexternal, taskfields
from .announce import WASM_RUNTIME, package_version
from .errors import BadRequestError, ConflictError, NotFoundError, ShimError, UnavailableError
from .kubemap import (
    CREATED,
    PROPLET,
    PUBLISHED,
    RUN,
    SKIPPED,
    START_ERROR,
    UPDATED,
    WASM_KEYS,
    iso,
    task_annotations,
    task_spec,
    to_record,
    view_phase,
)
from .store import DispatchedRun, EndListeners, Outcome, PropletRecord, TaskRecord, now


class _StaleError(Exception):
    """A write's resourceVersion precondition failed (409): the object changed since read."""


class KubernetesStore:
    """`TaskStore` on WasiNNTask objects in one namespace."""

    def __init__(
        self, namespace: str, artifacts_url: str, openvino_label: str = "wasinn.dev/openvino=true"
    ) -> None:
        self._client = KubeClient()
        self._custom = self._client.custom
        self._core = self._client.core
        self._namespace = namespace
        self._artifacts_url = artifacts_url.rstrip("/")
        self._label = openvino_label
        self._ends = EndListeners()

    # -- reads -------------------------------------------------------------------------------

    def get(self, task_id: str) -> TaskRecord:
        """The task."""
        return to_record(self._object(task_id))

    def page(
        self, offset: int, limit: int, metadata: dict[str, Any] | None = None
    ) -> tuple[list[TaskRecord], int]:
        """A page, newest first, of the tasks whose metadata matches."""
        records = [r for r in reversed(self._records()) if taskfields.matches(r.extra, metadata)]
        return records[offset : offset + limit], len(records)

    def counts(self) -> dict[TaskPhase, int]:
        """Tasks per phase."""
        counts: dict[TaskPhase, int] = {}
        for record in self._records():
            counts[record.phase] = counts.get(record.phase, 0) + 1
        return counts

    def digests(self) -> set[str]:
        """Every module digest a task refers to."""
        return {r.digest for r in self._records() if r.digest}

    def unpublished(self) -> list[TaskRecord]:
        """Finished runs whose result the broker has not acknowledged."""
        return [r for r in self._records() if r.unpublished]

    def proplets(self) -> list[PropletRecord]:
        """The OpenVINO nodes; alive = Ready."""
        nodes = self._call(self._core.list_node, label_selector=self._label)
        running: dict[str, int] = {}
        for obj in self._objects():
            status = obj.get("status") or {}
            if TaskPhase(status.get("phase") or "Pending").active and status.get("nodeName"):
                running[status["nodeName"]] = running.get(status["nodeName"], 0) + 1
        found = []
        for node in nodes.get("items") or []:
            name = node["metadata"]["name"]
            ready: dict[str, Any] = next(
                (
                    c
                    for c in (node.get("status") or {}).get("conditions") or []
                    if c.get("type") == "Ready"
                ),
                {},
            )
            beat = maybe_time(ready.get("lastHeartbeatTime"))
            found.append(
                PropletRecord(
                    id=name,
                    name=name,
                    task_count=running.get(name, 0),
                    alive=ready.get("status") == "True",
                    alive_history=[beat] if beat else [],
                    metadata=_node_metadata(name, (node.get("status") or {}).get("nodeInfo") or {}),
                )
            )
        return found

    def checks(self) -> dict[str, str | None]:
        """Whether the API server answers (a list of one task)."""
        try:
            self._call(
                self._custom.list_namespaced_custom_object,
                GROUP,
                VERSION,
                self._namespace,
                PLURAL,
                limit=1,
            )
        except ShimError as exc:
            return {"kubernetes": str(exc)}
        return {"kubernetes": None}

    # -- writes ------------------------------------------------------------------------------

    def add(self, record: TaskRecord) -> None:
        """Create the task, suspended."""
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "WasiNNTask",
            "metadata": {
                "name": record.id,
                "labels": {PROPELLER_ID_LABEL: record.id},
                "annotations": {
                    # None removes an annotation in a patch; a create would store "" instead.
                    **{k: v for k, v in task_annotations(record).items() if v is not None},
                    CREATED: iso(record.created_at),
                    RUN: str(record.run),
                    PUBLISHED: str(record.run),
                },
            },
            "spec": {**task_spec(record, self._artifacts_url), "suspend": True},
        }
        try:
            self._call(
                self._custom.create_namespaced_custom_object,
                GROUP,
                VERSION,
                self._namespace,
                PLURAL,
                body,
            )
        except ConflictError:
            raise ConflictError(f"task {record.id} exists already") from None

    def save(self, record: TaskRecord) -> None:
        """Write the spec fields and annotations of a task."""

        def change(obj: dict[str, Any]) -> dict[str, Any]:
            # Also while it runs (as Propeller allows): the operator made the running attempt's
            # Pod from the spec it had then, so only later attempts and runs see the change.
            _decide(obj, Event.UPDATE)
            spec = task_spec(record, self._artifacts_url)
            # A merge patch merges objects: keys left out would stay, so null them (an `image`
            # and a new `url` would both be set, and a replaced `env` would keep old variables).
            wasm = spec.get("wasm")
            if wasm is not None:
                wasm = {**dict.fromkeys(WASM_KEYS), **wasm}
            old_env = (obj.get("spec") or {}).get("env") or {}
            env = {**dict.fromkeys(old_env), **spec["env"]}
            notes = {**task_annotations(record), UPDATED: iso(now())}
            patch = {
                "metadata": {"annotations": notes},
                "spec": {**spec, "wasm": wasm, "env": env},
            }
            return self._patch(record.id, patch, obj)

        self._decide(record.id, change)

    def remove(self, task_id: str) -> TaskRecord:
        """Delete the task (the operator's owner references take its Pods along)."""
        record = self.get(task_id)
        self._call(
            self._custom.delete_namespaced_custom_object,
            GROUP,
            VERSION,
            self._namespace,
            PLURAL,
            task_id,
        )
        self._ends(task_id)
        return record

    def start(self, task_id: str, proplet_id: str = "") -> TaskRecord:
        """Request a new run and unsuspend: the operator resets the status and runs it."""

        def change(obj: dict[str, Any]) -> dict[str, Any]:
            _decide(obj, Event.START)
            if not (obj.get("spec") or {}).get("wasm"):
                raise BadRequestError(f"task {task_id} has no wasm module")
            notes = {
                RUN: str(requested_run(obj) + 1),
                START_ERROR: None,
                SKIPPED: None,
                UPDATED: iso(now()),
            }
            if proplet_id:  # a manager's addressing; else the task's own proplet_id stays
                notes[PROPLET] = proplet_id
            patch = {"metadata": {"annotations": notes}, "spec": {"suspend": False}}
            return self._patch(task_id, patch, obj)

        return to_record(self._decide(task_id, change))

    def stop(self, task_id: str) -> TaskRecord:
        """Suspend a started task: the operator deletes its Pod and ends the run Failed."""

        def suspend(obj: dict[str, Any]) -> dict[str, Any]:
            _decide(obj, Event.STOP)
            return self._patch(task_id, {"spec": {"suspend": True}}, obj)

        return to_record(self._decide(task_id, suspend))

    def fail(self, task_id: str, error: str) -> TaskRecord:
        """Record a run that could not start: a run request carrying its error, which the
        operator writes as a Failed run (its result is then published)."""

        def change(obj: dict[str, Any]) -> dict[str, Any]:
            _decide(obj, Event.START)
            notes = {
                RUN: str(requested_run(obj) + 1),
                START_ERROR: error,
                SKIPPED: None,
                UPDATED: iso(now()),
            }
            patch = {"metadata": {"annotations": notes}, "spec": {"suspend": True}}
            return self._patch(task_id, patch, obj)

        return to_record(self._decide(task_id, change))

    def skip(self, task_id: str, reason: str) -> TaskRecord:
        """Mark a never-started task Skipped (an annotation with the reason; the operator
        leaves a suspended task alone)."""

        def change(obj: dict[str, Any]) -> dict[str, Any]:
            _decide(obj, Event.SKIP)
            notes = {SKIPPED: reason, UPDATED: iso(now())}
            return self._patch(task_id, {"metadata": {"annotations": notes}}, obj)

        return to_record(self._decide(task_id, change))

    def dispatch(self, task_id: str, proplet_id: str, proplets: tuple[str, ...] = ()) -> TaskRecord:
        """Request a run that external `proplets` execute (`kubeexternal`): the operator
        records it Running without a Pod. A run the shim itself would hold (a deployed latent
        task: no `proplets`) is refused: the operator owns the status."""
        if not proplets:
            raise BadRequestError(
                f"task {task_id}: the kubernetes backend records runs in the cluster or on "
                "external proplets only (the operator owns the status)"
            )

        def change(obj: dict[str, Any]) -> dict[str, Any]:
            _decide(obj, Event.START)
            return self._patch(task_id, kubeexternal.dispatch_patch(obj, proplet_id, proplets), obj)

        return to_record(self._decide(task_id, change))

    def report(self, task_id: str, run: int, outcome: Outcome, proplet: str = "") -> bool:
        """Write the proplet's result of dispatched run `run` for the operator to record;
        False when that run is not under way any more or was reported already."""
        written = False

        def change(obj: dict[str, Any]) -> dict[str, Any]:
            nonlocal written
            patch = kubeexternal.report_patch(obj, run, outcome, proplet)
            if patch is None:
                return obj
            written = True
            return self._patch(task_id, patch, obj)

        try:
            self._decide(task_id, change)
        except NotFoundError:
            return False
        return written

    def dispatched(self) -> list[DispatchedRun]:
        """The dispatched runs under way (taken up again after a shim restart)."""
        return [run for obj in self._objects() if (run := kubeexternal.under_way(obj))]

    def mark_published(self, task_id: str, run: int) -> None:
        """Mark run `run`'s result acknowledged by the broker (an annotation on the task)."""
        with contextlib.suppress(NotFoundError):  # deleted since: nothing left to mark
            self._patch(task_id, {"metadata": {"annotations": {PUBLISHED: str(run)}}})

    def wait_for_results(self, timeout: float) -> None:
        """Runs end in the operator's hands: poll at a modest pace."""
        time.sleep(min(timeout, 2.0))

    def watch_ends(self, listener: Callable[[str], None]) -> None:
        """Only deletions are heard of here: runs end in the operator's hands."""
        self._ends.add(listener)

    def close(self) -> None:
        """Nothing to stop: the objects carry on without the shim."""

    # -- API ---------------------------------------------------------------------------------

    def _records(self) -> list[TaskRecord]:
        records = [to_record(o) for o in self._objects()]
        return sorted(records, key=lambda r: (r.created_at, r.id))

    def _objects(self) -> list[dict[str, Any]]:
        found = self._call(
            self._custom.list_namespaced_custom_object,
            GROUP,
            VERSION,
            self._namespace,
            PLURAL,
            label_selector=PROPELLER_ID_LABEL,
        )
        return list(found.get("items") or [])

    def _object(self, task_id: str) -> dict[str, Any]:
        try:
            obj: dict[str, Any] = self._call(
                self._custom.get_namespaced_custom_object,
                GROUP,
                VERSION,
                self._namespace,
                PLURAL,
                task_id,
            )
        except NotFoundError:
            raise NotFoundError(f"task {task_id} not found") from None
        if PROPELLER_ID_LABEL not in (obj["metadata"].get("labels") or {}):
            raise NotFoundError(f"task {task_id} not found")
        return obj

    def _decide(
        self, task_id: str, change: Callable[[dict[str, Any]], dict[str, Any]]
    ) -> dict[str, Any]:
        """Read the task and apply `change` to it, again on a fresh read while the object moved
        on under it: the operator writes the same objects, so every decision is made on the
        version it is written against (resourceVersion preconditions) and none is lost."""
        for _ in range(STALE_RETRIES):
            try:
                return change(self._object(task_id))
            except _StaleError:
                continue
        raise ConflictError(f"task {task_id} kept changing while being updated; try again")

    def _patch(
        self, task_id: str, patch: dict[str, Any], read: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Merge-patch the task (as `read`, when given); the object as written."""
        return self._write(self._custom.patch_namespaced_custom_object, task_id, patch, read)

    def _write(
        self, fn: Any, task_id: str, patch: dict[str, Any], read: dict[str, Any] | None
    ) -> dict[str, Any]:
        if read is not None:
            version = read["metadata"]["resourceVersion"]
            meta = {**patch.get("metadata", {}), "resourceVersion": version}
            patch = {**patch, "metadata": meta}
        try:
            written: dict[str, Any] = self._call(
                fn, GROUP, VERSION, self._namespace, PLURAL, task_id, patch
            )
        except ConflictError:
            if read is None:
                raise
            raise _StaleError from None
        return written

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Call the API; map its errors to the shim's (the API server's message kept)."""
        try:
            return self._client.call(fn, *args, **kwargs)
        except kubeclient.KubeError as exc:
            raise _shim_error(exc) from None


def _shim_error(exc: kubeclient.KubeError) -> ShimError:
    """The REST answer for a Kubernetes error: 404, 409, 400, else 503."""
    kind: type[ShimError] = UnavailableError
    if isinstance(exc, kubeclient.NotFoundError):
        kind = NotFoundError
    elif isinstance(exc, kubeclient.ConflictError):
        kind = ConflictError
    elif isinstance(exc, kubeclient.InvalidError):
        kind = BadRequestError
    return kind(str(exc))


def _decide(obj: dict[str, Any], event: Event) -> None:
    """`ConflictError` (409, with the lifecycle's reason) unless the task as read allows
    `event`."""
    try:
        transition(view_phase(obj), event)
    except Refusal as exc:
        raise ConflictError(exc.about(obj["metadata"]["name"])) from None


def _node_metadata(name: str, info: dict[str, Any]) -> dict[str, Any]:
    """A node as Propeller's PropletMetadata: what its kubelet reports (nodeInfo)."""
    found = {
        "environment": "kubernetes",
        "os": info.get("operatingSystem"),
        "hostname": name,
        "cpu_arch": info.get("architecture"),
        "proplet_version": package_version(),
        "wasm_runtime": WASM_RUNTIME,
    }
    return {key: value for key, value in found.items() if value}
