"""Operator endpoints (admin key) and usage exports as CloudEvents JSON lines.

Operator (``/v1/admin/...``, an admin key; a tenant key gets 403):
  GET /v1/admin/usage?group_by=tenant|day|model|tier   cross-tenant totals
  GET /v1/admin/overview                               where the device time went, engines
  GET /v1/admin/export/usage.jsonl?tenant=&start=&end= every tenant's records, streamed
Tenant (a tenant key; sees only its own records):
  GET /v1/usage/export.jsonl?start=&end=               the caller's records, streamed
  GET /v1/usage/recent?limit=                          the caller's newest records first

Device time since start comes from the pipeline's Prometheus counters (the same numbers
``/metrics`` shows); warm-up over the ledger's whole life comes from its warm-up entries.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import StreamingResponse

from infermeter.api.auth import require_admin, tenant_of
from infermeter.api.completions import api_key
from infermeter.api.records import record_view
from infermeter.api.service import ServingService, service_of
from infermeter.api.usage import _time, row_view
from infermeter.billing.store import ApiKey, Store, UsageRow
from infermeter.core.errors import AuthError, NotFound
from infermeter.core.money import format_decimal
from infermeter.core.records import PLATFORM_TENANT, iso

router = APIRouter()

EXPORT_PAGE = 500
MAX_RECENT = 200
RECENT_WINDOW = 256  # the first ledger tail /v1/usage/recent looks at; then x4 each time
USES = ("billed", "warmup", "unattributed")
JSONL = "application/x-ndjson"


async def admin_key(request: Request) -> ApiKey:
    """Dependency: an authenticated admin key (401 without a key, 403 for a tenant key)."""
    if not request.headers.get("authorization"):
        raise AuthError(
            f"missing API key: {request.url.path} needs an admin key; send 'Authorization: Bearer "
            "<admin key>' (create one with `infermeter keys create --admin`)"
        )
    key = await api_key(request)
    require_admin(key)
    return key


def install(app: FastAPI) -> None:
    """Add the routes, and publish the service's engines in ``infermeter_engine_info``."""
    svc: ServingService = app.state.service
    for info in svc.engine_infos():
        svc.metrics.describe_engine(
            info.engine_id, info.model, info.backend, info.precision.value, info.device
        )
    app.include_router(router)


# cross-tenant usage -------------------------------------------------------------------------
def _sum_rows(key: str, rows: list[UsageRow]) -> UsageRow:
    return UsageRow(
        key,
        sum(r.requests for r in rows),
        sum(r.prompt_tokens for r in rows),
        sum(r.completion_tokens for r in rows),
        sum(r.device_us for r in rows),
        sum(r.ru_micros for r in rows),
        sum((r.cost for r in rows), start=Decimal(0)),
    )


@router.get("/v1/admin/usage")
def admin_usage(
    request: Request,
    key: ApiKey = Depends(admin_key),
    group_by: Literal["tenant", "day", "model", "tier"] = "tenant",
    start: str | None = None,
    end: str | None = None,
) -> dict[str, Any]:
    """Totals over every tenant (warm-up excluded: it is never billed)."""
    svc = service_of(request)
    store: Store = svc.store
    t0, t1 = _time(start, "start"), _time(end, "end")
    data: list[dict[str, Any]] = []
    if group_by == "tenant":
        for tenant in store.list_tenants():
            row = _sum_rows(tenant.tenant_id, store.usage_summary(tenant.tenant_id, "tier", t0, t1))
            data.append({**row_view(row), "name": tenant.name})
    else:
        data = [row_view(r) for r in store.usage_summary(None, group_by, t0, t1)]
    total = sum((Decimal(d["cost"]) for d in data), start=Decimal(0))
    return {
        "object": "list",
        "group_by": group_by,
        "data": data,
        "currency": svc.plan.currency,
        "total_cost": format_decimal(total),
    }


# where the device time went -----------------------------------------------------------------
def _ledger_warmup_ms(store: Store) -> dict[str, float]:
    """Warm-up device ms per engine over the ledger's life (a few entries per engine load)."""
    out: dict[str, float] = {}
    after: int | None = None
    while True:
        page = store.list_records(PLATFORM_TENANT, limit=EXPORT_PAGE, after_seq=after, include_warmup=True)
        for _, record in page:
            if record.warmup:
                out[record.engine_id] = out.get(record.engine_id, 0.0) + record.device_us / 1000
        if len(page) < EXPORT_PAGE:
            return out
        after = page[-1][0]


