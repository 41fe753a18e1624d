"""Interactive API docs at ``/docs`` that work offline: Swagger UI served from the package.

FastAPI's default page loads Swagger UI from a CDN; this one loads the copy vendored in
``api/static/swagger-ui/`` (see its README for version and licence) and turns off Swagger's
online validator, so the page makes no request that leaves this server. A
Content-Security-Policy holds it to that: scripts, styles, images and API calls from this
origin only (the page's one inline script is allowed by its hash).
"""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

from infermeter.core.errors import NotFound

ASSETS = (Path(__file__).parent / "static" / "swagger-ui").resolve()
PREFIX = "/docs/assets"
MEDIA_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
}

router = APIRouter(include_in_schema=False)


def _csp(html: str) -> str:
    hashes = [
        "'sha256-" + base64.b64encode(hashlib.sha256(body.encode()).digest()).decode() + "'"
        for body in re.findall(r"<script>(.*?)</script>", html, flags=re.DOTALL)
    ]
    return (
        f"default-src 'self'; script-src 'self' {' '.join(hashes)}; "
        "style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; "
        "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    )


@router.get("/docs")
def swagger_ui(request: Request) -> HTMLResponse:
    page = get_swagger_ui_html(
        openapi_url=request.app.openapi_url or "/openapi.json",
        title=f"{request.app.title} API",
        swagger_js_url=f"{PREFIX}/swagger-ui-bundle.js",
        swagger_css_url=f"{PREFIX}/swagger-ui.css",
        swagger_favicon_url=f"{PREFIX}/favicon-32x32.png",
        swagger_ui_parameters={"validatorUrl": None, "persistAuthorization": False},
    )
    html = bytes(page.body).decode()
    return HTMLResponse(
        html,
        headers={
            "content-security-policy": _csp(html),
            "x-content-type-options": "nosniff",
            "referrer-policy": "no-referrer",
        },
    )


@router.get(PREFIX + "/{name}")
def swagger_asset(name: str) -> FileResponse:
    path = (ASSETS / name).resolve()
    if not path.is_relative_to(ASSETS) or not path.is_file() or path.suffix not in MEDIA_TYPES:
        raise NotFound(f"{PREFIX}/{name} does not exist; the API docs start at /docs")
    return FileResponse(
        path,
        media_type=MEDIA_TYPES[path.suffix],
        headers={"cache-control": "public, max-age=86400", "x-content-type-options": "nosniff"},
    )
