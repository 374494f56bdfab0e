"""The WasiNNTask spec as the operator reads it, with the CRD's defaults applied.

The API server applies the CRD's defaults and validation; parsing through this model applies
the same defaults where no API server did (the emulator in tests, objects from old versions).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .task import TaskSpec, WasmSource

GROUP = "wasinn.dev"
VERSION = "v1alpha1"
PLURAL = "wasinntasks"
KIND = "WasiNNTask"
PROPELLER_ID_LABEL = "wasinn.dev/propeller-id"


class ModelsVolume(BaseModel):
    """The models claim and how it is mounted."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid")
    claim_name: str | None = Field(default=None, alias="claimName", min_length=1)
    mount_path: str = Field(default="/models", alias="mountPath", pattern=r"^/")
    sub_path: str | None = Field(default=None, alias="subPath")
    read_only: bool = Field(default=True, alias="readOnly")


class WasiNNTaskSpec(TaskSpec):
    """`spec` of a WasiNNTask; only a suspended task may lack its module (Propeller creates
    tasks before their module is uploaded)."""

    wasm: WasmSource | None = None  # type: ignore[assignment]
    models: ModelsVolume = Field(default_factory=ModelsVolume)
    node_selector: dict[str, str] = Field(default_factory=dict, alias="nodeSelector")
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    resources: dict[str, Any] = Field(default_factory=dict)
    backoff_limit: int = Field(default=0, alias="backoffLimit", ge=0, le=100)
    ttl_seconds_after_finished: int | None = Field(
        default=None, alias="ttlSecondsAfterFinished", ge=0
    )
    suspend: bool = False

    @model_validator(mode="after")
    def _module_unless_suspended(self) -> WasiNNTaskSpec:
        if self.wasm is None and not self.suspend:
            raise ValueError("spec.wasm is required unless the task is suspended")
        return self
