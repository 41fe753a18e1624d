"""The one mapping from errors to HTTP: OpenAI's envelope, a 4xx for bad input, never a 500
for anything a client can cause."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from infermeter.core import errors as e
from infermeter.runtime.admission import Overloaded

log = logging.getLogger(__name__)

STATUS: list[tuple[type[e.InfermeterError], int, str]] = [
    (e.UnknownModel, 404, "invalid_request_error"),
    (e.InvalidRequest, 400, "invalid_request_error"),
    (e.AuthError, 401, "authentication_error"),
    (e.PermissionDenied, 403, "permission_error"),
    (e.NotFound, 404, "not_found_error"),
    (e.BudgetExceeded, 402, "insufficient_quota"),
    (Overloaded, 429, "rate_limit_error"),  # before Unavailable, its base class
    (e.Unavailable, 503, "server_error"),
    # the books failed their own check: an operator's problem, never the client's
    (e.LedgerIntegrityError, 500, "server_error"),
]


def envelope(
    status: int,
    message: str,
    type_: str,
    param: str | None,
    code: str | None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none", "literal"}


def _loc(loc: tuple[Any, ...]) -> str:
    """('body', 'messages', 0, 'role') -> 'messages[0].role'; union-member tags are dropped."""
    skip = ("body", "query", "path", "header")
    parts = [str(p) for p in loc if p not in skip and "[" not in str(p) and str(p).lower() not in _TYPE_TAGS]
    out = ""
    for p in parts:
        out += f"[{p}]" if p.isdigit() else (f".{p}" if out else p)
    return out


_BOUNDS = {
    "greater_than_equal": ("ge", ">="),
    "greater_than": ("gt", ">"),
    "less_than_equal": ("le", "<="),
    "less_than": ("lt", "<"),
}


_KINDS = {
    "int": "an integer",
    "float": "a number",
    "string": "a string",
    "bool": "true or false",
    "list": "a list",
    "dict": "an object",
    "model": "an object",
}


def _fix(error: Any) -> str:
    """The fix, in words, for one pydantic error."""
    kind, ctx = error.get("type", ""), error.get("ctx") or {}
    if kind in _BOUNDS:
        key, op = _BOUNDS[kind]
        return f"send a value {op} {ctx.get(key)}"
    if kind in ("literal_error", "enum"):
        return "pick one of those"
    if kind.endswith(("_type", "_parsing")):
        wanted = _KINDS.get(kind.split("_")[0], kind.split("_")[0])
        return f"send {wanted}, not {type(error.get('input')).__name__}"
    if kind == "too_short":
        return f"send at least {ctx.get('min_length', 1)}"
    if kind == "too_long":
        return f"send at most {ctx.get('max_length')}"
    return "correct the value (see the OpenAI API reference for this field)"


def _range(request: Request, where: str) -> str | None:
    """'from A to B' for a query or path integer of the matched route, from its declared bounds."""
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    params = [*getattr(dependant, "query_params", ()), *getattr(dependant, "path_params", ())]
    for param in params:
        if param.alias != where:
            continue
        low = high = None
        for bound in param.field_info.metadata:
            low = getattr(bound, "ge", low)
            high = getattr(bound, "le", high)
        if low is not None and high is not None:
            return f"from {low} to {high}"
    return None


def install(app: FastAPI) -> None:
    @app.exception_handler(e.InfermeterError)
    async def _known(request: Request, exc: e.InfermeterError) -> JSONResponse:
        for cls, status, type_ in STATUS:
            if isinstance(exc, cls):
                if status >= 500:
                    log.warning("%s: %s", type(exc).__name__, exc.message)
                after = getattr(exc, "retry_after_s", None)  # Overloaded (429), NotYet (404)
                retry = {"retry-after": str(after)} if after is not None else None
                return envelope(status, exc.message, type_, exc.param, exc.code, retry)
        log.error("unmapped %s: %s", type(exc).__name__, exc.message)
        return envelope(500, exc.message, "server_error", exc.param, exc.code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        where = _loc(tuple(first.get("loc", ())))
        kind = first.get("type", "")
        if kind == "json_invalid":
            msg = (
                "the request body is not valid JSON "
                f"({first.get('ctx', {}).get('error', 'parse error')}); send a JSON object"
            )
            return envelope(400, msg, "invalid_request_error", None, "invalid_json")
        if not where and kind in ("model_attributes_type", "dict_type"):
            msg = "the request body is not a JSON object; send one with 'Content-Type: application/json'"
            return envelope(400, msg, "invalid_request_error", None, "invalid_json")
        if kind == "missing":
            msg = f"'{where}' is required; add it to the request body"
        else:
            value = first.get("input")
            shown = repr(value) if not isinstance(value, (dict, list)) else type(value).__name__
            msg = f"'{where}' = {shown} is invalid: {first.get('msg', 'bad value')}; {_fix(first)}"
            span = _range(request, where) if first.get("loc", ("",))[0] in ("query", "path") else None
            if span is not None and kind in _BOUNDS:
                msg = f"'{where}' = {shown} is out of range; send an integer {span}"
            elif span is not None and kind == "int_parsing":
                msg = f"'{where}' = {shown} is not an integer; send an integer {span}"
        return envelope(400, msg, "invalid_request_error", where or None, "invalid_value")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        msg = str(exc.detail)
        if exc.status_code == 404:
            msg = f"{request.method} {request.url.path} does not exist; see /docs for the API"
        elif exc.status_code == 405:
            msg = f"{request.method} is not allowed on {request.url.path}"
        elif exc.status_code == 400 and msg == "There was an error parsing the body":
            msg = "the request body could not be parsed (JSON nested too deeply?); send a flat JSON object"
        return envelope(exc.status_code, msg, "invalid_request_error", None, None)

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return envelope(
            500, "internal error; the request was not charged", "server_error", None, "internal_error"
        )
