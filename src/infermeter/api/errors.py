"""The one mapping from errors to HTTP: OpenAI's envelope, a 4xx for bad input, never a 500
for anything a client can cause."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from infermeter.billing.rate_limits import RateLimited
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


def _budget_status(request: Request) -> int:
    """402 (the default) or 429 (OpenAI's convention), from ``settings.budget_status``."""
    settings = getattr(getattr(request.app.state, "service", None), "settings", None)
    return int(getattr(settings, "budget_status", 402))


def _telling(errors: Sequence[Any]) -> Any:
    """The error to report: for a value refused by every member of a union (``stop``: a
    string or a list of at most 4), the member whose shape it had, not the first member."""
    first = errors[0]
    loc = tuple(first.get("loc", ()))
    for other in errors[1:]:
        other_loc = tuple(other.get("loc", ()))
        same_field = _loc(other_loc) == _loc(loc) and len(other_loc) == len(loc)
        if same_field and not str(other.get("type", "")).endswith("_type"):
            return other
    return first


def _unparsable(body: bytes) -> str:
    """Why a body that FastAPI could not parse was refused (it raises no JSON error for these)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return (
            f"the request body is not valid UTF-8 (byte 0x{body[exc.start]:02x} at offset {exc.start}); "
            "send JSON encoded as UTF-8"
        )
    try:
        json.loads(text)
    except RecursionError:
        pass
    except ValueError:  # an integer literal past Python's limit on digits (4,300)
        return (
            f"the request body holds an integer of more than {sys.get_int_max_str_digits():,} digits, "
            "which no field accepts; send each number within its field's range"
        )
    return "the request body could not be parsed (JSON nested too deeply?); send a flat JSON object"


def install(app: FastAPI) -> None:
    @app.exception_handler(e.InfermeterError)
    async def _known(request: Request, exc: e.InfermeterError) -> JSONResponse:
        if isinstance(exc, RateLimited):  # OpenAI's 429: type requests|tokens, Retry-After
            headers = {**exc.headers, "retry-after": str(exc.retry_after_s)}
            return envelope(429, exc.message, exc.kind, exc.param, exc.code, headers)
        if isinstance(exc, e.BudgetExceeded) and _budget_status(request) == 429:
            return envelope(429, exc.message, "insufficient_quota", exc.param, exc.code)
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
        first = _telling(exc.errors())
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
        if kind == "missing" and not where:
            msg = "the request body is empty; send a JSON object with 'Content-Type: application/json'"
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
            msg = _unparsable(await request.body())
        # a 405 names the methods allowed (RFC 9110 §15.5.6: the Allow header is required)
        headers = dict(exc.headers) if exc.headers else None
        return envelope(exc.status_code, msg, "invalid_request_error", None, None, headers)

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return envelope(
            500, "internal error; the request was not charged", "server_error", None, "internal_error"
        )
