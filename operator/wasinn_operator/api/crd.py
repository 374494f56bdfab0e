"""The WasiNNTask spec as the operator reads it, with the CRD's defaults applied, and the CRD's
own metadata (names, printer columns).

The API server applies the CRD's defaults and validation; parsing through this model applies
the same defaults where no API server did (the emulator in tests, objects from old versions).
The CRD is generated from these models by api/crdgen.py (`make generate`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator, model_validator
from pydantic.json_schema import SkipJsonSchema

from .nodefeatures import ALLOWED, FEATURE_MAX, FEATURE_PATTERN, MAX_FEATURES, parse_features
from .task import NAME_MAX, PATH_MAX, TaskSpec, WasmSource

GROUP = "wasinn.dev"
VERSION = "v1alpha1"
PLURAL = "wasinntasks"
SINGULAR = "wasinntask"
KIND = "WasiNNTask"
SHORT_NAMES = ("wnt",)
CATEGORIES = ("wasinn",)
PROPELLER_ID_LABEL = "wasinn.dev/propeller-id"
# The Propeller task name of a task the shim wrote (its object is named after the task id).
PROPELLER_NAME_ANNOTATION = "wasinn.dev/propeller-name"
# Propeller's other task fields (priority, schedule, ...) as one JSON object (shim/taskfields.py);
# the operator reads the priority from it (controller/priority.py).
PROPELLER_FIELDS_ANNOTATION = "wasinn.dev/propeller-fields"
DESCRIPTION = (
    "A WebAssembly inference task (wasi-nn) run as a Pod on an OpenVINO-capable node, with the"
    " models volume mounted read-only."
)
# `kubectl get wnt`: (name, type, JSON path, description); the generator checks each path
# names a field of the schema, of that type.
PRINTER_COLUMNS = (
    ("Phase", "string", ".status.phase", "Propeller state name of the task."),
    ("Node", "string", ".status.nodeName", "Node the last attempt ran on."),
    ("Exit", "integer", ".status.exitCode", "Exit code of the last attempt."),
    ("Age", "date", ".metadata.creationTimestamp", ""),
)


def _no_default(schema: dict[str, Any]) -> None:
    # The API server must leave the field unset: unset means the operator's default.
    schema.pop("default", None)


NodeFeature = Annotated[
    str,
    WithJsonSchema({"type": "string", "pattern": FEATURE_PATTERN, "maxLength": FEATURE_MAX}),
]


class ModelsVolume(BaseModel):
    """The models volume; defaults to the operator's configured claim."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid")
    claim_name: str | None = Field(
        default=None,
        alias="claimName",
        min_length=1,
        description="PersistentVolumeClaim holding one model per subdirectory.",
        json_schema_extra={"maxLength": NAME_MAX},
    )
    mount_path: str = Field(
        default="/models",
        alias="mountPath",
        pattern=r"^/",
        description="Where the claim is mounted, preopened read-only for the guest.",
    )
    sub_path: str | None = Field(
        default=None,
        alias="subPath",
        description="A subdirectory of the claim to mount instead of its root.",
        json_schema_extra={"maxLength": PATH_MAX},
    )
    read_only: bool = Field(
        default=True,
        alias="readOnly",
        description="Mount the claim read-only (the default; tasks never write models).",
    )


class WasiNNTaskSpec(TaskSpec):
    """What to run and where."""

    # Only a suspended task may lack its module (Propeller creates tasks before their module is
    # uploaded): the CEL rule and `_module_unless_suspended` say so.
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.wasm) || (has(self.suspend) && self.suspend)",
                    "message": "spec.wasm is required unless the task is suspended",
                }
            ]
        }
    )
    # The proplet's task identity, set by the operator: not part of the resource.
    id: SkipJsonSchema[str] = ""
    name: SkipJsonSchema[str] = ""
    wasm: WasmSource | None = None  # type: ignore[assignment]
    engine: Literal["embedded", "wasmtime-cli"] = Field(
        default="embedded",
        description="The proplet's engine, embedded (wasmtime + OpenVINO in Python) or the"
        " wasmtime CLI; unset means the operator's default (embedded unless configured).",
        json_schema_extra=_no_default,
    )
    models: ModelsVolume = Field(default_factory=ModelsVolume)
    execution: Literal["pod", "warm"] = Field(
        default="pod",
        description="pod runs each attempt in a Pod of its own (isolation); warm hands it to a"
        " long-lived proplet worker of the chart's warm pool (no Pod start), allowed only where"
        " the chart enables warmWorkers. Unset means the operator's default (pod unless"
        " configured).",
        json_schema_extra=_no_default,
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict,
        alias="nodeSelector",
        description="Extra node labels, merged with the operator's OpenVINO label.",
    )
    node_features: list[NodeFeature] = Field(
        default_factory=list,
        alias="nodeFeatures",
        description="Node Feature Discovery labels the node must carry, KEY or KEY=VALUE (KEY"
        f" alone means KEY=true); only NFD's labels: {ALLOWED}. Added to the operator's own"
        " (chart value nodeFeatures.required) as required node affinity.",
        json_schema_extra={"maxItems": MAX_FEATURES},
    )
    tolerations: list[dict[str, Any]] = Field(default_factory=list, description="Pod tolerations.")
    resources: dict[str, Any] = Field(
        default_factory=dict,
        description="Container resources (requests, limits) of the proplet.",
    )
    backoff_limit: int = Field(
        default=0,
        alias="backoffLimit",
        ge=0,
        le=100,
        description="Retries after a failed attempt, with exponential backoff.",
    )
    ttl_seconds_after_finished: int | None = Field(
        default=None,
        alias="ttlSecondsAfterFinished",
        ge=0,
        description="Delete the task this long after it completed or failed.",
    )
    suspend: bool = Field(
        default=False,
        description="true keeps the task from starting, or stops its run (the Pod is deleted;"
        " phase Failed, reason Stopped); false lets it run, and runs a stopped task again."
        " Propeller's start and stop set it.",
    )

    @field_validator("node_features")
    @classmethod
    def _nfd_labels(cls, features: list[str]) -> list[str]:
        parse_features(features)
        return features

    @model_validator(mode="after")
    def _module_unless_suspended(self) -> WasiNNTaskSpec:
        if self.wasm is None and not self.suspend:
            raise ValueError("spec.wasm is required unless the task is suspended")
        return self
