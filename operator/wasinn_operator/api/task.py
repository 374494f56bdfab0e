"""The task a proplet runs: the WasiNNTask spec fields it needs, in the CRD's camelCase.

The CRD's schema is generated from these models (api/crdgen.py): descriptions are what
`kubectl explain` shows. `json_schema_extra` holds what only the API server enforces (size
limits, CEL rules beside the validators that check the same here).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator, model_validator

from .modelsource import MAX_SOURCES, ModelSource

# Kubernetes' rule for environment variable names (a C identifier plus '-' and '.').
ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
DIGEST = r"^sha256:[0-9a-f]{64}$"
# What every module must start with, and the largest one a task may run (the shim's default
# upload limit and the proplet's fetch limit).
WASM_MAGIC = b"\0asm"
MAX_WASM_BYTES = 100 << 20
WASM_SOURCES = ("url", "path", "inline", "image", "configMapKeyRef")
# Lengths the API server enforces on the strings of a task.
NAME_MAX = 253
PATH_MAX = 4096
ARG_MAX = 4096

Arg = Annotated[str, WithJsonSchema({"type": "string", "maxLength": ARG_MAX})]
EnvValue = Annotated[str, WithJsonSchema({"type": "string", "maxLength": 32768})]


def sha256_digest(data: bytes) -> str:
    """`sha256:<hex>` of the bytes: how a module's digest is written everywhere."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


class ConfigMapKeyRef(BaseModel):
    """A key of a ConfigMap in the task's namespace holding the module (binaryData)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, json_schema_extra={"maxLength": NAME_MAX})
    key: str = Field(min_length=1, json_schema_extra={"maxLength": NAME_MAX})


class WasmSource(BaseModel):
    """The WebAssembly module: exactly one of url, configMapKeyRef, path, inline, image;
    optionally its digest, verified before anything runs."""

    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "[has(self.url), has(self.configMapKeyRef), has(self.path),"
                    " has(self.inline), has(self.image)].filter(x, x).size() == 1",
                    "message": "exactly one of url, configMapKeyRef, path, inline, image must be"
                    " set",
                }
            ]
        },
    )
    url: str | None = Field(
        default=None,
        pattern=r"^https?://",
        description="An http(s) URL of the module (for example the shim's /artifacts/sha256:...).",
        json_schema_extra={"maxLength": 2048},
    )
    path: str | None = Field(
        default=None,
        pattern=r"^/",
        description="An absolute path inside the proplet container, e.g. a file on the models"
        " volume.",
        json_schema_extra={"maxLength": PATH_MAX},
    )
    inline: str | None = Field(
        default=None,
        description="The module as base64 (at most 768 KiB of wasm); the operator hands it to the"
        " Pod through a ConfigMap it owns.",
        json_schema_extra={"maxLength": 1048576},
    )
    image: str | None = Field(
        default=None,
        min_length=1,
        description="An OCI reference of a wasm artifact (registry/repository:tag or @sha256:...).",
        json_schema_extra={"maxLength": 1024},
    )
    config_map_key_ref: ConfigMapKeyRef | None = Field(default=None, alias="configMapKeyRef")
    digest: str | None = Field(
        default=None,
        pattern=DIGEST,
        description="sha256 digest of the module; a mismatch fails the task (InvalidWasm).",
    )

    @model_validator(mode="after")
    def _exactly_one_source(self) -> WasmSource:
        given = [name for name in WASM_SOURCES if getattr(self, _attr(name)) is not None]
        if len(given) != 1:
            raise ValueError(
                f"exactly one of {', '.join(WASM_SOURCES)} must be set, got "
                f"{', '.join(given) or 'none'}"
            )
        return self

    @field_validator("inline")
    @classmethod
    def _base64(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                base64.b64decode(value, validate=True)
            except binascii.Error as exc:
                raise ValueError(f"not valid base64: {exc}") from None
        return value

    @property
    def kind(self) -> str:
        """Which source is set (`url`, `path`, `inline`, `image` or `configMapKeyRef`)."""
        return next(n for n in WASM_SOURCES if getattr(self, _attr(n)) is not None)


def _attr(name: str) -> str:
    return "config_map_key_ref" if name == "configMapKeyRef" else name


class TaskSpec(BaseModel):
    """What to run and how: module, wasmtime-style flags, guest args and env, limits."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")
    id: str = ""
    name: str = ""
    wasm: WasmSource
    cli_args: list[Arg] = Field(
        default_factory=list,
        alias="cliArgs",
        description='wasmtime-style runtime flags, e.g. ["-S", "nn"] or the legacy'
        ' ["--wasi-modules=experimental-wasi-nn"], "--env K=V", "--dir HOST::GUEST".',
        json_schema_extra={"maxItems": 256},
    )
    args: list[Arg] = Field(
        default_factory=list,
        description="Program arguments (Propeller's inputs), passed after the module.",
        json_schema_extra={"maxItems": 1024},
    )
    env: dict[str, EnvValue] = Field(
        default_factory=dict,
        description="Environment of the guest only (never of the proplet process).",
        json_schema_extra={
            "maxProperties": 256,
            "x-kubernetes-validations": [
                {
                    "rule": f"self.all(k, k.matches('{ENV_NAME.pattern}'))",
                    "message": "env names must match [-._a-zA-Z][-._a-zA-Z0-9]*",
                }
            ],
        },
    )
    daemon: bool = Field(
        default=False,
        description="A long-running task (Propeller daemon); it reports no result until it stops.",
    )
    timeout_seconds: int | None = Field(
        default=None,
        alias="timeoutSeconds",
        gt=0,
        description="Wall-clock limit of one attempt (the Pod's activeDeadlineSeconds).",
        json_schema_extra={"maximum": 604800},
    )
    engine: Literal["embedded", "wasmtime-cli"] = "embedded"
    device: Literal["CPU", "GPU", "NPU", "AUTO"] = Field(
        default="CPU",
        description="OpenVINO device for named models. GPU and NPU (like a guest argument"
        " --target gpu or tpu) give the Pod a limit of one Intel device-plugin resource, the"
        " operator's (default gpu.intel.com/i915, npu.intel.com/accel).",
    )

    model_sources: list[ModelSource] = Field(
        default_factory=list,
        alias="modelSources",
        description="Models fetched by URI and digest (https, oci, pvc), each mounted read-only"
        " at /models/NAME; the task policy's allowModelOrigins says which origins may be named.",
        json_schema_extra={
            "maxItems": MAX_SOURCES,
            # Names are unique: each is one directory under /models.
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["name"],
        },
    )

    @field_validator("env")
    @classmethod
    def _env_names(cls, env: dict[str, str]) -> dict[str, str]:
        bad = [name for name in env if not ENV_NAME.match(name)]
        if bad:
            raise ValueError(
                f"invalid environment variable name(s) {', '.join(map(repr, bad))}: a name "
                "must match [-._a-zA-Z][-._a-zA-Z0-9]*"
            )
        return env
