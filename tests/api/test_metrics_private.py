"""/metrics is for the operator: without an admin key it shows no tenant's data."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import LiveServer


def busy(live: LiveServer) -> None:
    """Both tenants have used the service, so tenant-labelled series exist."""
    for tenant in ("alpha", "beta"):
        live.client(tenant).completions.create(model="tiny-gpt", prompt=f"{tenant} was here", max_tokens=2)


def metrics(live: LiveServer, authorization: str | None) -> httpx.Response:
    headers = {} if authorization is None else {"authorization": authorization}
    return httpx.get(live.url + "/metrics", headers=headers, timeout=30)


def test_the_admin_key_gets_every_tenants_series(fake_server: LiveServer) -> None:
    """With the admin key: Prometheus text, one series per tenant."""
    busy(fake_server)
    resp = metrics(fake_server, f"Bearer {fake_server.admin_key}")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    for tenant in ("alpha", "beta"):
        assert f'tenant="{fake_server.tenant_ids[tenant]}"' in resp.text


@pytest.mark.parametrize(
    ("who", "status", "code"),
    [
        ("no key", 401, "invalid_api_key"),
        ("malformed header", 401, "invalid_api_key"),
        ("unknown key", 401, "invalid_api_key"),
        ("tenant key", 403, "permission_denied"),
    ],
)
def test_anyone_but_an_admin_gets_an_error_and_no_data(
    fake_server: LiveServer, who: str, status: int, code: str
) -> None:
    """No key, a bad key or a tenant key: a 401/403 envelope naming the admin key, no series, no tenant id."""
    busy(fake_server)
    authorization = {
        "no key": None,
        "malformed header": "Basic YWRtaW46YWRtaW4=",
        "unknown key": "Bearer im-not-a-key",
        "tenant key": f"Bearer {fake_server.keys['alpha']}",
    }[who]
    resp = metrics(fake_server, authorization)
    assert resp.status_code == status
    error = resp.json()["error"]
    assert error["code"] == code
    if who in ("no key", "tenant key"):
        assert "admin key" in error["message"]
    assert "infermeter_" not in resp.text
    for tenant_id in fake_server.tenant_ids.values():
        assert tenant_id not in resp.text


def test_no_route_open_without_a_key_names_a_tenant(fake_server: LiveServer) -> None:
    """Every GET that needs no key (health, ledger key, OpenAPI, docs) carries no tenant id."""
    busy(fake_server)
    document = httpx.get(fake_server.url + "/openapi.json", timeout=30).json()
    open_paths = [
        path
        for path, ops in document["paths"].items()
        if "get" in ops and "security" not in ops["get"] and "{" not in path
    ]
    assert "/metrics" not in open_paths and "/healthz" in open_paths
    for path in [*open_paths, "/openapi.json", "/docs"]:
        resp = httpx.get(fake_server.url + path, timeout=30)
        assert resp.status_code == 200, path
        for tenant_id in fake_server.tenant_ids.values():
            assert tenant_id not in resp.text, path
