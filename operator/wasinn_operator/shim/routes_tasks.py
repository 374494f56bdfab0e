"""The HTTP transport of `GET /tasks/{id}/metrics` and `POST /tasks/{id}/invoke`.

As Propeller (manager/api/transport.go, requests.go, endpoint.go): metrics are a page
`{"offset","limit","total","metrics"}` for any id (empty when none); invoke takes an optional
JSON body `{"inputs": [...], "env": {...}}` (inputs as strings or numbers), checks the id is a
UUID (400) and answers 200 `{"invoked": true, "results": "<what the run printed>"}`. The run
goes through `invoke.Invoker`, the path MQTT invocations take too. Differences: a task that is
not latent is 409 and a failed run 502 with its error (Propeller answers 500 to both).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import FastAPI, Path, Query, Request
from fastapi.params import Depends
from fastapi.responses import Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from .answers import Invocation, Invoked, MetricsPage, errors
from .bodies import JSONAnswer
from .errors import BadRequestError, UnsupportedMediaError
from .httpbits import describe
from .invoke import Invoker
from .jsonbody import parse_json
from .service import MAX_PAGE
from .taskmetrics import TaskMetricsStore
from .validation import UUID, check_id

MAX_OFFSET = (1 << 63) - 1
TaskId = Annotated[
    str, Path(description="the task's UUID", json_schema_extra={"pattern": UUID.pattern})
]
INVOKE_BODY = {
    "required": False,
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Invocation"}}},
}


def add_task_routes(
    app: FastAPI, invoker: Invoker, metrics: TaskMetricsStore, guarded: list[Depends]
) -> None:
    """`GET /tasks/{id}/metrics` and `POST /tasks/{id}/invoke`."""
    call = run_in_threadpool

    @app.get(
        "/tasks/{task_id}/metrics",
        dependencies=guarded,
        responses={200: {"model": MetricsPage}, **errors(400)},
    )
    async def task_metrics(
        task_id: str,
        offset: int = Query(0, ge=0, le=MAX_OFFSET),
        limit: int = Query(100, ge=0, le=MAX_PAGE),
    ) -> Response:
        samples, total = metrics.page(task_id, offset, limit)
        return JSONAnswer({"offset": offset, "limit": limit, "total": total, "metrics": samples})

    @app.post(
        "/tasks/{task_id}/invoke",
        dependencies=guarded,
        openapi_extra={"requestBody": INVOKE_BODY},
        responses={200: {"model": Invoked}, **errors(400, 404, 409, 502)},
    )
    async def invoke_task(task_id: TaskId, request: Request) -> Response:
        check_id(task_id)
        raw = await request.body()
        body = Invocation()
        if raw:
            if "application/json" not in request.headers.get("content-type", ""):
                raise UnsupportedMediaError("Content-Type must be application/json")
            try:
                body = Invocation.model_validate(parse_json(raw))
            except ValidationError as exc:
                raise BadRequestError(describe(exc)) from None
        inputs = [str(v) for v in body.inputs] if body.inputs is not None else None
        results = await call(invoker.call, task_id, inputs, body.env)
        return JSONAnswer({"invoked": True, "results": results})
