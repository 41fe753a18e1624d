"""Models, health and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from infermeter.api.admin import admin_key
from infermeter.api.completions import api_key
from infermeter.api.service import ServingService, service_of
from infermeter.billing.store import ApiKey
from infermeter.core.errors import Unavailable

router = APIRouter()


@router.get("/v1/models")
def models(request: Request, key: ApiKey = Depends(api_key)) -> dict[str, Any]:
    svc = service_of(request)
    data = []
    for model in svc.router.models():
        engines = svc.router.engines(model)
        data.append(
            {
                "id": model,
                "object": "model",
                "created": 0,
                "owned_by": "infermeter",
                "engines": [
                    {
                        "engine_id": e.engine_id,
                        "backend": e.backend,
                        "precision": e.precision.value,
                        "device": e.device,
                        "max_seq_len": e.max_seq_len,
                    }
                    for e in engines
                ],
            }
        )
    return {"object": "list", "data": data}


def _probe(svc: ServingService, problem: str | None) -> JSONResponse:
    """200 with the status, or 503 whose ``error`` names the cause (OpenAI's envelope)."""
    try:
        entries: int | None = svc.store.ledger_size()
    except Unavailable:  # cluster mode with PostgreSQL down: the worker may still serve
        entries = None
    body: dict[str, Any] = {
        "status": "ok" if problem is None else ("unhealthy" if svc.health() else svc.state),
        "state": svc.state,
        "engines": [e.engine_id for e in svc.engine_infos()],
        "ledger_entries": entries,
    }
    depth = getattr(svc.store, "outbox_depth", None)
    if depth is not None:  # cluster mode: the usage queue
        relay = getattr(svc.store, "relay", None)
        body["queue"] = {"outbox": depth(), "relay_connected": bool(getattr(relay, "connected", False))}
    if problem is None:
        return JSONResponse(body)
    code = "ledger_unavailable" if svc.health() else "unavailable"
    body["error"] = {"message": problem, "type": "server_error", "param": None, "code": code}
    return JSONResponse(body, status_code=503)


@router.get("/healthz")
@router.get("/health")  # the vLLM / TGI name, which load generators such as guidellm probe
async def healthz(request: Request) -> JSONResponse:
    """Liveness: 503 while the ledger cannot append (or before the engines are warm)."""
    svc = service_of(request)
    problem = svc.health() or (None if svc.started else "the service is starting (warming its engines)")
    return _probe(svc, problem)


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    """Readiness, for load balancers: 503 while starting, draining or unable to append."""
    svc = service_of(request)
    return _probe(svc, svc.readiness() if svc.started else "the service is starting (warming its engines)")


@router.get("/metrics")
def metrics(request: Request, key: ApiKey = Depends(admin_key)) -> Response:
    """Prometheus text format. Needs an admin key: the series are labelled by tenant."""
    svc = service_of(request)
    svc.metrics.queue_depth.set(svc.worker.queue_depth())
    svc.metrics.ledger_entries.set(svc.store.ledger_size())
    store: Any = svc.store
    if hasattr(store, "relay_lag_s"):  # cluster mode: the worker's side of the usage queue
        svc.metrics.outbox_records.set(store.outbox_depth())
        svc.metrics.relay_lag.set(store.relay_lag_s())
        svc.metrics.relay_connected.set(1 if store.relay.connected else 0)
    return Response(generate_latest(svc.metrics.registry), media_type=CONTENT_TYPE_LATEST)
