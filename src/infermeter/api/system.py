"""Models, health and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from infermeter.api.admin import admin_key
from infermeter.api.completions import api_key
from infermeter.billing.store import ApiKey

router = APIRouter()


@router.get("/v1/models")
def models(request: Request, key: ApiKey = Depends(api_key)) -> dict[str, Any]:
    svc = request.app.state.service
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


@router.get("/healthz")
async def healthz(request: Request) -> dict[str, Any]:
    svc = request.app.state.service
    return {
        "status": "ok" if svc.started else "starting",
        "engines": [e.engine_id for e in svc.engine_infos()],
        "ledger_entries": svc.store.ledger_size(),
    }


@router.get("/metrics")
def metrics(request: Request, key: ApiKey = Depends(admin_key)) -> Response:
    """Prometheus text format. Needs an admin key: the series are labelled by tenant."""
    svc = request.app.state.service
    svc.metrics.queue_depth.set(svc.worker.queue_depth())
    svc.metrics.ledger_entries.set(svc.store.ledger_size())
    return Response(generate_latest(svc.metrics.registry), media_type=CONTENT_TYPE_LATEST)
