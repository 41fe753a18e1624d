"""The public log over HTTP, as c2sp.org/tlog-tiles lays it out under the prefix ``/log``.

GET /log/checkpoint                  the newest checkpoint: a C2SP signed note, with the
                                     witnesses' cosignatures (text/plain; never cached)
GET /log/tile/<L>/<N>[.p/<W>]        hash tiles (application/octet-stream)
GET /log/tile/entries/<N>[.p/<W>]    entry bundles: each entry is a salted commitment

Tiles are served up to the newest checkpoint's tree size. tlog-tiles calls the tile
endpoints immutable, partial tiles included (``.p/W`` names the first W hashes, which never
change; a wider tile has another path), so every tile is sent with ``Cache-Control: public,
max-age=31536000, immutable``; the checkpoint, which changes, with ``no-cache``. Entry
bundles are not compressed: their entries are random-looking commitments that gzip cannot
shrink. No key is needed: the tiles reveal how many entries the ledger has, not what any
entry says.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from infermeter.api.service import service_of
from infermeter.billing.log_publisher import LogPublisher
from infermeter.billing.tiles import TilePathError, parse_tile_path
from infermeter.core.errors import InvalidRequest, NotFound

router = APIRouter()

IMMUTABLE = "public, max-age=31536000, immutable"


def _publisher(request: Request) -> LogPublisher:
    publisher: LogPublisher | None = service_of(request).log_publisher
    if publisher is None:
        raise NotFound(
            "this server has no public C2SP log: it is served with the embedded SQLite store only "
            "(the PostgreSQL store has none yet); use /v1/ledger/checkpoints and /v1/receipts"
        )
    return publisher


@router.get("/log/checkpoint")
def checkpoint(request: Request) -> Response:
    """The newest signed checkpoint with its cosignatures (signed now if there is none yet)."""
    publisher = _publisher(request)
    cp = publisher.log.latest() or publisher.tick()
    body = publisher.log.cosigned(cp).encode()
    return Response(body, media_type="text/plain; charset=utf-8", headers={"Cache-Control": "no-cache"})


@router.get("/log/tile/{path:path}")
def tile(request: Request, path: str) -> Response:
    """One hash tile or entry bundle, exactly as tlog-tiles names it."""
    try:
        ref = parse_tile_path(f"tile/{path}")
    except TilePathError as exc:
        raise InvalidRequest(f"{exc}; e.g. /log/tile/0/000, /log/tile/1/x001/234.p/7", param="path") from None
    log = _publisher(request).log
    latest = log.latest()
    data = None if latest is None else log.tile(ref, latest.tree_size)
    if data is None:
        size = latest.tree_size if latest else 0
        raise NotFound(
            f"the log has no tile {ref.path()} at its checkpointed size {size}; fetch "
            "/log/checkpoint and request only the tiles that size has"
        )
    return Response(data, media_type="application/octet-stream", headers={"Cache-Control": IMMUTABLE})
