"""The HTTP transport: routes decode the request, call `TaskService`, encode the answer.

Every error, including validation errors of FastAPI itself and unknown routes, is
`{"error": "..."}`; `STATUS` maps the service's typed errors to HTTP codes in one place.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from hmac import compare_digest
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CollectorRegistry
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.routing import Match

from ..api.propeller import (
    CreatedTask,
    ErrorBody,
    Health,
    Proplet,
    PropletPage,
    Results,
    Started,
    Stopped,
    Task,
    TaskInput,
    TaskPage,
)
from .errors import (
    BadRequestError,
    ConflictError,
    NotFoundError,
    ShimError,
    TooLargeError,
    UnauthorizedError,
    UnsupportedMediaError,
)
from .httpbits import BodyLimit, RequestMetrics, describe, metrics_response
from .service import MAX_PAGE, TaskService

STATUS: dict[type[ShimError], int] = {
    BadRequestError: 400,
    UnauthorizedError: 401,
    NotFoundError: 404,
    ConflictError: 409,
    TooLargeError: 413,
    UnsupportedMediaError: 415,
}


def _body(schema: str) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{schema}"}
    return {"required": True, "content": {"application/json": {"schema": ref}}}


CREATE_BODY, UPDATE_BODY = _body("TaskCreate"), _body("TaskInput")
MAX_OFFSET = (1 << 63) - 1  # SQLite's integers (and Kubernetes' continue tokens) stop here
DIGEST_PATTERN = r"^sha256:[0-9a-f]{64}$"
UPLOAD_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"file": {"type": "string", "format": "binary"}},
                "required": ["file"],
            }
        }
    },
}
BEARER = HTTPBearer(auto_error=False, description="the shim's token, when one is configured")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]
Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorBody} for code in (401, *codes)}


def _json(model: BaseModel | dict[str, Any], status: int = 200) -> JSONResponse:
    body = model.to_json() if isinstance(model, Task) else model
    if isinstance(body, BaseModel):
        body = body.model_dump(mode="json")
    return JSONResponse(body, status_code=status)


async def _task_input(request: Request) -> TaskInput:
    if "application/json" not in request.headers.get("content-type", ""):
        raise UnsupportedMediaError("Content-Type must be application/json")
    raw = await request.body()
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise BadRequestError(f"invalid JSON: {exc}") from None
    try:
        return TaskInput.model_validate(data)
    except ValidationError as exc:
        raise BadRequestError(describe(exc)) from None


def create_app(
    service: TaskService,
    *,
    token: str | None = None,
    max_body: int = 140 << 20,
    registry: CollectorRegistry | None = None,
    lifespan: Lifespan | None = None,
) -> FastAPI:
    """The shim's FastAPI application."""
    app = FastAPI(
        title="wasinn shim (Propeller manager API)",
        version=service.health().version,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    registry = registry or CollectorRegistry()
    app.add_middleware(RequestMetrics, registry=registry)
    app.add_middleware(BodyLimit, limit=max_body)

    def authorized(credentials: Credentials) -> None:
        if token and (credentials is None or not compare_digest(credentials.credentials, token)):
            raise UnauthorizedError("a valid bearer token is required")

    # The security scheme is declared (and enforced) only when a token is configured.
    guarded = [Depends(authorized)] if token else []
    call = run_in_threadpool

    @app.post(
        "/tasks",
        status_code=201,
        dependencies=guarded,
        openapi_extra={"requestBody": CREATE_BODY},
        responses={201: {"model": CreatedTask}, **_errors(400, 409, 413, 415)},
    )
    async def create_task(request: Request) -> Response:
        task = await call(service.create, await _task_input(request))
        body = task.to_json() | {"task": task.to_json()}
        return JSONResponse(body, status_code=201, headers={"Location": f"/tasks/{task.id}"})

    @app.get("/tasks", dependencies=guarded, responses={200: {"model": TaskPage}, **_errors(400)})
    async def list_tasks(
        offset: int = Query(0, ge=0, le=MAX_OFFSET), limit: int = Query(100, ge=0, le=MAX_PAGE)
    ) -> Response:
        page = await call(service.list, offset, limit)
        return JSONResponse(
            page.model_dump(mode="json") | {"tasks": [t.to_json() for t in page.tasks]}
        )

    @app.get(
        "/tasks/{task_id}", dependencies=guarded, responses={200: {"model": Task}, **_errors(404)}
    )
    async def get_task(task_id: str) -> Response:
        return _json(await call(service.get, task_id))

    @app.put(
        "/tasks/{task_id}",
        dependencies=guarded,
        openapi_extra={"requestBody": UPDATE_BODY},
        responses={200: {"model": Task}, **_errors(400, 404, 409, 413, 415)},
    )
    async def update_task(task_id: str, request: Request) -> Response:
        return _json(await call(service.update, task_id, await _task_input(request)))

    @app.put(
        "/tasks/{task_id}/upload",
        dependencies=guarded,
        openapi_extra={"requestBody": UPLOAD_BODY},
        responses={200: {"model": Task}, **_errors(400, 404, 409, 413, 415)},
    )
    async def upload_task(task_id: str, request: Request) -> Response:
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise UnsupportedMediaError(
                "Content-Type must be multipart/form-data with a `file` part"
            )
        async with request.form(max_files=1) as form:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise BadRequestError("file: the multipart form has no file part named `file`")
            data = await upload.read()
            name = upload.filename or ""
        return _json(await call(service.upload, task_id, name, data))

    @app.delete(
        "/tasks/{task_id}",
        status_code=204,
        dependencies=guarded,
        responses={204: {"description": "deleted"}, **_errors(404)},
    )
    async def delete_task(task_id: str) -> Response:
        await call(service.delete, task_id)
        return Response(status_code=204)

    @app.post(
        "/tasks/{task_id}/start",
        dependencies=guarded,
        responses={200: {"model": Started}, **_errors(400, 404, 409)},
    )
    async def start_task(task_id: str) -> Response:
        await call(service.start, task_id)
        return _json(Started(started=True))

    @app.post(
        "/tasks/{task_id}/stop",
        dependencies=guarded,
        responses={200: {"model": Stopped}, **_errors(404, 409)},
    )
    async def stop_task(task_id: str) -> Response:
        await call(service.stop, task_id)
        return _json(Stopped(stopped=True))

    @app.get(
        "/tasks/{task_id}/results",
        dependencies=guarded,
        responses={200: {"model": Results}, **_errors(404)},
    )
    async def task_results(task_id: str) -> Response:
        return JSONResponse({"results": await call(service.results, task_id)})

    @app.get(
        "/proplets", dependencies=guarded, responses={200: {"model": PropletPage}, **_errors(400)}
    )
    async def list_proplets(
        offset: int = Query(0, ge=0, le=MAX_OFFSET), limit: int = Query(100, ge=0, le=MAX_PAGE)
    ) -> Response:
        return _json(await call(service.proplets, offset, limit))

    @app.get(
        "/proplets/{proplet_id}",
        dependencies=guarded,
        responses={200: {"model": Proplet}, **_errors(404)},
    )
    async def get_proplet(proplet_id: str) -> Response:
        return _json(await call(service.proplet, proplet_id))

    @app.get("/health", responses={200: {"model": Health}})
    async def health() -> Response:
        return _json(service.health())

    @app.get(
        "/metrics", responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}}
    )
    async def metrics() -> Response:
        return await call(metrics_response, registry)

    # Unauthenticated: Pods fetch modules with a plain URL; a digest names only its content.
    @app.get(
        "/artifacts/{digest}",
        responses={
            200: {
                "content": {"application/wasm": {"schema": {"type": "string", "format": "binary"}}}
            },
            400: {"model": ErrorBody},
            404: {"model": ErrorBody},
        },
    )
    async def artifact(digest: Annotated[str, Path(pattern=DIGEST_PATTERN)]) -> Response:
        path = await call(service.artifacts.path, digest)
        return FileResponse(path, media_type="application/wasm")

    _install_error_handlers(app)
    _install_openapi(app)
    return app


