"""The OpenAPI document, made true: who needs a key, what each route answers, which models.

FastAPI's generated document knows neither our authentication (a plain dependency reading
the ``Authorization`` header) nor our error mapping (every bad input is a 400 in OpenAI's
envelope, never FastAPI's 422), nor the models this server runs. This module rewrites it
once, from the app's own routes:

- ``bearer`` (HTTP bearer) security on every route that depends on an API key;
- the error statuses each route can really return, each with the ``ErrorResponse`` schema:
  401 for a route with a key, 403 for an admin route or a tenant route (the other kind of
  key), 400 for a route with parameters (other than plain string path segments) or a body,
  413 on every route (the body limit), and the route's own (402 budget, 404 not found, 503
  unavailable) from ``ROUTE_ERRORS`` or from ``responses=`` on the route's decorator;
  FastAPI's 422 is removed;
- the media types of responses that are not JSON (server-sent events, CSV, JSON lines,
  Prometheus text);
- ``model`` in the completion bodies: an enum of the models served (others get a 404).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute

from infermeter.api.admin import admin_key
from infermeter.api.completions import api_key

BEARER = "bearer"
ERROR_REF = {"$ref": "#/components/schemas/ErrorResponse"}

ERROR_SCHEMA: dict[str, Any] = {
    "title": "ErrorResponse",
    "description": "OpenAI's error envelope; `message` names the field, the value, the limit and the fix.",
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string", "examples": ["invalid_request_error"]},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}

WHY = {
    400: "Bad input: the message names the field, the value and the limit.",
    401: "Missing, malformed, invalid or revoked API key.",
    402: "The tenant's budget cannot hold this request's reservation.",
    403: "The key is of the wrong kind (a tenant key on an admin route, or an admin key on a tenant route).",
    404: "Not found (an unknown model, or a record, checkpoint or tenant that does not exist for this key).",
    413: "The request body is over the server's limit (`--max-body-bytes`).",
    429: "A rate limit (see Retry-After), or an exhausted budget under budget_status=429.",
    503: "Temporarily unavailable (engine or ledger); the request was not charged.",
}

TENANT = (403,)  # a tenant route refuses an admin key (it has no tenant)
ROUTE_ERRORS: dict[tuple[str, str], tuple[int, ...]] = {
    ("POST", "/v1/chat/completions"): (*TENANT, 402, 404, 429, 503),
    ("POST", "/v1/completions"): (*TENANT, 402, 404, 429, 503),
    ("GET", "/v1/usage"): TENANT,
    ("GET", "/v1/usage/records"): TENANT,
    ("GET", "/v1/usage/records/{record_id}"): (*TENANT, 404),
    ("GET", "/v1/usage/recent"): TENANT,
    ("GET", "/v1/usage/export.jsonl"): TENANT,
    ("GET", "/v1/invoices/{period}"): TENANT,
    ("GET", "/v1/receipts/{record_id}"): (404,),
    ("GET", "/v1/ledger/consistency"): (404,),
    ("GET", "/v1/admin/export/usage.jsonl"): (404,),
    ("POST", "/v1/admin/corrections"): (404,),
    ("GET", "/log/checkpoint"): (404,),
    ("GET", "/log/tile/{path}"): (400, 404),
}

SSE, JSON = "text/event-stream", "application/json"
SUCCESS_TYPES: dict[tuple[str, str], tuple[str, ...]] = {
    ("POST", "/v1/chat/completions"): (JSON, SSE),
    ("POST", "/v1/completions"): (JSON, SSE),
    ("GET", "/v1/invoices/{period}"): (JSON, "text/csv"),
    ("GET", "/v1/usage/export.jsonl"): ("application/x-ndjson",),
    ("GET", "/v1/admin/export/usage.jsonl"): ("application/x-ndjson",),
    ("GET", "/metrics"): ("text/plain",),
    ("GET", "/log/checkpoint"): ("text/plain",),
    ("GET", "/log/tile/{path}"): ("application/octet-stream",),
}
COMPLETIONS = ("/v1/chat/completions", "/v1/completions")


def _calls(dependant: Dependant) -> set[Any]:
    out = {dependant.call}
    for dep in dependant.dependencies:
        out |= _calls(dep)
    return out


def _statuses(route: APIRoute, method: str) -> tuple[bool, set[int]]:
    """(needs a key, the error statuses) for one operation."""
    calls = _calls(route.dependant)
    secured = api_key in calls or admin_key in calls
    statuses = {413} | set(ROUTE_ERRORS.get((method, route.path_format), ()))
    if secured:
        statuses.add(401)
    if admin_key in calls:
        statuses.add(403)
    d = route.dependant
    typed_path = [p for p in d.path_params if p.field_info.annotation is not str]  # a str always parses
    if d.query_params or typed_path or d.header_params or d.body_params:
        statuses.add(400)
    return secured, statuses


def _model_enum(schema: dict[str, Any], operation: dict[str, Any], models: list[str]) -> None:
    content = operation.get("requestBody", {}).get("content", {}).get(JSON, {})
    ref = content.get("schema", {}).get("$ref", "")
    body = schema.get("components", {}).get("schemas", {}).get(ref.rsplit("/", 1)[-1], {})
    field = body.get("properties", {}).get("model")
    if field is not None and models:
        field["enum"] = list(models)
        field["examples"] = list(models[:1])
        field["description"] = "A model this server serves (GET /v1/models lists them with their engines)."


def build_openapi(app: FastAPI, routers: Sequence[APIRouter], models: list[str]) -> dict[str, Any]:
    """The document for ``app``, rewritten as the module docstring says.

    ``routers``: the routers the app includes (their own routes are the ``APIRoute`` objects
    with the dependencies; newer FastAPI versions wrap included routes in ``app.routes``).
    """
    schema = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
    )
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    schemas["ErrorResponse"] = ERROR_SCHEMA
    components["securitySchemes"] = {
        BEARER: {
            "type": "http",
            "scheme": "bearer",
            "description": "An infermeter API key: `Authorization: Bearer im-...` (tenant or admin key).",
        }
    }
    for route in (r for router in routers for r in router.routes):
        if not isinstance(route, APIRoute) or not route.include_in_schema:
            continue
        for method in route.methods or ():
            operation = schema["paths"].get(route.path_format, {}).get(method.lower())
            if operation is None:
                continue
            secured, statuses = _statuses(route, method)
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            statuses |= {int(s) for s in responses if s.isdigit() and int(s) >= 400}
            if secured:
                operation["security"] = [{BEARER: []}]
            for status in sorted(statuses):
                existing = responses.get(str(status), {})
                responses[str(status)] = {
                    "description": existing.get("description") or WHY.get(status, "Error"),
                    "content": {JSON: {"schema": ERROR_REF}},
                }
            types = SUCCESS_TYPES.get((method, route.path_format))
            if types is not None:
                ok = responses.setdefault("200", {"description": "Successful Response"})
                ok["content"] = {t: {"schema": {}} for t in types}
            if route.path_format in COMPLETIONS:
                _model_enum(schema, operation, models)
    return schema


def install(app: FastAPI, routers: Sequence[APIRouter], models: list[str]) -> None:
    """Serve the rewritten document at ``/openapi.json`` (built on first request, then cached)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app, routers, models)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
