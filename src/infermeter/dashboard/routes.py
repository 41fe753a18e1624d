"""Serve the dashboard's static files at ``/dashboard``.

The pages hold no data and no secrets: the browser signs in with an API key, keeps it in
``sessionStorage`` and calls the JSON API with it as a Bearer token, so the API's own checks
(tenant isolation, admin keys) govern what the dashboard shows. Everything is served from
the package (the chart library is vendored): the dashboard works offline.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse

from infermeter.core.errors import NotFound

STATIC = (Path(__file__).parent / "static").resolve()

MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".md": "text/markdown; charset=utf-8",
}

# Scripts and styles only from this origin: a key in sessionStorage is safe from injected code
# only if no injected code can run.
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
        "form-action 'self'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
}

router = APIRouter(prefix="/dashboard", include_in_schema=False)


def static_file(name: str) -> Path:
    """The file ``name`` under ``static/``; NotFound for anything else (``..`` included)."""
    path = (STATIC / name).resolve()
    if not path.is_relative_to(STATIC) or not path.is_file() or path.suffix not in MEDIA_TYPES:
        raise NotFound(f"/dashboard/{name} does not exist; the dashboard starts at /dashboard/")
    return path


def _serve(name: str) -> FileResponse:
    path = static_file(name)
    return FileResponse(path, media_type=MEDIA_TYPES[path.suffix], headers=SECURITY_HEADERS)


@router.get("")
def dashboard_root() -> RedirectResponse:
    # relative asset URLs in index.html resolve under /dashboard/ only with the slash
    return RedirectResponse("/dashboard/", status_code=308)


@router.get("/")
def dashboard_index() -> FileResponse:
    return _serve("index.html")


@router.get("/{name:path}")
def dashboard_file(name: str) -> FileResponse:
    return _serve(name)
