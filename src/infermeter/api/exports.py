"""Billing exports over HTTP (admin key), incremental by ledger position (``billing.exports``).

  GET /v1/admin/exports/{format}?after=SEQ&limit=N     format: stripe | lago | openmeter | focus

JSON formats answer ``{"object": "export", "format", "after", "next_after", "count",
"has_more", "bodies": [...]}``: each body is sent to the billing system as it is. ``focus``
answers the CSV, with the cursor in ``x-infermeter-next-after`` (and ``-has-more``). Pass the
last ``next_after`` as ``after`` next time: no entry is exported twice.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse, Response

from infermeter.api.admin import admin_key
from infermeter.api.usage import INT64_MAX
from infermeter.billing.exports import DEFAULT_EVENT_NAME, MAX_LIMIT, read_page
from infermeter.billing.store import ApiKey

router = APIRouter()


@router.get(
    "/v1/admin/exports/{format}",
    responses={200: {"content": {"application/json": {}, "text/csv": {}}, "description": "One export page."}},
)
def export(
    request: Request,
    format: str = Path(description="stripe | lago | openmeter | focus"),
    key: ApiKey = Depends(admin_key),
    after: int | None = Query(None, ge=-1, le=INT64_MAX, description="next_after of the previous export"),
    limit: int = Query(1000, ge=1, le=MAX_LIMIT),
    event_name: str = Query(DEFAULT_EVENT_NAME, min_length=1, max_length=100),
) -> Any:
    svc = request.app.state.service
    page = read_page(svc.store, format, after, limit, svc.prices.book(), event_name=event_name)
    has_more = len(svc.store.list_records(None, limit=1, after_seq=page.next_after, include_warmup=True)) > 0
    cursor = "" if page.next_after is None else str(page.next_after)
    if page.csv is not None:
        headers = {"x-infermeter-next-after": cursor, "x-infermeter-has-more": str(has_more).lower()}
        return Response(page.csv, media_type="text/csv", headers=headers)
    body: dict[str, Any] = {
        "object": "export",
        "format": page.format,
        "after": page.after,
        "next_after": page.next_after,
        "count": page.count,
        "has_more": has_more,
        "bodies": page.bodies,
    }
    return JSONResponse(body)
