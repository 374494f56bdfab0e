"""The task a proplet runs: the WasiNNTask spec fields it needs, in the CRD's camelCase."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Kubernetes' rule for environment variable names (a C identifier plus '-' and '.').
ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
DIGEST = r"^sha256:[0-9a-f]{64}$"
WASM_SOURCES = ("url", "path", "inline", "image", "configMapKeyRef")


class ConfigMapKeyRef(BaseModel):
    """A wasm module stored under a key of a ConfigMap (binaryData)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1)
    key: str = Field(min_length=1)


class WasmSource(BaseModel):
    """Where the module comes from: exactly one source, and optionally its digest."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    url: str | None = Field(default=None, pattern=r"^https?://")
    path: str | None = Field(default=None, pattern=r"^/")
    inline: str | None = None
    image: str | None = Field(default=None, min_length=1)
    config_map_key_ref: ConfigMapKeyRef | None = Field(default=None, alias="configMapKeyRef")
    digest: str | None = Field(default=None, pattern=DIGEST)

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
    cli_args: list[str] = Field(default_factory=list, alias="cliArgs")
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    daemon: bool = False
    timeout_seconds: int | None = Field(default=None, alias="timeoutSeconds", gt=0)
    engine: Literal["embedded", "wasmtime-cli"] = "embedded"
    device: Literal["CPU", "GPU", "NPU", "AUTO"] = "CPU"

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
