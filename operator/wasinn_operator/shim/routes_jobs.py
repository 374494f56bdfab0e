"""The HTTP transport of jobs and workflows (`jobs.py`): decode, call `JobService`, encode.

Codes follow Propeller's handlers (manager/api/transport.go, endpoint.go, responses.go):
201 with `{"job_id", "tasks"}` and `Location: /jobs/{id}` for a new job, 201 `{"tasks"}` for a
new workflow, 200 `{"message", "job_id"}` for start and stop, 200 JobPage for the list; job
ids in paths must be UUIDs (400). One deliberate difference: `GET /jobs/{id}` answers 200
(Propeller answers 201, its create code).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import FastAPI, Path, Query, Request
from fastapi.params import Depends
from starlette.concurrency import run_in_threadpool

from .answers import JobCreated, JobMessage, JobPage, WorkflowCreated, errors
from .bodies import JSONAnswer
from .errors import UnsupportedMediaError
from .jobs import JobService, decode_request
from .jsonbody import parse_json
from .service import MAX_PAGE
from .validation import UUID, check_id

MAX_OFFSET = (1 << 63) - 1


def _body(schema: str) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{schema}"}
    return {"required": True, "content": {"application/json": {"schema": ref}}}


JOB_BODY, WORKFLOW_BODY = _body("JobRequest"), _body("WorkflowRequest")
# Job ids in paths are UUIDs (400 otherwise, as Propeller's entityReq answers).
JobId = Annotated[
    str, Path(description="the job's UUID", json_schema_extra={"pattern": UUID.pattern})
]


async def _json_body(request: Request) -> Any:
    if "application/json" not in request.headers.get("content-type", ""):
        raise UnsupportedMediaError("Content-Type must be application/json")
    return parse_json(await request.body())


def add_job_routes(app: FastAPI, jobs: JobService, guarded: list[Depends]) -> None:
    """`/jobs` (create, list, get, start, stop) and `POST /workflows`."""
    call = run_in_threadpool

    @app.post(
        "/jobs",
        status_code=201,
        dependencies=guarded,
        openapi_extra={"requestBody": JOB_BODY},
        responses={201: {"model": JobCreated}, **errors(400, 409, 413)},
    )
    async def create_job(request: Request) -> JSONAnswer:
        body = decode_request(await _json_body(request))
        job_id, tasks = await call(jobs.create_job, body)
        return JSONAnswer(
            {"job_id": job_id, "tasks": tasks},
            status_code=201,
            headers={"Location": f"/jobs/{job_id}"},
        )

    @app.get("/jobs", dependencies=guarded, responses={200: {"model": JobPage}, **errors(400)})
    async def list_jobs(
        offset: int = Query(0, ge=0, le=MAX_OFFSET),
        limit: int = Query(100, ge=0, le=MAX_PAGE),
        status: Literal["", "pending", "running", "completed", "failed"] = "",
    ) -> JSONAnswer:
        return JSONAnswer(await call(jobs.list_jobs, offset, limit, status))

    @app.get(
        "/jobs/{job_id}",
        dependencies=guarded,
        responses={200: {"model": JobCreated}, **errors(400, 404)},
    )
    async def get_job(job_id: JobId) -> JSONAnswer:
        check_id(job_id, "job")
        return JSONAnswer({"job_id": job_id, "tasks": await call(jobs.job_tasks, job_id)})

    @app.post(
        "/jobs/{job_id}/start",
        dependencies=guarded,
        responses={200: {"model": JobMessage}, **errors(400, 404, 409)},
    )
    async def start_job(job_id: JobId) -> JSONAnswer:
        check_id(job_id, "job")
        await call(jobs.start_job, job_id)
        return JSONAnswer({"message": "job started", "job_id": job_id})

    @app.post(
        "/jobs/{job_id}/stop",
        dependencies=guarded,
        responses={200: {"model": JobMessage}, **errors(400, 404, 409)},
    )
    async def stop_job(job_id: JobId) -> JSONAnswer:
        check_id(job_id, "job")
        await call(jobs.stop_job, job_id)
        return JSONAnswer({"message": "job stopped", "job_id": job_id})

    @app.post(
        "/workflows",
        status_code=201,
        dependencies=guarded,
        openapi_extra={"requestBody": WORKFLOW_BODY},
        responses={201: {"model": WorkflowCreated}, **errors(400, 409, 413)},
    )
    async def create_workflow(request: Request) -> JSONAnswer:
        body = decode_request(await _json_body(request))
        tasks = await call(jobs.create_workflow, body)
        return JSONAnswer({"tasks": tasks}, status_code=201)
