"""The HTTP transport: routes decode the request, call `TaskService`, encode the answer.

Every error, including validation errors of FastAPI itself and unknown routes, is
`{"error": "..."}`; `STATUS` maps the service's typed errors to HTTP codes in one place.

Bodies are decoded strictly (`bodies`, `jsonbody`): what cannot be stored is a 400, never a
500. A module never sits in memory whole: a JSON `file` is decoded and an upload is parsed into
the artifact store as it arrives (`uploads`); answers carry it only redacted, as Propeller's do.
Ids in paths must be UUIDs and task pages hold 1 to 100 tasks (400 otherwise, as in Propeller).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from hmac import compare_digest
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CollectorRegistry
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
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
from ..api.task import DIGEST
from . import taskfields
from .answers import group_schemas
from .bodies import JSONAnswer, task_input
from .errors import (
    BadRequestError,
    ConflictError,
    InvocationError,
    NotFoundError,
    ShimError,
    TooLargeError,
    UnauthorizedError,
    UnavailableError,
    UnsupportedMediaError,
)
from .httpbits import BodyLimit, RequestMetrics, describe, metrics_response
from .invoke import Invoker
from .jobs import JobService
from .routes_jobs import add_job_routes
from .routes_proplets import add_proplet_routes
from .routes_tasks import add_task_routes
from .schedule import Lifespan, Scheduler, Ticker, with_ticker
from .service import MAX_PAGE, TaskService, check_module_name
from .taskmetrics import TaskMetricsStore
from .uploads import receive_multipart
from .validation import MAX_TASK_PAGE, PROPLET_STATUSES, UUID, check_id
from .waits import EndWaits, Wait

STATUS: dict[type[ShimError], int] = {
    BadRequestError: 400,
    UnauthorizedError: 401,
    NotFoundError: 404,
    ConflictError: 409,
    TooLargeError: 413,
    InvocationError: 502,
    UnavailableError: 503,
}
RETRY_AFTER = "5"  # seconds, on 503: a full disk or a failing database may recover


def _body(schema: str) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{schema}"}
    return {"required": True, "content": {"application/json": {"schema": ref}}}


CREATE_BODY, UPDATE_BODY = _body("TaskCreate"), _body("TaskInput")
MAX_OFFSET = (1 << 63) - 1  # SQLite's integers (and Kubernetes' continue tokens) stop here
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
# Task ids where Propeller checks them (get, delete, start, stop, results): the schema says so,
# `check_id` answers 400 with the reason.
TaskId = Annotated[
    str, Path(description="the task's UUID", json_schema_extra={"pattern": UUID.pattern})
]
BEARER = HTTPBearer(auto_error=False, description="the shim's token, when one is configured")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorBody} for code in (401, *codes, 503)}


def _json(model: BaseModel | dict[str, Any], status: int = 200) -> JSONResponse:
    body = model.to_json() if isinstance(model, Task) else model
    if isinstance(body, BaseModel):
        body = body.model_dump(mode="json")
    return JSONAnswer(body, status_code=status)


def create_app(
    service: TaskService,
    *,
    token: str | None = None,
    max_body: int = 140 << 20,
    registry: CollectorRegistry | None = None,
    lifespan: Lifespan | None = None,
    invoker: Invoker | None = None,
    task_metrics: TaskMetricsStore | None = None,
) -> FastAPI:
    """The shim's FastAPI application. `invoker` runs latent tasks' invocations (the one the
    MQTT bridge uses too; default: one with the environment's models directory),
    `task_metrics` holds the runs' samples (default: an empty store). The scheduler's ticker
    (`schedule.py`: job and workflow dependents, cron tasks) runs for the app's lifetime."""
    invoker = invoker or Invoker(service, None)
    task_metrics = task_metrics or TaskMetricsStore()
    jobs = JobService(service)
    app = FastAPI(
        title="wasinn shim (Propeller manager API)",
        version=service.health().version,
        lifespan=with_ticker(Ticker(Scheduler(service, jobs).tick), lifespan),
        docs_url=None,
        redoc_url=None,
    )
    registry = registry or CollectorRegistry()
    waits = EndWaits(registry)
    service.store.watch_ends(waits.ended)
    app.add_middleware(RequestMetrics, registry=registry)
    app.add_middleware(BodyLimit, limit=max_body)

    def authorized(credentials: Credentials) -> None:
        # Compared as UTF-8 bytes: compare_digest refuses str with non-ASCII characters.
        given = credentials.credentials.encode() if credentials else b""
        if token and (credentials is None or not compare_digest(given, token.encode())):
            raise UnauthorizedError("a valid bearer token is required")

    # The security scheme is declared (and enforced) only when a token is configured.
    guarded = [Depends(authorized)] if token else []
    call = run_in_threadpool

    @app.post(
        "/tasks",
        status_code=201,
        dependencies=guarded,
        openapi_extra={"requestBody": CREATE_BODY},
        responses={201: {"model": CreatedTask}, **_errors(400, 409, 413)},
    )
    async def create_task(request: Request) -> Response:
        body, module = await task_input(request, service.artifacts)
        try:
            task = await call(service.create, body, None, module)
        finally:
            if module is not None:
                module.discard()
        answer = task.to_json() | {"task": task.to_json()}
        return JSONAnswer(answer, status_code=201, headers={"Location": f"/tasks/{task.id}"})

    @app.get("/tasks", dependencies=guarded, responses={200: {"model": TaskPage}, **_errors(400)})
    async def list_tasks(
        request: Request,
        offset: int = Query(0, ge=0, le=MAX_OFFSET),
        limit: int = Query(100, ge=1, le=MAX_TASK_PAGE),
        metadata: str | None = Query(
            None, description='a JSON object, e.g. {"team":"a"}: tasks whose metadata has each key'
        ),
    ) -> Response:
        wanted = taskfields.parse_metadata_filter(request.query_params.getlist("metadata"))
        page = await call(service.list, offset, limit, wanted)
        return JSONAnswer(
            page.model_dump(mode="json") | {"tasks": [t.to_json() for t in page.tasks]}
        )

    @app.get(
        "/tasks/{task_id}",
        dependencies=guarded,
        responses={200: {"model": Task}, **_errors(400, 404)},
    )
    async def get_task(task_id: TaskId, wait: Wait = 0) -> Response:
        check_id(task_id)
        if wait:
            return _json(await waits.task(task_id, wait, lambda: call(service.get, task_id)))
        return _json(await call(service.get, task_id))

    @app.put(
        "/tasks/{task_id}",
        dependencies=guarded,
        openapi_extra={"requestBody": UPDATE_BODY},
        responses={200: {"model": Task}, **_errors(400, 404, 409, 413)},
    )
    async def update_task(task_id: str, request: Request) -> Response:
        body, module = await task_input(request, service.artifacts)
        try:
            return _json(await call(service.update, task_id, body, module))
        finally:
            if module is not None:
                module.discard()

    @app.put(
        "/tasks/{task_id}/upload",
        dependencies=guarded,
        openapi_extra={"requestBody": UPLOAD_BODY},
        responses={200: {"model": Task}, **_errors(400, 404, 409, 413)},
    )
    async def upload_task(task_id: str, request: Request) -> Response:
        content_type = request.headers.get("content-type", "")
        if not content_type.startswith("multipart/form-data"):
            raise UnsupportedMediaError(
                "Content-Type must be multipart/form-data with a `file` part"
            )
        await call(service.get, task_id)  # 404 before a byte of the module is read
        name, module = await receive_multipart(
            content_type, request.stream(), service.artifacts, check_module_name, call
        )
        try:
            return _json(await call(service.upload, task_id, name, module))
        finally:
            module.discard()

    @app.delete(
        "/tasks/{task_id}",
        status_code=204,
        dependencies=guarded,
        responses={204: {"description": "deleted"}, **_errors(400, 404)},
    )
    async def delete_task(task_id: TaskId) -> Response:
        check_id(task_id)
        await call(service.delete, task_id)
        task_metrics.forget(task_id)
        return Response(status_code=204)

    @app.post(
        "/tasks/{task_id}/start",
        dependencies=guarded,
        responses={200: {"model": Started}, **_errors(400, 404, 409)},
    )
    async def start_task(task_id: TaskId) -> Response:
        check_id(task_id)
        await call(service.start, task_id)
        return _json(Started(started=True))

    @app.post(
        "/tasks/{task_id}/stop",
        dependencies=guarded,
        responses={200: {"model": Stopped}, **_errors(400, 404, 409)},
    )
    async def stop_task(task_id: TaskId) -> Response:
        check_id(task_id)
        await call(service.stop, task_id)
        return _json(Stopped(stopped=True))

    @app.get(
        "/tasks/{task_id}/results",
        dependencies=guarded,
        responses={200: {"model": Results}, **_errors(400, 404)},
    )
    async def task_results(task_id: TaskId, wait: Wait = 0) -> Response:
        check_id(task_id)
        if wait:
            task = await waits.task(task_id, wait, lambda: call(service.get, task_id))
            return JSONAnswer({"results": task.results})
        return JSONAnswer({"results": await call(service.results, task_id)})

    @app.get(
        "/proplets", dependencies=guarded, responses={200: {"model": PropletPage}, **_errors(400)}
    )
    async def list_proplets(
        offset: int = Query(0, ge=0, le=MAX_OFFSET),
        limit: int = Query(100, ge=0, le=MAX_PAGE),
        status: str | None = Query(
            None,
            description="active or inactive (else 400)",
            json_schema_extra={"enum": list(PROPLET_STATUSES)},
        ),
    ) -> Response:
        page = await call(service.proplets, offset, limit, status)
        proplets = [p.to_json() for p in page.proplets]
        return JSONAnswer(page.model_dump(mode="json") | {"proplets": proplets})

    @app.get(
        "/proplets/{proplet_id}",
        dependencies=guarded,
        responses={200: {"model": Proplet}, **_errors(400, 404)},
    )
    async def get_proplet(proplet_id: str) -> Response:
        return JSONAnswer((await call(service.proplet, proplet_id)).to_json())

    @app.get("/health", responses={200: {"model": Health}, 503: {"model": Health}})
    async def health() -> Response:
        answer = await call(service.health)
        body = answer.model_dump(mode="json", exclude_none=True)  # a passing check: no output
        return _json(body, 200 if answer.status == "pass" else 503)

    @app.get("/livez", responses={200: {"description": "the process answers requests"}})
    async def livez() -> Response:
        # For a liveness probe: /health fails while a dependency does (the broker, a full
        # disk), which a restart would not mend.
        return JSONAnswer({"status": "pass"})

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
    async def artifact(digest: Annotated[str, Path(pattern=DIGEST)]) -> Response:
        path = await call(service.artifacts.path, digest)
        return FileResponse(path, media_type="application/wasm")

    add_task_routes(app, invoker, task_metrics, guarded)
    add_proplet_routes(app, service.registry, guarded)
    add_job_routes(app, jobs, guarded)
    _install_error_handlers(app)
    _install_openapi(app)
    return app


def _install_error_handlers(app: FastAPI) -> None:
    def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONAnswer({"error": message}, status_code=status, headers=headers)

    async def shim_error(_: Request, exc: Exception) -> Response:
        status = next(c for t, c in STATUS.items() if isinstance(exc, t))
        headers = {401: {"WWW-Authenticate": "Bearer"}, 503: {"Retry-After": RETRY_AFTER}}
        return error(status, str(exc), headers.get(status))

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
            schemas.update(group_schemas(schemas["TaskCreate"]))
            for name in ("Task", "CreatedTask"):  # Propeller's other fields (taskfields)
                if name in schemas:
                    schemas[name]["properties"].update(taskfields.SCHEMA)
            # `?metadata=` is a JSON object in the query (ReadMetadataQuery in Propeller).
            for parameter in schema["paths"]["/tasks"]["get"]["parameters"]:
                if parameter["name"] == "metadata":
                    parameter.pop("schema", None)
                    parameter["content"] = {"application/json": {"schema": {"type": "object"}}}
            # Validation errors are answered 400 (as Propeller v-new does), never 422.
            for operation in (op for path in schema["paths"].values() for op in path.values()):
                operation.get("responses", {}).pop("422", None)
            for name in ("HTTPValidationError", "ValidationError"):
                schemas.pop(name, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
