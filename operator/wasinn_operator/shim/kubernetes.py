"""The kubernetes backend: each Propeller task is a WasiNNTask; the objects are the truth.

The shim keeps no task state: a task is the object named after its Propeller id, labelled
`wasinn.dev/propeller-id`. Fields with no place in the spec (the Propeller name, inputs as given,
times, the run counter and the MQTT outbox mark) are annotations. A task is created suspended
(Propeller's Pending), `start` resets its status and unsuspends it, `stop` suspends it
(Interrupted); the operator runs it and writes phase, results and errors to `status`. Modules
live in the shim's artifact store and reach Pods by URL, with their digest checked.
"""

from __future__ import annotations

import contextlib
import json
import time
from datetime import UTC, datetime
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

from ..api import GROUP, PLURAL, PROPELLER_ID_LABEL, VERSION, WasmSource
from ..controller.kube import load_config
from .errors import BadRequestError, ConflictError, NotFoundError
from .store import PropletRecord, TaskRecord, TaskState, now

PREFIX = "wasinn.dev/"
NAME, CREATED, UPDATED = PREFIX + "propeller-name", PREFIX + "created-at", PREFIX + "updated-at"
INPUTS, CLI_ARGS, IMAGE = PREFIX + "inputs", PREFIX + "cli-args", PREFIX + "image-url"
RUN, PUBLISHED, PROPLET = PREFIX + "run", PREFIX + "published-run", PREFIX + "proplet-id"
PHASES = {
    "Pending": TaskState.PENDING,
    "Scheduled": TaskState.SCHEDULED,
    "Running": TaskState.RUNNING,
    "Completed": TaskState.COMPLETED,
    "Failed": TaskState.FAILED,
    "Interrupted": TaskState.INTERRUPTED,
}
FINISHED = (TaskState.COMPLETED, TaskState.FAILED)
WASM_KEYS = tuple(f.alias or n for n, f in WasmSource.model_fields.items())
# Status fields a new run starts without ("attempts" stays: Pod names go on counting).
RUN_FIELDS = (
    "results",
    "resultsTruncated",
    "error",
    "exitCode",
    "startTime",
    "completionTime",
    "retryAfter",
    "podName",
    "nodeName",
    "failedAttempts",
    "conditions",
    "digest",
)


