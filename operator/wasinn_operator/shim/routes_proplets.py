"""The HTTP transport of proplet details: decode, call the registry (`proplets.py`), encode.

Routes and shapes follow Propeller's manager (manager/api/transport.go, responses.go):
`GET /proplets/{id}/alive-history` (`{"offset","limit","total","history"}`, newest first),
`GET /proplets/{id}/metrics` (`{"offset","limit","total","metrics"}`, an empty list when none,
for any id), `GET /proplets/{id}/sdf` (an SDF document) and `DELETE /proplets/{id}` (204; 409
while it runs tasks, and for the shim's own proplets).
"""

from __future__ import annotations

from fastapi import FastAPI, Query
from fastapi.params import Depends
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from .announce import timestamp
from .answers import AliveHistoryPage, MetricsPage, SDFDocument, errors
from .bodies import JSONAnswer
from .proplets import PropletRegistry
from .sdf import proplet_document
from .service import MAX_PAGE

MAX_OFFSET = (1 << 63) - 1
Offset = Query(0, ge=0, le=MAX_OFFSET)
Limit = Query(100, ge=0, le=MAX_PAGE)


def add_proplet_routes(app: FastAPI, registry: PropletRegistry, guarded: list[Depends]) -> None:
    """The proplet detail routes."""
    call = run_in_threadpool

    @app.get(
        "/proplets/{proplet_id}/alive-history",
        dependencies=guarded,
        responses={200: {"model": AliveHistoryPage}, **errors(400, 404)},
    )
    async def alive_history(proplet_id: str, offset: int = Offset, limit: int = Limit) -> Response:
        beats, total = await call(registry.alive_history, proplet_id, offset, limit)
        history = [timestamp(beat) for beat in beats]
        return JSONAnswer({"offset": offset, "limit": limit, "total": total, "history": history})

    @app.get(
        "/proplets/{proplet_id}/metrics",
        dependencies=guarded,
        responses={200: {"model": MetricsPage}, **errors(400)},
    )
    async def proplet_metrics(
        proplet_id: str, offset: int = Offset, limit: int = Limit
    ) -> Response:
        samples, total = await call(registry.metrics, proplet_id, offset, limit)
        return JSONAnswer({"offset": offset, "limit": limit, "total": total, "metrics": samples})

    @app.get(
        "/proplets/{proplet_id}/sdf",
        dependencies=guarded,
        responses={200: {"model": SDFDocument}, **errors(400, 404)},
    )
    async def proplet_sdf(proplet_id: str) -> Response:
        return JSONAnswer(proplet_document(await call(registry.get, proplet_id)))

    @app.delete(
        "/proplets/{proplet_id}",
        status_code=204,
        dependencies=guarded,
        responses={204: {"description": "deleted"}, **errors(400, 404, 409)},
    )
    async def delete_proplet(proplet_id: str) -> Response:
        await call(registry.delete, proplet_id)
        return Response(status_code=204)
