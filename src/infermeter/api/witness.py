"""A witness over HTTP (c2sp.org/tlog-witness): ``POST /add-checkpoint`` and the monitoring
view ``GET /<origin hash>/checkpoint`` (origin hash: lowercase hex SHA-256 of the origin).

The app holds nothing but a ``billing.witness.Witness``; ``infermeter witness serve`` runs
it. Bodies over 64 KiB are refused with 413 before they are read in full.
"""

from __future__ import annotations

from fastapi import FastAPI, Request, Response

import infermeter
from infermeter.billing.witness import Reply, Witness

MAX_BODY = 64 * 1024


def _send(reply: Reply) -> Response:
    # The header is set as is: given as media_type, Starlette would append "; charset=utf-8"
    # to text/x.tlog.size, which tlog-witness names exactly.
    return Response(reply.body, status_code=reply.status, headers={"Content-Type": reply.content_type})


def create_witness_app(witness: Witness) -> FastAPI:
    app = FastAPI(title="infermeter witness", version=infermeter.__version__)

    @app.post("/add-checkpoint")
    async def add_checkpoint(request: Request) -> Response:
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY:
                return Response(
                    f"the request body exceeds {MAX_BODY} bytes; a request is a few hundred\n",
                    status_code=413,
                    media_type="text/plain; charset=utf-8",
                )
        return _send(witness.add_checkpoint(bytes(body)))

    @app.get("/{origin_hash}/checkpoint")
    def checkpoint(origin_hash: str) -> Response:
        return _send(witness.checkpoint(origin_hash))

    return app
