"""`GET /proplets/{id}/sdf`: a proplet described as a Semantic Definition Format (SDF) document.

The shape is the one Propeller's manager answers (`info`, and one `sdfThing` "Proplet" with its
properties, the actions a manager sends it and the events it emits), filled from what the shim
knows of the proplet, so SDF tooling reads ours as it reads Propeller's.
"""

from __future__ import annotations

from typing import Any

from .store import PropletRecord

VERSION = "1.0"


def _ref(name: str) -> dict[str, Any]:
    return {"sdfRef": f"#/sdfThing/Proplet/sdfData/{name}"}


def _object(what: str, **properties: dict[str, Any]) -> dict[str, Any]:
    return {"description": what, "type": "object", "properties": properties}


STRING, BOOLEAN = {"type": "string"}, {"type": "boolean"}
COUNT = {"type": "integer", "minimum": 0}
STRINGS = {"type": "array", "items": STRING}


def proplet_document(proplet: PropletRecord) -> dict[str, Any]:
    """The SDF document of `proplet`."""
    return {
        "info": {
            "title": f"Propeller Proplet: {proplet.name} ({proplet.id})",
            "version": VERSION,
            "license": "Apache-2.0",
        },
        "sdfThing": {
            "Proplet": {
                "description": "A proplet: a node that runs WebAssembly tasks",
                "sdfProperty": {
                    "id": {"description": "The proplet's id", "type": "string", "readOnly": True},
                    "name": {"description": "The proplet's name", "type": "string"},
                    "alive": {
                        "description": "A heartbeat arrived within the liveness window",
                        "type": "boolean",
                        "readOnly": True,
                        "observable": True,
                    },
                    "task_count": {
                        "description": "How many tasks the proplet runs now",
                        "type": "integer",
                        "minimum": 0,
                        "readOnly": True,
                        "observable": True,
                    },
                    "metadata": _ref("PropletMetadata"),
                },
                "sdfAction": {
                    "start_task": {
                        "description": "Run a WebAssembly task on the proplet",
                        "sdfInputData": _ref("TaskDispatch"),
                    },
                    "stop_task": {
                        "description": "Stop a task the proplet runs",
                        "sdfInputData": _ref("TaskStop"),
                    },
                },
                "sdfEvent": {
                    "heartbeat": {
                        "description": "The proplet's periodic liveness signal",
                        "sdfOutputData": _ref("HeartbeatPayload"),
                    },
                    "task_result": {
                        "description": "A task ended (completed or failed)",
                        "sdfOutputData": _ref("TaskResult"),
                    },
                },
                "sdfData": {
                    "PropletMetadata": _object(
                        "What the proplet announced about itself",
                        description=STRING,
                        tags=STRINGS,
                        location=STRING,
                        ip=STRING,
                        environment=STRING,
                        os=STRING,
                        hostname=STRING,
                        cpu_arch=STRING,
                        total_memory_bytes=COUNT,
                        proplet_version=STRING,
                        wasm_runtime=STRING,
                    ),
                    "TaskDispatch": _object(
                        "A task sent to the proplet",
                        id=STRING,
                        name=STRING,
                        image_url=STRING,
                        cli_args=STRINGS,
                        inputs=STRINGS,
                        env={"type": "object", "additionalProperties": STRING},
                        daemon=BOOLEAN,
                        encrypted=BOOLEAN,
                        kbs_resource_path=STRING,
                    )
                    | {"required": ["id", "name"]},
                    "TaskStop": _object(
                        "A stop sent to the proplet",
                        id={"type": "string", "description": "The task to stop"},
                    )
                    | {"required": ["id"]},
                    "HeartbeatPayload": _object(
                        "A heartbeat",
                        proplet_id=STRING,
                        name=STRING,
                        task_count=COUNT,
                        alive=BOOLEAN,
                    ),
                    "TaskResult": _object(
                        "A task's result",
                        task_id=STRING,
                        proplet_id=STRING,
                        state={
                            "type": "string",
                            "enum": ["Completed", "Failed", "Skipped", "Interrupted"],
                        },
                        results={"type": "object", "description": "What the task printed"},
                        error=STRING,
                    ),
                },
            }
        },
    }
