"""/docs in a real browser (Playwright driving Debian's Chromium): Swagger UI renders the
document from the package's own assets, and no request leaves loopback."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import LiveServer

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not os.access(CHROMIUM, os.X_OK),
        reason=f"{CHROMIUM} is missing: apt-get install chromium (scripts/test.sh does it when run as root)",
    ),
]
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is missing: pip install 'infermeter[test]'"
)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def test_docs_render_every_operation_from_loopback_only(browser: Any, fake_server: LiveServer) -> None:
    """Every operation is drawn, with an Authorize button; every request goes to this server."""
    page = browser.new_page()
    requested: list[str] = []
    errors: list[str] = []

    def only_loopback(route: Any) -> None:
        url = route.request.url
        requested.append(url)
        if urlsplit(url).hostname == "127.0.0.1":
            route.continue_()
        else:  # would have left the machine: refused here and reported below
            route.abort()

    page.route("**/*", only_loopback)
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(fake_server.url + "/docs")
    page.wait_for_selector(".swagger-ui .opblock", timeout=30_000)

    document = httpx.get(fake_server.url + "/openapi.json", timeout=30).json()
    expected = sum(len(ops) for ops in document["paths"].values())
    assert page.locator(".swagger-ui .opblock").count() == expected
    assert page.locator(".swagger-ui .btn.authorize").count() == 1  # the bearer scheme
    outside = [u for u in requested if urlsplit(u).hostname != "127.0.0.1"]
    assert not outside, outside
    assert any(u.endswith("/docs/assets/swagger-ui-bundle.js") for u in requested)
    assert any(u.endswith("/openapi.json") for u in requested)
    assert not errors, errors  # CSP violations are console errors
    page.close()


def test_docs_assets_are_served_from_the_package(fake_server: LiveServer) -> None:
    """The script, style and icon come from /docs/assets; other names are a 404."""
    for name, media in (
        ("swagger-ui-bundle.js", "text/javascript"),
        ("swagger-ui.css", "text/css"),
        ("favicon-32x32.png", "image/png"),
    ):
        resp = httpx.get(f"{fake_server.url}/docs/assets/{name}", timeout=30)
        assert resp.status_code == 200 and resp.headers["content-type"].startswith(media), name
    for name in ("README.md", "..%2F..%2Fapp.py", "nothing.js"):
        assert httpx.get(f"{fake_server.url}/docs/assets/{name}", timeout=30).status_code == 404
