"""The OpenAPI document says what the server does: bearer keys, real error statuses, real models."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from infermeter.runtime.fake_engine import FakeEngine, fake_engine_info
from tests.conftest import LiveServer, fake_service


@pytest.fixture
def document(fake_server: LiveServer) -> dict[str, Any]:
    resp = httpx.get(fake_server.url + "/openapi.json", timeout=30)
    assert resp.status_code == 200
    body: dict[str, Any] = resp.json()
    return body


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(m.upper(), p, op) for p, ops in document["paths"].items() for m, op in ops.items()]


def test_routes_with_a_key_declare_the_bearer_scheme(document: dict[str, Any]) -> None:
    """HTTP bearer is the one security scheme; every keyed route uses it, the open ones do not."""
    schemes = document["components"]["securitySchemes"]
    assert list(schemes) == ["bearer"]
    assert (schemes["bearer"]["type"], schemes["bearer"]["scheme"]) == ("http", "bearer")
    open_routes = {p for m, p, op in operations(document) if "security" not in op}
    assert open_routes == {
        "/healthz",
        "/health",
        "/readyz",
        "/v1/ledger/key",
        "/log/checkpoint",
        "/log/tile/{path}",
    }
    for _, _, op in operations(document):
        if "security" in op:
            assert op["security"] == [{"bearer": []}]
            assert "401" in op["responses"]


def test_every_error_response_is_the_openai_envelope(document: dict[str, Any]) -> None:
    """No FastAPI 422 anywhere; each 4xx/5xx response refers to ErrorResponse."""
    assert "HTTPValidationError" not in document["components"]["schemas"]
    envelope = document["components"]["schemas"]["ErrorResponse"]
    assert envelope["properties"]["error"]["required"] == ["message", "type", "param", "code"]
    for method, path, op in operations(document):
        assert "422" not in op["responses"], (method, path)
        assert "413" in op["responses"], (method, path)  # the body limit applies to every route
        for status, response in op["responses"].items():
            if int(status) >= 400:
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorResponse"}, (method, path, status)


@pytest.mark.parametrize(
    ("method", "path", "statuses"),
    [
        ("POST", "/v1/chat/completions", {"200", "400", "401", "402", "403", "404", "413", "429", "503"}),
        ("POST", "/v1/completions", {"200", "400", "401", "402", "403", "404", "413", "429", "503"}),
        ("GET", "/metrics", {"200", "401", "403", "413"}),
        ("GET", "/v1/usage/records", {"200", "400", "401", "403", "413"}),
        ("GET", "/v1/receipts/{record_id}", {"200", "400", "401", "404", "413"}),
        ("GET", "/v1/ledger/consistency", {"200", "400", "401", "404", "413"}),
        ("GET", "/v1/admin/overview", {"200", "401", "403", "413"}),
        ("GET", "/v1/ledger/key", {"200", "413"}),
    ],
)
def test_each_route_lists_the_statuses_it_returns(
    document: dict[str, Any], method: str, path: str, statuses: set[str]
) -> None:
    """The statuses of representative routes, exactly (no 429: nothing rate-limits yet)."""
    assert set(document["paths"][path][method.lower()]["responses"]) == statuses


def test_non_json_answers_declare_their_media_types(document: dict[str, Any]) -> None:
    """Streams, CSV invoices, JSON-lines exports and Prometheus text are declared as such."""

    def types(method: str, path: str) -> set[str]:
        return set(document["paths"][path][method]["responses"]["200"]["content"])

    assert types("post", "/v1/chat/completions") == {"application/json", "text/event-stream"}
    assert types("get", "/v1/invoices/{period}") == {"application/json", "text/csv"}
    assert types("get", "/v1/admin/export/usage.jsonl") == {"application/x-ndjson"}
    assert types("get", "/metrics") == {"text/plain"}


def test_model_lists_the_models_this_server_serves(server_factory: Any, tmp_path: Any) -> None:
    """The completion bodies' ``model`` is an enum filled from the router at start."""
    second = FakeEngine(info=fake_engine_info(engine_id="fake-other", model="other-model"))
    live = server_factory(fake_service(tmp_path / "two", FakeEngine(), second))
    schemas = httpx.get(live.url + "/openapi.json", timeout=30).json()["components"]["schemas"]
    for name in ("ChatCompletionRequest", "CompletionRequest"):
        model = schemas[name]["properties"]["model"]
        assert sorted(model["enum"]) == ["other-model", "tiny-gpt"]
        assert model["examples"][0] in model["enum"]


def test_a_documented_401_and_403_are_what_the_server_sends(fake_server: LiveServer) -> None:
    """An admin route without a key is a 401 and with a tenant key a 403, as documented."""
    url = fake_server.url + "/v1/admin/overview"
    assert httpx.get(url, timeout=30).status_code == 401
    tenant = {"authorization": f"Bearer {fake_server.keys['alpha']}"}
    assert httpx.get(url, headers=tenant, timeout=30).status_code == 403
