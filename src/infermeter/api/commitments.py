"""Reserved capacity over HTTP (``billing.reservations``).

Operator (admin key):
  GET  /v1/admin/commitments               every commitment
  POST /v1/admin/commitments               add a tenant's monthly RU commitment
Tenant:
  GET  /v1/commitments                     the caller's commitments and this month's use
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from infermeter.api.admin import admin_key
from infermeter.api.auth import tenant_of
from infermeter.api.completions import api_key
from infermeter.billing.invoices import build_invoice, invoice_currency, period_bounds
from infermeter.billing.reservations import new_commitment
from infermeter.billing.store import ApiKey
from infermeter.core.errors import NotFound
from infermeter.core.records import iso, utc_now

router = APIRouter()


class NewCommitment(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tenant: str = Field(description="tenant id or name")
    ru_per_month: str = Field(description='RU per calendar month, a decimal string, e.g. "1000000"')
    per_1000_ru: str = Field(description='reserved price per 1,000 RU, e.g. "0.0015"')
    start_at: str | None = Field(None, description="ISO 8601 time at or after now; default now")
    end_at: str | None = Field(None, description="ISO 8601 time after start_at; default open-ended")


@router.get("/v1/admin/commitments")
def list_commitments(request: Request, key: ApiKey = Depends(admin_key)) -> dict[str, Any]:
    svc = request.app.state.service
    return {"object": "list", "data": [c.to_json() for c in svc.store.list_commitments()]}


@router.post("/v1/admin/commitments", status_code=201, responses={404: {"description": "No such tenant."}})
def add_commitment(request: Request, body: NewCommitment, key: ApiKey = Depends(admin_key)) -> dict[str, Any]:
    svc = request.app.state.service
    tenant = svc.store.find_tenant(body.tenant)
    if tenant is None:
        raise NotFound(
            f"no tenant named or with id {body.tenant!r}; list them with `infermeter tenants list`"
        )
    made = new_commitment(
        tenant.tenant_id, body.ru_per_month, body.per_1000_ru, body.start_at, body.end_at, utc_now()
    )
    stored: dict[str, Any] = svc.store.add_commitment(made).to_json()
    svc.prices.invalidate()  # the tenant's scheduling weight changes at once
    return stored


@router.get("/v1/commitments", responses={403: {"description": "An admin key has no tenant commitments."}})
def my_commitments(request: Request, key: ApiKey = Depends(api_key)) -> dict[str, Any]:
    """The caller's commitments and, for the current month so far, their coverage."""
    svc = request.app.state.service
    tenant = tenant_of(key)
    now = utc_now()
    period = now.strftime("%Y-%m")
    start, end = period_bounds(period)
    mine = svc.store.list_commitments(tenant)
    records = [r for _, r in svc.store.list_records(tenant, limit=10**9, start=start, end=end)]
    inv = build_invoice(tenant, period, records, invoice_currency(records, svc.plan.currency), mine)
    return {
        "object": "commitments",
        "tenant_id": tenant,
        "at": iso(now),
        "period": period,
        "data": [c.to_json() for c in mine],
        "this_period": [use.to_json() for use in inv.commitments],
    }
