"""Price plans over HTTP (``billing.plans``).

Operator (admin key):
  GET  /v1/admin/plans                     every plan version and assignment
  POST /v1/admin/plans                     add the next version of a plan (or its first)
  POST /v1/admin/plans/{name}/assign       put a tenant on a plan from a time on
Tenant:
  GET  /v1/plan                            the caller's plan now, its history, its versions
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from infermeter.api.admin import admin_key
from infermeter.api.auth import tenant_of
from infermeter.api.completions import api_key
from infermeter.billing.plan_registry import assign, create_version
from infermeter.billing.plans import parse_prices, parse_time
from infermeter.billing.store import ApiKey
from infermeter.core.errors import NotFound
from infermeter.core.records import iso, utc_now
from infermeter.core.types import ServiceTier

router = APIRouter()


class NewPlanVersion(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="plan name, e.g. standard")
    currency: str = Field(description="ISO 4217 code, e.g. USD")
    per_1000_ru: dict[str, str] = Field(description='tier -> decimal string, e.g. {"default": "0.0020"}')
    effective_from: str | None = Field(None, description="ISO 8601 time at or after now; default now")


class NewAssignment(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tenant: str = Field(description="tenant id or name")
    effective_from: str | None = Field(None, description="ISO 8601 time at or after now; default now")


def _book_view(svc: Any, tenant_id: str | None = None) -> dict[str, Any]:
    book = svc.prices.book()
    return {
        "object": "plans",
        "default_plan": svc.plan.to_json(),
        "versions": [v.to_json() for v in book.versions()],
        "assignments": [a.to_json() for a in book.assignments(tenant_id)],
    }


@router.get("/v1/admin/plans")
def list_plans(request: Request, key: ApiKey = Depends(admin_key)) -> dict[str, Any]:
    return _book_view(request.app.state.service)


@router.post("/v1/admin/plans", status_code=201)
def create_plan_version(
    request: Request, body: NewPlanVersion, key: ApiKey = Depends(admin_key)
) -> dict[str, Any]:
    svc = request.app.state.service
    now = utc_now()
    at = now if body.effective_from is None else parse_time(body.effective_from)
    version = create_version(
        svc.store, svc.plan, body.name, body.currency, parse_prices(body.per_1000_ru), at, now
    )
    svc.prices.invalidate()
    return version.to_json()


@router.post(
    "/v1/admin/plans/{name}/assign",
    status_code=201,
    responses={404: {"description": "No such tenant."}},
)
def assign_plan(
    request: Request, name: str, body: NewAssignment, key: ApiKey = Depends(admin_key)
) -> dict[str, Any]:
    svc = request.app.state.service
    tenant = svc.store.find_tenant(body.tenant)
    if tenant is None:
        raise NotFound(
            f"no tenant named or with id {body.tenant!r}; list them with `infermeter tenants list`"
        )
    now = utc_now()
    at = now if body.effective_from is None else parse_time(body.effective_from)
    done = assign(svc.store, svc.plan, tenant.tenant_id, name, at, now)
    svc.prices.invalidate()
    return done.to_json()


@router.get("/v1/plan", responses={403: {"description": "An admin key has no tenant plan."}})
def my_plan(request: Request, key: ApiKey = Depends(api_key)) -> dict[str, Any]:
    """The caller's plan in effect now, the prices it pays per tier, and its plan history."""
    svc = request.app.state.service
    tenant = tenant_of(key)
    now = utc_now()
    plan = svc.prices.plan_at(tenant, now)
    view = _book_view(svc, tenant)
    mine = {a["plan"] for a in view["assignments"]}
    view["versions"] = [v for v in view["versions"] if v["plan"] in mine]
    quotes = {}
    for tier in ServiceTier:
        if tier in plan.per_1000_ru:
            q = svc.prices.quote(tenant, tier, now)
            quotes[tier.value] = {"price_point": q.price_point, "multiplier": str(q.multiplier)}
    return {
        **view,
        "object": "tenant_plan",
        "tenant_id": tenant,
        "at": iso(now),
        "current": plan.to_json(),
        "price_points": quotes,
    }
