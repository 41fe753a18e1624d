"""Every sampling parameter is checked at the API: a 400 naming the field, the value and the limit."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.conftest import LiveServer

BASE = {"model": "tiny-gpt", "prompt": "a", "max_tokens": 4}


def post(live: LiveServer, body: dict[str, Any], route: str = "/v1/completions") -> httpx.Response:
    # json.dumps escapes non-ASCII (lone surrogates included) as \uXXXX, as a client's encoder does
    return httpx.post(
        live.url + route,
        content=json.dumps(body).encode(),
        headers={"authorization": f"Bearer {live.keys['alpha']}", "content-type": "application/json"},
        timeout=30,
    )


BAD = [
    ("seed", 2**63, "9223372036854775807"),
    ("seed", -(2**63) - 1, "-9223372036854775808"),
    ("seed", "5", "integer"),
    ("temperature", 2.5, "2"),
    ("temperature", -0.1, "0"),
    ("temperature", "1", "number"),
    ("top_p", 0, "0"),
    ("top_p", 1.5, "1"),
    ("presence_penalty", 2.5, "2"),
    ("frequency_penalty", -3, "-2"),
    ("n", 2, "1"),
    ("max_tokens", 0, "1"),
    ("max_tokens", -1, "1"),
    ("max_tokens", 1.5, "integer"),
    ("max_tokens", True, "integer"),
    ("max_tokens", "5", "integer"),
    ("logit_bias", {"5": 101}, "100"),
    ("logit_bias", {"5": -101}, "-100"),
    ("logit_bias", {"999": 1}, "259"),
    ("logit_bias", {"-1": 1}, "259"),
    ("logit_bias", {"abc": 1}, "token id"),
    ("logprobs", 2, "logprobs"),
    ("best_of", 3, "best_of"),
]


@pytest.mark.parametrize(("field", "value", "limit"), BAD, ids=[f"{f}={v!r}" for f, v, _ in BAD])
def test_out_of_range_parameter_is_a_400_naming_it(
    fake_server: LiveServer, field: str, value: Any, limit: str
) -> None:
    """The error names the field (param and message), shows the value and states the limit."""
    resp = post(fake_server, {**BASE, field: value})
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    # a logit_bias entry is named down to its key, e.g. logit_bias[5]
    assert error["param"].startswith(field) and error["type"] == "invalid_request_error"
    assert field in error["message"] and limit in error["message"]


def test_nan_temperature_is_a_400(fake_server: LiveServer) -> None:
    """A NaN (which Python's JSON parser accepts) is refused as not finite."""
    resp = httpx.post(
        fake_server.url + "/v1/completions",
        content=b'{"model": "tiny-gpt", "prompt": "a", "temperature": NaN}',
        headers={"authorization": f"Bearer {fake_server.keys['alpha']}", "content-type": "application/json"},
    )
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "temperature"


@pytest.mark.parametrize("field", ["logprobs", "top_logprobs"])
def test_chat_logprobs_are_refused_clearly(fake_server: LiveServer, field: str) -> None:
    """logprobs are not implemented: asking for them is a 400 that says so and how to fix it."""
    body = {"model": "tiny-gpt", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    resp = post(fake_server, {**body, field: True if field == "logprobs" else 3}, "/v1/chat/completions")
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert error["param"] == field and "not supported" in error["message"] and "omit" in error["message"]


@pytest.mark.parametrize("seed", [-1, -(2**63), 2**63 - 1, 0])
def test_every_int64_seed_is_served(fake_server: LiveServer, seed: int) -> None:
    """OpenAI clients send any 64-bit seed; -1 included, each is served (never a worker error)."""
    resp = post(fake_server, {**BASE, "seed": seed, "temperature": 1.5})
    assert resp.status_code == 200, resp.text
    assert resp.json()["usage"]["metering"]["status"] == "length"


def test_logit_bias_steers_the_output(fake_server: LiveServer) -> None:
    """A +100 bias on the token id of 'x' makes every generated token an 'x'."""
    resp = post(fake_server, {**BASE, "temperature": 0, "logit_bias": {str(ord("x")): 100}})
    assert resp.status_code == 200
    assert resp.json()["choices"][0]["text"] == "xxxx"


def test_penalties_in_range_are_served(fake_server: LiveServer) -> None:
    """presence_penalty and frequency_penalty in -2..2 are applied, not refused."""
    resp = post(fake_server, {**BASE, "presence_penalty": 2, "frequency_penalty": -2, "seed": 3})
    assert resp.status_code == 200


SURROGATES = [
    ("/v1/completions", {**BASE, "prompt": "a\ud800b"}, "prompt"),
    ("/v1/completions", {**BASE, "prompt": ["\udfff"]}, "prompt"),
    ("/v1/completions", {**BASE, "stop": "\ud800"}, "stop"),
    ("/v1/completions", {**BASE, "stop": ["ok", "\ud800"]}, "stop[1]"),
    ("/v1/completions", {**BASE, "user": "\ud800"}, "user"),
    ("/v1/completions", {**BASE, "model": "\ud800"}, "model"),
    (
        "/v1/chat/completions",
        {"model": "tiny-gpt", "messages": [{"role": "user", "content": "hi \ud83d"}]},
        "messages[0].content",
    ),
    (
        "/v1/chat/completions",
        {
            "model": "tiny-gpt",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "\udc00"}]}],
        },
        "messages[0].content[0].text",
    ),
]


@pytest.mark.parametrize(("route", "body", "field"), SURROGATES, ids=[s[2] for s in SURROGATES])
def test_lone_surrogate_is_a_400_not_a_500(
    fake_server: LiveServer, route: str, body: dict[str, Any], field: str
) -> None:
    """Text that is not valid Unicode gets a 400 naming where it is; nothing is charged."""
    before = fake_server.service.store.ledger_size()
    resp = post(fake_server, body, route)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["param"] == field
    # pydantic itself refuses a length-checked field ('model') as "not a unicode string"
    assert "surrogate" in error["message"] or "unicode" in error["message"]
    fake_server.service.store.flush()
    assert fake_server.service.store.ledger_size() == before


def test_a_surrogate_pair_is_valid_text(fake_server: LiveServer) -> None:
    """An emoji sent as a JSON surrogate pair is one valid character and is served."""
    resp = post(fake_server, {**BASE, "prompt": "\U0001f600"})
    assert resp.status_code == 200
