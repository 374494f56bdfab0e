"""Request and answer bodies of the HTTP transport, decoded and encoded without holding a
module in memory.

`task_input` reads a JSON task: strictly parsed (`jsonbody`), its `file` decoded into the
artifact store a slice at a time, the raw body released as soon as it is decoded. `JSONAnswer`
renders whatever was stored, even text an earlier version let in.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from ..api.propeller import TaskInput
from .artifacts import ArtifactStore, ModuleUpload
from .errors import BadRequestError, UnsupportedMediaError
from .httpbits import describe
from .jsonbody import parse_json
from .uploads import module_from_base64

FILE_CHUNK = 3 << 18  # module bytes encoded at a time (a multiple of 3: no padding inside)


def render(content: Any) -> bytes:
    # A string that is not valid Unicode (stored by an earlier version) is sent as its \uXXXX
    # escape, which is valid JSON, instead of failing the answer.
    text = json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return text.encode("utf-8", "backslashreplace")


class JSONAnswer(JSONResponse):
    """JSON that renders whatever was stored."""

    def render(self, content: Any) -> bytes:
        return render(content)


async def task_input(
    request: Request, artifacts: ArtifactStore
) -> tuple[TaskInput, ModuleUpload | None]:
    """The body as a `TaskInput`, its `file` (when set) received into the artifact store."""
    if "application/json" not in request.headers.get("content-type", ""):
        raise UnsupportedMediaError("Content-Type must be application/json")
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
    return await run_in_threadpool(_decode_task, raw, artifacts)


def _decode_task(raw: bytearray, artifacts: ArtifactStore) -> tuple[TaskInput, ModuleUpload | None]:
    data = parse_json(raw)  # empties `raw`: the body is not kept beside its decoded copy
    file = data.get("file") if isinstance(data, dict) else None
    if isinstance(file, str) and file:
        del data["file"]  # decoded into the store below, not kept as a model field
    else:
        file = None
    try:
        body = TaskInput.model_validate(data)
    except ValidationError as exc:
        raise BadRequestError(describe(exc)) from None
    del data
    return body, module_from_base64(file, artifacts) if file is not None else None
