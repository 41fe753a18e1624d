"""Bad input gets a 4xx in OpenAI's error envelope naming the field and the limit, and costs nothing."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import LiveServer

CHAT = "/v1/chat/completions"


def post(
    live: LiveServer, body: object, *, key: str | None = "alpha", raw: bytes | None = None, path: str = CHAT
) -> httpx.Response:
    headers = {"content-type": "application/json"}
    if key is not None:
        headers["authorization"] = f"Bearer {live.keys[key]}"
    content = raw if raw is not None else httpx.Request("POST", "http://x", json=body).content
    return httpx.post(live.url + path, content=content, headers=headers, timeout=30)


def assert_error(
    resp: httpx.Response, status: int, *, param: str | None = None, mentions: tuple[str, ...] = ()
) -> dict[str, object]:
    assert resp.status_code == status, resp.text
    err: dict[str, object] = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    if param is not None:
        assert err["param"] == param
    assert isinstance(err["message"], str)
    for word in mentions:
        assert word in err["message"], err["message"]
    return err


def ledger_size(live: LiveServer) -> int:
    live.service.store.flush()
    return live.service.store.ledger_size()


GOOD = {"model": "tiny-gpt", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}

CASES = [
    ("unknown model", {**GOOD, "model": "gpt-9"}, 404, "model", ("gpt-9", "tiny-gpt")),
    ("empty messages", {**GOOD, "messages": []}, 400, "messages", ("messages",)),
    ("missing messages", {"model": "tiny-gpt"}, 400, "messages", ("required",)),
    ("max_tokens zero", {**GOOD, "max_tokens": 0}, 400, "max_tokens", ("max_tokens", "0")),
    ("max_tokens negative", {**GOOD, "max_tokens": -3}, 400, "max_tokens", ("-3",)),
    ("max_tokens over context", {**GOOD, "max_tokens": 5000}, 400, "max_tokens", ("5,000", "1,024")),
    (
        "prompt too long",
        {**GOOD, "messages": [{"role": "user", "content": "x" * 3000}]},
        400,
        "messages",
        ("tokens", "1,023"),
    ),
    ("wrong type", {**GOOD, "max_tokens": "many"}, 400, "max_tokens", ("many",)),
    ("temperature out of range", {**GOOD, "temperature": 7}, 400, "temperature", ("temperature",)),
    (
        "bad role",
        {**GOOD, "messages": [{"role": "wizard", "content": "x"}]},
        400,
        "messages[0].role",
        ("wizard",),
    ),
    ("bad service tier", {**GOOD, "service_tier": "platinum"}, 400, "service_tier", ("platinum",)),
    ("n > 1", {**GOOD, "n": 3}, 400, "n", ()),
]


@pytest.mark.parametrize(("name", "body", "status", "param", "mentions"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_a_clear_4xx_and_free(
    fake_server: LiveServer, name: str, body: object, status: int, param: str, mentions: tuple[str, ...]
) -> None:
    """Each kind of bad input: the right status, the field named, the limit named, no ledger entry."""
    before = ledger_size(fake_server)
    assert_error(post(fake_server, body), status, param=param, mentions=mentions)
    assert ledger_size(fake_server) == before


def test_malformed_json(fake_server: LiveServer) -> None:
    """A body that is not JSON is a 400 that says so."""
    assert_error(post(fake_server, None, raw=b"{not json"), 400, mentions=("JSON",))


def test_missing_key(fake_server: LiveServer) -> None:
    """No Authorization header is a 401 that says how to get a key."""
    assert_error(post(fake_server, GOOD, key=None), 401, mentions=("Bearer",))


def test_revoked_key(fake_server: LiveServer) -> None:
    """A revoked key is a 401 naming the key; other keys keep working."""
    store = fake_server.service.store
    key, secret = store.create_key(fake_server.tenant_ids["alpha"])
    store.revoke_key(key.key_id)
    resp = httpx.post(fake_server.url + CHAT, json=GOOD, headers={"authorization": f"Bearer {secret}"})
    assert_error(resp, 401, mentions=(key.key_id, "revoked"))
    assert post(fake_server, GOOD).status_code == 200


def test_unknown_route_is_enveloped(fake_server: LiveServer) -> None:
    """Even a 404 for a path uses the error envelope."""
    resp = httpx.get(fake_server.url + "/v1/nothing-here")
    assert_error(resp, 404)


def test_server_keeps_serving_after_bad_input(fake_server: LiveServer) -> None:
    """A burst of bad requests does not disturb good ones."""
    for _, body, *_ in CASES:
        post(fake_server, body)
    resp = post(fake_server, GOOD)
    assert resp.status_code == 200
    assert resp.json()["usage"]["metering"]["cost"]


def test_a_union_field_names_the_limit_of_the_shape_sent(fake_server: LiveServer) -> None:
    """Five stop sequences: the 400 says at most 4, not "send a string, not list"."""
    resp = post(fake_server, {**GOOD, "stop": ["a", "b", "c", "d", "e"]})
    err = assert_error(resp, 400, param="stop", mentions=("at most 4",))
    assert "not list" not in str(err["message"])


def test_an_empty_body_says_so(fake_server: LiveServer) -> None:
    """No body at all: a 400 saying the body is empty, not "'' is required"."""
    assert_error(post(fake_server, None, raw=b""), 400, mentions=("body is empty",))


def test_a_body_that_is_not_utf8_says_so(fake_server: LiveServer) -> None:
    """Bytes that are not UTF-8: a 400 naming the byte and its offset, not a guess about nesting."""
    resp = post(fake_server, None, raw=b'{"model": "tiny-gpt", "x": "\xff"}')
    assert_error(resp, 400, mentions=("not valid UTF-8", "0xff", "offset 28"))


def test_an_integer_too_long_to_read_says_so(fake_server: LiveServer) -> None:
    """A 5,000-digit max_tokens: a 400 naming the digit limit, not a guess about nesting."""
    raw = b'{"model": "tiny-gpt", "max_tokens": ' + b"9" * 5000 + b', "messages": []}'
    assert_error(post(fake_server, None, raw=raw), 400, mentions=("4,300 digits",))


def test_a_wrong_method_names_the_allowed_ones(fake_server: LiveServer) -> None:
    """DELETE on a GET route: a 405 with the Allow header RFC 9110 requires."""
    resp = httpx.delete(fake_server.url + "/v1/models", timeout=30)
    assert resp.status_code == 405, resp.text
    assert "GET" in resp.headers["allow"]