def _install_error_handlers(app: FastAPI) -> None:
    def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    async def shim_error(_: Request, exc: Exception) -> Response:
        status = next(c for t, c in STATUS.items() if isinstance(exc, t))
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return error(status, str(exc), headers)

    async def validation_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return error(400, describe(exc))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        message = str(exc.detail)
        headers = dict(exc.headers or {})
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}"
        elif exc.status_code == 405:
            # Starlette names only the first route's methods; every route of the path counts.
            allowed = sorted({m for r in app.router.routes if isinstance(r, APIRoute)
                              and r.matches(request.scope)[0] is not Match.NONE
                              for m in r.methods or ()})  # fmt: skip
            headers["Allow"] = ", ".join(allowed)
            message = f"method {request.method} is not allowed on {request.url.path}"
        return error(exc.status_code, message, headers)

    async def internal_error(_: Request, exc: Exception) -> Response:
        return error(500, f"internal error: {type(exc).__name__}")

    handlers: dict[type[Exception], Callable[[Request, Exception], Awaitable[Response]]] = {
        ShimError: shim_error,
        RequestValidationError: validation_error,
        HTTPException: http_error,
        Exception: internal_error,
    }
    for kind, handler in handlers.items():
        app.add_exception_handler(kind, handler)


def _install_openapi(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            schemas = schema.setdefault("components", {}).setdefault("schemas", {})
            schemas["TaskInput"] = TaskInput.model_json_schema()
            create = TaskInput.model_json_schema()
            create["properties"]["name"] = {"type": "string", "minLength": 1, "title": "Name"}
            schemas["TaskCreate"] = create | {"title": "TaskCreate", "required": ["name"]}
            # Validation errors are answered 400 (as Propeller v-new does), never 422.
            for operation in (op for path in schema["paths"].values() for op in path.values()):
                operation.get("responses", {}).pop("422", None)
            for name in ("HTTPValidationError", "ValidationError"):
                schemas.pop(name, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