@router.get("/v1/admin/overview")
def admin_overview(request: Request, key: ApiKey = Depends(admin_key)) -> dict[str, Any]:
    """Device time billed vs warm-up vs unattributed per engine, utilization, the engine list.

    ``utilization`` is measured device time (billed + warm-up + unattributed: every step's
    time) over wall time since the service started, per engine; ``device_utilization``
    sums the engines sharing a device. Unattributed time is device work no request was
    billed for (rounding, padding, zero-cost steps), so it counts as busy.
    """
    svc = service_of(request)
    m = svc.metrics
    wall_ms = max((time.time() - m.value("infermeter_start_time_seconds")) * 1000, 1.0)
    ledger_warmup = _ledger_warmup_ms(svc.store)
    engines: list[dict[str, Any]] = []
    busy_by_device: dict[str, float] = {}
    totals = dict.fromkeys(USES, 0.0)
    for info in svc.engine_infos():
        used = {
            u: m.value("infermeter_engine_device_ms_total", {"engine": info.engine_id, "use": u})
            for u in USES
        }
        busy = sum(used.values())
        busy_by_device[info.device] = busy_by_device.get(info.device, 0.0) + busy
        for u in USES:
            totals[u] += used[u]
        engines.append(
            {
                "engine_id": info.engine_id,
                "model": info.model,
                "backend": info.backend,
                "precision": info.precision.value,
                "device": info.device,
                "device_class": info.device_class,
                "max_batch": info.max_batch,
                "max_seq_len": info.max_seq_len,
                "device_ms": {**used, "busy": busy},
                "utilization": busy / wall_ms,
                "ledger_warmup_ms": ledger_warmup.get(info.engine_id, 0.0),
            }
        )
    queue_depth = svc.worker.queue_depth()
    m.queue_depth.set(queue_depth)
    return {
        "object": "admin.overview",
        "started_at": iso(datetime.fromtimestamp(m.value("infermeter_start_time_seconds"), UTC)),
        "uptime_s": wall_ms / 1000,
        "device_ms": {**totals, "busy": sum(totals.values())},
        "devices": [
            {"device": d, "busy_ms": b, "utilization": b / wall_ms} for d, b in sorted(busy_by_device.items())
        ],
        "engines": engines,
        "queue_depth": queue_depth,
        "ledger_entries": svc.store.ledger_size(),
        "ledger_warmup_ms": sum(ledger_warmup.values()),
        "tenants": len(svc.store.list_tenants()),
        "currency": svc.plan.currency,
    }


# exports ------------------------------------------------------------------------------------
def _jsonl(
    store: Store, tenant_id: str | None, start: datetime | None, end: datetime | None, include_warmup: bool
) -> Iterator[bytes]:
    """Ledger order, one CloudEvent per line, read a page at a time (constant memory)."""
    after: int | None = None
    while True:
        page = store.list_records(
            tenant_id, limit=EXPORT_PAGE, after_seq=after, start=start, end=end, include_warmup=include_warmup
        )
        for _, record in page:
            yield json.dumps(record.to_cloudevent(), separators=(",", ":")).encode() + b"\n"
        if len(page) < EXPORT_PAGE:
            return
        after = page[-1][0]


def _stream(body: Iterator[bytes], filename: str) -> StreamingResponse:
    return StreamingResponse(
        body, media_type=JSONL, headers={"content-disposition": f'attachment; filename="{filename}"'}
    )


@router.get("/v1/admin/export/usage.jsonl")
def admin_export(
    request: Request,
    key: ApiKey = Depends(admin_key),
    tenant: str | None = Query(None, description="tenant id or name; all tenants when absent"),
    start: str | None = None,
    end: str | None = None,
    include_warmup: bool = False,
) -> StreamingResponse:
    """Usage records as CloudEvents 1.0 JSON lines (``subject`` = tenant id; OpenMeter-ready)."""
    store: Store = service_of(request).store
    t0, t1 = _time(start, "start"), _time(end, "end")
    tenant_id = None
    if tenant is not None:
        found = store.find_tenant(tenant)
        if found is None:
            raise NotFound(
                f"no tenant {tenant!r}; list tenants with `infermeter tenants list`", param="tenant"
            )
        tenant_id = found.tenant_id
    return _stream(_jsonl(store, tenant_id, t0, t1, include_warmup), f"usage-{tenant_id or 'all'}.jsonl")


@router.get("/v1/usage/export.jsonl")
def tenant_export(
    request: Request,
    key: ApiKey = Depends(api_key),
    start: str | None = None,
    end: str | None = None,
) -> StreamingResponse:
    """The caller's own usage records as CloudEvents 1.0 JSON lines."""
    tenant = tenant_of(key)
    store: Store = service_of(request).store
    return _stream(
        _jsonl(store, tenant, _time(start, "start"), _time(end, "end"), False), f"usage-{tenant}.jsonl"
    )


@router.get("/v1/usage/recent")
def tenant_recent(
    request: Request,
    key: ApiKey = Depends(api_key),
    limit: int = Query(20, ge=1, le=MAX_RECENT),
) -> dict[str, Any]:
    """The caller's newest records, newest first.

    The ledger lists oldest first, so this looks at ever larger tails of it (the last
    256, 1,024, ... entries) until they hold ``limit`` of the caller's records or the whole
    ledger has been read.
    """
    tenant = tenant_of(key)
    store: Store = service_of(request).store
    size = store.ledger_size()
    window = RECENT_WINDOW
    while True:
        after = size - window - 1 if window < size else None
        # no tight limit: entries appended since ledger_size() are the newest, keep them
        rows = store.list_records(tenant, limit=10**9, after_seq=after)
        if len(rows) >= limit or after is None:
            break
        window *= 4
    newest = rows[-limit:][::-1]
    return {"object": "list", "data": [record_view(r, seq) for seq, r in newest]}
