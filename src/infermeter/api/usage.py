"""Tenant read side: usage summaries, records, invoices. A tenant key sees only its tenant."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response

from infermeter.api.auth import tenant_of
from infermeter.api.completions import api_key
from infermeter.api.records import record_view
from infermeter.api.service import service_of
from infermeter.billing.invoices import (
    build_invoice,
    invoice_currency,
    invoice_to_csv,
    invoice_to_json,
    period_bounds,
)
from infermeter.billing.store import ApiKey, UsageRow
from infermeter.core.errors import InvalidRequest, NotFound
from infermeter.core.money import format_decimal

router = APIRouter()

MAX_PAGE = 1000
INT64_MAX = 2**63 - 1  # the largest integer SQLite stores: ledger positions never pass it


def _time(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRequest(
            f"{name}={value!r} is not an ISO 8601 date or time; use e.g. 2026-11-01 or 2026-11-01T00:00:00Z",
            param=name,
        ) from None
    try:  # in UTC here, so that no later conversion can overflow
        return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    except OverflowError:
        raise InvalidRequest(
            f"{name}={value!r} is outside the years 0001-9999 once converted to UTC; "
            "send a time between 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z",
            param=name,
        ) from None


def row_view(row: UsageRow) -> dict[str, Any]:
    return {
        "key": row.key,
        "requests": row.requests,
        "prompt_tokens": row.prompt_tokens,
        "completion_tokens": row.completion_tokens,
        "device_ms": row.device_us / 1000,
        "ru": format_decimal(row.ru_micros / Decimal(10**6)),
        "cost": format_decimal(row.cost),
    }


@router.get("/v1/usage")
def usage(
    request: Request,
    key: ApiKey = Depends(api_key),
    group_by: Literal["day", "model", "tier"] = "day",
    start: str | None = None,
    end: str | None = None,
) -> dict[str, Any]:
    svc = service_of(request)
    tenant = tenant_of(key)
    rows = svc.store.usage_summary(tenant, group_by, _time(start, "start"), _time(end, "end"))
    data = [row_view(r) for r in rows]
    return {
        "object": "list",
        "tenant_id": tenant,
        "group_by": group_by,
        "data": data,
        "currency": svc.plan.currency,
        "total_cost": format_decimal(sum((r.cost for r in rows), start=Decimal(0))),
    }


@router.get("/v1/usage/records")
def usage_records(
    request: Request,
    key: ApiKey = Depends(api_key),
    limit: int = Query(50, ge=1, le=MAX_PAGE),
    after: int | None = Query(
        None, ge=-1, le=INT64_MAX, description="seq of the last record of the previous page"
    ),
    start: str | None = None,
    end: str | None = None,
) -> dict[str, Any]:
    svc = service_of(request)
    tenant = tenant_of(key)
    rows = svc.store.list_records(
        tenant, limit=limit + 1, after_seq=after, start=_time(start, "start"), end=_time(end, "end")
    )
    page = rows[:limit]
    windows = svc.window_ledger.meters_many(r.request_id for _, r in page) if svc.window_ledger else {}
    return {
        "object": "list",
        "data": [record_view(r, seq, windows.get(r.request_id)) for seq, r in page],
        "has_more": len(rows) > limit,
        "next_after": page[-1][0] if page else None,
    }


@router.get("/v1/usage/records/{record_id}")
def usage_record(request: Request, record_id: str, key: ApiKey = Depends(api_key)) -> dict[str, Any]:
    svc = service_of(request)
    tenant = tenant_of(key)
    record = svc.store.get_record(record_id) or svc.store.get_by_request(record_id)
    if record is None or record.tenant_id != tenant:  # another tenant's record does not exist for you
        raise NotFound(f"no usage record {record_id!r} for this tenant; list yours at /v1/usage/records")
    return record_view(record, windows=svc.window_meters(record.request_id))


@router.get("/v1/invoices/{period}")
def invoice(
    request: Request,
    period: str,
    key: ApiKey = Depends(api_key),
    format: Literal["json", "csv"] = "json",
) -> Any:
    svc = service_of(request)
    tenant = tenant_of(key)
    start, end = period_bounds(period)
    records = [r for _, r in svc.store.list_records(tenant, limit=10**9, start=start, end=end)]
    currency = invoice_currency(records, svc.plan.currency)
    inv = build_invoice(tenant, period, records, currency, svc.store.list_commitments(tenant))
    if format == "csv":
        return Response(invoice_to_csv(inv), media_type="text/csv")
    return JSONResponse(invoice_to_json(inv))
