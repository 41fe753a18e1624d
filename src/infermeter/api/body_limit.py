"""A request body limit as a pure ASGI middleware: 413 before a large body is read.

Two checks, so that neither a declared nor an undeclared body can fill memory:

- ``Content-Length`` over the limit: the 413 goes out at once; the application is never
  called and not one byte of the body is read (the server closes the connection after it).
- no ``Content-Length`` (a chunked body): the bytes are counted as the application reads
  them; the read that passes the limit raises, and whatever response the application then
  tries to send is replaced by the 413.

Pure ASGI on purpose: Starlette's ``BaseHTTPMiddleware`` buffers and re-wraps streaming
responses, which breaks server-sent events and disconnect detection.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

DEFAULT_MAX_BODY_BYTES = 1024 * 1024  # 1 MiB: ~250k tokens of English prompt text
SETTING = "--max-body-bytes / INFERMETER_MAX_BODY_BYTES"


class BodyTooLarge(Exception):
    """Raised from ``receive`` when a chunked body passes the limit."""


def _size(n: int) -> str:
    if n >= 1024 * 1024 and n % (1024 * 1024) == 0:
        return f"{n:,} bytes ({n // (1024 * 1024)} MiB)"
    return f"{n:,} bytes"


def too_large_body(limit: int, declared: int | None) -> bytes:
    """OpenAI's error envelope for a 413, naming the limit and the setting that raises it."""
    seen = f"Content-Length is {declared:,} bytes" if declared is not None else "the body passed it"
    message = (
        f"the request body is larger than the limit of {_size(limit)} ({seen}); "
        f"send a smaller body, or raise the limit with {SETTING}"
    )
    error = {"message": message, "type": "invalid_request_error", "param": None, "code": "request_too_large"}
    return json.dumps({"error": error}).encode()


def _content_length(scope: Scope) -> int | None:
    """The declared body size; None when absent (chunked) or not a plain number."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            text = value.decode("latin-1").strip()
            return int(text) if text.isdigit() else None
    return None


class BodyLimit:
    """Refuse request bodies over ``max_bytes`` with a 413 in OpenAI's error envelope."""

    def __init__(self, app: ASGIApp, max_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_bytes={max_bytes} must be >= 1")
        self.app = app
        self.max_bytes = max_bytes

    async def _refuse(self, send: Send, declared: int | None) -> None:
        body = too_large_body(self.max_bytes, declared)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),  # the rest of the body is never read
        ]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(send, declared)
            return
        state: dict[str, Any] = {"read": 0, "over": False, "started": False, "refused": False}

        async def counting_receive() -> Message:
            if state["over"]:
                raise BodyTooLarge
            message = await receive()
            if message["type"] == "http.request":
                state["read"] += len(message.get("body", b""))
                if state["read"] > self.max_bytes:
                    state["over"] = True
                    raise BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            if state["over"] and not state["started"]:
                # the application answered the failed read (FastAPI makes it a 400): say 413
                if not state["refused"]:
                    state["refused"] = True
                    await self._refuse(send, None)
                return
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except BodyTooLarge:
            if state["started"]:
                raise
            if not state["refused"]:
                state["refused"] = True
                await self._refuse(send, None)
