"""Integers and times out of range in query and path parameters: a 400 naming the parameter
and the range, never a 500 (SQLite stores at most 2^63 - 1; datetimes end at year 9999)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import LiveServer, fake_service, run_server

INT64_MAX = 2**63 - 1


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    yield from run_server(fake_service(tmp_path_factory.mktemp("ranges")))


def integer_params(document: dict[str, Any]) -> list[tuple[str, str, int | None, int | None, list[str]]]:
    """(path, name, minimum, maximum, other required params) of every integer parameter."""
    out = []
    for path, ops in document["paths"].items():
        if "get" not in ops:
            continue
        params = ops["get"].get("parameters", [])
        for p in params:
            options = p["schema"].get("anyOf", [p["schema"]])
            schema = next((s for s in options if s.get("type") == "integer"), None)
            if schema is not None:
                others = [q["name"] for q in params if q["required"] and q["name"] != p["name"]]
                out.append((path, p["name"], schema.get("minimum"), schema.get("maximum"), others))
    return out


def key_for(live: LiveServer, path: str) -> str:
    return live.admin_key if path.startswith(("/v1/admin", "/metrics")) else live.keys["alpha"]


def test_every_integer_parameter_has_both_bounds(live: LiveServer) -> None:
    """The document bounds every integer parameter, at most by SQLite's 2^63 - 1."""
    found = integer_params(httpx.get(live.url + "/openapi.json", timeout=30).json())
    names = {(path, name) for path, name, *_ in found}
    assert {("/v1/usage/records", "after"), ("/v1/ledger/consistency", "first")} <= names
    assert {("/v1/ledger/consistency", "second"), ("/v1/ledger/checkpoints", "after")} <= names
    for path, name, low, high, _ in found:
        assert low is not None and high is not None and high <= INT64_MAX, (path, name)


@pytest.mark.parametrize("where", ["above", "below", "2^63", "2^64", "not a number"])
def test_every_out_of_range_integer_is_a_400_naming_it(live: LiveServer, where: str) -> None:
    """Each integer parameter of each route, past either bound: 400, the name, 'from MIN to MAX'."""
    document = httpx.get(live.url + "/openapi.json", timeout=30).json()
    for path, name, low, high, others in integer_params(document):
        assert low is not None and high is not None
        value = {
            "above": str(high + 1),
            "below": str(low - 1),
            "2^63": str(2**63),
            "2^64": str(2**64),
            "not a number": "12abc",
        }[where]
        params = {**dict.fromkeys(others, "0"), name: value}
        headers = {"authorization": f"Bearer {key_for(live, path)}"}
        resp = httpx.get(live.url + path, params=params, headers=headers, timeout=30)
        assert resp.status_code == 400, (path, name, value, resp.text)
        error = resp.json()["error"]
        assert error["param"] == name and error["type"] == "invalid_request_error"
        assert f"'{name}' = '{value}'" in error["message"]
        assert f"send an integer from {low} to {high}" in error["message"], error["message"]


@pytest.mark.parametrize(
    ("path", "param", "value"),
    [
        ("/v1/usage", "start", "9999-12-31T23:59:59-23:59"),
        ("/v1/usage/records", "end", "0001-01-01T00:00:00+23:59"),
        ("/v1/usage/export.jsonl", "start", "9999-12-31T23:00:00-05:00"),
        ("/v1/admin/usage", "end", "0001-01-01T01:00:00+05:00"),
        ("/v1/admin/export/usage.jsonl", "start", "9999-12-31T23:59:59-01:00"),
    ],
)
def test_a_time_beyond_year_9999_in_utc_is_a_400(live: LiveServer, path: str, param: str, value: str) -> None:
    """A valid ISO time whose UTC instant falls outside years 1-9999: 400 naming the range."""
    headers = {"authorization": f"Bearer {key_for(live, path)}"}
    resp = httpx.get(live.url + path, params={param: value}, headers=headers, timeout=30)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["param"] == param and value in error["message"]
    assert "0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z" in error["message"]


def test_the_largest_integer_is_served(live: LiveServer) -> None:
    """2^63 - 1 itself is in range: an empty page, not an error."""
    headers = {"authorization": f"Bearer {live.keys['alpha']}"}
    resp = httpx.get(live.url + "/v1/usage/records", params={"after": INT64_MAX}, headers=headers, timeout=30)
    assert resp.status_code == 200 and resp.json()["data"] == []
