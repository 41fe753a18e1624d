"""The dashboard's files are served from the package, locked down, and nothing else is."""

from __future__ import annotations

import re

import httpx
import pytest

from infermeter.core.errors import NotFound
from infermeter.dashboard.routes import STATIC, static_file
from tests.conftest import LiveServer


def test_index_is_served_with_a_strict_policy(fake_server: LiveServer) -> None:
    """/dashboard redirects to /dashboard/, whose page allows scripts from this origin only."""
    first = httpx.get(fake_server.url + "/dashboard", timeout=30)
    assert first.status_code == 308 and first.headers["location"] == "/dashboard/"
    page = httpx.get(fake_server.url + "/dashboard/", timeout=30)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    assert 'id="api-key"' in page.text


def test_every_asset_the_page_names_is_served_locally(fake_server: LiveServer) -> None:
    """Each script, stylesheet and icon in index.html is a relative URL this server answers."""
    page = (STATIC / "index.html").read_text()
    assets = re.findall(r'(?:src|href)="([^"#]+)"', page)
    assert "vendor/chart.umd.min.js" in assets and "app.js" in assets
    for asset in assets:
        assert "://" not in asset, f"{asset} would need the network"
        resp = httpx.get(f"{fake_server.url}/dashboard/{asset}", timeout=30)
        assert resp.status_code == 200, asset


@pytest.mark.parametrize(
    "path", ["../api/app.py", "..%2F..%2Fpyproject.toml", "nope.js", "vendor", "../routes.py"]
)
def test_nothing_outside_the_static_folder_is_served(fake_server: LiveServer, path: str) -> None:
    """Traversal, folders and unknown names are a 404 in the API's error envelope."""
    resp = httpx.get(f"{fake_server.url}/dashboard/{path}", timeout=30)
    assert resp.status_code == 404
    assert "does not exist" in resp.json()["error"]["message"]


@pytest.mark.parametrize(
    "name",
    [
        "../routes.py",
        "../../api/app.py",
        "vendor/../../__init__.py",
        "/etc/passwd",
        "vendor",
        "vendor/chart.js.LICENSE.md/x",
    ],
)
def test_static_file_refuses_what_is_not_a_static_asset(name: str) -> None:
    """static_file resolves the name and refuses anything outside static/ or not a file."""
    with pytest.raises(NotFound):
        static_file(name)
    assert static_file("vendor/chart.umd.min.js").is_file()


def test_the_key_field_cannot_be_submitted_in_a_url() -> None:
    """The key input has no name, so even a script-less form submit carries no key."""
    page = (STATIC / "index.html").read_text()
    field = re.search(r"<input[^>]*id=\"api-key\"[^>]*>", page, flags=re.DOTALL)
    assert field is not None and "name=" not in field.group(0)
    assert 'type="password"' in field.group(0)