class KubernetesStore:
    """`TaskStore` on WasiNNTask objects in one namespace."""

    def __init__(
        self, namespace: str, artifacts_url: str, openvino_label: str = "wasinn.dev/openvino=true"
    ) -> None:
        load_config()
        client = kubernetes.client.ApiClient()
        self._custom = kubernetes.client.CustomObjectsApi(client)
        self._core = kubernetes.client.CoreV1Api(client)
        self._namespace = namespace
        self._artifacts_url = artifacts_url.rstrip("/")
        self._label = openvino_label

    # -- reads -------------------------------------------------------------------------------

    def get(self, task_id: str) -> TaskRecord:
        """The task."""
        return self._record(self._object(task_id))

    def page(self, offset: int, limit: int) -> tuple[list[TaskRecord], int]:
        """A page in creation order."""
        records = self._records()
        return records[offset : offset + limit], len(records)

    def counts(self) -> dict[TaskState, int]:
        """Tasks per state."""
        counts: dict[TaskState, int] = {}
        for record in self._records():
            counts[record.state] = counts.get(record.state, 0) + 1
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
            if status.get("phase") in ("Scheduled", "Running") and status.get("nodeName"):
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
            beat = _time(ready.get("lastHeartbeatTime"))
            found.append(
                PropletRecord(
                    id=name,
                    name=name,
                    task_count=running.get(name, 0),
                    alive=ready.get("status") == "True",
                    alive_history=[beat] if beat else [],
                )
            )
        return found

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
                    **self._annotations(record),
                    CREATED: _iso(record.created_at),
                    RUN: str(record.run),
                    PUBLISHED: str(record.run),
                },
            },
            "spec": {**self._spec(record), "suspend": True},
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
        """Write the spec fields of a task that is not running."""
        obj = self._object(record.id)
        if self._active(obj):
            raise ConflictError(f"task {record.id} is running: stop it before changing it")
        spec = self._spec(record)
        # A merge patch merges objects: keys left out would stay, so null them (an `image` and
        # a new `url` would both be set, and a replaced `env` would keep the old variables).
        wasm = spec.get("wasm")
        if wasm is not None:
            wasm = {**dict.fromkeys(WASM_KEYS), **wasm}
        old_env = (obj.get("spec") or {}).get("env") or {}
        env = {**dict.fromkeys(old_env), **spec["env"]}
        patch: dict[str, Any] = {
            "metadata": {"annotations": {**self._annotations(record), UPDATED: _iso(now())}},
            "spec": {**spec, "wasm": wasm, "env": env},
        }
        self._patch(record.id, patch)

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
        return record

    def start(self, task_id: str, proplet_id: str = "") -> TaskRecord:
        """A new run: reset the status and unsuspend (the operator takes it from there)."""
        obj = self._object(task_id)
        if self._active(obj):
            raise ConflictError(f"task {task_id} is already scheduled or running")
        if not (obj.get("spec") or {}).get("wasm"):
            raise BadRequestError(f"task {task_id} has no wasm module")
        run = int(_annotations(obj).get(RUN, "0")) + 1
        self._patch_status(task_id, {**dict.fromkeys(RUN_FIELDS), "phase": "Pending", "state": 0})
        annotations = {RUN: str(run), UPDATED: _iso(now()), PROPLET: proplet_id or None}
        self._patch(task_id, {"metadata": {"annotations": annotations}, "spec": {"suspend": False}})
        return self.get(task_id)

    def stop(self, task_id: str) -> TaskRecord:
        """Suspend a started task: the operator deletes its Pod; the state is Interrupted."""
        obj = self._object(task_id)
        if not self._active(obj):
            raise ConflictError(f"task {task_id} is not scheduled or running")
        self._patch(task_id, {"spec": {"suspend": True}})
        self._patch_status(task_id, {"phase": "Interrupted", "state": 6, "error": "stopped"})
        return self.get(task_id)

    def fail(self, task_id: str, error: str) -> TaskRecord:
        """Record a run that could not start as Failed (its result is then published)."""
        obj = self._object(task_id)
        if self._active(obj):
            raise ConflictError(f"task {task_id} is scheduled or running")
        run = int(_annotations(obj).get(RUN, "0")) + 1
        self._patch(task_id, {"metadata": {"annotations": {RUN: str(run)}}})
        self._patch_status(
            task_id,
            {
                **dict.fromkeys(RUN_FIELDS),
                "phase": "Failed",
                "state": 4,
                "error": error,
                "completionTime": _iso(now()),
            },
        )
        return self.get(task_id)

    def mark_published(self, task_id: str, run: int) -> None:
        """Mark run `run`'s result acknowledged by the broker (an annotation on the task)."""
        with contextlib.suppress(NotFoundError):  # deleted since: nothing left to mark
            self._patch(task_id, {"metadata": {"annotations": {PUBLISHED: str(run)}}})

    def wait_for_results(self, timeout: float) -> None:
        """Runs end in the operator's hands: poll at a modest pace."""
        time.sleep(min(timeout, 2.0))

    def close(self) -> None:
        """Nothing to stop: the objects carry on without the shim."""

    # -- mapping -----------------------------------------------------------------------------

    def _spec(self, record: TaskRecord) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "cliArgs": list(record.cli_args or []),
            "args": [str(i) for i in record.inputs],
            "env": dict(record.env),
            "daemon": record.daemon,
        }
        if record.digest:
            url = f"{self._artifacts_url}/artifacts/{record.digest}"
            spec["wasm"] = {"url": url, "digest": record.digest}
        elif record.image_url:
            spec["wasm"] = {"image": record.image_url}
        return spec

    @staticmethod
    def _annotations(record: TaskRecord) -> dict[str, str | None]:
        return {
            NAME: record.name,
            INPUTS: json.dumps(record.inputs),
            CLI_ARGS: json.dumps(record.cli_args),
            IMAGE: record.image_url or None,
        }

    def _record(self, obj: dict[str, Any]) -> TaskRecord:
        meta, spec, status = obj["metadata"], obj.get("spec") or {}, obj.get("status") or {}
        notes = _annotations(obj)
        wasm = spec.get("wasm") or {}
        state = PHASES.get(status.get("phase") or "Pending", TaskState.PENDING)
        run = int(notes.get(RUN, "0"))
        created = _time(notes.get(CREATED)) or _time(meta.get("creationTimestamp")) or now()
        return TaskRecord(
            id=meta["name"],
            name=notes.get(NAME, meta["name"]),
            state=state,
            image_url=notes.get(IMAGE) or "",
            digest=wasm.get("digest", "") if "url" in wasm else "",
            cli_args=json.loads(notes[CLI_ARGS]) if CLI_ARGS in notes else spec.get("cliArgs"),
            inputs=json.loads(notes[INPUTS]) if INPUTS in notes else list(spec.get("args") or []),
            env=dict(spec.get("env") or {}),
            daemon=bool(spec.get("daemon")),
            proplet_id=notes.get(PROPLET) or status.get("nodeName") or "",
            results=status.get("results"),
            error=status.get("error") or "",
            start_time=_time(status.get("startTime")),
            finish_time=_time(status.get("completionTime")),
            created_at=created,
            updated_at=_time(notes.get(UPDATED)) or created,
            run=run,
            unpublished=state in FINISHED and notes.get(PUBLISHED) != str(run),
        )

    @staticmethod
    def _active(obj: dict[str, Any]) -> bool:
        """Started and not finished: the operator owns the task until it ends."""
        phase = (obj.get("status") or {}).get("phase") or "Pending"
        suspended = bool((obj.get("spec") or {}).get("suspend"))
        return not suspended and phase not in ("Completed", "Failed", "Interrupted")

    # -- API ---------------------------------------------------------------------------------

    def _records(self) -> list[TaskRecord]:
        records = [self._record(o) for o in self._objects()]
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

    def _patch(self, task_id: str, patch: dict[str, Any]) -> None:
        self._call(
            self._custom.patch_namespaced_custom_object,
            GROUP,
            VERSION,
            self._namespace,
            PLURAL,
            task_id,
            patch,
        )

    def _patch_status(self, task_id: str, status: dict[str, Any]) -> None:
        self._call(
            self._custom.patch_namespaced_custom_object_status,
            GROUP,
            VERSION,
            self._namespace,
            PLURAL,
            task_id,
            {"status": status},
        )

    @staticmethod
    def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Call the API; map its errors to the shim's (the API server's message kept)."""
        try:
            response = fn(*args, _preload_content=False, **kwargs)
        except ApiException as exc:
            message = _api_message(exc)
            if exc.status == 404:
                raise NotFoundError(message) from None
            if exc.status == 409:
                raise ConflictError(message) from None
            if exc.status in (400, 422):
                raise BadRequestError(message) from None
            raise
        data = response.data
        return json.loads(data) if data else {}


def _annotations(obj: dict[str, Any]) -> dict[str, str]:
    return dict(obj["metadata"].get("annotations") or {})


def _api_message(exc: ApiException) -> str:
    try:
        return str(json.loads(exc.body or "{}").get("message") or exc.reason)
    except ValueError:
        return str(exc.reason)


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None
